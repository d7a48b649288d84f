"""Reading a split's ArrayRecord shards, where a damaged file becomes one error naming it and the rebuild command.

riegeli checks a hash on every chunk it reads and raises a bare RuntimeError ("chunk data hash mismatch ...
at byte N") that names no file; grain would print it inside a long traceback. No TensorFlow or JAX here:
grain workers unpickle ShardReader (and re-raise DatasetDamagedError, which pickles, in the trainer).
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Sequence

import tensorflow_datasets as tfds

from fer_jax.data import builders

# What array_record and riegeli raise for a file that is damaged, truncated, missing or unreadable.
READ_ERRORS = (RuntimeError, OSError)


class ShardReader:
  """The raw records of one split (slices such as 'train[:10%]' too), read with batched ArrayRecord reads."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
    # tfds resolves the split; its raw reader pickles without open files.
    self._records = builder.as_data_source(split=split).data_source
    instructions = builder.info.splits[split].file_instructions
    self._files = [str(fi.filename) for fi in instructions]
    self._ends = list(itertools.accumulate(fi.take for fi in instructions))  # Keys [ends[i-1], ends[i]) in file i.
    self._rebuild = builders.rebuild_command(builder)

  def __len__(self) -> int:
    return len(self._records)

  def __getitems__(self, keys: Sequence[int]) -> list[bytes]:
    """The records of `keys`; DatasetDamagedError when a file cannot be read."""
    try:
      return self._records.__getitems__(keys)
    except READ_ERRORS as e:
      raise self._damaged(keys, e) from e

  def _damaged(self, keys: Sequence[int], error: Exception) -> builders.DatasetDamagedError:
    """The error naming the file that failed: the only one `keys` touch, else the first whose keys fail alone."""
    by_file: dict[int, list[int]] = {}
    for key in keys:
      by_file.setdefault(bisect.bisect_right(self._ends, key), []).append(key)
    culprit = None
    if len(by_file) > 1:
      for index, file_keys in sorted(by_file.items()):
        try:
          self._records.__getitems__(file_keys)
        except READ_ERRORS as e:
          culprit, error = index, e
          break
    elif by_file:
      culprit = next(iter(by_file))
    where = f"The dataset file {self._files[culprit]}" if culprit is not None else "A file of the dataset"
    reason = " ".join(str(error).split())  # riegeli's message may span lines.
    return builders.DatasetDamagedError(f"{where} is damaged or unreadable ({reason}). Rebuild the dataset: "
                                        f"{self._rebuild}")

  def __repr__(self) -> str:
    return f"ShardReader({self._files})"


def verify(builder: tfds.core.DatasetBuilder, chunk: int = 1024) -> tuple[int, float]:
  """Reads every record of every split, so riegeli checks each chunk's hash: (records read, seconds).

  Raises DatasetDamagedError naming the first damaged file.
  """
  start, count = time.perf_counter(), 0
  for split in sorted(builder.info.splits.keys()):
    reader = ShardReader(builder, split)
    for begin in range(0, len(reader), chunk):
      count += len(reader.__getitems__(range(begin, min(begin + chunk, len(reader)))))
  return count, time.perf_counter() - start
