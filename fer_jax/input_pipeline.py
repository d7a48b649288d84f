"""grain input pipelines over our ArrayRecord tfds datasets.

Training: an infinite stream of full, augmented batches. Each host takes a
strided shard of the train split; `ShuffledKeyBatches` gives batch k's keys
from a permutation of that shard drawn per epoch from (seed, epoch), and
`TrainBatch` reads, decodes and augments the batch with grain's random_map
rng, seeded from (seed, k). So batch k is the same whatever `num_workers`
is (grain workers take batches k = w, w + W, ...), and the iterator's
get_state()/set_state() resume on exactly the next batch.

Evaluation: each example of the split exactly once across all hosts, padded
to full batches with mask=False, the same number of batches on every host.

Nothing here uses JAX: grain worker processes unpickle these objects (grain
itself imports jax; the workers pin it to the CPU and never touch a device).

Config read (`config.data` unless noted): name, config, data_dir,
train_split, eval_split, num_workers, prefetch, normalization,
read_threads (default 1), eval_read_threads (default 2),
norm_stats_examples (default 4096), augment.*; config.batch_size,
config.eval_batch_size, config.seed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
import threading
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from absl import flags
from absl import logging
import grain
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

import tfds_builders
from fer_jax import augment as augment_lib
from fer_jax import data as data_lib

# Datasets that ensure_built() may build on its own (no downloads needed).
AUTO_BUILD = ("synthetic_faces",)
_STATS_FILE = "fer_jax_normalization.json"
_NORMALIZATIONS = ("unit", "standardize")


class DatasetNotBuiltError(FileNotFoundError):
  """The dataset has not been prepared under the configured data_dir."""


class DatasetInfo(NamedTuple):
  """What the model and trainer need to know about the data."""
  name: str
  image_shape: tuple[int, int, int]  # training input (after any random crop)
  eval_image_shape: tuple[int, int, int]  # full-size eval images
  num_classes: int
  class_names: tuple[str, ...]
  num_examples: Mapping[str, int]  # per split
  data_dir: str  # the versioned folder holding the ArrayRecord files


# ---------------------------------------------------------------------------
# Builders.


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
  value = cfg.get(key, default) if cfg is not None else default
  return default if value is None else value


def _builder(config: Any) -> tfds.core.DatasetBuilder:
  """Our builder for config.data (tfds-registered names also work, e.g. in tests)."""
  name = config.data.name
  builder_config = _cfg_get(config.data, "config")
  data_dir = _cfg_get(config.data, "data_dir") or data_lib.DEFAULT_DATA_DIR
  if name in tfds_builders.BUILDER_MODULES:
    return data_lib.make_builder(name, config=builder_config, data_dir=data_dir)
  return tfds.builder(name, config=builder_config, data_dir=data_dir, file_format="array_record")


def _not_built_message(config: Any, builder: tfds.core.DatasetBuilder) -> str:
  name = config.data.name
  data_dir = _cfg_get(config.data, "data_dir") or data_lib.DEFAULT_DATA_DIR
  builder_config = _cfg_get(config.data, "config")
  config_flag = f" --config {builder_config}" if builder_config else ""
  if name in AUTO_BUILD:
    how = (f"  python -m fer_jax.data build {name}{config_flag} --data_dir {data_dir}\n"
           "or call fer_jax.input_pipeline.ensure_built(config) (the trainer does).")
  else:
    files = textwrap.indent(textwrap.dedent(type(builder).MANUAL_DOWNLOAD_INSTRUCTIONS or "").strip(), "    ")
    how = (f"  python -m fer_jax.data build {name}{config_flag} --data_dir {data_dir} "
           "--manual_dir <folder with the downloaded files>\n"
           f"where the manual_dir holds:\n{files}\n"
           f"(more in tfds_builders/{name}/README.md). Or point config.data.data_dir "
           "(or $TFDS_DATA_DIR) at the folder where it was built.")
  return f"Dataset {name!r} is not built: nothing prepared under {builder.data_dir}. Build it with:\n{how}"


def prepared_builder(config: Any) -> tfds.core.DatasetBuilder:
  """The builder of config.data, which must already be built (else DatasetNotBuiltError)."""
  builder = _builder(config)
  if not builder.is_prepared():
    raise DatasetNotBuiltError(_not_built_message(config, builder))
  array_record = tfds.core.FileFormat.ARRAY_RECORD
  file_format = builder.info.file_format
  if file_format not in (None, array_record) and array_record not in builder.info.alternative_file_formats:
    raise ValueError(f"{builder.data_dir} holds {file_format.value} files; grain needs ArrayRecord. Rebuild "
                     f"with `python -m fer_jax.data build {config.data.name} ...` (it writes ArrayRecord).")
  return builder


def ensure_built(config: Any) -> DatasetInfo:
  """Builds synthetic_faces if missing; for the real datasets, raises a DatasetNotBuiltError that says how.

  With several hosts sharing one disk, call it on process 0 and wait for it
  before the others read.
  """
  builder = _builder(config)
  if not builder.is_prepared():
    if config.data.name not in AUTO_BUILD:
      raise DatasetNotBuiltError(_not_built_message(config, builder))
    data_lib.build(config.data.name, config=_cfg_get(config.data, "config"),
                   data_dir=_cfg_get(config.data, "data_dir"))
  return dataset_info(config)


def dataset_info(config: Any) -> DatasetInfo:
  """Shapes, classes and split sizes; raises DatasetNotBuiltError if the dataset is missing."""
  builder = prepared_builder(config)
  features = builder.info.features
  image_shape = tuple(int(d) for d in features["image"].shape)
  if len(image_shape) != 3:
    raise ValueError(f"Expected (H, W, C) images, {config.data.name} has shape {image_shape}.")
  aug = augment_lib.AugmentConfig.from_config(_cfg_get(config.data, "augment"))
  height, width = aug.output_hw(*image_shape[:2])
  label = features["label"]
  return DatasetInfo(
      name=config.data.name,
      image_shape=(height, width, image_shape[2]),
      eval_image_shape=image_shape,
      num_classes=int(label.num_classes),
      class_names=tuple(label.names),
      num_examples={split: int(info.num_examples) for split, info in builder.info.splits.items()},
      data_dir=str(builder.data_dir),
  )


# ---------------------------------------------------------------------------
# Reading and decoding.


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  byte = buf[pos]
  if byte < 0x80:
    return byte, pos + 1
  value, shift, pos = byte & 0x7F, 7, pos + 1
  while True:
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7


def _scan_example(record: bytes) -> dict[bytes, tuple[int, int, int]] | None:
  """Walks a serialized tf.Example: feature name -> (list field number, start, end) of its one value field.

  List field numbers: 1 BytesList, 2 FloatList, 3 Int64List; (start, end)
  delimits the packed values (or the single bytes value). Returns None for
  anything this fast path does not expect (several bytes values, unpacked
  ints, empty lists); callers then use the protobuf parser. Tags are single
  bytes in tf.Example, and single-byte lengths are read inline: this loop is
  the per-record Python cost of decode_batch.
  """
  out = {}
  n, pos = len(record), 0
  try:
    while pos < n:
      tag = record[pos]
      length = record[pos + 1]
      pos += 2
      if length >= 0x80:
        length, pos = _varint(record, pos - 1)
      if tag != 0x0A:  # not Example.features: skip a length-delimited field, bail on others
        if tag & 7 != 2:
          return None
        pos += length
        continue
      end = pos + length
      while pos < end:  # Features.feature: map<string, Feature> entries
        tag = record[pos]
        length = record[pos + 1]
        pos += 2
        if length >= 0x80:
          length, pos = _varint(record, pos - 1)
        if tag != 0x0A:
          return None
        entry_end, name, value = pos + length, None, None
        while pos < entry_end:
          tag = record[pos]
          length = record[pos + 1]
          pos += 2
          if length >= 0x80:
            length, pos = _varint(record, pos - 1)
          if tag == 0x0A:
            name = record[pos:pos + length]
          elif tag == 0x12:
            value = pos, pos + length
          else:
            return None
          pos += length
        if name is None or value is None:
          return None
        # Feature is a oneof of three list messages, each holding field 1 (packed, or one bytes value).
        vpos, vend = value
        kind = record[vpos]
        length = record[vpos + 1]
        vpos += 2
        if length >= 0x80:
          length, vpos = _varint(record, vpos - 1)
        if kind not in (0x0A, 0x12, 0x1A) or vpos + length != vend or vpos == vend:
          return None
        tag = record[vpos]
        length = record[vpos + 1]
        vpos += 2
        if length >= 0x80:
          length, vpos = _varint(record, vpos - 1)
        if tag != 0x0A or vpos + length != vend:
          return None
        out[name] = kind >> 3, vpos, vend
  except IndexError:
    return None
  return out


def _uint8_from_varints(data: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray | None:
  """Decodes concatenated packed-varint payloads known to hold uint8 values, vectorised.

  A value v < 128 is the byte v; 128 <= v < 256 is the two bytes (v, 1). So
  the values are exactly the bytes not preceded by a continuation byte.
  `starts` are the payload offsets in `data`; tfds wrote each with exactly
  `size` values, so checking the total is enough. Returns [len(starts), size]
  uint8, or None if the bytes do not fit that.
  """
  continued = data >= 0x80
  ends = np.append(starts[1:], data.size)
  if continued[ends - 1].any() or (continued[:-1] & (data[1:] != 1)).any():
    return None
  if data.size - np.count_nonzero(continued) != len(starts) * size:
    return None
  first = np.ones(data.size, bool)
  np.logical_not(continued[:-1], out=first[1:])
  return np.compress(first, data).reshape(len(starts), size)


class ExampleDecoder:
  """Decodes serialized tf.Examples of a fixed feature set to numpy, several times faster than tfds.

  Our images are uint8 `Tensor`s, which tfds stores as packed int64 varints,
  and protobuf-parsing those dominates tfds's time. `decode_batch` walks the
  wire format of a whole batch and decodes all pixels in one numpy pass;
  records it does not expect fall back to the protobuf parser, and feature
  types other than fixed-shape `Tensor` (encoding none/bytes/zlib), `Scalar`,
  `ClassLabel` and `Text` to tfds's own decoding. Values match tfds's
  `deserialize_example_np` (Text as bytes). Holds only plain data, so it
  pickles cheaply.
  """

  def __init__(self, features: tfds.features.FeaturesDict):
    self._specs: list[tuple[bytes, str, str, np.dtype, tuple[int, ...]]] = []
    self._fallback = None
    for key, feature in features.items():
      kind = self._kind(feature)
      if kind is None:
        self._fallback = features
        self._specs = []
        break
      self._specs.append((key.encode(), key, kind, np.dtype(feature.np_dtype), tuple(feature.shape)))
    self._wire = self._fallback is None and all(
        kind != "values" or dtype == np.uint8 for _, _, kind, dtype, _ in self._specs)

  @staticmethod
  def _kind(feature: Any) -> str | None:
    if isinstance(feature, tfds.features.ClassLabel):
      return "scalar"
    if isinstance(feature, tfds.features.Text):
      return "text"
    if type(feature) not in (tfds.features.Tensor, tfds.features.Scalar):
      return None
    shape, dtype = tuple(feature.shape), np.dtype(feature.np_dtype)
    if any(d is None or d < 0 for d in shape) or dtype.kind not in "biuf" or dtype == np.uint64:
      return None
    encoding = str(feature.to_json_content().encoding or "none").lower()
    if encoding in ("bytes", "zlib"):
      return encoding if shape else None
    return "values" if shape else "scalar"

  def __call__(self, record: bytes) -> dict[str, Any]:
    """Decodes one record (protobuf parser; for many records at once use decode_batch)."""
    if self._fallback is not None:
      return self._fallback.deserialize_example_np(record)
    feature_map = tf_example_pb2.Example.FromString(record).features.feature
    out = {}
    for _, key, kind, dtype, shape in self._specs:
      feature = feature_map[key]
      if kind == "values":
        values = feature.int64_list.value if dtype.kind in "biu" else feature.float_list.value
        out[key] = np.array(values, dtype).reshape(shape)
      elif kind == "scalar":
        out[key] = (feature.int64_list.value[0] if dtype.kind in "biu"
                    else feature.float_list.value[0])
      elif kind == "text":
        out[key] = feature.bytes_list.value[0]
      else:  # bytes / zlib
        raw = feature.bytes_list.value[0]
        if kind == "zlib":
          raw = zlib.decompress(raw)
        out[key] = np.frombuffer(raw, dtype).reshape(shape).copy()
    return out

  def decode_batch(self, records: Sequence[bytes]) -> dict[str, Any]:
    """Decodes records into stacked arrays (Text features: lists of bytes)."""
    out = self._decode_wire(records) if self._wire and records else None
    if out is not None:
      return out
    examples = [self(r) for r in records]
    return {key: [e[key] for e in examples] if kind == "text"
            else np.stack([np.asarray(e[key], dtype) for e in examples]).reshape(len(examples), *shape)
            for _, key, kind, dtype, shape in self._specs}

  def _decode_wire(self, records: Sequence[bytes]) -> dict[str, Any] | None:
    scans = [_scan_example(r) for r in records]
    n = len(records)
    out = {}
    for name, key, kind, dtype, shape in self._specs:
      try:
        fields = [scan[name] for scan in scans]
      except (TypeError, KeyError):  # a scan gave up, or the feature is missing
        return None
      list_kinds = {f[0] for f in fields}
      if kind == "values":  # uint8 only, see _wire
        if list_kinds != {3}:
          return None
        chunks = [r[s:e] for r, (_, s, e) in zip(records, fields)]
        starts = np.cumsum([0] + [len(c) for c in chunks[:-1]])
        values = _uint8_from_varints(np.frombuffer(b"".join(chunks), np.uint8), starts, math.prod(shape))
        if values is None:
          return None
        out[key] = values.reshape(n, *shape)
      elif kind == "scalar":
        if list_kinds == {3}:
          values = []
          for r, (_, s, e) in zip(records, fields):
            value, pos = _varint(r, s)
            if pos != e:
              return None
            values.append(value - (1 << 64) if value >= 1 << 63 else value)
          out[key] = np.array(values, dtype)
        elif list_kinds == {2} and all(e - s == 4 for _, s, e in fields):
          out[key] = np.frombuffer(b"".join(r[s:e] for r, (_, s, e) in zip(records, fields)), "<f4").astype(dtype)
        else:
          return None
      elif list_kinds != {1}:
        return None
      elif kind == "text":
        out[key] = [r[s:e] for r, (_, s, e) in zip(records, fields)]
      else:  # bytes / zlib
        chunks = [r[s:e] if kind == "bytes" else zlib.decompress(r[s:e]) for r, (_, s, e) in zip(records, fields)]
        if any(len(c) != dtype.itemsize * math.prod(shape) for c in chunks):
          return None
        out[key] = np.frombuffer(b"".join(chunks), dtype).reshape(n, *shape).copy()
    return out


class ExampleSource:
  """grain RandomAccessDataSource: decoded examples of one split, read straight from ArrayRecord."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
    if split not in builder.info.splits and "[" not in split:
      raise ValueError(f"{builder.name} has no split {split!r}; it has {sorted(builder.info.splits)}.")
    # tfds resolves the split (slices such as 'train[:10%]' included) to file
    # instructions; we keep its raw ArrayRecord reader, which pickles without open files.
    self._records = builder.as_data_source(split=split).data_source
    self._decode = ExampleDecoder(builder.info.features)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._decode(self._records[index])

  def read_batch(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked uint8 images and int32 labels of `keys`, with one batched ArrayRecord read."""
    batch = self._decode.decode_batch(self._records.__getitems__([int(k) for k in keys]))
    return batch["image"], batch["label"].astype(np.int32)

  def __repr__(self) -> str:
    return f"ExampleSource({self._records!r})"


# ---------------------------------------------------------------------------
# Normalisation.


class Normalizer:
  """Maps float32 [0, 1] images to the model's input range ('unit' leaves them as they are)."""

  def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    self.mean = None if mean is None else np.asarray(mean, np.float32)
    self.inv_std = None if std is None else (1.0 / np.asarray(std, np.float32)).astype(np.float32)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    if self.mean is None:
      return images
    images -= self.mean
    images *= self.inv_std
    return images


_STATS_CACHE: dict[tuple[str, str, int], tuple[list[float], list[float]]] = {}


def label_counts(config: Any, split: str | None = None) -> np.ndarray:
  """Examples per class in `split` (the train split by default), for class weighting."""
  builder = prepared_builder(config)
  source = ExampleSource(builder, split or _cfg_get(config.data, "train_split", "train"))
  counts = np.zeros(builder.info.features["label"].num_classes, np.int64)
  for chunk in np.array_split(np.arange(len(source)), max(1, len(source) // 1024)):
    counts += np.bincount(source.read_batch(chunk)[1], minlength=len(counts))
  return counts


def normalization_stats(config: Any) -> tuple[list[float], list[float]]:
  """Per-channel (mean, std) of train images in [0, 1] units, from an evenly spaced sample.

  Computed once per dataset and cached in memory and in a JSON file next to
  the ArrayRecord files (when that folder is writable).
  """
  builder = prepared_builder(config)
  split = _cfg_get(config.data, "train_split", "train")
  limit = int(_cfg_get(config.data, "norm_stats_examples", 4096))
  key = (str(builder.data_dir), split, limit)
  if key in _STATS_CACHE:
    return _STATS_CACHE[key]
  path = os.path.join(str(builder.data_dir), _STATS_FILE)
  cached = {}
  try:
    with open(path) as f:
      cached = json.load(f)
  except (OSError, ValueError):
    pass
  entry = cached.get(f"{split}:{limit}")
  if entry is None:
    source = ExampleSource(builder, split)
    indices = np.unique(np.linspace(0, len(source) - 1, min(limit, len(source))).astype(np.int64))
    total = total_sq = 0.0
    for chunk in np.array_split(indices, max(1, len(indices) // 512)):
      images = source.read_batch(chunk)[0].astype(np.float64) / 255.0
      total = total + images.sum(axis=(0, 1, 2))
      total_sq = total_sq + np.square(images).sum(axis=(0, 1, 2))
    count = len(indices) * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 1e-12))
    entry = {"mean": mean.tolist(), "std": std.tolist(), "num_examples": len(indices)}
    cached[f"{split}:{limit}"] = entry
    try:
      with open(path + ".tmp", "w") as f:
        json.dump(cached, f, indent=2)
      os.replace(path + ".tmp", path)
    except OSError as e:
      logging.warning("Could not cache normalization stats in %s: %s", path, e)
  _STATS_CACHE[key] = (entry["mean"], entry["std"])
  return _STATS_CACHE[key]


def _normalizer(config: Any) -> Normalizer:
  mode = _cfg_get(config.data, "normalization", "unit")
  if mode not in _NORMALIZATIONS:
    raise ValueError(f"config.data.normalization must be one of {_NORMALIZATIONS}, got {mode!r}.")
  if mode == "unit":
    return Normalizer()
  return Normalizer(*normalization_stats(config))


# ---------------------------------------------------------------------------
# Pipelines.


def _local_batch_size(global_batch: int, process_count: int, what: str) -> int:
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"config.{what}={global_batch} must be a positive multiple of the "
                     f"process count {process_count} (it is the GLOBAL batch size).")
  return global_batch // process_count


def _derive_seed(seed: int, *tags: int) -> int:
  """A 32-bit seed for one use (shuffle, augmentation) of one process."""
  return int(np.random.SeedSequence([int(seed) % 2**32, *tags]).generate_state(1)[0])


class ShuffledKeyBatches:
  """grain RandomAccessDataSource: batch b of an endless stream of example keys, reshuffled each epoch.

  Position i of the stream is key perm_e[i % n], with e = i // n and perm_e
  a permutation seeded by (seed, e); batches run across epoch boundaries, so
  all are full. Vectorised: grain's per-element shuffle/repeat/batch chain
  cost ~30 us per image here, more than decoding.
  """

  def __init__(self, keys: np.ndarray, batch_size: int, seed: int):
    if not len(keys):
      raise ValueError("ShuffledKeyBatches needs at least one key.")
    self._keys = np.asarray(keys, np.int64)
    self._batch_size = batch_size
    self._seed = seed
    self._perms: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    return {"keys": self._keys, "batch_size": self._batch_size, "seed": self._seed}

  def __setstate__(self, state):
    self.__init__(state["keys"], state["batch_size"], state["seed"])

  def __len__(self) -> int:
    return sys.maxsize

  def _epoch_keys(self, epoch: int) -> np.ndarray:
    with self._lock:
      perm = self._perms.get(epoch)
      if perm is None:
        perm = self._keys[np.random.default_rng([self._seed, epoch]).permutation(len(self._keys))]
        if len(self._perms) >= 4:
          del self._perms[min(self._perms)]
        self._perms[epoch] = perm
      return perm

  def __getitem__(self, index: int) -> np.ndarray:
    n = len(self._keys)
    start = index * self._batch_size
    out = np.empty(self._batch_size, np.int64)
    filled = 0
    while filled < self._batch_size:
      epoch, offset = divmod(start + filled, n)
      take = min(self._batch_size - filled, n - offset)
      out[filled:filled + take] = self._epoch_keys(epoch)[offset:offset + take]
      filled += take
    return out


class CachedExamples:
  """The decoded images and labels of `keys`, read into memory on first use; same `read_batch` as ExampleSource.

  A training step on CPU can outrun reading: ArrayRecord reads and decoding
  cost ~21 us per 48x48 image, a third of the pipeline. FER2013's training split
  decoded is 66 MB. Each process (grain worker) loads its own copy when it
  first reads; pickling to a worker sends only the keys.
  """

  def __init__(self, source: ExampleSource, keys: np.ndarray, chunk: int = 1024):
    self._source = source
    self._keys = np.asarray(keys)
    self._chunk = chunk
    self._slots = self._images = self._labels = None

  def read_batch(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    if self._images is None:
      parts = [self._source.read_batch(self._keys[i:i + self._chunk]) for i in range(0, len(self._keys), self._chunk)]
      self._images = np.concatenate([images for images, _ in parts])
      self._labels = np.concatenate([labels for _, labels in parts])
      self._slots = np.full(len(self._source), -1, np.int64)
      self._slots[self._keys] = np.arange(len(self._keys))
    slots = self._slots[np.asarray(keys)]
    if (slots < 0).any():
      raise KeyError(f"Keys {np.asarray(keys)[slots < 0][:5]} are not among the cached examples.")
    return self._images[slots], self._labels[slots]

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_slots": None, "_images": None, "_labels": None}


def train_reader(source: ExampleSource, keys: np.ndarray, builder: tfds.core.DatasetBuilder,
                  config: Any) -> ExampleSource | CachedExamples:
  """The cache when this process's share of the split fits `data.cache_max_mb` (decoded), else the files."""
  image = builder.info.features["image"]
  megabytes = len(keys) * math.prod(image.shape) * np.dtype(image.np_dtype).itemsize / 2**20
  return CachedExamples(source, keys) if megabytes <= float(_cfg_get(config.data, "cache_max_mb", 0)) else source


class TrainBatch:
  """Reads, augments and normalises one batch of example keys (grain random_map on the key batch).

  grain seeds `rng` from (seed, batch index), so a batch is the same whatever
  the worker count and after a restore.
  """

  def __init__(self, source: ExampleSource | CachedExamples, augment: augment_lib.AugmentConfig,
               normalizer: Normalizer):
    self.source = source
    self.augment = augment
    self.normalizer = normalizer

  def __call__(self, keys: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    images, labels = self.source.read_batch(keys)
    images = augment_lib.augment_batch(images, rng, self.augment)
    return {"image": self.normalizer(images), "label": labels}


def _worker_init(worker_index: int, worker_count: int) -> None:
  """Runs in each grain worker before it reads: one cv2 thread, and JAX pinned to the CPU.

  `import grain` imports jax (for its profiler), so workers cannot avoid the
  import; pinning the platform keeps an accidental device call from grabbing
  the accelerator the trainer holds.
  """
  del worker_index, worker_count
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  os.environ["JAX_PLATFORMS"] = "cpu"
  jax = sys.modules.get("jax")
  if jax is not None:
    jax.config.update("jax_platforms", "cpu")


def create_train_dataset(config: Any, *, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Infinite stream of {'image': float32 [B_local, H', W', C], 'label': int32 [B_local]}.

  B_local = config.batch_size // process_count. Each process reads only its
  strided shard of the train split, shuffled globally (new order each epoch);
  batches are deterministic in (config.seed, process_index, batch index).
  """
  builder = prepared_builder(config)
  batch_size = _local_batch_size(config.batch_size, process_count, "batch_size")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  source = ExampleSource(builder, _cfg_get(config.data, "train_split", "train"))
  augment = augment_lib.AugmentConfig.from_config(_cfg_get(config.data, "augment"))
  augment.output_hw(*builder.info.features["image"].shape[:2])  # validates crop_size early

  # Batches of shuffled example keys (cheap ints); TrainBatch reads each batch in one go.
  keys = np.arange(process_index, len(source), process_count)
  if not len(keys):
    raise ValueError(f"Process {process_index} of {process_count} got no training examples "
                     f"({len(source)} in the split).")
  seed = int(config.seed)
  ds = grain.MapDataset.source(ShuffledKeyBatches(keys, batch_size, _derive_seed(seed, 0, process_index)))
  ds = ds.random_map(TrainBatch(train_reader(source, keys, builder, config), augment, _normalizer(config)),
                     seed=_derive_seed(seed, 1, process_index))
  prefetch = int(_cfg_get(config.data, "prefetch", 2))
  threads = int(_cfg_get(config.data, "read_threads", 1))
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads)))
  num_workers = int(_cfg_get(config.data, "num_workers", 0))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's workers read absl flags; scripts not run under absl.app use the defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=max(prefetch, 1)),
                        worker_init_fn=_worker_init)
  return ds


class EvalBatches:
  """grain RandomAccessDataSource of padded eval batches for one process."""

  def __init__(self, source: ExampleSource, indices: np.ndarray, batch_size: int, num_batches: int,
               image_shape: tuple[int, ...], normalizer: Normalizer):
    self._source = source
    self._indices = indices
    self._batch_size = batch_size
    self._num_batches = num_batches
    self._image_shape = tuple(image_shape)
    self._normalizer = normalizer

  def __len__(self) -> int:
    return self._num_batches

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self._num_batches:
      raise IndexError(index)
    indices = self._indices[index * self._batch_size:(index + 1) * self._batch_size]
    images = np.zeros((self._batch_size, *self._image_shape), np.uint8)
    labels = np.zeros((self._batch_size,), np.int32)
    mask = np.zeros((self._batch_size,), bool)
    if len(indices):
      images[:len(indices)], labels[:len(indices)] = self._source.read_batch(indices)
    mask[:len(indices)] = True
    out = self._normalizer(augment_lib.to_float(images))
    out[len(indices):] = 0.0
    return {"image": out, "label": labels, "mask": mask}


def create_eval_dataset(config: Any, split: str | None = None, *, process_index: int = 0,
                        process_count: int = 1) -> grain.IterDataset:
  """Finite batches {'image': float32, 'label': int32, 'mask': bool} of size eval_batch_size // process_count.

  Process p reads examples p, p + P, ...; every process yields
  ceil(ceil(N / P) / B_local) batches, padding with mask=False. Iterate it as
  often as you like; images are never augmented or cropped.
  """
  builder = prepared_builder(config)
  batch_size = _local_batch_size(config.eval_batch_size, process_count, "eval_batch_size")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  source = ExampleSource(builder, split or _cfg_get(config.data, "eval_split", "validation"))
  total = len(source)
  indices = np.arange(process_index, total, process_count)
  num_batches = math.ceil(math.ceil(total / process_count) / batch_size)
  batches = EvalBatches(source, indices, batch_size, num_batches,
                        tuple(builder.info.features["image"].shape), _normalizer(config))
  threads = int(_cfg_get(config.data, "eval_read_threads", 2))
  prefetch = int(_cfg_get(config.data, "prefetch", 2))
  return grain.MapDataset.source(batches).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads)))
