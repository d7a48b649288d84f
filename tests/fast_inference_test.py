"""Prediction's fast path: oneDNN's convolutions give XLA's probabilities, and `auto` picks them where they load."""

from __future__ import annotations

import flax.linen as nn
import numpy as np
import pytest

from fer_jax.kernels import onednn_conv
from fer_jax.serving import inference, pretrained
import jaxpr_checks  # tests/, on pytest's path

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
needs_onednn = pytest.mark.skipif(not onednn_conv.available(), reason="oneDNN's library or a C compiler is missing")


@pytest.fixture(scope="module")
def bundled() -> inference.LoadedModel:
  return pretrained.load()


@needs_onednn
@pytest.mark.parametrize("tta", ["none", "flip"])
def test_onednn_path_equals_the_xla_path_on_the_bundled_model(bundled, tta):
  assert inference.inference_kernels("auto").conv is not nn.Conv  # auto takes oneDNN's where it loads
  faces = np.random.default_rng(7).integers(0, 256, (37, 48, 48, 1), dtype=np.uint8)  # 32 + 4 + 1: three buckets
  fast_classifier = bundled.classifier(batch_size=32, tta=tta)
  program = fast_classifier._fn  # pylint: disable=protected-access  (the jitted probabilities function)
  assert jaxpr_checks.onednn_calls(program, fast_classifier.variables, faces[:2]) >= 8  # the VGG's 8 convs
  fast = fast_classifier(faces)
  xla = bundled.classifier(batch_size=32, tta=tta, kernels="xla")(faces)
  np.testing.assert_allclose(fast, xla, rtol=1e-5, atol=1e-6)  # float32 rounding: measured max |diff| 1.2e-7
  assert (fast.argmax(1) == xla.argmax(1)).all()


def test_auto_keeps_xla_where_onednn_does_not_apply(monkeypatch):
  assert inference.inference_kernels("auto", "bfloat16") is inference.model_kernels.DEFAULTS  # float32 kernels only
  assert inference.inference_kernels("xla") is inference.model_kernels.DEFAULTS

  def missing():
    raise onednn_conv.OneDnnUnavailable("no libdnnl.so.3 (pip install onednn-cpu-gomp)")

  monkeypatch.setattr(onednn_conv, "prepare", missing)
  assert inference.inference_kernels("auto") is inference.model_kernels.DEFAULTS
  with pytest.raises(inference.ModelLoadError, match="kernels='onednn': no libdnnl"):
    inference.inference_kernels("onednn")
  with pytest.raises(ValueError, match="is not one of auto, onednn, xla"):
    inference.inference_kernels("fast")


@needs_onednn
def test_predict_kernels_option_gives_the_same_rows(tmp_path):
  import csv

  import cv2

  from fer_jax.serving import predict
  crops = tmp_path / "crops"
  crops.mkdir()
  for i in range(3):
    cv2.imwrite(str(crops / f"{i}.png"), np.random.default_rng(i).integers(0, 256, (48, 48), dtype=np.uint8))
  rows = {}
  for kernels in ("xla", "auto"):
    out = tmp_path / f"{kernels}.csv"
    assert predict.main(["--no-detect", str(crops), "--kernels", kernels, "-o", str(out)]) == 0
    rows[kernels] = list(csv.DictReader(open(out, newline="")))
  assert [r["label"] for r in rows["auto"]] == [r["label"] for r in rows["xla"]] and len(rows["xla"]) == 3
  for a, x in zip(rows["auto"], rows["xla"]):
    np.testing.assert_allclose([float(a[c]) for c in CLASSES], [float(x[c]) for c in CLASSES],
                               atol=2e-6)  # 6 decimals in the CSV, 1e-7 apart before rounding


def test_exported_artifacts_refuse_the_kernels_option(tmp_path, capsys):
  from fer_jax.serving import predict
  assert predict.main(["--exported", str(tmp_path / "m.onnx"), "--kernels", "xla", str(tmp_path)]) == 2
  assert "--kernels do not apply to --exported artifacts" in capsys.readouterr().err
