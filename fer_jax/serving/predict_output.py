"""What predict writes: result rows (CSV or JSON lines) and annotated copies, never half a file.

Each file is written as `.NAME.partial-PID` beside its target and renamed into place when complete; a failed
write (a full disk) removes it and raises OutputError, which predict turns into one line and exit status 3.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from typing import Any, Callable, Iterator, TextIO

import cv2
import numpy as np

Box = tuple[int, int, int, int]


class OutputError(Exception):
  """An output file could not be written; the message names it and why."""


def _partial(path: str) -> str:
  folder, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  return os.path.join(folder, f".{stem}.partial-{os.getpid()}{ext}")  # same extension: OpenCV picks by it


def _remove(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


@contextlib.contextmanager
def _writing(what: str, path: str, cleanup: Callable[[], None] = lambda: None) -> Iterator[None]:
  """Turns an OSError inside into OutputError("cannot write WHAT PATH: why"), after calling `cleanup`."""
  try:
    yield
  except OSError as e:
    cleanup()
    raise OutputError(f"cannot write {what} {path}: {e.strerror or str(e) or type(e).__name__}") from None


def check_writable(path: str, what: str, *, folder: bool = False) -> None:
  """OutputError now when `path` (a file, or with `folder` a directory) could not be written later."""
  target_dir = path if folder else (os.path.dirname(os.path.abspath(path)) or ".")
  probe = os.path.join(target_dir, f".fer_jax_probe-{os.getpid()}")
  with _writing(what, path, lambda: _remove(probe)):
    os.makedirs(target_dir, exist_ok=True)
    with open(probe, "wb") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
  _remove(probe)


class RowWriter:
  """CSV (header + flat columns) or JSON lines (nested box and probabilities), to stdout or a file.

  A file appears under its name only when `close(commit=True)` is called.
  """

  def __init__(self, path: str | None, fmt: str, class_names: tuple[str, ...]):
    self.path, self.fmt, self.class_names = path, fmt, class_names
    self._tmp = None if path is None else _partial(path)
    with _writing("--output", path):
      self.out: TextIO = sys.stdout if path is None else open(self._tmp, "w", newline="")
    if fmt == "csv":
      self._csv = csv.writer(self.out, lineterminator="\n")
      with self._guard():
        self._csv.writerow(["file", "frame", "face", "x", "y", "w", "h", "label", *class_names, "error"])

  def _guard(self) -> contextlib.AbstractContextManager[None]:
    """For writes to the output: an OSError removes the partial file and becomes OutputError."""
    return _writing("--output", self.path or "stdout", lambda: self.close(commit=False))

  def write(self, row: Any) -> None:
    probs = None if row.probabilities is None else [round(float(p), 6) for p in row.probabilities]
    with self._guard():
      if self.fmt == "csv":
        box = list(row.box) if row.box is not None else [""] * 4
        self._csv.writerow([row.file, _blank(row.frame), _blank(row.face), *box, _blank(row.label),
                            *(probs if probs is not None else [""] * len(self.class_names)), _blank(row.error)])
      else:
        self.out.write(json.dumps({
            "file": row.file, "frame": row.frame, "face": row.face,
            "box": list(row.box) if row.box is not None else None, "label": row.label,
            "probabilities": dict(zip(self.class_names, probs)) if probs is not None else None,
            "error": row.error}) + "\n")

  def flush(self) -> None:
    with self._guard():
      self.out.flush()

  def close(self, *, commit: bool) -> None:
    """Closes the file; with `commit`, renames it into place (OutputError when that fails), else removes it."""
    if self._tmp is None or self.out.closed:
      return
    with _writing("--output", self.path, lambda: _remove(self._tmp)):
      self.out.close()
      if commit:
        os.replace(self._tmp, self.path)
    if not commit:
      _remove(self._tmp)


def _blank(value: Any) -> Any:
  return "" if value is None else value


def label_layout(size: tuple[int, int], box: Box, label: str, probability: float, thickness: int = 1
                 ) -> tuple[str, float, tuple[int, int, int, int]]:
  """(text, font scale, filled rectangle (x0, y0, x1, y1) inclusive) of a box's label, all inside a (W, H) image.

  Above the box when there is room, else below it, else inside its top edge; shifted left to fit. On images
  too narrow for it (48x48 crops) the probability is dropped and then the font shrinks until the label fits.
  """
  width, height = size
  x, y, w, h = box
  font = cv2.FONT_HERSHEY_SIMPLEX
  text, scale = f"{label} {probability:.2f}", max(0.35, w / 250)
  (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
  if tw + 4 > width - 1:
    text = label
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
  while tw + 4 > width - 1 and scale > 0.05:
    scale *= 0.9
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
  label_w, label_h = tw + 4, th + base + 4  # 2 pixels of background around the text: glyphs overshoot th
  if y - label_h >= 0:
    top = y - label_h
  elif y + h + label_h <= height - 1:
    top = y + h
  else:
    top = y
  top = max(0, min(top, height - 1 - label_h))
  left = max(0, min(x, width - 1 - label_w))
  return text, scale, (left, top, left + label_w, top + label_h)


def draw(image: np.ndarray, boxes: list[Box], probs: np.ndarray, class_names: tuple[str, ...]) -> np.ndarray:
  """A BGR copy of `image` with each box and its label and probability drawn on it (inside the image)."""
  canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
  thickness = max(1, round(max(canvas.shape[:2]) / 400))
  for box, p in zip(boxes, probs):
    x, y, w, h = box
    k = int(np.argmax(p))
    cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thickness)
    text, scale, (x0, y0, x1, y1) = label_layout((canvas.shape[1], canvas.shape[0]), box, class_names[k], p[k],
                                                 thickness)
    (_, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 255, 0), -1)
    cv2.putText(canvas, text, (x0 + 2, y0 + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                cv2.LINE_AA)
  return canvas


def write_bytes(path: str, data: bytes) -> None:
  """`data` to `path` through a temporary file; OutputError (and nothing left behind) when it fails."""
  tmp = _partial(path)
  with _writing("the annotated copy", path, lambda: _remove(tmp)):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)


def write_image(path: str, image: np.ndarray) -> str:
  """Writes in the input's format, or PNG (name + .png) when OpenCV cannot encode that format; returns the path."""
  try:
    ok, data = cv2.imencode(os.path.splitext(path)[1] or ".png", image)
  except cv2.error:
    ok = False
  if not ok:
    ok, data = cv2.imencode(".png", image)
    path += ".png"
  write_bytes(path, data.tobytes())
  return path


class AnnotatedVideo:
  """An mp4 (mp4v) of annotated frames, renamed into place only when every frame reads back."""

  def __init__(self, path: str, fps: float, size: tuple[int, int]):
    self.path, self._tmp, self.frames = path, _partial(path), 0
    with _writing("the annotated video", path):
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps if fps > 0 else 25.0, size)
    if not self._writer.isOpened():
      _remove(self._tmp)
      raise OutputError(f"cannot write the annotated video {path} (no mp4v encoder in this OpenCV, or the "
                        "folder is not writable)")

  def write(self, frame: np.ndarray) -> None:
    self._writer.write(frame)
    self.frames += 1

  def close(self, *, commit: bool = True) -> None:
    """Finishes the file; OpenCV reports no write errors, so the frame count is read back before the rename."""
    self._writer.release()
    if not commit:
      _remove(self._tmp)
      return
    capture = cv2.VideoCapture(self._tmp)
    written = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    capture.release()
    if written != self.frames:
      _remove(self._tmp)
      raise OutputError(f"cannot write the annotated video {self.path}: {written} of {self.frames} frames "
                        "came out (is the disk full?)")
    with _writing("the annotated video", self.path, lambda: _remove(self._tmp)):
      os.replace(self._tmp, self.path)
