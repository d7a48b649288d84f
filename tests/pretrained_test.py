"""The models bundled with fer_jax: writing a bundle, predicting with it, and the shipped model's accuracy."""

from __future__ import annotations

import os

import cv2
import numpy as np

from fer_jax.serving import pretrained
from prediction_fixtures import read_csv, run, synthetic_face

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# The bar the shipped model must hold on FER2013 PublicTest (issue 14; docs/MODEL_CARD.md).
SHIPPED_PUBLIC_TEST_BAR = 0.68


def test_a_bundle_predicts_what_its_checkpoint_predicts(loaded, tmp_path, capsys):
  weights = tmp_path / "weights"
  pretrained.write(loaded, str(weights / "tiny"), extra={"validation_accuracy": "0.5"})
  assert pretrained.available(str(weights)) == ["tiny"]
  bundled = pretrained.load("tiny", weights_dir=str(weights))
  assert bundled.step == loaded.step and bundled.card["bundle"]["validation_accuracy"] == "0.5"
  faces = np.stack([synthetic_face(label)[:, :, None] for label in range(7)])
  np.testing.assert_array_equal(bundled.classifier()(faces), loaded.classifier()(faces))


def test_a_bundle_can_be_served_in_another_dtype_than_it_trained_in(loaded, tmp_path):
  """A bfloat16-trained run bundled with --dtype float32 serves in float32 and remembers how it trained."""
  loaded.card["config"]["dtype"] = "bfloat16"
  try:
    pretrained.write(loaded, str(tmp_path / "w" / "b"), dtype="float32")
  finally:
    loaded.card["config"]["dtype"] = "float32"
  bundled = pretrained.load("b", weights_dir=str(tmp_path / "w"))
  assert bundled.card["config"]["dtype"] == "float32" and bundled.card["bundle"]["trained_dtype"] == "bfloat16"
  assert bundled.model.dtype == np.float32


def test_predict_names_a_missing_bundle(tmp_path, capsys):
  cv2.imwrite(str(tmp_path / "face.png"), synthetic_face())
  code, err = run(["--pretrained", "no_such_model", str(tmp_path / "face.png"), "--no-detect"], capsys)
  assert code == 2 and "no bundled model 'no_such_model'" in err and pretrained.DEFAULT in err
  code, err = run(["--step", "3", str(tmp_path / "face.png"), "--no-detect"], capsys)
  assert code == 2 and "--step and --model_card apply to --workdir and --checkpoint only" in err


def test_the_shipped_model_predicts_with_no_model_flags(tmp_path, capsys):
  """A fresh install: `python -m fer_jax.predict face.png` needs no workdir, checkpoint or download."""
  assert pretrained.DEFAULT in pretrained.available()
  cv2.imwrite(str(tmp_path / "face.png"), synthetic_face())
  out = tmp_path / "rows.csv"
  code, err = run([str(tmp_path / "face.png"), "--no-detect", "-o", str(out)], capsys)
  assert code == 0, err
  (row,) = read_csv(out)
  assert row["label"] in EMOTIONS and abs(sum(float(row[k]) for k in EMOTIONS) - 1) < 1e-4
  card = pretrained.load().card
  assert tuple(card["class_names"]) == EMOTIONS and card["dataset"] == "fer2013"


def test_shipped_model_scores_the_bar_on_fer2013_public_test(real_data, tmp_path, capsys):
  """The shipped model through predict's own path (--no-detect) on every PublicTest face of ../shared/data."""
  test_dir = real_data / "fer2013" / "test"
  out = tmp_path / "rows.csv"
  code, err = run([str(test_dir), "--no-detect", "--batch_size", "256", "-o", str(out)], capsys)
  assert code == 0, err
  rows = read_csv(out)
  truth = [os.path.basename(os.path.dirname(r["file"])) for r in rows]
  assert len(rows) == 3589 and set(truth) == set(EMOTIONS) and not any(r["error"] for r in rows)
  accuracy = float(np.mean([r["label"] == t for r, t in zip(rows, truth)]))
  assert accuracy >= SHIPPED_PUBLIC_TEST_BAR, f"shipped model: {accuracy:.4f} on PublicTest"
