"""A damaged checkpoint step is named and never used: by predict, by the evaluation job, by a resumed trainer.

The four damages a user met (issue 15, cases 1-4): two bytes flipped inside
the largest array file, that file truncated, the OCDBT manifest deleted, the
input iterator's state truncated. Orbax reads the first without complaint
(NaN or wrong weights), and the others used to give long tracebacks.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import cv2
import jax
import numpy as np
import pytest

from fer_jax import checkpoint_checksums, checkpointing, eval_job, evaluation, train
from fer_jax.serving import predict

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from prediction_fixtures import synthetic_face  # noqa: E402
from reliability_test import run_cli  # noqa: E402
from train_test import tiny_config  # noqa: E402


def largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
  return max(files, key=lambda p: p.stat().st_size)


def flip_two_bytes(step_dir: pathlib.Path) -> None:
  path = largest_array_file(step_dir)
  data = bytearray(path.read_bytes())
  at = min(6_000_000, len(data) // 2)
  data[at] ^= 0xFF
  data[at + 1] ^= 0xFF
  path.write_bytes(bytes(data))


def truncate_array_file(step_dir: pathlib.Path) -> None:
  path = largest_array_file(step_dir)
  os.truncate(path, path.stat().st_size // 2)


def delete_manifest(step_dir: pathlib.Path) -> None:
  (step_dir / "state" / "manifest.ocdbt").unlink()


def truncate_iterator_state(step_dir: pathlib.Path) -> None:
  path = step_dir / "data" / "process_0-of-1.json"
  os.truncate(path, path.stat().st_size // 2)


DAMAGES = [flip_two_bytes, truncate_array_file, delete_manifest, truncate_iterator_state]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, synthetic_tiny_dir) -> pathlib.Path:
  """A tiny run with sealed checkpoints at steps 4 and 8."""
  workdir = tmp_path_factory.mktemp("pristine") / "run"
  train.train_and_evaluate(tiny_config(synthetic_tiny_dir), str(workdir))
  return workdir


@pytest.fixture
def run_copy(pristine, tmp_path) -> pathlib.Path:
  copy = tmp_path / "run"
  shutil.copytree(pristine, copy)
  return copy


def test_every_finalized_step_is_sealed_and_verifies(pristine):
  for step in (4, 8):
    step_dir = pristine / "checkpoints" / str(step)
    assert checkpoint_checksums.is_sealed(str(step_dir))
    assert isinstance(checkpoint_checksums.verify(str(step_dir)), float)  # None: no checksums to check
    listed = json.loads((step_dir / checkpoint_checksums.CHECKSUM_FILE).read_text())["files"]
    assert "data/process_0-of-1.json" in listed and any(name.startswith("state/") for name in listed)
    # Every file of the step, with its size and SHA-256.
    on_disk = {str(p.relative_to(step_dir)) for p in step_dir.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {checkpoint_checksums.CHECKSUM_FILE}
    for name, entry in listed.items():
      data = (step_dir / name).read_bytes()
      assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_predict_refuses_a_damaged_step_in_one_line(run_copy, tmp_path, capsys, damage):
  damage(run_copy / "checkpoints" / "8")
  cv2.imwrite(str(tmp_path / "face.png"), synthetic_face())
  out = tmp_path / "rows.csv"
  code = predict.main(["--workdir", str(run_copy), "--no-detect", str(tmp_path / "face.png"), "-o", str(out)])
  lines = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(lines) == 1, lines
  assert lines[0].startswith(f"predict: error: checkpoint {run_copy / 'checkpoints' / '8'} is damaged: "), lines
  assert not out.exists()
  # The intact step still serves.
  code = predict.main(["--workdir", str(run_copy), "--step", "4", "--no-detect", str(tmp_path / "face.png")])
  assert code == 0


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_eval_job_records_a_damaged_step_and_goes_on(run_copy, synthetic_tiny_dir, damage):
  damage(run_copy / "checkpoints" / "8")
  assert eval_job.run(tiny_config(synthetic_tiny_dir), str(run_copy)) == [4]
  record = json.loads((run_copy / "eval" / "validation" / "evaluated.json").read_text())
  assert record["evaluated_steps"] == [4] and list(record["unreadable_steps"]) == ["8"]
  assert not (run_copy / "eval" / "validation" / "step_8").exists()


def test_eval_job_stops_on_a_scoring_failure_without_calling_the_step_damaged(run_copy, synthetic_tiny_dir,
                                                                               monkeypatch):
  def out_of_memory(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while scoring")
  monkeypatch.setattr(evaluation.Evaluator, "confusion", out_of_memory)
  with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
    eval_job.run(tiny_config(synthetic_tiny_dir), str(run_copy))
  record = run_copy / "eval" / "validation" / "evaluated.json"
  assert not record.exists() or not json.loads(record.read_text())["unreadable_steps"]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_resume_uses_the_newest_intact_step_and_says_so(run_copy, synthetic_tiny_dir, caplog, damage):
  damage(run_copy / "checkpoints" / "8")
  config = tiny_config(synthetic_tiny_dir)
  config.num_train_steps = 12
  trainer = train.Trainer(config, str(run_copy))
  with caplog.at_level(logging.WARNING, logger="absl"):
    trainer.train()
  assert trainer.restored_step == 4
  assert "Checkpoint step 8 in" in caplog.text and "is damaged" in caplog.text
  assert "Resumed from step 4, the newest intact checkpoint" in caplog.text
  assert [p.name.split(".")[0] for p in (run_copy / "damaged_checkpoints").iterdir()] == ["8"]
  steps = sorted(int(p) for p in os.listdir(run_copy / "checkpoints") if p.isdigit())
  assert steps == [4, 8, 12]  # step 8 trained again from step 4's state and data position
  for step in steps:
    assert checkpoint_checksums.verify(str(run_copy / "checkpoints" / str(step))) is not None


def test_eval_and_resume_through_the_command_line_name_the_damaged_step(tmp_path, synthetic_tiny_dir):
  workdir = tmp_path / "run"

  def cli(steps: int, *extra: str):
    return run_cli("--config", "configs/default.py", "--workdir", str(workdir), "--config.data.config=tiny",
                   f"--config.data.data_dir={synthetic_tiny_dir}", f"--config.num_train_steps={steps}",
                   "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4", "--config.keep_checkpoints=5",
                   *extra)

  assert cli(8).returncode == 0
  flip_two_bytes(workdir / "checkpoints" / "8")
  out = cli(8, "--mode=eval", "--config.eval.idle_timeout_s=0")
  assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "Checkpoint step 8 is damaged" in out.stderr and "Evaluated checkpoint steps [4]" in out.stdout
  record = json.loads((workdir / "eval" / "validation" / "evaluated.json").read_text())
  assert record["evaluated_steps"] == [4] and "does not match its SHA-256" in record["unreadable_steps"]["8"]
  out = cli(12)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Checkpoint step 8 in" in out.stderr and "does not match its SHA-256" in out.stderr
  assert "Resumed from step 4, the newest intact checkpoint" in out.stderr


def test_nonfinite_first_step_after_restore_blames_the_checkpoint(run_copy, synthetic_tiny_dir, monkeypatch):
  real = checkpointing.restore_newest_intact

  def restore_poisoned(*args, **kwargs):
    state, step = real(*args, **kwargs)
    return state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params)), step

  monkeypatch.setattr(checkpointing, "restore_newest_intact", restore_poisoned)
  config = tiny_config(synthetic_tiny_dir)
  config.num_train_steps = 12
  with pytest.raises(train.NonFiniteError, match=r"Step 9, the first after restoring checkpoint step 8: .* so that "
                     r"checkpoint may be damaged"):
    train.Trainer(config, str(run_copy)).train()


def test_disk_full_mid_run_is_one_message_and_a_cut_save_frees_its_space(tmp_path, synthetic_tiny_dir, monkeypatch):
  config = tiny_config(synthetic_tiny_dir)
  workdir = tmp_path / "run"
  real_save, calls = checkpointing.save, {"n": 0}

  def save(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(*args, **kwargs)

  monkeypatch.setattr(checkpointing, "save", save)
  trainer = train.Trainer(config, str(workdir))
  with pytest.raises(checkpointing.WorkdirError) as raised:
    trainer.train()
  message = str(raised.value)
  assert "\n" not in message and message.startswith(f"The disk holding {workdir} filled up while training")
  assert "run the same command again to resume" in message
  # A temporary step left by the cut save is deleted when the manager opens: its bytes count as free.
  tmp_step = workdir / "checkpoints" / "8.orbax-checkpoint-tmp-1"
  tmp_step.mkdir(parents=True)
  size = checkpointing.state_bytes(trainer.abstract_state) * 8  # > the 7 checkpoints + 10% needed
  (tmp_step / "blob").write_bytes(b"\0" * size)
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: usage(2**34, 2**34 - 2**16, 2**16))
  checkpointing.check_workdir(str(workdir), checkpointing.state_bytes(trainer.abstract_state), 6)


def test_a_real_full_disk_mid_run_is_one_error_line(tmp_path, synthetic_tiny_dir):
  """A small tmpfs filled up right after the first checkpoint: the trainer stops with one line, no traceback."""
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True).returncode:
    pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
  try:
    workdir = mount / "run"
    done = threading.Event()

    def fill_after_first_checkpoint():
      while not (workdir / "checkpoints" / "4").is_dir():
        if done.wait(0.01):
          return
      with open(mount / "filler", "wb", buffering=0) as f:  # unbuffered: closing has nothing left to fail on
        try:
          while True:
            f.write(b"\0" * 65536)
        except OSError:
          pass

    filler = threading.Thread(target=fill_after_first_checkpoint, daemon=True)
    filler.start()
    out = run_cli("--config", "configs/default.py", "--workdir", str(workdir), "--config.data.config=tiny",
                  f"--config.data.data_dir={synthetic_tiny_dir}", "--config.num_train_steps=60",
                  "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4", "--config.keep_checkpoints=1")
    done.set()
    filler.join()
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: The disk holding {workdir} filled up while "
                                                          "training"), out.stderr[-3000:]
  finally:
    subprocess.run(["umount", str(mount)], check=False)


_LATE_CALLBACK = """
import asyncio, sys
import tensorstore as ts
from fer_jax import main
if sys.argv[1] == "hooked":
  sys.unraisablehook = main._late_tensorstore_callback_hook
promise, future = ts.Promise.new()
loop = asyncio.new_event_loop()
async def wait():
  await future
loop.create_task(wait())
loop.run_until_complete(asyncio.sleep(0.01))  # the task now awaits the tensorstore future, like an orbax save
loop.close()  # orbax closes its loop after a failed save ...
promise.set_result(1)  # ... and a write of that save ends afterwards
class Noisy:
  def __del__(self):
    raise ValueError("another unraisable error")
Noisy()
"""


def test_a_write_ending_after_a_failed_save_prints_no_traceback():
  """The traceback test_a_real_full_disk_mid_run_is_one_error_line met now and then, made on purpose."""
  run = lambda mode: subprocess.run([sys.executable, "-c", _LATE_CALLBACK, mode], capture_output=True, text=True,
                                    check=True, cwd=os.path.join(os.path.dirname(__file__), ".."))
  assert "RuntimeError: Event loop is closed" in run("plain").stderr  # what tensorstore prints unhooked
  hooked = run("hooked").stderr
  assert "Event loop is closed" not in hooked and "ValueError: another unraisable error" in hooked


_KILLED_BETWEEN_SAVES = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from train_test import tiny_config
from fer_jax import parallel, train

config = tiny_config({data_dir!r})
config.update(num_train_steps=400, checkpoint_every_steps=20, eval_every_steps=20, log_every_steps=10)
real_batch, batches = parallel.global_batch, []
step_20 = os.path.join({workdir!r}, "checkpoints", "20")

def global_batch(local_batch, mesh):
  if local_batch["image"].shape[0] == config.batch_size:
    batches.append(1)
    if len(batches) == 30:  # step 30: wait until orbax has renamed step 20 into place ...
      deadline = time.monotonic() + 60
      while not os.path.isdir(step_20) and time.monotonic() < deadline:
        time.sleep(0.01)
    if len(batches) == 32:  # ... then two steps later, a kill -9
      os.kill(os.getpid(), signal.SIGKILL)
  return real_batch(local_batch, mesh)

parallel.global_batch = global_batch
train.train_and_evaluate(config, {workdir!r})
"""


def test_a_run_killed_between_saves_leaves_its_newest_step_sealed(tmp_path, synthetic_tiny_dir):
  """Orbax's post-finalization callback runs before the step is renamed into place: the trainer seals it."""
  workdir = tmp_path / "run"
  script = _KILLED_BETWEEN_SAVES.format(tests=str(pathlib.Path(__file__).resolve().parent),
                                        data_dir=synthetic_tiny_dir, workdir=str(workdir))
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                       cwd=os.path.join(os.path.dirname(__file__), ".."), env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == -9, out.stderr[-3000:]
  assert sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == [20]
  assert checkpoint_checksums.is_sealed(str(workdir / "checkpoints" / "20"))
  assert checkpoint_checksums.verify(str(workdir / "checkpoints" / "20")) is not None


def test_sealing_the_newest_step_leaves_a_step_being_deleted_alone(tmp_path):
  """Right after renaming a new step into place, orbax's thread deletes the steps its retention policy drops.

  A step half deleted (its checksums.json already gone) must not be sealed from the trainer's thread: writing
  into it made orbax's rmtree fail ("Directory not empty") and stopped a 37-minute run at epoch 64.
  """
  old, new = tmp_path / "checkpoints" / "896", tmp_path / "checkpoints" / "1792"
  for step in (old, new):
    (step / "state").mkdir(parents=True)
    (step / "state" / "array").write_bytes(b"weights")
  assert checkpointing.seal_if_finalized(str(tmp_path), 2688) == 2688  # not renamed into place yet
  assert checkpointing.seal_if_finalized(str(tmp_path), 1792) is None
  assert checkpoint_checksums.verify(str(new)) is not None
  assert sorted(p.name for p in old.iterdir()) == ["state"]


def test_resume_with_every_step_damaged_stops_with_one_line(run_copy, tmp_path, synthetic_tiny_dir):
  from preemption_test import write_config  # pylint: disable=g-import-not-at-top

  flip_two_bytes(run_copy / "checkpoints" / "8")
  truncate_array_file(run_copy / "checkpoints" / "4")
  config_file, _ = write_config(tmp_path, synthetic_tiny_dir, num_train_steps=12)
  out = run_cli("--config", config_file, "--workdir", str(run_copy))
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert errors == [out.stderr.strip().splitlines()[-1]], out.stderr[-3000:]
  assert errors[0].startswith(f"error: Every checkpoint in {run_copy / 'checkpoints'} is damaged (step 8: ")
  assert "; step 4: " in errors[0] and "Rerun to start afresh" in errors[0]
  assert sorted(p.name.split(".")[0] for p in (run_copy / "damaged_checkpoints").iterdir()) == ["4", "8"]
  assert not [p for p in os.listdir(run_copy / "checkpoints") if p.isdigit()]  # nothing trained from scratch
