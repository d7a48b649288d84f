"""Face crops to class probabilities without jax: the preprocessing rules and the batching.

`BatchedClassifier` wraps any `probabilities(uint8 faces [N, H, W, C]) -> [N, K]`: a jit-compiled flax model
(inference.py), a jax.export artifact (export.py) or an ONNX Runtime session (onnx_model.py), so predict works
the same from all three. The crop rules and the measured box ratios behind them: docs/PREDICTION.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from fer_jax.data import faces
from fer_jax.model_card import ModelLoadError

# Builder margin when model.json has no `face_margin` (tfds_builders/expw/expw.py ExpwConfig.margin).
DEFAULT_DATASET_MARGIN = {"expw": 0.2}
# Side of a Haar detection / side of the dataset's own face box (measured: docs/PREDICTION.md).
HAAR_BOX_TO_DATASET_BOX = {"expw": 0.91}

Box = tuple[int, int, int, int]  # x, y, w, h in pixels of the image it was found in


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a face crop becomes a model input, as the training data was made."""
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (H, W, C) as stored in the dataset: crops are resized to this
  crop_size: int = 0                 # > 0: the model sees the centre crop_size x crop_size
  normalization: str = "unit"        # unit: [0, 1]; standardize: (x - mean) / std per channel
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  margin: float = 0.0                # fraction of a detected box's side added on each side

  @classmethod
  def from_card(cls, card: dict[str, Any], margin: float | None = None) -> "Preprocessing":
    """From a model.json dict; `margin` overrides the dataset's rule (default_margin)."""
    norm = card.get("normalization") or {"kind": "unit"}
    shape = tuple(int(d) for d in card["image_shape"])
    if len(shape) != 3 or shape[2] not in (1, 3):
      raise ModelLoadError(f"model.json image_shape {list(shape)} is not [H, W, 1 or 3].")
    kind = norm.get("kind", "unit")
    if kind == "standardize" and (not norm.get("mean") or not norm.get("std")):
      raise ModelLoadError("model.json normalization is 'standardize' but lacks mean/std.")
    return cls(class_names=tuple(card["class_names"]), image_shape=shape, crop_size=int(card.get("crop_size") or 0),
               normalization=kind, margin=float(default_margin(card) if margin is None else margin),
               mean=tuple(float(v) for v in norm["mean"]) if kind == "standardize" else None,
               std=tuple(float(v) for v in norm["std"]) if kind == "standardize" else None)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """What the network itself takes (after the centre crop)."""
    h, w, c = self.image_shape
    return (self.crop_size, self.crop_size, c) if self.crop_size else (h, w, c)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "Preprocessing":
    """Inverse of to_json (lists back to tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

  def face_pixels(self, image: np.ndarray, box: Box | None = None) -> np.ndarray:
    """uint8 (H, W, C) model pixels of one face of a cv2.imread image: `box` plus margin, or all of it when None."""
    if box is not None:
      x, y, w, h = box
      window = faces.crop_window((y, x, x + w, y + h), image.shape[0], image.shape[1], self.margin)
      if window is None:
        raise ValueError(f"box {box} does not overlap the {image.shape[1]}x{image.shape[0]} image")
      y0, y1, x0, x1 = window
      image = image[y0:y1, x0:x1]
    return faces.resize_face(image, self.image_shape)


def default_margin(card: dict[str, Any]) -> float:
  """Margin per side, as a fraction of a Haar box, that reproduces the dataset's crops."""
  dataset = card.get("dataset") or ""
  margin = card.get("face_margin")
  if margin is None:
    margin = DEFAULT_DATASET_MARGIN.get(dataset, 0.0)
  scale = 1.0 / HAAR_BOX_TO_DATASET_BOX.get(dataset, 1.0)  # Haar box -> dataset's face box
  return ((1.0 + 2.0 * float(margin)) * scale - 1.0) / 2.0


def artifact_preprocessing(path: str, preprocessing: dict[str, Any], baked_tta: str, tta: str,
                           margin: float | None, error: type[ModelLoadError] = ModelLoadError) -> Preprocessing:
  """An exported file's preprocessing (optionally another margin); its TTA is baked in, so `tta` must match."""
  if tta not in ("none", baked_tta):
    raise error(f"{path} was exported with tta={baked_tta!r}; re-export with --tta {tta} for that.")
  prep = Preprocessing.from_json(preprocessing)
  return prep if margin is None else dataclasses.replace(prep, margin=float(margin))


def bucket_size(n: int, batch_size: int) -> int:
  """The padded batch for n faces: the next power of two, at most batch_size."""
  return min(batch_size, 1 << max(0, n - 1).bit_length())


class BatchedClassifier:
  """Batched class probabilities of preprocessed faces through `probabilities(variables, faces)`.

  Batches are padded to a power of two up to `batch_size`, so a stream of any face counts compiles at most
  log2(batch_size) + 1 times, and one face per video frame costs one face, not a full batch.
  """

  def __init__(self, probabilities: Callable[[Any, Any], Any], variables: Any, prep: Preprocessing, *,
               batch_size: int = 32, tta: str = "none"):
    if batch_size < 1 or batch_size & (batch_size - 1):
      raise ValueError(f"batch_size={batch_size} must be a power of two (1, 2, 4, ... 32, 64).")
    self.prep = prep
    self.batch_size = batch_size
    self.tta = tta
    self.variables = variables
    self._fn = probabilities

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.prep.class_names

  def __call__(self, faces: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """uint8 [N, H, W, C] faces (Preprocessing.face_pixels) -> float32 probabilities [N, K]."""
    faces = np.asarray(faces, np.uint8) if not isinstance(faces, np.ndarray) else faces
    if faces.ndim != 4 or faces.shape[1:] != self.prep.image_shape or faces.dtype != np.uint8:
      raise ValueError(f"faces must be uint8 [N, {', '.join(map(str, self.prep.image_shape))}], got "
                       f"{faces.dtype} {list(faces.shape)}: crop them with Preprocessing.face_pixels.")
    n = faces.shape[0]
    if n == 0:
      return np.zeros((0, len(self.class_names)), np.float32)
    out = []
    for start in range(0, n, self.batch_size):
      chunk = faces[start:start + self.batch_size]
      padded = np.zeros((bucket_size(len(chunk), self.batch_size), *chunk.shape[1:]), np.uint8)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(self._fn(self.variables, padded))[:len(chunk)])
    return np.concatenate(out)

  def warm_up(self) -> None:
    """Compiles every bucket now, so the first video frames are not slowed by compilation."""
    for k in range(self.batch_size.bit_length()):  # batches of 1, 2, 4, ... batch_size faces
      self(np.zeros((1 << k, *self.prep.image_shape), np.uint8))
