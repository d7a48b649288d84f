"""ONNX export: onnxruntime gives the checkpoint's outputs, and predict runs from the .onnx file without jax."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from fer_jax.serving import export, onnx_model, predict

pytest.importorskip("jax2onnx", reason="ONNX export needs the 'onnx' extra (pip install -e '.[onnx]')")
pytest.importorskip("onnxruntime", reason="ONNX prediction needs onnxruntime")


@pytest.fixture(scope="module")
def onnx_file(workdir, tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("onnx") / "model.onnx")
  assert export.main(["--workdir", workdir, "--format", "onnx", "--output", path]) == 0
  return path


def test_onnxruntime_matches_the_checkpoint(loaded, onnx_file):
  model = onnx_model.load(onnx_file)
  assert tuple(model.metadata["class_names"]) == loaded.prep.class_names
  assert model.metadata["source"]["step"] == loaded.step
  reference = loaded.classifier(batch_size=16)
  for n in (1, 5, 16):  # one graph, any batch size
    faces = np.random.default_rng(n).integers(0, 256, (n, 48, 48, 1), dtype=np.uint8)
    np.testing.assert_allclose(model(faces), reference(faces), rtol=1e-5, atol=1e-6)


def test_multi_scale_converts_to_onnx(tmp_path):
  from export_test import crop_model, faces  # pylint: disable=g-import-not-at-top

  loaded = crop_model()
  model = onnx_model.load(onnx_model.export(loaded, str(tmp_path / "ms.onnx"), tta="multi_scale"))
  np.testing.assert_allclose(model(faces(5)), loaded.classifier(tta="multi_scale")(faces(5)), rtol=1e-5, atol=1e-6)


def test_not_an_onnx_file_is_one_error_line(tmp_path, folder, capsys):
  (tmp_path / "bad.onnx").write_bytes(b"not a model")
  assert predict.main(["--exported", str(tmp_path / "bad.onnx"), str(folder / "face.png")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "is not a readable ONNX model" in err[0]


# jax, flax and the model code are made unimportable: predict must not need them for an .onnx file.
NO_JAX = """
import sys
for name in ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow_datasets", "grain"):
  sys.modules[name] = None
from fer_jax.serving import predict
code = predict.main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.startswith(("fer_jax.serving.inference", "fer_jax.models", "fer_jax.train")))
assert not heavy, heavy
sys.exit(code)
"""


def test_predict_from_onnx_needs_no_jax(onnx_file, workdir, folder, tmp_path):
  onnx_rows, jax_rows = tmp_path / "onnx.csv", tmp_path / "jax.csv"
  out = subprocess.run([sys.executable, "-c", NO_JAX, "--exported", onnx_file, "--no-detect", str(folder),
                        "-o", str(onnx_rows)], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert predict.main(["--workdir", workdir, "--no-detect", str(folder), "-o", str(jax_rows)]) == 0
  got, want = (list(csv.DictReader(open(p, newline=""))) for p in (onnx_rows, jax_rows))
  assert [(r["file"], r["label"], r["error"]) for r in got] == [(r["file"], r["label"], r["error"]) for r in want]
  names = [k for k in want[0] if k not in ("file", "frame", "face", "x", "y", "w", "h", "label", "error")]
  for g, w in zip(got, want):
    if not w["error"]:
      np.testing.assert_allclose([float(g[k]) for k in names], [float(w[k]) for k in names], atol=2e-6)


def export_cli(*args: str) -> subprocess.CompletedProcess:
  """`python -m fer_jax.export ARGS` in a fresh process: what a user sees, stdout and stderr together."""
  return subprocess.run([sys.executable, "-m", "fer_jax.export", *args], capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory) -> tuple[str, subprocess.CompletedProcess]:
  path = str(tmp_path_factory.mktemp("bundled") / "fer2013_cpu.onnx")
  return path, export_cli("--pretrained", "--format", "onnx", "--output", path)


def test_onnx_export_of_the_bundled_model_prints_one_line(bundled_onnx):
  path, out = bundled_onnx
  assert out.returncode == 0, out.stderr[-3000:]
  lines = (out.stdout + out.stderr).strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in out.stderr, (out.stdout + out.stderr)[-3000:]
  assert lines[0].startswith(f"export: wrote {path} (bundled fer2013_cpu, step ")


def test_onnxruntime_matches_the_bundled_model(bundled_onnx):
  from fer_jax.serving import pretrained
  path, out = bundled_onnx
  assert out.returncode == 0, out.stderr[-3000:]
  faces = np.random.default_rng(3).integers(0, 256, (20, 48, 48, 1), dtype=np.uint8)
  want = pretrained.load().classifier(kernels="xla")(faces)
  np.testing.assert_allclose(onnx_model.load(path)(faces), want, rtol=1e-5, atol=1e-6)


def test_a_failing_onnx_conversion_still_shows_its_error(workdir, tmp_path, capfd, monkeypatch):
  import jax2onnx

  def broken(*args, **kwargs):
    print("DEBUG: what jax2onnx printed before it failed")
    raise RuntimeError("unsupported primitive: foo")

  monkeypatch.setattr(jax2onnx, "to_onnx", broken)
  output = tmp_path / "x.onnx"
  assert export.main(["--workdir", workdir, "--format", "onnx", "--output", str(output)]) == 2
  err = capfd.readouterr().err.strip().splitlines()
  assert err[-1] == "export: error: jax2onnx could not convert the model: RuntimeError: unsupported primitive: foo"
  assert "DEBUG: what jax2onnx printed before it failed" in err
  assert not output.exists()
