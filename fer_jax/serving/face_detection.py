"""Face detection with the Haar cascade that ships inside OpenCV (nothing is downloaded).

OpenCV's frontal-face cascade (`haarcascade_frontalface_default.xml` from
`cv2.data.haarcascades`) finds upright frontal faces in a few milliseconds.
For speed it runs on a grey copy of the image scaled so that its longer side
is `detect_size` pixels, and boxes are mapped back to the original pixels.
VIDEO settings (320 pixels, pyramid step 1.2: a 640x480 frame is searched at
320x240) keep up with 30 frames/s on a 2-core CPU; IMAGE settings search
photos at their own size within 320..960 pixels with the finer step 1.1, so
smaller faces in large photos are found and small crops are scaled up to
sizes the cascade sees (it needs faces of at least 24 searched pixels).

OpenCV 5.0 moved `CascadeClassifier` to the contrib package and its wheels no
longer ship the cascade files; with such an OpenCV, `HaarFaceDetector` raises
DetectorUnavailableError saying how to get one (opencv-python-headless < 5, or
opencv-contrib-python-headless plus `cascade=` an XML file), and prediction
with --no-detect still works.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]  # x, y, w, h

# Defaults for video frames (real time) and for still images (thorough).
VIDEO = {"detect_size": 320, "scale_factor": 1.2}
IMAGE = {"detect_size": (320, 960), "scale_factor": 1.1}


class DetectorUnavailableError(RuntimeError):
  """This OpenCV has no Haar cascade detector or cascade file; the message says how to get one."""


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

  detect_size: longer side of the image searched, in pixels (the image is
    scaled up or down to it), or (low, high): the image's own longer side
    clamped to that range; 0 = search at full size.
  min_face: smallest face side reported, as a fraction of the searched image's
    shorter side (0 = the cascade's 24-pixel minimum).
  scale_factor, min_neighbors: cv2.CascadeClassifier.detectMultiScale's.
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
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    h, w = grey.shape[:2]
    low, high = self.detect_size
    scale = min(max(max(h, w), low), high) / max(h, w) if high else 1.0
    if scale != 1.0:
      size = (max(1, round(w * scale)), max(1, round(h * scale)))
      grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
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
