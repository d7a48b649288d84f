"""Reading our ArrayRecord files: a tf.Example wire decoder several times faster than tfds's, and the record source.

tfds stores uint8 image tensors as packed int64 varints, and protobuf-parsing those dominated reading
(docs/BENCHMARKS.md, "Input pipeline"). No TensorFlow or JAX here: grain workers unpickle ExampleSource.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from fer_jax.data import shards


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

  List field numbers: 1 BytesList, 2 FloatList, 3 Int64List; (start, end) delimits the packed values (or the
  one bytes value). None for anything else (several bytes values, unpacked ints, empty lists): callers then
  use the protobuf parser. Tags are single bytes in tf.Example and single-byte lengths are read inline, as
  this loop is decode_batch's per-record Python cost.
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
  """[len(starts), size] uint8 from packed-varint payloads at offsets `starts` of `data`; None if they don't fit.

  A value v < 128 is the byte v, 128 <= v < 256 the two bytes (v, 1): the values are the bytes not preceded
  by a continuation byte. tfds wrote each payload with exactly `size` values, so checking the total suffices.
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


def _stackable(values: list[Any]) -> bool:
  return bool(values) and all(isinstance(v, np.ndarray) and v.shape == values[0].shape for v in values)


class ExampleDecoder:
  """Decodes serialized tf.Examples of a fixed feature set to numpy: tfds's `deserialize_example_np` values, faster.

  `decode_batch` walks a whole batch's wire format and decodes all pixels in one numpy pass. Records it does
  not expect fall back to the protobuf parser; features other than fixed-shape `Tensor` (encoding
  none/bytes/zlib), `Scalar`, `ClassLabel` and `Text` (bytes here) to tfds's decoding. Pickles cheaply.
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
        out[key] = feature.int64_list.value[0] if dtype.kind in "biu" else feature.float_list.value[0]
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
    if self._fallback is not None:  # tfds decoded them: stack the equal-shaped arrays, list the rest
      columns = {key: [e[key] for e in examples] for key in self._fallback.keys()}
      return {key: np.stack(values) if _stackable(values) else values for key, values in columns.items()}
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
  """grain RandomAccessDataSource: decoded examples of one split, read straight from ArrayRecord.

  A damaged file raises builders.DatasetDamagedError, naming the file and the command that rebuilds it.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
    if split not in builder.info.splits and "[" not in split:
      raise ValueError(f"{builder.name} has no split {split!r}; it has {sorted(builder.info.splits)}.")
    self._records = shards.ShardReader(builder, split)
    self._decode = ExampleDecoder(builder.info.features)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._decode(self._records.__getitems__([index])[0])

  def read_batch(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked uint8 images and int32 labels of `keys`, with one batched ArrayRecord read."""
    batch = self._decode.decode_batch(self._records.__getitems__([int(k) for k in keys]))
    return batch["image"], batch["label"].astype(np.int32)

  def __repr__(self) -> str:
    return f"ExampleSource({self._records!r})"
