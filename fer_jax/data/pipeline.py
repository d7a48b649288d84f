"""grain input pipelines over our ArrayRecord tfds datasets; no JAX here (grain workers unpickle these objects).

Training: an endless stream of full, augmented batches from each host's strided shard of the train split.
Batch k's keys come from a per-epoch permutation seeded by (seed, epoch) and its augmentation from grain's
random_map rng seeded by (seed, k), so batch k is the same for any `num_workers` and after a restore.
Evaluation: each example of the split once across hosts, padded to full batches with mask=False.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from absl import flags
import grain
import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data import augment as augment_lib
from fer_jax.data import builders, stats
from fer_jax.data.stats import Normalizer
from fer_jax.data.tfexample import ExampleSource


def _local_batch_size(global_batch: int, process_index: int, process_count: int, what: str) -> int:
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"config.{what}={global_batch} must be a positive multiple of the "
                     f"process count {process_count} (it is the GLOBAL batch size).")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  return global_batch // process_count


def _derive_seed(seed: int, *tags: int) -> int:
  """A 32-bit seed for one use (shuffle, augmentation) of one process."""
  return int(np.random.SeedSequence([int(seed) % 2**32, *tags]).generate_state(1)[0])


class ShuffledKeyBatches:
  """grain RandomAccessDataSource: batch b of an endless stream of example keys, reshuffled each epoch.

  Position i is key perm_e[i % n], e = i // n, perm_e seeded by (seed, e); batches span epoch boundaries,
  so all are full. Vectorised: grain's per-element shuffle/repeat/batch cost ~30 us per image, more than decoding.
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

  Each process (grain worker) loads its own copy on first read; pickling sends only the keys. Why: reading
  cost a third of the pipeline (docs/BENCHMARKS.md, "End to end: grain pipeline + step").
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
  return CachedExamples(source, keys) if megabytes <= float(config.data.cache_max_mb) else source


@dataclasses.dataclass
class TrainBatch:
  """Reads, augments and normalises one batch of example keys; grain's random_map seeds `rng` by (seed, batch index)."""
  source: ExampleSource | CachedExamples
  augment: augment_lib.AugmentConfig
  normalizer: Normalizer

  def __call__(self, keys: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    images, labels = self.source.read_batch(keys)
    images = augment_lib.augment_batch(images, rng, self.augment)
    return {"image": self.normalizer(images), "label": labels}


def _worker_init(worker_index: int, worker_count: int) -> None:
  """Runs in each grain worker before it reads: one cv2 thread, JAX (which grain imports) pinned to the CPU, so
  an accidental device call cannot grab the accelerator the trainer holds, and SIGTERM ignored.

  SLURM, systemd and `kill -- -PGID` signal every process of a job; the trainer takes SIGTERM as a notice to
  save (fer_jax.preemption), which needs batches up to its next step (multi-process runs: its next log step).
  grain stops its workers through an event, then SIGKILL.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  import cv2  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  os.environ["JAX_PLATFORMS"] = "cpu"
  jax = sys.modules.get("jax")
  if jax is not None:
    jax.config.update("jax_platforms", "cpu")


def create_train_dataset(config: Any, *, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Infinite stream of {'image': float32 [B_local, H', W', C], 'label': int32 [B_local]}.

  B_local = config.batch_size // process_count; batches are deterministic in (config.seed, process_index, index).
  """
  builder = builders.prepared_builder(config)
  batch_size = _local_batch_size(config.batch_size, process_index, process_count, "batch_size")
  source = ExampleSource(builder, config.data.train_split)
  augment = augment_lib.AugmentConfig.from_config(config.data.augment)
  augment.output_hw(*builder.info.features["image"].shape[:2])  # validates crop_size early
  keys = np.arange(process_index, len(source), process_count)
  if not len(keys):
    raise ValueError(f"Process {process_index} of {process_count} got no training examples "
                     f"({len(source)} in the split).")
  seed = int(config.seed)
  ds = grain.MapDataset.source(ShuffledKeyBatches(keys, batch_size, _derive_seed(seed, 0, process_index)))
  ds = ds.random_map(TrainBatch(train_reader(source, keys, builder, config), augment, stats.normalizer(config)),
                     seed=_derive_seed(seed, 1, process_index))
  prefetch = int(config.data.prefetch)
  threads = int(config.data.read_threads)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads)))
  num_workers = int(config.data.num_workers)
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's workers read absl flags; scripts not run under absl.app use the defaults.
      flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(prefetch, 1))
    ds = ds.mp_prefetch(options, worker_init_fn=_worker_init)
  return ds


@dataclasses.dataclass
class EvalBatches:
  """grain RandomAccessDataSource of padded eval batches for one process."""
  source: ExampleSource
  indices: np.ndarray
  batch_size: int
  num_batches: int
  image_shape: tuple[int, ...]
  normalizer: Normalizer

  def __len__(self) -> int:
    return self.num_batches

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_batches:
      raise IndexError(index)
    indices = self.indices[index * self.batch_size:(index + 1) * self.batch_size]
    n = len(indices)
    images = np.zeros((self.batch_size, *self.image_shape), np.uint8)
    labels = np.zeros((self.batch_size,), np.int32)
    if n:
      images[:n], labels[:n] = self.source.read_batch(indices)
    out = self.normalizer(augment_lib.to_float(images))
    out[n:] = 0.0
    return {"image": out, "label": labels, "mask": np.arange(self.batch_size) < n}


def create_eval_dataset(config: Any, split: str | None = None, *, process_index: int = 0,
                        process_count: int = 1) -> grain.IterDataset:
  """Finite batches {'image': float32, 'label': int32, 'mask': bool} of size eval_batch_size // process_count.

  Process p reads examples p, p + P, ...; every process yields ceil(ceil(N / P) / B_local) batches, padded
  with mask=False. Iterate it as often as you like; images are never augmented or cropped.
  """
  builder = builders.prepared_builder(config)
  batch_size = _local_batch_size(config.eval_batch_size, process_index, process_count, "eval_batch_size")
  source = ExampleSource(builder, split or config.data.eval_split)
  total = len(source)
  indices = np.arange(process_index, total, process_count)
  num_batches = math.ceil(math.ceil(total / process_count) / batch_size)
  batches = EvalBatches(source, indices, batch_size, num_batches,
                        tuple(builder.info.features["image"].shape), stats.normalizer(config))
  threads = int(config.data.eval_read_threads)
  prefetch = int(config.data.prefetch)
  return grain.MapDataset.source(batches).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, threads)))
