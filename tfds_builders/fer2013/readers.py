"""Reading FER2013 as users download it: the original CSV, the tar.gz around it, or image folders.

Each reader fills a `Collected` with (id, label, 48x48x1 uint8 image) per split, and skips bad rows and files
by reason (CSV_SKIP_REASONS, FOLDER_SKIP_REASONS), so that one broken line of a 300 MB file never stops a build
and the build report says what was dropped. `find_sources` says which layouts a folder holds. No tfds here:
fer2013.py is the builder that writes what these read.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
import dataclasses
import os
import tarfile
import warnings
import zlib

import numpy as np
from PIL import Image

from fer_jax.data.faces import EMOTIONS

IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
CSV_NAME = "fer2013.csv"
TAR_NAME = "fer2013.tar.gz"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "validation", "test")
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
PREFIX_TO_SPLIT = {"PublicTest_": "validation", "PrivateTest_": "test"}

KAGGLE_CSV_URL = ("https://www.kaggle.com/c/challenges-in-representation-learning-"
                  "facial-expression-recognition-challenge/data")
KAGGLE_FOLDERS_URL = "https://www.kaggle.com/datasets/msambare/fer2013"

# Skip reasons, in the order rows are checked (a row is counted once, under the first that applies).
CSV_SKIP_REASONS = ("malformed_line", "unknown_usage", "unknown_label", "non_integer_pixel",
                    "wrong_pixel_count", "pixel_out_of_range")
FOLDER_SKIP_REASONS = ("not_in_class_folder", "unknown_class_folder", "unsupported_file_type",
                       "no_usage_prefix", "unreadable_image", "wrong_size")
_EXAMPLE_IDS_PER_REASON = 5  # how many skipped ids the report lists per reason



class ManualDataNotFoundError(FileNotFoundError):
  """The manual_dir holds none of the FER2013 layouts this builder reads."""


class Fer2013DataError(ValueError):
  """The FER2013 files were found but cannot be used (bad header, corrupt archive, nothing usable)."""


def where_to_get_it(manual_dir: str) -> str:
  return (f"Download fer2013.csv or fer2013.tar.gz from Kaggle's "
          f"'challenges-in-representation-learning-facial-expression-recognition-challenge' "
          f"({KAGGLE_CSV_URL}), or the image folders from Kaggle 'msambare/fer2013' "
          f"({KAGGLE_FOLDERS_URL}), and put them in {manual_dir} (or pass --manual_dir).")


@dataclasses.dataclass
class Collected:
  """Examples kept per split and rows/files skipped per reason while reading one source."""
  examples: dict[str, list[tuple[str, int, np.ndarray]]] = dataclasses.field(
      default_factory=lambda: {split: [] for split in SPLITS})
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped_ids: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def add(self, split: str, example_id: str, label: int, image: np.ndarray) -> None:
    self.examples[split].append((example_id, label, image))

  def skip(self, reason: str, example_id: str) -> None:
    self.skipped[reason] += 1
    ids = self.skipped_ids.setdefault(reason, [])
    if len(ids) < _EXAMPLE_IDS_PER_REASON:
      ids.append(example_id)


def _unquote(field: bytes) -> bytes:
  field = field.strip()
  if len(field) >= 2 and field[:1] == b'"' and field[-1:] == b'"':
    field = field[1:-1].strip()
  return field


def read_csv(lines: Iterable[bytes], source: str, out: Collected) -> None:
  """Parses FER2013 CSV lines (header first) into `out`, skipping bad rows by reason.

  Columns are found by header name (`emotion`, `pixels`, `Usage`, any order and
  case), so Kaggle's `icml_face_data.csv` ordering works too. Each row's 2,304
  pixels are parsed by numpy in one call (per-pixel Python is ~7x slower).
  Ids are `csv/<n>` with n the 0-based data row, blank lines not counted (the
  pandas row index).
  """
  lines = iter(lines)
  header = b""
  for header in lines:
    if header.strip():
      break
  columns = [_unquote(c).decode("utf-8-sig", "replace").strip().lower() for c in header.split(b",")]
  missing = [c for c in ("emotion", "pixels", "usage") if c not in columns]
  if missing:
    raise Fer2013DataError(
        f"{source}: header {header.strip()[:80]!r} lacks column(s) {missing}; expected the FER2013 "
        f"header 'emotion,pixels,Usage'. Is this the original fer2013.csv? ({KAGGLE_CSV_URL})")
  num_columns = len(columns)
  i_label, i_pixels, i_usage = (columns.index(c) for c in ("emotion", "pixels", "usage"))
  row = -1
  with warnings.catch_warnings():
    # np.fromstring warns (DeprecationWarning) and returns a prefix on junk; make that an error.
    warnings.simplefilter("error", DeprecationWarning)
    for line in lines:
      if not line.strip():
        continue
      row += 1
      example_id = f"csv/{row}"
      fields = line.split(b",")
      if len(fields) != num_columns:
        out.skip("malformed_line", example_id)
        continue
      split = USAGE_TO_SPLIT.get(_unquote(fields[i_usage]).decode("ascii", "replace"))
      if split is None:
        out.skip("unknown_usage", example_id)
        continue
      label_text = _unquote(fields[i_label])
      label = int(label_text) if label_text.isdigit() else -1
      if not 0 <= label < len(EMOTIONS):
        out.skip("unknown_label", example_id)
        continue
      try:
        pixels = np.fromstring(_unquote(fields[i_pixels]), dtype=np.int64, sep=" ")
      except ValueError:
        out.skip("non_integer_pixel", example_id)
        continue
      if pixels.size != NUM_PIXELS:
        out.skip("wrong_pixel_count", example_id)
        continue
      if pixels.min() < 0 or pixels.max() > 255:
        out.skip("pixel_out_of_range", example_id)
        continue
      out.add(split, example_id, label, pixels.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 1))


def read_tar(path: str, out: Collected) -> None:
  """Streams fer2013.csv out of the distributed fer2013.tar.gz without extracting it to disk."""
  try:
    with tarfile.open(path, mode="r|*") as tar:
      for member in tar:
        if member.isfile() and os.path.basename(member.name) == CSV_NAME:
          read_csv(tar.extractfile(member), f"{path}:{member.name}", out)
          return
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise Fer2013DataError(f"Could not read {path} ({type(e).__name__}: {e}); the download is "
                           f"probably incomplete. Download it again from {KAGGLE_CSV_URL}.") from e
  raise Fer2013DataError(f"{path} holds no {CSV_NAME} (expected fer2013/{CSV_NAME} inside). "
                         f"Is it the archive from {KAGGLE_CSV_URL}?")


def _decode_image(path: str) -> tuple[np.ndarray | None, str | None]:
  """Returns (48x48x1 uint8 array, None) or (None, skip reason)."""
  try:
    with Image.open(path) as image:
      if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        return None, "wrong_size"
      # Colour copies are reduced to grey (ITU-R 601 luma), as FER2013 itself is grey.
      pixels = np.asarray(image.convert("L"), dtype=np.uint8)
  except Exception:  # pylint: disable=broad-except
    # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError... on broken files.
    return None, "unreadable_image"
  return pixels.reshape(IMAGE_SIZE, IMAGE_SIZE, 1), None


def _sorted_entries(path: str) -> list[os.DirEntry]:
  with os.scandir(path) as it:
    return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _is_dir(entry: os.DirEntry) -> bool | None:
  """Whether the entry is a folder (links followed); None when that cannot be known (a symlink loop)."""
  try:
    return entry.is_dir()
  except OSError:
    return None


def _split_dirs(root: str) -> dict[str, os.DirEntry]:
  """Maps 'train'/'test' to those sub-folders of root (any case)."""
  return {e.name.lower(): e for e in _sorted_entries(root)
          if _is_dir(e) and e.name.lower() in ("train", "test")}


def read_folders(root: str, out: Collected) -> list[str]:
  """Reads `train/<class>/*` and `test/<class>/*` images into `out`; returns the splits provided.

  train/ is the train split. In test/, `PublicTest_*` files are validation and
  `PrivateTest_*` files test; when no file there carries either prefix, all of
  test/ is the test split. Ids are `<split folder>/<class folder>/<file>`: the
  real data has one file name in two class folders, so names alone collide.
  """
  provided = []
  for folder_key, folder in sorted(_split_dirs(root).items(), key=lambda kv: kv[0] != "train"):
    candidates = []  # (id, label, path)
    for entry in _sorted_entries(folder.path):
      kind = _is_dir(entry)
      if not kind:
        out.skip("not_in_class_folder" if kind is False else "unreadable_entry", f"{folder.name}/{entry.name}")
        continue
      label = EMOTIONS.index(entry.name.lower()) if entry.name.lower() in EMOTIONS else None
      try:
        files = _sorted_entries(entry.path)
      except OSError:  # no permission to list it
        out.skip("unreadable_folder", f"{folder.name}/{entry.name}")
        continue
      for file in files:
        example_id = f"{folder.name}/{entry.name}/{file.name}"
        kind = _is_dir(file)
        if kind is None:  # a symlink loop, say: unreadable, whatever its name
          out.skip("unreadable_entry", example_id)
          continue
        if kind:
          continue  # nested folders are not part of any known layout
        if label is None:
          out.skip("unknown_class_folder", example_id)
        elif not file.name.lower().endswith(IMAGE_EXTENSIONS):
          out.skip("unsupported_file_type", example_id)
        else:
          candidates.append((example_id, label, file.path))
    if folder_key == "train":
      provided.append("train")
      routed = [("train", c) for c in candidates]
    else:
      names = [os.path.basename(c[2]) for c in candidates]
      if any(n.startswith(tuple(PREFIX_TO_SPLIT)) for n in names):
        provided += ["validation", "test"]
        routed = []
        for name, candidate in zip(names, candidates):
          split = next((s for p, s in PREFIX_TO_SPLIT.items() if name.startswith(p)), None)
          if split is None:
            out.skip("no_usage_prefix", candidate[0])
          else:
            routed.append((split, candidate))
      else:
        provided.append("test")
        routed = [("test", c) for c in candidates]
    for split, (example_id, label, path) in routed:
      pixels, reason = _decode_image(path)
      if reason:
        out.skip(reason, example_id)
      else:
        out.add(split, example_id, label, pixels)
  return provided


def _has_class_folders(split_dir: str) -> bool:
  return any(_is_dir(e) and e.name.lower() in EMOTIONS for e in _sorted_entries(split_dir))


def find_sources(manual_dir: str) -> list[tuple[str, str]]:
  """Returns every (layout, path) found in manual_dir or one folder down, preferred first.

  Preference: fer2013.csv, then fer2013.tar.gz (the same CSV, slower to read),
  then image folders.
  """
  roots = [manual_dir] + [e.path for e in _sorted_entries(manual_dir) if _is_dir(e)]
  found = {"csv": [], "tar_gz": [], "image_folders": []}
  for root in roots:
    if os.path.isfile(os.path.join(root, CSV_NAME)):
      found["csv"].append(os.path.join(root, CSV_NAME))
    if os.path.isfile(os.path.join(root, TAR_NAME)):
      found["tar_gz"].append(os.path.join(root, TAR_NAME))
    if any(_has_class_folders(d.path) for d in _split_dirs(root).values()):
      found["image_folders"].append(root)
  return [(layout, path) for layout, paths in found.items() for path in paths]
