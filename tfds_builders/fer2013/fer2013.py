"""FER2013 (48x48 grey faces, 7 emotions) as a TFDS builder writing ArrayRecord.

Reads what users download by hand (see MANUAL_DOWNLOAD_INSTRUCTIONS): the
original `fer2013.csv`, the `fer2013.tar.gz` that wraps it, or the popular
image-folder redistribution. Bad rows and bad files are skipped, counted by
reason and kept in `info.metadata['build_report']`, so a build never dies on
one broken line of a 300 MB file and the user still learns what was dropped.

Needs no TensorFlow: images are stored as raw uint8 tensors (tfds' `Image`
feature needs TF to encode PNGs) and the default file format is ArrayRecord.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
import dataclasses
import os
import tarfile
import warnings
import zlib
from typing import Any

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

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

_CITATION = """\
@inproceedings{goodfellow2013challenges,
  title={Challenges in representation learning: A report on three machine learning contests},
  author={Goodfellow, Ian J and Erhan, Dumitru and Carrier, Pierre Luc and Courville, Aaron and
          Mirza, Mehdi and Hamner, Ben and Cukierski, Will and Tang, Yichuan and Thaler, David and
          Lee, Dong-Hyun and others},
  booktitle={International Conference on Neural Information Processing},
  pages={117--124},
  year={2013},
}
"""


class ManualDataNotFoundError(FileNotFoundError):
  """The manual_dir holds none of the FER2013 layouts this builder reads."""


class Fer2013DataError(ValueError):
  """The FER2013 files were found but cannot be used (bad header, corrupt archive, nothing usable)."""


def _where_to_get_it(manual_dir: str) -> str:
  return (f"Download fer2013.csv or fer2013.tar.gz from Kaggle's "
          f"'challenges-in-representation-learning-facial-expression-recognition-challenge' "
          f"({KAGGLE_CSV_URL}), or the image folders from Kaggle 'msambare/fer2013' "
          f"({KAGGLE_FOLDERS_URL}), and put them in {manual_dir} (or pass --manual_dir).")


@dataclasses.dataclass
class _Collected:
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


def read_csv(lines: Iterable[bytes], source: str, out: _Collected) -> None:
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


def read_tar(path: str, out: _Collected) -> None:
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


def read_folders(root: str, out: _Collected) -> list[str]:
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


class Fer2013(tfds.core.GeneratorBasedBuilder):
  """FER2013 facial expressions from the files users download by hand."""

  name = "fer2013"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "CSV, tar.gz and image-folder layouts; ArrayRecord; build report."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put ONE of these in manual_dir (directly or one folder down):
  * fer2013.csv or fer2013.tar.gz (the original release; columns emotion,pixels,Usage), from
    Kaggle "challenges-in-representation-learning-facial-expression-recognition-challenge":
    {KAGGLE_CSV_URL}
  * the image folders train/<class>/*.jpg and test/<class>/*.jpg (class folders angry disgust
    fear happy neutral sad surprise), from Kaggle "msambare/fer2013": {KAGGLE_FOLDERS_URL}
FER2013 is research-only data; you must accept its terms on Kaggle yourself.
"""

  # tfds derives code_path via the `importlib_resources` backport, which it only requires on
  # Python < 3.9, so the lookup fails on newer Pythons for builders in an installed package.
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    # ArrayRecord by default: it is random-access and needs no TensorFlow, unlike TFRecord.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("FER2013: 35,887 48x48 grey face images labelled with one of 7 emotions "
                     "(Goodfellow et al., 2013). Splits follow the original Usage column: "
                     "Training -> train, PublicTest -> validation, PrivateTest -> test."),
        features=tfds.features.FeaturesDict({
            # Raw bytes on disk: ~10x faster to write and half the size of tf.Example int64 lists.
            "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=list(EMOTIONS)),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=KAGGLE_CSV_URL,
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> str:
    try:
      return os.fspath(dl_manager.manual_dir)
    except AssertionError:
      # tfds asserts when the folder is missing or empty; turn that into our own, actionable error.
      manual_dir = getattr(dl_manager, "_manual_dir", None) or "<manual_dir>"
      raise ManualDataNotFoundError(self._not_found_message(os.fspath(manual_dir))) from None

  @staticmethod
  def _not_found_message(manual_dir: str) -> str:
    state = "does not exist" if not os.path.isdir(manual_dir) else "holds no FER2013 data"
    return (f"FER2013 manual_dir {manual_dir} {state}. Looked there and one folder down for "
            f"{CSV_NAME}, {TAR_NAME}, or image folders train/<class>/ and test/<class>/ "
            f"(class folders {', '.join(sorted(EMOTIONS))}; .jpg/.png). " + _where_to_get_it(manual_dir))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = self._manual_dir(dl_manager)
    sources = find_sources(manual_dir)
    if not sources:
      raise ManualDataNotFoundError(self._not_found_message(manual_dir))
    layout, path = sources[0]
    if len(sources) > 1:
      logging.warning("fer2013: several sources in %s; using %s %s, ignoring %s.", manual_dir,
                      layout, path, [f"{l} {p}" for l, p in sources[1:]])
    out = _Collected()
    if layout == "csv":
      with open(path, "rb") as f:
        read_csv(f, path, out)
      provided = list(SPLITS)
    elif layout == "tar_gz":
      read_tar(path, out)
      provided = list(SPLITS)
    else:
      provided = read_folders(path, out)

    counts = {split: len(out.examples[split]) for split in provided}
    skipped = {reason: out.skipped[reason] for reason in sorted(out.skipped)}
    if not any(counts.values()):
      raise Fer2013DataError(
          f"No usable FER2013 examples in {path} ({layout}); skipped {sum(skipped.values())} "
          f"by reason {skipped}, e.g. {out.skipped_ids}. " + _where_to_get_it(manual_dir))
    # tfds cannot write a split with no examples, so an empty split is left out and reported.
    self.info.metadata["build_report"] = {
        "layout": layout,
        "source": path,
        "ignored_sources": [{"layout": l, "path": p} for l, p in sources[1:]],
        "splits_provided": provided,
        "empty_splits": [s for s in provided if not counts[s]],
        "written": {s: n for s, n in counts.items() if n},
        "skipped": skipped,
        "skipped_total": sum(skipped.values()),
        "skipped_ids": {r: out.skipped_ids[r] for r in sorted(out.skipped_ids)},
    }
    return {split: self._generate_examples(out.examples[split]) for split in provided if counts[split]}

  def _generate_examples(self, examples: list[tuple[str, int, np.ndarray]]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    for example_id, label, image in examples:
      yield example_id, {"image": image, "label": label, "id": example_id}

  def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager,
                            download_config: tfds.download.DownloadConfig) -> None:
    super()._download_and_prepare(dl_manager, download_config)
    report = self.info.metadata.get("build_report")
    if report is None:
      return
    # What the writer actually wrote (differs from what was read only under max_examples_per_split).
    report["written"] = {name: split.num_examples for name, split in self.info.splits.items()}
    written = ", ".join(f"{s}={n}" for s, n in report["written"].items())
    log = logging.warning if report["skipped_total"] or report["empty_splits"] else logging.info
    log("fer2013 build from %s %s: wrote %s; skipped %d %s; empty splits (not written): %s.",
        report["layout"], report["source"], written, report["skipped_total"], report["skipped"],
        report["empty_splits"] or "none")
