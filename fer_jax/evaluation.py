"""Scoring a model on a split: test-time-augmentation views, confusion matrix, per-class metrics.

A view (chosen by `eval.tta`) maps a batch of full-size images to the model inputs whose softmax outputs are
averaged. The confusion matrix is summed inside the jitted step: every host holds the global one.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import parallel

View = Callable[[jnp.ndarray, int], list[jnp.ndarray]]


class Interrupted(Exception):
  """Evaluator.confusion stopped early because its `stop` callable said so (a preemption notice)."""


def _center_crop(images: jnp.ndarray, size: int) -> jnp.ndarray:
  if not size:
    return images
  h, w = images.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  return images[:, top:top + size, left:left + size]


def plain_view(images: jnp.ndarray, crop_size: int) -> list[jnp.ndarray]:
  """The model input as in training, centre-cropped when training used random crops."""
  return [_center_crop(images, crop_size)]


def flip_view(images: jnp.ndarray, crop_size: int) -> list[jnp.ndarray]:
  """Plain and horizontally mirrored."""
  x = _center_crop(images, crop_size)
  return [x, x[:, :, ::-1]]


def ten_crop_view(images: jnp.ndarray, crop_size: int) -> list[jnp.ndarray]:
  """Four corner crops and the centre crop, each also mirrored."""
  h, w = images.shape[1:3]
  s = crop_size
  crops = [images[:, :s, :s], images[:, :s, w - s:], images[:, h - s:, :s], images[:, h - s:, w - s:],
           _center_crop(images, s)]
  return crops + [c[:, :, ::-1] for c in crops]


def multi_scale_view(images: jnp.ndarray, crop_size: int) -> list[jnp.ndarray]:
  """Ten crops of the image at three sizes: shrunk by half its crop margin, as it is, enlarged by as much.

  48x48 faces and 40x40 crops: ten crops of the face resized to 44, 48 and 52 (scales 0.92-1.08, inside the
  training zoom). The smaller size shows the network more of the face, the larger one its centre bigger;
  on the CPU recipe's runs the 30 views score 1.1-1.3 points above ten crops (docs/BENCHMARKS.md).
  """
  h, w = images.shape[1:3]
  d = (min(h, w) - crop_size) // 2
  views = []
  for delta in (-d, 0, d):
    views += ten_crop_view(images if delta == 0 else resize(images, h + delta, w + delta), crop_size)
  return views


def resize(images: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
  """jax.image.resize(images, (N, height, width, C), "bilinear") as two small matrix products.

  The same antialiased linear map, written so that it traces with a symbolic batch size (jax.export) and
  converts to ONNX, neither of which jax.image.resize does.
  """
  h, w = images.shape[1:3]
  return jnp.einsum("ih,nhwc,jw->nijc", _bilinear_matrix(h, height), images.astype(jnp.float32),
                    _bilinear_matrix(w, width), precision=jax.lax.Precision.HIGHEST).astype(images.dtype)


def _bilinear_matrix(size: int, new_size: int) -> np.ndarray:
  """[new_size, size] weights of jax.image's triangle kernel, widened by the shrink factor (antialiasing)."""
  scale = new_size / size
  centres = (np.arange(new_size) + 0.5) / scale - 0.5  # output pixel centres in input coordinates
  distance = np.abs(centres[:, None] - np.arange(size)[None, :]) / max(1.0 / scale, 1.0)
  weights = np.maximum(0.0, 1.0 - distance)
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


VIEWS: dict[str, View] = {"plain": plain_view, "flip": flip_view, "ten_crop": ten_crop_view,
                          "multi_scale": multi_scale_view}
TTA_VIEWS = tuple(v for v in VIEWS if v != "plain")  # What config.eval.tta and predict --tta may add.
CROP_VIEWS = ("ten_crop", "multi_scale")  # Views that need a model trained on crops (crop_size > 0).


def eval_step(variables: Any, batch: dict[str, jnp.ndarray], *, apply_fn: Callable, view: str,
              crop_size: int, num_classes: int) -> dict[str, jnp.ndarray]:
  """Summed loss, count and confusion matrix (rows: true label, columns: prediction) of a batch.

  The views run one after another through one copy of the network (lax.map), not one copy per view: the CPU
  recipe's 30-view step compiles in 1.4 s instead of 4.0 and scores in 14.0 s instead of 18.1 (docs/BENCHMARKS.md).
  """
  inputs = VIEWS[view](batch["image"], crop_size)
  softmax = lambda x: jax.nn.softmax(apply_fn(variables, x, train=False))
  probs = softmax(inputs[0]) if len(inputs) == 1 else jnp.mean(jax.lax.map(softmax, jnp.stack(inputs)), axis=0)
  labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
  nll = -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0] + 1e-12)
  predictions = jnp.argmax(probs, axis=-1)
  confusion = jnp.zeros((num_classes, num_classes), jnp.float32).at[labels, predictions].add(mask)
  return {"loss_sum": jnp.sum(nll * mask), "count": jnp.sum(mask), "confusion": confusion}


class Evaluator:
  """Runs one view over an eval dataset with a jitted, data-parallel step."""

  def __init__(self, apply_fn: Callable, mesh: jax.sharding.Mesh, *, num_classes: int, crop_size: int):
    self.mesh = mesh
    self._steps = {
        view: jax.jit(functools.partial(eval_step, apply_fn=apply_fn, view=view, crop_size=crop_size,
                                        num_classes=num_classes),
                      out_shardings=parallel.replicated(mesh))
        for view in VIEWS}
    self._predict = jax.jit(lambda variables, images: jnp.argmax(
        apply_fn(variables, VIEWS["plain"](images, crop_size)[0], train=False), axis=-1))

  def sample_predictions(self, variables: Any, batches: Iterable[dict[str, np.ndarray]], limit: int = 1024
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, predictions) of the first `limit` unmasked examples, plain view, on this host's devices."""
    images, labels, predictions = [], [], []
    for batch in batches:
      keep = np.asarray(batch["mask"], bool)
      images.append(np.asarray(batch["image"])[keep])
      labels.append(np.asarray(batch["label"])[keep])
      predictions.append(np.asarray(self._predict(variables, batch["image"]))[keep])
      if sum(map(len, labels)) >= limit:
        break
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit], np.concatenate(predictions)[:limit]

  def compile_ahead(self, variables: Any, batch: dict[str, jax.ShapeDtypeStruct], view: str = "plain") -> None:
    """Compiles `view`'s step for these shapes and shardings now; later calls with them reuse it (jit's cache).

    `variables` and `batch` may be arrays or jax.ShapeDtypeStructs carrying the shardings the calls will have.
    """
    self._steps[view].lower(variables, batch).compile()

  def confusion(self, variables: Any, batches: Iterable[dict[str, np.ndarray]], view: str = "plain",
                stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, float]:
    """Confusion matrix and mean loss over every (unmasked) example of `batches`.

    `stop`, asked before each batch, raises Interrupted when true: only for single-process runs, where no
    other process waits in the step's collectives.
    """
    step = self._steps[view]
    totals = None
    for batch in batches:
      if stop is not None and stop():
        raise Interrupted()
      out = step(variables, parallel.global_batch(batch, self.mesh))
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = parallel.to_host(totals)
    return totals["confusion"], float(totals["loss_sum"] / max(totals["count"], 1.0))


def choose_samples(labels: np.ndarray, predictions: np.ndarray, num_classes: int, per_class: int) -> list[list[int]]:
  """Per true class, the indices to show: up to per_class // 2 right, then wrong, topped up from either."""
  rows = []
  for c in range(num_classes):
    right = np.flatnonzero((labels == c) & (predictions == c))
    wrong = np.flatnonzero((labels == c) & (predictions != c))
    n_right = min(len(right), max(per_class // 2, per_class - len(wrong)))
    rows.append([int(i) for i in right[:n_right]] + [int(i) for i in wrong[:per_class - n_right]])
  return rows


def sample_grid_image(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, class_names: list[str],
                      title: str, per_class: int = 6) -> np.ndarray:
  """One row per true class: up to per_class/2 faces it got right (green), then ones it got wrong (red).

  `images` are float [N, H, W, C] in [0, 1]. Rows fill from the other kind when one runs short.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(len(class_names), per_class, figsize=(1.3 * per_class, 1.45 * len(class_names)),
                           dpi=100, squeeze=False)
  for row, (name, chosen) in enumerate(zip(class_names, choose_samples(labels, predictions, len(class_names),
                                                                       per_class))):
    for col, ax in enumerate(axes[row]):
      ax.set_xticks([])
      ax.set_yticks([])
      if col == 0:
        ax.set_ylabel(name, fontsize=9)
      if col >= len(chosen):
        if col:  # The first column keeps its frame: it carries the row's class name.
          ax.axis("off")
        continue
      i = chosen[col]
      image = np.clip(images[i], 0.0, 1.0)
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
      color = "green" if predictions[i] == labels[i] else "red"
      ax.set_title(class_names[int(predictions[i])], fontsize=8, color=color)
      for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(2)
  fig.suptitle(title + " (row: true class, title: predicted)", fontsize=9)
  fig.tight_layout()
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return image


def classification_metrics(confusion: np.ndarray, class_names: list[str]) -> dict[str, Any]:
  """Accuracy, per-class precision/recall/F1 and macro-F1 from a confusion matrix."""
  confusion = np.asarray(confusion, np.float64)
  true_positive = np.diag(confusion)
  support = confusion.sum(axis=1)
  predicted = confusion.sum(axis=0)
  precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
  recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
  total = confusion.sum()
  present = support > 0  # Macro-F1 over the classes the split holds.
  return {
      "accuracy": float(true_positive.sum() / total) if total else 0.0,
      "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
      "num_examples": int(total),
      "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                    for name, p, r, f, s in zip(class_names, precision, recall, f1, support)},
      "confusion_matrix": confusion.astype(np.int64).tolist(),
  }


def confusion_matrix_image(confusion: np.ndarray, class_names: list[str], title: str) -> np.ndarray:
  """The confusion matrix drawn as an RGB uint8 image (row-normalised colours, raw counts)."""
  import matplotlib  # Imported lazily: only the evaluation job draws.
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  confusion = np.asarray(confusion)
  rows = confusion.sum(axis=1, keepdims=True)
  normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
  fig, ax = plt.subplots(figsize=(6, 5.4), dpi=100)
  ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
  ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
  ax.set_yticks(range(len(class_names)), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  for i in range(confusion.shape[0]):
    for j in range(confusion.shape[1]):
      ax.text(j, i, f"{int(confusion[i, j])}", ha="center", va="center", fontsize=8,
              color="white" if normalised[i, j] > 0.5 else "black")
  fig.tight_layout()
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return image


def write_report(directory: str, metrics: dict[str, Any], images: dict[str, np.ndarray]) -> None:
  """metrics.json and one <name>.png per image (confusion_matrix, sample_predictions), each written atomically."""
  from PIL import Image

  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, ".metrics.json.tmp")
  with open(tmp, "w") as f:
    json.dump(metrics, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(directory, "metrics.json"))
  for name, image in images.items():
    tmp_png = os.path.join(directory, f".{name}.png.tmp")
    Image.fromarray(image).save(tmp_png, format="PNG")
    os.replace(tmp_png, os.path.join(directory, f"{name}.png"))
