"""The TensorFlow-free half of the ExpW builder: label.lst parsing, the split rule, face crops.

Worker processes import only this module and fer_jax.data.faces (numpy, cv2, the standard library;
PIL only on the rare path that checks a JPEG without an end marker), never tensorflow_datasets or jax, so
they start in a fraction of a second. Everything here is also usable without tfds, e.g. to
report results on the published split.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import math
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from fer_jax.data.faces import EMOTIONS, crop_window, resize_face

SPLITS: tuple[str, ...] = ("train", "validation", "test")
NUM_LABELS = len(EMOTIONS)  # ExpW labels are the integers 0..6.

# Skip reasons, in the order they are checked; each skipped label.lst line counts under the first.
MALFORMED_LINE = "malformed_line"            # not 8 fields, a field that is not a number, a path as name
UNKNOWN_LABEL = "unknown_label"              # label not one of 0..6
ZERO_AREA_BOX = "zero_area_box"              # right <= left or bottom <= top
DUPLICATE_LINE = "duplicate_line"            # same image/face_id and same values as an earlier line
CONFLICTING_DUPLICATE = "conflicting_duplicate"  # same image/face_id listed with different values
BELOW_MIN_CONFIDENCE = "below_min_confidence"    # confidence < config.min_confidence
MISSING_IMAGE = "missing_image"              # no such file in the image folder
UNREADABLE_IMAGE = "unreadable_image"        # not an image OpenCV can decode (or unreadable file)
TRUNCATED_IMAGE = "truncated_image"          # JPEG cut short (no end-of-image marker)
BOX_OUTSIDE_IMAGE = "box_outside_image"      # the box does not overlap the decoded image
SKIP_REASONS: tuple[str, ...] = (
    MALFORMED_LINE, UNKNOWN_LABEL, ZERO_AREA_BOX, DUPLICATE_LINE, CONFLICTING_DUPLICATE,
    BELOW_MIN_CONFIDENCE, MISSING_IMAGE, UNREADABLE_IMAGE, TRUNCATED_IMAGE, BOX_OUTSIDE_IMAGE)
IMAGE_SKIP_REASONS: tuple[str, ...] = (MISSING_IMAGE, UNREADABLE_IMAGE, TRUNCATED_IMAGE)

Box = tuple[int, int, int, int]  # top, left, right, bottom, as in label.lst


def printable(name: str) -> str:
  """A file name read with errors='surrogateescape', with its non-UTF-8 bytes as \\xNN (valid text)."""
  return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def split_bucket(image_name: str) -> int:
  """0..99 from the first 8 bytes (big-endian) of sha256(UTF-8 image name): same on every machine."""
  # surrogateescape: a name that is not UTF-8 hashes as the bytes it has on disk (label.lst is read that way).
  return int.from_bytes(hashlib.sha256(image_name.encode("utf-8", "surrogateescape")).digest()[:8], "big") % 100


def split_for_image(image_name: str) -> str:
  """The published ExpW split of a scene image: buckets 0-79 train, 80-89 validation, 90-99 test.

  Assigned per image, so faces of one scene never straddle splits, and independent of which
  other images are present, so every subset of ExpW agrees with the full split.
  """
  bucket = split_bucket(image_name)
  return "train" if bucket < 80 else ("validation" if bucket < 90 else "test")


@dataclasses.dataclass(frozen=True)
class Face:
  """One usable label.lst line."""
  line_no: int
  image_name: str
  face_id: int
  box: Box
  confidence: float
  label: int

  @property
  def key(self) -> str:
    """Stable unique example id `<image_name>/<face_id>` (bytes that are not UTF-8 written as \\xNN)."""
    return f"{printable(self.image_name)}/{self.face_id}"


class SkipLog:
  """Counts skipped label.lst lines by reason and keeps a few examples of each, for the report."""

  def __init__(self, max_examples: int = 5):
    self.counts: collections.Counter[str] = collections.Counter({r: 0 for r in SKIP_REASONS})
    self.images: collections.Counter[str] = collections.Counter({r: 0 for r in IMAGE_SKIP_REASONS})
    self.examples: dict[str, list[str]] = collections.defaultdict(list)
    self._max_examples = max_examples

  def skip(self, reason: str, line_no: int, detail: str) -> None:
    self.counts[reason] += 1
    if len(self.examples[reason]) < self._max_examples:
      self.examples[reason].append(f"line {line_no}: {detail}")

  def skip_image(self, reason: str, faces: Sequence[Face], detail: str) -> None:
    self.images[reason] += 1
    for face in faces:
      self.skip(reason, face.line_no, f"{printable(face.image_name)}: {detail}")


def _number(text: str) -> float:
  value = float(text)
  if not math.isfinite(value):
    raise ValueError(text)
  return value


def _coordinate(text: str) -> int:
  """Pixel coordinate; accepts `12` and `12.0` (rounded half up), rejects `nan`, `x`."""
  try:
    return int(text)
  except ValueError:
    return math.floor(_number(text) + 0.5)


def parse_label_lines(lines: Iterable[str], skips: SkipLog,
                      min_confidence: float | None = None) -> tuple[list[Face], dict[str, int]]:
  """Parses label.lst into usable faces, logging every line it drops; never raises on content.

  Returns (faces in file order, line statistics). Exact repeats of a line keep the first copy;
  an image/face_id listed with different values is ambiguous, so all its lines are dropped.
  """
  stats = {"lines": 0, "blank_lines": 0}
  by_key: dict[tuple[str, int], list[Face]] = {}
  for line_no, line in enumerate(lines, start=1):
    line = line.lstrip("\ufeff").strip()
    if not line:
      stats["blank_lines"] += 1
      continue
    stats["lines"] += 1
    fields = line.split()
    if len(fields) != 8:
      skips.skip(MALFORMED_LINE, line_no, f"expected 8 fields, got {len(fields)}: {line[:80]!r}")
      continue
    name = fields[0]
    if name in (".", "..") or "/" in name or "\\" in name:
      skips.skip(MALFORMED_LINE, line_no, f"image name must be a plain file name: {name!r}")
      continue
    try:
      face_id = int(fields[1])
      top, left, right, bottom = (_coordinate(t) for t in fields[2:6])
      confidence = _number(fields[6])
    except ValueError:
      skips.skip(MALFORMED_LINE, line_no, f"face_id, box or confidence is not a number: {line[:80]!r}")
      continue
    try:
      label = int(fields[7])
    except ValueError:
      label = -1
    if not 0 <= label < NUM_LABELS:
      skips.skip(UNKNOWN_LABEL, line_no, f"label {fields[7]!r} is not one of 0..{NUM_LABELS - 1}")
      continue
    if right <= left or bottom <= top:
      skips.skip(ZERO_AREA_BOX, line_no, f"box top={top} left={left} right={right} bottom={bottom}")
      continue
    face = Face(line_no, name, face_id, (top, left, right, bottom), confidence, label)
    by_key.setdefault((name, face_id), []).append(face)

  faces = []
  for copies in by_key.values():
    values = {(f.box, f.confidence, f.label) for f in copies}
    if len(values) > 1:
      for f in copies:
        skips.skip(CONFLICTING_DUPLICATE, f.line_no,
                   f"{f.key} is listed on lines {[c.line_no for c in copies]} with different values")
      continue
    faces.append(copies[0])
    for f in copies[1:]:
      skips.skip(DUPLICATE_LINE, f.line_no, f"repeats line {copies[0].line_no}")
  faces.sort(key=lambda f: f.line_no)

  if min_confidence is not None:
    kept = []
    for f in faces:
      if f.confidence < min_confidence:
        skips.skip(BELOW_MIN_CONFIDENCE, f.line_no, f"confidence {f.confidence} < {min_confidence}")
      else:
        kept.append(f)
    faces = kept
  return faces, stats


def _decode_flags(channels: int) -> int:
  # Full-resolution decode; the box coordinates refer to the stored pixels, so EXIF rotation is ignored.
  # Grey decodes straight from the JPEG luma plane (no colour conversion), which is also faster.
  base = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
  return base | cv2.IMREAD_IGNORE_ORIENTATION


def _jpeg_is_truncated(data: bytes) -> bool:
  """True when a JPEG lacks its end marker and PIL confirms the stream is cut short."""
  if data[-64:].rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
    return False
  from PIL import Image  # pylint: disable=g-import-not-at-top  # rare path: a JPEG with trailing bytes
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except Exception:  # pylint: disable=broad-except
    return True
  return False


def decode_image(path: str, channels: int) -> tuple[str, np.ndarray | None, str]:
  """Reads and decodes one image at full resolution: (status, pixels or None, detail)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    return MISSING_IMAGE, None, "file not found"
  except OSError as e:
    return UNREADABLE_IMAGE, None, f"cannot read file: {e.strerror or e}"
  is_jpeg = data[:2] == b"\xff\xd8"
  pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _decode_flags(channels)) if data else None
  if is_jpeg and _jpeg_is_truncated(data):
    # OpenCV >= 5 refuses a cut-short JPEG; 4.x returns it with grey rows, so check either way.
    return TRUNCATED_IMAGE, None, f"JPEG has no end-of-image marker ({len(data)} bytes)"
  if pixels is None or pixels.size == 0:
    return UNREADABLE_IMAGE, None, f"not a decodable image ({len(data)} bytes)"
  return "ok", pixels, ""


@dataclasses.dataclass(frozen=True)
class CropParams:
  """What a worker needs from the builder config."""
  image_size: int
  channels: int
  margin: float


@dataclasses.dataclass
class ImageResult:
  """A worker's answer for one scene image."""
  status: str                 # "ok" or one of IMAGE_SKIP_REASONS
  detail: str
  height: int = 0
  width: int = 0
  inside: tuple[bool, ...] = ()  # per face: box overlaps the image (crop present)
  crops: np.ndarray | None = None  # (number of True in inside, S, S, C) uint8
  cpu_decode: float = 0.0  # thread CPU seconds reading + decoding (for bench/build_expw.py)
  cpu_crop: float = 0.0    # thread CPU seconds cropping + resizing


def crop_faces(path: str, boxes: Sequence[Box], params: CropParams) -> ImageResult:
  """Decodes the image once and crops every listed face from it."""
  start = time.thread_time()
  status, pixels, detail = decode_image(path, params.channels)
  decoded = time.thread_time()
  if pixels is None:
    return ImageResult(status, detail, cpu_decode=decoded - start)
  height, width = pixels.shape[:2]
  inside, crops = [], []
  for box in boxes:
    window = crop_window(box, height, width, params.margin)
    inside.append(window is not None)
    if window is not None:
      y0, y1, x0, x1 = window
      crops.append(resize_face(pixels[y0:y1, x0:x1], (params.image_size, params.image_size, params.channels)))
  stacked = np.stack(crops) if crops else None
  return ImageResult("ok", "", height, width, tuple(inside), stacked,
                     cpu_decode=decoded - start, cpu_crop=time.thread_time() - decoded)


def decode_only(path: str, boxes: Sequence[Box], params: CropParams) -> ImageResult:
  """The same read + full-resolution decode as crop_faces, no crops: the speed baseline."""
  del boxes
  start = time.thread_time()
  status, pixels, detail = decode_image(path, params.channels)
  cpu = time.thread_time() - start
  if pixels is None:
    return ImageResult(status, detail, cpu_decode=cpu)
  return ImageResult("ok", "", pixels.shape[0], pixels.shape[1], cpu_decode=cpu)


_WORKER_READY = False


def process_chunk(task: tuple[str, CropParams, list[tuple[str, tuple[Box, ...]]]]) -> list[ImageResult]:
  """Worker entry point: runs `crop_faces` (or `decode_only`) on a chunk of images, in order."""
  global _WORKER_READY
  if not _WORKER_READY and multiprocessing.parent_process() is not None:
    cv2.setNumThreads(1)  # one image per process: OpenCV's own threads would only oversubscribe
    _WORKER_READY = True
  mode, params, images = task
  fn = crop_faces if mode == "crop" else decode_only
  return [fn(path, boxes, params) for path, boxes in images]


def worker_context() -> Any:
  """A start method safe when the parent runs threads (JAX does): forkserver, or spawn on Windows.

  The fork server preloads only this module, so each worker is a cheap fork of a process that
  holds numpy and cv2 and nothing else.
  """
  if sys.platform == "win32":
    return multiprocessing.get_context("spawn")
  ctx = multiprocessing.get_context("forkserver")
  ctx.set_forkserver_preload([__name__])
  return ctx


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
  """Keeps multiprocessing from re-running the parent's __main__ (which may import tfds, jax) in workers.

  A new worker normally re-imports the parent's main script or `-m` module so that functions
  defined there unpickle; ours live in this module, so while the pool starts __main__ looks
  like an interactive session, for which nothing is re-imported.
  """
  main = sys.modules.get("__main__")
  saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if main and k in main.__dict__}
  try:
    if main is not None:
      main.__spec__ = None
      main.__dict__.pop("__file__", None)
    yield
  finally:
    if main is not None:
      main.__dict__.update(saved)


def ordered_map(fn: Callable[[Any], Any], tasks: Iterable[Any], num_workers: int,
                max_in_flight: int | None = None) -> Iterator[Any]:
  """Yields fn(task) in task order, computed by `num_workers` processes (0: in this process).

  At most `max_in_flight` tasks are queued (default 3 per worker), so memory stays bounded when
  the consumer (the tfds writer) is slower than the workers; order never depends on timing.
  """
  if num_workers <= 0:
    for task in tasks:
      yield fn(task)
    return
  limit = max_in_flight or 3 * num_workers
  executor = concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=worker_context())
  try:
    pending: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
    for i, task in enumerate(tasks):
      if i == 0:
        with _main_module_hidden():  # the workers start on the first submit
          pending.append(executor.submit(fn, task))
      else:
        pending.append(executor.submit(fn, task))
      if len(pending) >= limit:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  except concurrent.futures.process.BrokenProcessPool as e:
    raise RuntimeError(
        "An image-decoding worker process died (out of memory, or a crash in the image decoder). "
        "Rebuild with --set num_workers=0 to decode in one process and see which image fails.") from e
  finally:
    executor.shutdown(wait=True, cancel_futures=True)


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
  return [items[i:i + size] for i in range(0, len(items), size)]


def chunk_size_for(num_images: int, num_workers: int) -> int:
  """Images per task: large enough to amortise IPC, small enough to keep every worker busy."""
  return max(1, min(16, num_images // (4 * max(1, num_workers)) or 1))


def find_default_workers() -> int:
  """One core stays free for the building process (tfds serialises and writes there); at most 8."""
  return max(1, min((os.cpu_count() or 1) - 1, 8))
