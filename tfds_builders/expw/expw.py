"""ExpW (Expression in-the-Wild) face crops as ArrayRecord, built without TensorFlow.

    python -m fer_jax.data build expw --config gray48 --manual_dir ~/ExpW
    python -m fer_jax.data build expw --config rgb96 --manual_dir ~/ExpW --set margin=0.3

The accepted layout, the crop rule, the published split and the skip rules are documented in
README.md beside this file; the TensorFlow-free parts live in `crop.py` (also run by workers).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data.faces import EMOTIONS
from tfds_builders.expw import crop

LABEL_FILES: tuple[str, ...] = ("label.lst", "label/label.lst")
IMAGE_DIRS: tuple[str, ...] = ("origin", "image/origin", "image", "Images")
SPLIT_RULE = ("bucket = int.from_bytes(sha256(image_name.encode('utf-8')).digest()[:8], 'big') % 100; "
              "train if bucket < 80, validation if bucket < 90, else test")

_CITATION = """\
@inproceedings{SOCIALRELATION_2017,
  author = {Zhanpeng Zhang, Ping Luo, Chen Change Loy, and Xiaoou Tang},
  title = {From Facial Expression Recognition to Interpersonal Relation Prediction},
  booktitle = {arXiv:1609.06426v2},
  month = September,
  year = {2016}
}
"""


def find_layout(manual_dir: str | os.PathLike[str]) -> tuple[str, str]:
  """Returns (label file, image folder) inside an ExpW download, or raises naming what is expected."""
  manual_dir = os.fspath(manual_dir)
  label_path = next((os.path.join(manual_dir, p) for p in LABEL_FILES
                     if os.path.isfile(os.path.join(manual_dir, p))), None)
  if label_path is None:
    raise FileNotFoundError(
        f"ExpW label file not found: expected {os.path.join(manual_dir, LABEL_FILES[0])} "
        f"(or {os.path.join(manual_dir, LABEL_FILES[1])}). Pass the folder of your ExpW download "
        "that holds label.lst and origin/ as --manual_dir.")
  image_dir = next((os.path.join(manual_dir, p) for p in IMAGE_DIRS
                    if os.path.isdir(os.path.join(manual_dir, p))), None)
  if image_dir is None:
    raise FileNotFoundError(
        f"ExpW image folder not found: expected {os.path.join(manual_dir, IMAGE_DIRS[0])} "
        f"(or {', '.join(IMAGE_DIRS[1:])} under {manual_dir}) holding the scene images named in "
        "label.lst. Extract origin.7z.001... there.")
  return label_path, image_dir


def _check_number(name: str, value: Any, *, integer: bool, low: float, high: float | None = None) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
    kind = "an integer" if integer else "a number"
    raise ValueError(f"expw config field {name} must be {kind}, got {value!r}.")
  if not math.isfinite(value) or value < low or (high is not None and value > high):
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"expw config field {name} must be {bounds}, got {value!r}.")
  return int(value) if integer else float(value)


@dataclasses.dataclass(eq=False)
class ExpwConfig(tfds.core.BuilderConfig):
  """How faces are cut out of the ExpW scenes.

  Attributes:
    image_size: side S of the square output crops.
    channels: 1 (grey, like FER2013) or 3 (RGB).
    margin: fraction of the box height (width) added above and below (left and right).
    min_confidence: drop faces whose detector confidence is below this; None keeps all.
    encoding: how tfds stores the image tensor: 'bytes' (raw) or 'zlib'.
  """
  image_size: int = 48
  channels: int = 1
  margin: float = 0.2
  min_confidence: float | None = None
  encoding: str = "bytes"

  def __post_init__(self):
    self.image_size = int(_check_number("image_size", self.image_size, integer=True, low=1, high=4096))
    if self.channels not in (1, 3) or isinstance(self.channels, bool):
      raise ValueError(f"expw config field channels must be 1 (grey) or 3 (RGB), got {self.channels!r}.")
    self.margin = _check_number("margin", self.margin, integer=False, low=0.0, high=10.0)
    if self.min_confidence is not None:
      self.min_confidence = _check_number("min_confidence", self.min_confidence, integer=False,
                                          low=-math.inf)
    if self.encoding not in ("bytes", "zlib"):
      raise ValueError(f"expw config field encoding must be 'bytes' or 'zlib', got {self.encoding!r}.")


class _BuildState:
  """What one build saw: skips by reason and written faces by split and label; becomes the report."""

  def __init__(self, config: ExpwConfig, label_path: str, image_dir: str, manual_dir: str):
    self.config = config
    self.label_file = os.path.relpath(label_path, manual_dir)
    self.image_dir = os.path.relpath(image_dir, manual_dir)
    self.skips = crop.SkipLog()
    self.line_stats: dict[str, int] = {}
    self.images_listed = 0
    self.splits: list[str] = []
    self.splits_done: list[str] = []
    self.images_written = {s: 0 for s in crop.SPLITS}
    self.counts = {name: {s: 0 for s in crop.SPLITS} for name in EMOTIONS}

  def written(self, split: str) -> int:
    return sum(by_split[split] for by_split in self.counts.values())

  def report(self) -> dict[str, Any]:
    """JSON-ready build report (stored in info.metadata['build_report'])."""
    fractions = {}
    for name, by_split in self.counts.items():
      total = sum(by_split.values())
      fractions[name] = {s: round(n / total, 4) if total else 0.0 for s, n in by_split.items()}
    skipped = dict(self.skips.counts)
    cfg = self.config
    return {
        "complete": sorted(self.splits_done) == sorted(self.splits),
        "label_file": self.label_file,
        "image_dir": self.image_dir,
        "settings": {"image_size": cfg.image_size, "channels": cfg.channels, "margin": cfg.margin,
                     "min_confidence": cfg.min_confidence, "encoding": cfg.encoding},
        "min_confidence": cfg.min_confidence,
        "split_rule": SPLIT_RULE,
        "lines": self.line_stats.get("lines", 0),
        "blank_lines": self.line_stats.get("blank_lines", 0),
        "images_listed": self.images_listed,
        "faces_written": sum(self.written(s) for s in crop.SPLITS),
        "skipped_total": sum(skipped.values()),
        "skipped": skipped,
        "skipped_images": dict(self.skips.images),
        "skip_examples": {k: list(v) for k, v in sorted(self.skips.examples.items())},
        "examples_per_split": {s: self.written(s) for s in crop.SPLITS},
        "images_per_split": dict(self.images_written),
        "splits_without_faces": [s for s in crop.SPLITS if s not in self.splits],
        "label_split_counts": self.counts,
        "label_split_fractions": fractions,
    }


def _summary(counts: dict[str, int]) -> str:
  return ", ".join(f"{n} {reason}" for reason, n in counts.items() if n) or "none"


class Expw(tfds.core.GeneratorBasedBuilder):
  """ExpW face crops with a fixed per-image 80/10/10 train/validation/test split."""

  # tfds derives code_path via importlib_resources, which tensorflow-datasets does not install.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Crops from label.lst boxes plus margin; per-image sha256 80/10/10 split."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download ExpW (https://mmlab.ie.cuhk.edu.hk/projects/socialrelation/index.html), extract
  origin.7z.001... and pass the folder holding `label.lst` and `origin/` as --manual_dir
  (`label/label.lst`, `image/origin/`, `image/` and `Images/` are found too).
  """
  BUILDER_CONFIGS = [
      ExpwConfig(name="gray48", image_size=48, channels=1,
                 description="48x48 grey face crops, the FER2013 format."),
      ExpwConfig(name="rgb96", image_size=96, channels=3,
                 description="96x96 RGB face crops."),
  ]

  def __init__(self, *, num_workers: int | None = None, **kwargs: Any):
    """`num_workers`: processes decoding images (0: in this process; None: one per spare core).

    A build setting, not part of the data, so it is not a config field: changing
    it must not rename the dataset.
    """
    super().__init__(**kwargs)
    self.num_workers = crop.find_default_workers() if num_workers is None else int(
        _check_number("num_workers", num_workers, integer=True, low=0, high=512))

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Expression in-the-Wild: faces cut from web scene images by their label.lst "
                     f"boxes plus a {cfg.margin:g} margin, {cfg.image_size}x{cfg.image_size}x"
                     f"{cfg.channels}, 7 emotions. Build report in info.metadata['build_report']."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(cfg.image_size, cfg.image_size, cfg.channels),
                                          dtype=np.uint8, encoding=cfg.encoding),
            "label": tfds.features.ClassLabel(names=EMOTIONS),
            "id": tfds.features.Text(doc="<image_name>/<face_id>, unique and stable"),
            "confidence": tfds.features.Scalar(dtype=np.float32, doc="face detector confidence"),
        }),
        supervised_keys=("image", "label"),
        homepage="https://mmlab.ie.cuhk.edu.hk/projects/socialrelation/index.html",
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Any]]:
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # tfds says "does not exist or is empty"; make it catchable
      raise FileNotFoundError(str(e)) from None
    label_path, image_dir = find_layout(manual_dir)
    cfg = self.builder_config
    state = _BuildState(cfg, label_path, image_dir, manual_dir)

    # surrogateescape: a name that is not UTF-8 keeps its bytes, so it matches the file os.listdir finds.
    with open(label_path, encoding="utf-8", errors="surrogateescape") as f:
      faces, state.line_stats = crop.parse_label_lines(f, state.skips, cfg.min_confidence)
    by_image: dict[str, list[crop.Face]] = {}
    for face in faces:
      by_image.setdefault(face.image_name, []).append(face)
    state.images_listed = len(by_image)

    present = set(os.listdir(image_dir))
    per_split: dict[str, list[tuple[str, list[crop.Face]]]] = {s: [] for s in crop.SPLITS}
    for name in sorted(by_image):
      if name in present:
        per_split[crop.split_for_image(name)].append((name, by_image[name]))
      else:
        state.skips.skip_image(crop.MISSING_IMAGE, by_image[name],
                               f"not in {state.image_dir}{os.sep}")
    state.splits = [s for s in crop.SPLITS if per_split[s]]
    if not state.splits:
      hint = ""
      if state.skips.images[crop.MISSING_IMAGE]:
        hint = (f" None of the {state.skips.images[crop.MISSING_IMAGE]} listed images is in "
                f"{image_dir}; is that the extracted image folder?")
      raise ValueError(f"No usable faces in {label_path}: {state.line_stats['lines']} lines, skipped: "
                       f"{_summary(state.skips.counts)}.{hint}")
    self.info.metadata["build_report"] = state.report()
    return {s: self._generate_examples(s, per_split[s], image_dir, state) for s in state.splits}

  def _generate_examples(self, split: str, images: Sequence[tuple[str, list[crop.Face]]],
                         image_dir: str, state: _BuildState) -> Iterator[tuple[str, dict[str, Any]]]:
    """Decodes each image once (in worker processes) and yields its faces keyed `<image>/<face_id>`."""
    cfg = self.builder_config
    params = crop.CropParams(cfg.image_size, cfg.channels, cfg.margin)
    chunks = crop.chunked(images, crop.chunk_size_for(len(images), self.num_workers))
    tasks = (("crop", params, [(os.path.join(image_dir, name), tuple(f.box for f in faces))
                               for name, faces in chunk]) for chunk in chunks)
    results = crop.ordered_map(crop.process_chunk, tasks, min(self.num_workers, len(chunks)))
    try:
      for chunk, chunk_results in zip(chunks, results):
        for (_, faces), result in zip(chunk, chunk_results):
          if result.status != "ok":
            state.skips.skip_image(result.status, faces, result.detail)
            continue
          crops = iter(result.crops if result.crops is not None else ())
          wrote = False
          for face, inside in zip(faces, result.inside):
            if not inside:
              state.skips.skip(crop.BOX_OUTSIDE_IMAGE, face.line_no,
                               f"{face.key}: box (top, left, right, bottom) {face.box} does not "
                               f"overlap the {result.width}x{result.height} image")
              continue
            state.counts[EMOTIONS[face.label]][split] += 1
            wrote = True
            yield face.key, {"image": next(crops), "label": face.label, "id": face.key,
                             "confidence": np.float32(face.confidence)}
          state.images_written[split] += wrote
    finally:
      results.close()
    state.splits_done.append(split)
    self.info.metadata["build_report"] = state.report()
    if not state.written(split):
      raise ValueError(f"No usable faces for the {split} split of ExpW in {image_dir}: all "
                       f"{len(images)} of its images were skipped ({_summary(state.skips.images)}).")
