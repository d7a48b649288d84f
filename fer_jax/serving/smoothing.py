"""Per-face temporal smoothing for videos and cameras: a face's label should not flicker frame to frame.

Faces are followed across frames by box overlap (each face of a frame takes
the unclaimed track of the previous frame it overlaps most, IoU at least
`min_iou`); a face's probabilities become the mean over its last K frames.
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h


def iou(a: Box, b: Box) -> float:
  ax, ay, aw, ah = a
  bx, by, bw, bh = b
  w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
  h = max(0, min(ay + ah, by + bh) - max(ay, by))
  union = aw * ah + bw * bh - w * h
  return w * h / union if union > 0 else 0.0


class FaceSmoother:
  """Mean probabilities over the last `frames` frames of each face, faces matched by box overlap."""

  def __init__(self, frames: int, min_iou: float = 0.3):
    if frames < 1:
      raise ValueError(f"smoothing over {frames} frames: use 1 (none) or more.")
    self.frames = frames
    self.min_iou = min_iou
    self._tracks: list[tuple[Box, collections.deque]] = []  # the previous frame's faces and their histories

  def __call__(self, boxes: Sequence[Box], probabilities: np.ndarray) -> np.ndarray:
    """Smoothed probabilities [faces, K] for this frame's boxes (in the same order)."""
    pairs = sorted(((iou(box, old), i, j) for i, box in enumerate(boxes) for j, (old, _) in enumerate(self._tracks)),
                   reverse=True)
    taken_faces, taken_tracks, history_of = set(), set(), {}
    for overlap, i, j in pairs:  # Greedy: the best-overlapping pairs first.
      if overlap < self.min_iou:
        break
      if i not in taken_faces and j not in taken_tracks:
        taken_faces.add(i)
        taken_tracks.add(j)
        history_of[i] = self._tracks[j][1]
    tracks, out = [], np.empty_like(probabilities)
    for i, box in enumerate(boxes):
      history = history_of.get(i) or collections.deque(maxlen=self.frames)
      history.append(np.asarray(probabilities[i]))
      out[i] = np.mean(history, axis=0)
      tracks.append((tuple(box), history))
    self._tracks = tracks
    return out
