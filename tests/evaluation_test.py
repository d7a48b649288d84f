"""Metrics from a confusion matrix, TTA views, and the report files."""

import json

import jax.numpy as jnp
import numpy as np

from fer_jax import evaluation


def test_classification_metrics_by_hand():
  # rows = true, cols = predicted; class 2 never occurs.
  confusion = np.array([[3, 1, 0], [2, 2, 0], [0, 0, 0]])
  m = evaluation.classification_metrics(confusion, ["a", "b", "c"])
  assert m["accuracy"] == 5 / 8
  assert m["per_class"]["a"] == {"precision": 3 / 5, "recall": 3 / 4, "f1": 2 * 0.6 * 0.75 / 1.35, "support": 4}
  assert m["per_class"]["b"]["precision"] == 2 / 3 and m["per_class"]["b"]["recall"] == 0.5
  f1_b = 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)
  assert np.isclose(m["macro_f1"], (2 * 0.6 * 0.75 / 1.35 + f1_b) / 2)  # absent class c left out
  assert m["num_examples"] == 8 and m["confusion_matrix"] == confusion.tolist()


def test_views():
  images = jnp.arange(2 * 6 * 6).reshape(2, 6, 6, 1).astype(jnp.float32)
  assert evaluation.plain_view(images, 0)[0].shape == (2, 6, 6, 1)
  center = evaluation.plain_view(images, 4)[0]
  np.testing.assert_array_equal(center, images[:, 1:5, 1:5])
  plain, flipped = evaluation.flip_view(images, 0)
  np.testing.assert_array_equal(flipped, images[:, :, ::-1])
  crops = evaluation.ten_crop_view(images, 4)
  assert len(crops) == 10 and all(c.shape == (2, 4, 4, 1) for c in crops)
  np.testing.assert_array_equal(crops[3], images[:, 2:, 2:])
  np.testing.assert_array_equal(crops[8], crops[3][:, :, ::-1])


def test_report_files(tmp_path):
  confusion = np.eye(7, dtype=int) * 3
  names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
  image = evaluation.confusion_matrix_image(confusion, names, "test")
  assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
  evaluation.write_report(str(tmp_path), evaluation.classification_metrics(confusion, names), {"confusion_matrix": image})
  assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == 1.0
  assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_grid_shows_right_and_wrong_faces_per_class():
  labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
  predictions = np.array([0, 0, 0, 1, 2, 1, 0, 1])
  rows = evaluation.choose_samples(labels, predictions, 3, per_class=4)
  assert rows == [[0, 1, 3, 4], [5, 6], [7]]  # half right, half wrong; short rows keep what there is
  assert evaluation.choose_samples(labels, np.zeros(8, int), 3, per_class=4)[0] == [0, 1, 2, 3]  # all right: top up
  images = np.random.default_rng(0).random((8, 12, 12, 1)).astype(np.float32)
  grid = evaluation.sample_grid_image(images, labels, predictions, ["a", "b", "c"], "t", per_class=4)
  assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3 and grid.shape[0] > 100
