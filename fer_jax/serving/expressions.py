"""The one-call Python API: `fer_jax.detect_expressions(photo)` -> each face's box, label and probabilities.

    import fer_jax
    for face in fer_jax.detect_expressions("photo.jpg"):     # or a BGR uint8 array (cv2.imread), rgb=True for RGB
      print(face.box, face.label, face.probabilities["happy"])

The bundled model and YuNet by default, with predict's crops, batching and options (docs/PREDICTION.md, "Python").
Models and detectors are loaded once per set of options and kept (`ExpressionDetector` holds one explicitly).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import warnings
from typing import Any

import numpy as np

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class Face:
  """One face: where it is and what expression it shows."""
  box: Box  # (x, y, w, h): left, top, width, height in pixels of the input image (x rightwards, y downwards)
  label: str  # the most probable class
  # Class name -> probability, in the model's class order (the bundled model: angry, disgust, fear, happy, sad,
  # surprise, neutral; FER2013's labels 0-6); they sum to 1.
  probabilities: dict[str, float]


def _as_bgr(image: str | os.PathLike | np.ndarray, rgb: bool) -> np.ndarray:
  """A BGR uint8 image from a file path or an array; ValueError / FileNotFoundError saying what is wrong."""
  if isinstance(image, (str, os.PathLike)):
    from fer_jax.serving.predict_inputs import read_image  # pylint: disable=g-import-not-at-top

    path = os.fspath(image)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: no such file")
    pixels, error = read_image(path)
    if pixels is None:
      raise ValueError(f"{path}: {error}")
    return pixels
  pixels = np.asarray(image)
  if pixels.dtype != np.uint8:
    raise ValueError(f"image is {pixels.dtype}: pass uint8 pixels (0-255), e.g. (x * 255).round().astype(np.uint8).")
  if pixels.ndim == 3 and pixels.shape[2] == 1:
    pixels = pixels[..., 0]
  if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))) or min(pixels.shape[:2]) < 1:
    raise ValueError(f"image has shape {list(pixels.shape)}: pass [H, W] grey or [H, W, 3] colour pixels.")
  if pixels.ndim == 2:  # as predict reads a grey file: three equal channels, which map back to the same grey
    return np.repeat(pixels[..., None], 3, axis=2)
  return np.ascontiguousarray(pixels[..., :3][..., ::-1] if rgb else pixels[..., :3])  # BGR, alpha dropped


class ExpressionDetector:
  """A loaded model and face detector: call it on images for lists of Face, largest face first.

  Model (at most one; default the bundled fer2013_cpu): `pretrained` (a bundled model's name), `workdir` (a
  training run's latest checkpoint, or `step`), `checkpoint` (one step directory) or `exported` (a .fer or .onnx
  artifact of fer_jax.export). `detector`: "yunet" (default; Haar with a warning where its package is missing)
  or "haar". `tta`: "none", "flip", "ten_crop" or "multi_scale", as predict's --tta. `margin`, `batch_size`,
  `kernels`, `min_score` and `detect_size` are predict's options of the same names.
  """

  def __init__(self, *, pretrained: str | None = None, workdir: str | None = None, checkpoint: str | None = None,
               step: int | None = None, exported: str | None = None, detector: str | None = None,
               tta: str = "none", margin: float | None = None, batch_size: int = 32, kernels: str = "auto",
               min_score: float = 0.8, detect_size: int | None = None):
    from fer_jax.serving import face_detection, predict  # pylint: disable=g-import-not-at-top  (jax, cv2: lazily)

    options = argparse.Namespace(pretrained=pretrained, workdir=workdir, checkpoint=checkpoint, step=step,
                                 exported=exported, model_card=None, dtype=None, tta=tta, margin=margin,
                                 batch_size=batch_size, kernels=kernels)
    classifier = predict.load_classifier(options)
    try:
      found = face_detection.create(detector or "yunet", detect_size=detect_size, min_score=min_score)
    except face_detection.DetectorUnavailableError as e:
      if detector is not None:
        raise
      warnings.warn(f"{e} Using the Haar cascade instead.", stacklevel=2)
      found = face_detection.create("haar", detect_size=detect_size)
    self.predictor = predict.Predictor(classifier, found)
    self.class_names: tuple[str, ...] = classifier.class_names

  def __call__(self, image: str | os.PathLike | np.ndarray, *, rgb: bool = False, detect: bool = True
               ) -> list[Face]:
    """The faces of one image: a file path, or uint8 pixels [H, W] grey or [H, W, 3] BGR (`rgb=True`: RGB).

    detect=False: the whole image is one face (a face crop, like FER2013's 48x48 images).
    """
    pixels = _as_bgr(image, rgb)
    h, w = pixels.shape[:2]
    boxes, probs = self.predictor.frame(pixels, None if detect else (lambda _: [(0, 0, w, h)]))
    return [Face(tuple(int(v) for v in box), self.class_names[int(np.argmax(p))],
                 {name: float(x) for name, x in zip(self.class_names, p)}) for box, p in zip(boxes, probs)]


@functools.lru_cache(maxsize=4)
def _cached_detector(**options: Any) -> ExpressionDetector:
  return ExpressionDetector(**options)


def detect_expressions(image: str | os.PathLike | np.ndarray, *, rgb: bool = False, detect: bool = True,
                       **options: Any) -> list[Face]:
  """Each face in `image` (a path, or uint8 BGR/grey pixels; `rgb=True` for RGB arrays) with its expression.

  Returns Face(box=(x, y, w, h), label, probabilities={class: p}) per face, largest first; [] when none is found.
  `options` choose the model and detector (ExpressionDetector's arguments); each distinct set is loaded once and
  kept for later calls (the last four). Errors: ModelLoadError (model), ValueError/FileNotFoundError (image).
  """
  return _cached_detector(**options)(image, rgb=rgb, detect=detect)
