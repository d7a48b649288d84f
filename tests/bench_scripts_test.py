"""Every bench/ script runs in its smallest mode, so a benchmark cannot rot unseen (issue 22).

The scripts run as their users run them (subprocesses of their command lines), one step, one round,
tiny batches; all are started at once by one module fixture (each is mostly start-up and compilation, on
one core) and each test waits for its own and checks what it printed. Covered:

  train_step.py --end_to_end (fer_jax and its end-to-end worker; the plain Flax rung of its ladder runs in
  the --flops check), inference.py, end_to_end.py, input_pipeline.py, fer_jax_worker.py --flops
  (bench/flop_count.py), gpu_check.sh run --cpu_smoke (on a tiny FER2013 CSV written here),
  time_to_accuracy.py, gpu_payload.py, gpu_wheels_check.py (on wheels made here; on .whl/ where prepare
  made it), checkpoint_checksums.py, build_fer2013.py --fraction, predict_video.py; with ../shared/data
  present: build_expw.py, face_detection.py, face_alignment.py on five ExpW photos.

Left out: the PyTorch and Keras peers (bench/peers/*_worker.py) unless FER_JAX_PEER_PYTHON imports torch
(tests/peers_test.py checks them apart); worker_protocol.py is the harness the others run on; mutation_check.py runs the test suite itself many
times over (minutes), so tests/mutation_check_test.py checks its list (bench/mutations.py) and its stale-snippet
report instead.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from conftest import REAL_DATA  # tests/conftest.py

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))
import flop_count  # noqa: E402
import gpu_payload  # noqa: E402
import gpu_wheels_check  # noqa: E402
import time_to_accuracy  # noqa: E402

PEER_PYTHON = os.environ.get("FER_JAX_PEER_PYTHON", sys.executable)
HAS_REAL_DATA = (REAL_DATA / "README.md").exists()
TIMEOUT_S = 600


def _tiny_expw(into: pathlib.Path, photos: int = 5) -> pathlib.Path:
  """The first `photos` photos of ../shared/data/expw_sample (symlinks) with their label lines."""
  source = REAL_DATA / "expw_sample"
  lines = (source / "label.lst").read_text().splitlines()
  names = sorted({line.split()[0] for line in lines})[:photos]
  (into / "origin").mkdir(parents=True)
  for name in names:
    (into / "origin" / name).symlink_to(source / "origin" / name)
  (into / "label.lst").write_text("\n".join(l for l in lines if l.split()[0] in names) + "\n")
  return into


def _tiny_fer2013_csv(into: pathlib.Path) -> pathlib.Path:
  rng = np.random.default_rng(0)
  rows = [f"{i % 7},{' '.join(map(str, rng.integers(0, 256, 48 * 48)))},{usage}"
          for usage, n in (("Training", 56), ("PublicTest", 21), ("PrivateTest", 7)) for i in range(n)]
  into.mkdir(parents=True)
  (into / "fer2013.csv").write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
  return into


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
  """{name: (Popen, log path)}: every subprocess script started at once, on small shared inputs."""
  import input_pipeline  # pylint: disable=g-import-not-at-top  (bench/input_pipeline.py)
  tmp = tmp_path_factory.mktemp("bench_scripts")
  data = str(tmp / "bench_data")
  input_pipeline.build_bench_dataset(data, 512, "bytes")  # before the workers, which would each build 8,192
  py = sys.executable
  peers = "torch" if subprocess.run([PEER_PYTHON, "-c", "import torch"], capture_output=True).returncode == 0 else ""
  commands = {
      "train_step": [py, BENCH / "train_step.py", "--variants", "fer_jax", "--peers", peers,
                     "--peer_python", PEER_PYTHON, "--end_to_end", "--data_dir", data, "--rounds", "1",
                     "--steps", "1", "--batch", "8"],
      "inference": [py, BENCH / "inference.py", "--peers", "", "--rounds", "1", "--steps", "1", "--latency_calls", "1",
                    "--batch", "8"],
      "end_to_end": [py, BENCH / "end_to_end.py", "--workers", "0", "--data_dir", data, "--rounds", "1", "--steps",
                     "1", "--batch", "8"],
      "input_pipeline": [py, BENCH / "input_pipeline.py", "--data_dir", data, "--num_train", "512", "--batches", "1",
                         "--repeats", "1", "--workers", "0", "--batch_size", "64"],
      "flops": [py, BENCH / "fer_jax_worker.py", "--model", "vgg", "--batch", "2", "--dtype", "bfloat16",
                "--variant", "plain", "--flops"],
      "gpu_check": ["bash", BENCH / "gpu_check.sh", "run", "--cpu_smoke"],
      "build_fer2013": [py, BENCH / "build_fer2013.py", "--fraction", "0.002", "--tar"],
      "predict_video": [py, BENCH / "predict_video.py", "--frames", "4", "--repeats", "1"],
  }
  env = dict(os.environ, PYTHON=py, OUT=str(tmp / "gpu_check_out"), FER_JAX_PEER_PYTHON=PEER_PYTHON,
             FER2013_DIR=str(_tiny_fer2013_csv(tmp / "fer2013_csv")), TMPDIR=str(tmp),
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  if HAS_REAL_DATA:
    expw = str(_tiny_expw(tmp / "expw"))
    commands["build_expw"] = [py, BENCH / "build_expw.py", "--manual_dir", expw, "--configs", "gray48",
                              "--workers", "1"]
    commands["face_detection"] = [py, BENCH / "face_detection.py", "--data", expw, "--frames", "2"]
    commands["face_alignment"] = [py, BENCH / "face_alignment.py", "--data", expw]
  started = {}
  for name, command in commands.items():
    log = tmp / f"{name}.log"
    with open(log, "w") as out:
      started[name] = (subprocess.Popen([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                        env=env), log)
  yield started
  for process, _ in started.values():
    if process.poll() is None:
      process.kill()


def _output(launched, name: str) -> str:
  """Waits for script `name`; its output, after checking it exited 0."""
  process, log = launched[name]
  process.wait(timeout=TIMEOUT_S)
  text = log.read_text()
  assert process.returncode == 0, f"{name} exited {process.returncode}:\n{text[-3000:]}"
  return text


def _table_rows(text: str) -> dict[str, float]:
  """{contender: images/s} from bench/train_step.py's printed table."""
  rows = {}
  for line in text.split("training images/s", 1)[-1].splitlines():
    parts = line.rsplit(None, 3)
    if len(parts) == 4 and ".." in parts[2]:
      rows[parts[0].strip()] = float(parts[1])
  return rows


def test_train_step_runs_every_asked_contender_including_end_to_end(launched):
  rows = _table_rows(_output(launched, "train_step"))
  # A worker that does not start is "left out" with exit 0: its missing row is the failure.
  assert {"fer_jax", "fer_jax end to end"} <= set(rows), rows
  assert all(rate > 0 for rate in rows.values())


def test_inference_reports_throughput_and_latency(launched):
  text = _output(launched, "inference")
  assert "inference images/s, throughput at batch 8" in text and "latency at batch 1" in text
  assert any(line.startswith("fer_jax") and line.rstrip().endswith("ms)") for line in text.splitlines())


def test_end_to_end_reports_the_pipeline_cost(launched):
  assert "pipeline cost, pipeline, 0 worker(s):" in _output(launched, "end_to_end")


def test_input_pipeline_reports_parts_and_the_full_pipeline(launched):
  text = _output(launched, "input_pipeline")
  assert "read + decode: ExampleSource.read_batch" in text and "pipeline aug=on  num_workers=0" in text


def _vgg_model_flops_per_image(stages=(64, 128, 256, 512), dense=(1024, 1024), convs=2, size=48, classes=7) -> int:
  """By hand: 3 x the forward multiply-adds x 2, less the first layer's input gradient (images need none)."""
  macs, channels, side = 0, 1, size
  for features in stages:
    for _ in range(convs):
      macs += side * side * 9 * channels * features
      channels = features
    side //= 2
  width = side * side * channels
  for features in (*dense, classes):
    macs += width * features
    width = features
  first_input_grad = size * size * 9 * 1 * stages[0]
  return 2 * (3 * macs - first_input_grad)


def test_flops_count_the_vgg_step_on_the_cpu_backend_and_agree_with_a_count_by_hand(launched):
  counts = json.loads(_output(launched, "flops").strip().splitlines()[-1])
  assert counts["backend"] == "cpu"  # what makes it work where XLA:GPU's cost analysis is None
  per_image = counts["flops_per_step"] / counts["batch"]
  assert per_image == _vgg_model_flops_per_image()  # 2.84 GFLOP
  assert 0.85 < counts["xla_flops_per_step"] / counts["flops_per_step"] < 1.0  # XLA:CPU's own: 2.59


def test_jaxpr_flops_count_nested_convolutions_and_matmuls():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def f(x, w, d):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.jit(lambda a: a.reshape(2, -1) @ d)(y).sum()  # inside a nested pjit

  x, w, d = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), jnp.ones((256, 5))
  forward = 2 * (2 * 8 * 8 * 4 * 27) + 2 * (2 * 5 * 256)
  assert flop_count.jaxpr_matmul_flops(jax.make_jaxpr(f)(x, w, d)) == forward
  grads = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(x, w, d)
  assert flop_count.jaxpr_matmul_flops(grads) == 3 * forward
  assert flop_count.step_flops(f, x, w, d)["matmul"] == forward


def test_gpu_check_cpu_smoke_runs_every_section(launched, tmp_path):
  text = _output(launched, "gpu_check")
  for section in ("== 1. configs/fer2013_gpu.py", "== 2. the short schedule, --config.num_epochs=60",
                  "== 3. the short schedule launched again", "== 4. cnn float32", "== 5. model FLOPs utilisation"):
    assert section in text
  assert text.count("trainer exit status 0 after") == 3  # three launches, none stopped: a smoke run is short
  assert text.count("70%: ") == 2 and text.count("72%: ") == 2  # sections 1 and 2 (reached or "not reached")
  assert text.count("Startup to first step ") == 3 and "First validation " in text
  assert "Model vgg: " in text and "step 6 validation" in text
  assert any(line.startswith("fer_jax ") and "MFU" in line for line in text.splitlines())
  report = pathlib.Path(launched["gpu_check"][1].parent / "gpu_check_out" / "gpu_check.txt").read_text()
  assert "cpu smoke run" in report and "MFU" in report


def test_time_to_accuracy_counts_from_launch_and_names_thresholds_never_reached(tmp_path, capsys):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  writer = SummaryWriter(str(tmp_path))  # its first event (the file version) is stamped now, about t0
  writer.add_scalar("train_loss", 2.0, 1, walltime=t0)
  writer.add_scalar("val_accuracy", 0.5, 100, walltime=t0 + 60)
  writer.add_scalar("val_accuracy", 0.71, 200, walltime=t0 + 120)
  writer.close()
  assert time_to_accuracy.main([str(tmp_path), "--thresholds", "0.7,0.72"]) == 0
  assert "70%: 2.00 min (step 200)" in capsys.readouterr().out  # from the first event
  assert time_to_accuracy.main([str(tmp_path), "--thresholds", "0.7,0.705,0.72", "--launch_time", str(t0 - 30)]) == 0
  out = capsys.readouterr().out
  assert "70%: 2.50 min (step 200)" in out  # from launch: start-up counts
  assert "70.5%: 2.50 min (step 200)" in out  # a threshold between whole percents is named as given
  assert "72%: not reached (best 71.00% at step 200, 2.50 min" in out
  assert time_to_accuracy.main([str(tmp_path / "nothing"), "--thresholds", "0.7"]) == 1
  assert "70%: not reached (no validation was logged)" in capsys.readouterr().out


def test_gpu_payload_gives_back_the_jpeg_files_byte_for_byte(tmp_path):
  import cv2  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for i, split in enumerate(("train/happy", "train/sad", "test/happy")):
    (tmp_path / "src" / split).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "src" / split / f"{i}.jpg"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
  files, _ = gpu_payload.pack(str(tmp_path / "src"), str(tmp_path / "p.npz"))
  assert files == 3 and gpu_payload.unpack(str(tmp_path / "p.npz"), str(tmp_path / "out")) == 3
  for path in (tmp_path / "src").rglob("*.jpg"):
    assert (tmp_path / "out" / path.relative_to(tmp_path / "src")).read_bytes() == path.read_bytes()


def _wheel(folder: pathlib.Path, name: str, version: str, requires: list[str]) -> None:
  meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n"
                                                                                 for r in requires)
  with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
    z.writestr(f"{name}-{version}.dist-info/METADATA", meta)


def test_wheels_check_names_requirements_met_by_neither_the_image_nor_a_wheel(tmp_path, monkeypatch):
  image = {"numpy": gpu_wheels_check.Version("2.5.2"), "absl-py": None}
  wheels = tmp_path / "whl"
  wheels.mkdir()
  _wheel(wheels, "grain", "0.2.18", ["numpy", "portpicker", "absl-py", "pyarrow; extra == 'parquet'",
                                     "tomli; python_version < '3.11'", "helper[fast]"])
  _wheel(wheels, "helper", "1.0", ["numpy>=3; extra == 'fast'", "pywin32; sys_platform == 'win32'"])
  loaded, problems = gpu_wheels_check.load_wheels(wheels)
  roots = [gpu_wheels_check.Requirement("grain>=0.2")]
  _, missing, touched = gpu_wheels_check.closure(loaded, image, roots)
  assert not problems and touched == {"numpy", "absl-py"}
  assert len(missing) == 2, missing  # not pyarrow (an extra nobody asked for), tomli (py<3.11), pywin32 (Windows)
  assert "grain 0.2.18 needs portpicker" in missing[0] and "bench/gpu_check.sh's WHEELS" in missing[0]
  assert "helper 1.0 needs numpy>=3" in missing[1] and "the GPU image has numpy 2.5.2" in missing[1]
  _wheel(wheels, "portpicker", "1.6.0", [])
  _wheel(wheels, "grain", "0.2.17", [])
  loaded, problems = gpu_wheels_check.load_wheels(wheels)
  assert problems == ["grain is carried twice (0.2.17 and 0.2.18): pip stops the whole install"]


def test_wheels_check_roots_are_fer_jax_dependencies_less_the_cpu_only_ones():
  names = {gpu_wheels_check.canonicalize_name(r.name) for r in gpu_wheels_check.root_requirements()}
  assert {"grain", "tensorflow-datasets", "clu", "jax", "flax"} <= names
  assert not names & set(gpu_wheels_check.NOT_NEEDED_ON_GPU)


@pytest.mark.skipif(not (REPO / ".whl").is_dir(), reason="no .whl/: run `bash bench/gpu_check.sh prepare`")
def test_prepared_wheels_meet_the_import_chain_on_the_gpu_image():
  assert gpu_wheels_check.main([str(REPO / ".whl")]) == 0


def test_checkpoint_checksums_bench_saves_seals_verifies_and_restores(tmp_path, capsys):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import checkpoint_checksums  # pylint: disable=g-import-not-at-top  (bench/checkpoint_checksums.py)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "checkpoints" / "3" / "state", {"w": np.arange(12.0).reshape(3, 4), "b": np.zeros(4)})
  checkpointer.wait_until_finished()
  assert checkpoint_checksums.main([str(tmp_path), "--rounds", "1"]) == 0
  out = capsys.readouterr().out
  assert "checksums on save:" in out and "of the restore" in out


def test_build_fer2013_builds_a_fraction_of_the_full_size(launched):
  text = _output(launched, "build_fer2013")
  expected = sum(max(1, round(n * 0.002)) for n in (28709, 3589, 3589))
  assert f"RESULT 0.002 x full-size fer2013.csv: {expected} examples" in text
  assert f"RESULT 0.002 x full-size fer2013.tar.gz: {expected} examples" in text


def test_predict_video_reports_frames_per_second(launched):
  text = _output(launched, "predict_video")
  assert "detect+classify" in text and "end to end" in text


@pytest.mark.skipif(not HAS_REAL_DATA, reason=f"real data not found at {REAL_DATA}")
@pytest.mark.parametrize("name,expected", [("build_expw", "gray48"), ("face_detection", "recall"),
                                           ("face_alignment", "eyes levelled")])
def test_real_data_bench_scripts_run_on_five_expw_photos(launched, name, expected):
  assert expected in _output(launched, name)


# Bench scripts no test here runs, and why (the module docstring says more).
LEFT_OUT = {"mutation_check.py": "runs the whole suite many times; tests/mutation_check_test.py checks its list",
            "mutations.py": "mutation_check.py's catalogue, checked with it by tests/mutation_check_test.py",
            "worker_protocol.py": "the harness train_step.py and its workers run on (covered through them)"}


def test_every_bench_script_is_run_or_named_as_left_out(launched):
  """Each bench script is launched by the fixture, called in-process by a test here, or in LEFT_OUT."""
  scripts = sorted(p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh"))
  as_commands = {pathlib.Path(str(process.args[1])).name for process, _ in launched.values()}
  source = pathlib.Path(__file__).read_text()
  in_process = {s for s in scripts if re.search(rf"\b{pathlib.Path(s).stem}\.\w+\(", source)}
  on_real_data = set() if HAS_REAL_DATA else {"build_expw.py", "face_detection.py", "face_alignment.py"}
  missing = [s for s in scripts if s not in as_commands | in_process | set(LEFT_OUT) | on_real_data]
  assert missing == [], "bench scripts no test runs: add them to `launched`, call them here, or say why not"
  assert set(LEFT_OUT) <= set(scripts), "LEFT_OUT names a script that is gone"
