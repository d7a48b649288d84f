"""Metrics from a confusion matrix, TTA views, and the report files."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import evaluation, parallel


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


def _predicts_pixel_value(variables, x, train):
  """A stand-in model whose prediction for an image is the class its top-left pixel holds."""
  del variables, train
  return 10.0 * jax.nn.one_hot(x[:, 0, 0, 0].astype(jnp.int32), 7)


def test_eval_step_confusion_rows_are_true_labels_and_columns_predictions():
  """The matrix eval_step sums, through the Evaluator's jitted step, and the precision/recall read from it."""
  labels = np.array([0, 0, 0, 1, 2, 2, 6, 6])
  predicted = np.array([0, 1, 1, 1, 0, 2, 6, 3])
  images = np.broadcast_to(predicted[:, None, None, None], (8, 4, 4, 1)).astype(np.float32)
  mask = np.array([1, 1, 1, 1, 1, 1, 1, 0])  # the last example is padding: not counted
  evaluator = evaluation.Evaluator(_predicts_pixel_value, parallel.create_mesh(), num_classes=7, crop_size=0)
  confusion, _ = evaluator.confusion({}, [{"image": images, "label": labels, "mask": mask}])
  expected = np.zeros((7, 7))
  for t, p, m in zip(labels, predicted, mask):
    expected[t, p] += m
  np.testing.assert_array_equal(confusion, expected)
  assert confusion[0, 1] == 2 and confusion[1, 0] == 0  # two true 0s predicted 1: row 0, column 1
  names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
  per_class = evaluation.classification_metrics(confusion, names)["per_class"]
  assert per_class["angry"]["recall"] == 1 / 3 and per_class["angry"]["precision"] == 1 / 2
  assert per_class["disgust"]["recall"] == 1.0 and per_class["disgust"]["precision"] == 1 / 3


def test_eval_step_scores_the_mean_of_every_views_softmax():
  """Ten crops through the Evaluator's jitted step: its loss and predictions are those of the softmax averaged
  over the ten views, by hand (not one view's, not the averaged logits')."""
  rng = np.random.default_rng(0)
  images = rng.standard_normal((6, 8, 8, 1)).astype(np.float32)
  weights = 3.0 * rng.standard_normal((36, 7)).astype(np.float32)
  linear = lambda variables, x, train: x.reshape(x.shape[0], -1) @ variables["w"]
  labels, mask = rng.integers(0, 7, 6), np.ones(6, np.int32)
  evaluator = evaluation.Evaluator(linear, parallel.create_mesh(), num_classes=7, crop_size=6)
  confusion, loss = evaluator.confusion({"w": weights}, [{"image": images, "label": labels, "mask": mask}],
                                        view="ten_crop")
  exps = [np.exp(z - z.max(1, keepdims=True)) for z in (np.asarray(v).reshape(6, -1) @ weights
                                                         for v in evaluation.ten_crop_view(jnp.asarray(images), 6))]
  probs = np.mean([e / e.sum(1, keepdims=True) for e in exps], axis=0)
  np.testing.assert_allclose(loss, -np.mean(np.log(probs[np.arange(6), labels])), rtol=1e-5)
  expected = np.zeros((7, 7))
  np.add.at(expected, (labels, probs.argmax(1)), 1)
  np.testing.assert_array_equal(confusion, expected)


def test_views():
  images = jnp.arange(2 * 6 * 6).reshape(2, 6, 6, 1).astype(jnp.float32)
  assert evaluation.plain_view(images, 0)[0].shape == (2, 6, 6, 1)
  center = evaluation.plain_view(images, 4)[0]
  np.testing.assert_array_equal(center, images[:, 1:5, 1:5])
  plain, flipped = evaluation.flip_view(images, 0)
  np.testing.assert_array_equal(flipped, images[:, :, ::-1])
  crops = evaluation.ten_crop_view(images, 4)
  assert len(crops) == 10 and all(c.shape == (2, 4, 4, 1) for c in crops)
  # Top-left, top-right, bottom-left, bottom-right, centre; then each mirrored.
  expected = [images[:, :4, :4], images[:, :4, 2:], images[:, 2:, :4], images[:, 2:, 2:], images[:, 1:5, 1:5]]
  for i, crop in enumerate(expected):
    np.testing.assert_array_equal(crops[i], crop, err_msg=f"crop {i}")
    np.testing.assert_array_equal(crops[5 + i], crop[:, :, ::-1], err_msg=f"mirrored crop {i}")


def test_multi_scale_is_ten_crops_of_the_face_shrunk_as_is_and_enlarged():
  # A horizontal ramp, pixel value = column: bilinear resizing to side n keeps it a ramp of slope about 12 / n
  # away from the borders (exactly when enlarging; within 2% when shrinking, where the antialiasing kernel is
  # sampled off-centre), so each centre crop's mean slope says which size it was cut from.
  ramp = jnp.broadcast_to(jnp.arange(12, dtype=jnp.float32)[None, None, :, None], (2, 12, 12, 1))
  views = evaluation.multi_scale_view(ramp, 8)
  assert len(views) == 30 and all(v.shape == (2, 8, 8, 1) for v in views)
  for i, crop in enumerate(evaluation.ten_crop_view(ramp, 8)):  # the middle ten: the face as it is
    np.testing.assert_array_equal(views[10 + i], crop, err_msg=f"view {10 + i}")
  for first, side in ((0, 10), (10, 12), (20, 14)):  # shrunk by the crop margin's half, as is, enlarged
    centre, mirrored = views[first + 4], views[first + 9]
    row = np.asarray(centre)[0, 3, :, 0]
    np.testing.assert_allclose((row[-1] - row[0]) / 7, 12 / side, rtol=0.02,
                               err_msg=f"centre crop of views {first}-{first + 9}")
    np.testing.assert_array_equal(mirrored, centre[:, :, ::-1])


def test_resize_is_jax_image_resize():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(3, 12, 10, 2)).astype(np.float32))
  for height, width in ((10, 8), (14, 12), (9, 13)):  # shrink (antialiased), enlarge, both
    np.testing.assert_allclose(evaluation.resize(images, height, width),
                               jax.image.resize(images, (3, height, width, 2), "bilinear"), atol=2e-5,
                               err_msg=f"{height}x{width}")


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
  # Frames and titles: 3 faces right in matplotlib's green (0, 128, 0), 4 wrong in red (255, 0, 0).
  green = np.all(grid == (0, 128, 0), axis=-1).sum()
  red = np.all(grid == (255, 0, 0), axis=-1).sum()
  assert 0 < green < red < 2 * green, (green, red)
