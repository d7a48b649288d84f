"""The face crop every part of fer_jax shares: class names, the crop window, the resize.

The builders make training examples with these and prediction its model inputs, so a served face is cut and
scaled exactly as the faces the model learned from. numpy and OpenCV only (builder workers import this).
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

# FER2013's and ExpW's label order (their integer labels 0..6); every builder's ClassLabel.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

BoxTLRB = tuple[int, int, int, int]  # top, left, right, bottom (right/bottom exclusive), as in ExpW's label.lst


def crop_window(box: BoxTLRB, height: int, width: int, margin: float) -> tuple[int, int, int, int] | None:
  """Rows y0:y1 and columns x0:x1 to crop, or None when the box does not overlap the image.

  The box grows by round(margin * box height) rows above and below and round(margin * box width) columns
  left and right (halves round up), then is clipped to the image.
  """
  top, left, right, bottom = box
  if right <= 0 or bottom <= 0 or left >= width or top >= height:
    return None
  dy = math.floor(margin * (bottom - top) + 0.5)
  dx = math.floor(margin * (right - left) + 0.5)
  return max(0, top - dy), min(height, bottom + dy), max(0, left - dx), min(width, right + dx)


def resize_face(pixels: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
  """BGR(A) or grey pixels -> uint8 (H, W, C), RGB when C = 3: INTER_AREA when shrinking both sides, else bilinear."""
  height, width, channels = image_shape
  if pixels.ndim == 3 and pixels.shape[2] == 4:
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2BGR)
  if channels == 1 and pixels.ndim == 3:
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
  elif channels == 3:
    pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB if pixels.ndim == 2 else cv2.COLOR_BGR2RGB)
  h, w = pixels.shape[:2]
  interpolation = cv2.INTER_AREA if (h >= height and w >= width) else cv2.INTER_LINEAR
  if (h, w) != (height, width):
    pixels = cv2.resize(pixels, (width, height), interpolation=interpolation)
  return np.ascontiguousarray(pixels.reshape(height, width, channels), dtype=np.uint8)
