"""What predict reads: the files and folders of its command line, and images decoded whatever their name."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import cv2
import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm",
                              ".ppm", ".pbm", ".pnm", ".jp2"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                              ".flv", ".3gp"})


def read_image(path: str) -> tuple[np.ndarray | None, str]:
  """(BGR uint8 pixels, "") or (None, why not), for any file name; EXIF orientation applied."""
  try:
    data = np.fromfile(path, np.uint8)
  except OSError as e:
    return None, f"cannot read file: {e.strerror or e}"
  if data.size == 0:
    return None, "empty file"
  # IMREAD_COLOR: grey images come back with three equal channels, which BGR->grey maps back exactly.
  image = cv2.imdecode(data, cv2.IMREAD_COLOR)
  if image is None or image.size == 0:
    return None, f"not a decodable image ({data.size} bytes)"
  return image, ""


@dataclasses.dataclass
class Input:
  """One file to process (kind image/video), or an error about a command-line argument."""
  kind: str  # image, video, camera (read like a video, rows streamed per frame) or error
  path: str | int  # int: a camera index
  name: str  # as shown in the output: the argument, or the argument joined with the path inside it
  annotate_name: str = ""  # relative path under --annotate
  error: str = ""


def media_kind(path: str) -> str | None:
  ext = os.path.splitext(path)[1].lower()
  return "image" if ext in IMAGE_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else None


def expand_inputs(arguments: list[str]) -> Iterator[Input]:
  """Files of the command line in order; folders recursively (sorted), images and videos only."""
  for arg in arguments:
    if os.path.isdir(arg):
      top = os.path.basename(os.path.normpath(os.path.abspath(arg)))
      found = 0
      for root, dirs, files in os.walk(arg):
        dirs.sort()
        for file in sorted(files):
          path = os.path.join(root, file)
          kind = media_kind(file)
          if kind:
            found += 1
            yield Input(kind, path, path, os.path.join(top, os.path.relpath(path, arg)))
      if not found:
        yield Input("error", arg, arg, error="no image or video files in this folder")
    elif os.path.exists(arg):
      yield Input(media_kind(arg) or "image", arg, arg, os.path.basename(arg))
    else:
      yield Input("error", arg, arg, error="no such file or directory")
