"""Throughput of the grain input pipeline, and where its time goes.

    python bench/input_pipeline.py                       # in-script 48x48x1 dataset, raw-bytes pixels
    python bench/input_pipeline.py --encoding none       # pixels as tfds's default int64 varints
    python bench/input_pipeline.py --dataset synthetic_faces
    python bench/input_pipeline.py --workers 0,1,2 --repeats 5

Prints images/s for the full training pipeline, augmentation off and on
(rotation, shift, zoom, flip, pad-crop, erasing), with 0, 1 and 2 worker
processes: wall-clock, wall-clock per worker, and images per CPU-second of a
worker (what one worker delivers with a core to itself, the figure that holds
on a machine shared with other jobs). Then the parts alone: raw ArrayRecord
reads, tfds decoding vs ours, augmentation. Medians of --repeats runs.
The bar: >= 5,000 images/s per worker process for 48x48 grayscale.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import ml_collections
import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

AUGMENT = dict(enabled=True, rotation_deg=15.0, shift=0.1, zoom=0.1, hflip=True, crop_size=0,
               crop_padding=4, erasing_prob=0.5, erasing_area=(0.02, 0.25), erasing_aspect=(0.3, 3.3))


def build_bench_dataset(data_dir: str, num_train: int, encoding: str) -> str:
  """A FER2013-shaped dataset (48x48x1 uint8 Tensor, 7 classes) built in-script; returns its config name.

  encoding 'bytes' is what tfds_builders/fer2013 writes; 'none' is tfds's
  default (pixels as int64 varints), slower to decode.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class FerBench(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="bytes"), tfds.core.BuilderConfig(name="none")]

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(48, 48, 1), dtype=np.uint8, encoding=self.builder_config.name),
          "label": tfds.features.ClassLabel(num_classes=7),
          "id": tfds.features.Text(),
      }))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(num_train), "validation": self._generate_examples(500)}

    def _generate_examples(self, n):
      import cv2  # pylint: disable=g-import-not-at-top
      rng = np.random.default_rng(0)
      for i in range(n):
        # Smooth images spanning 0..255, so the varint-encoded pixels are face-like in size.
        small = rng.integers(0, 256, (6, 6), dtype=np.uint8)
        image = cv2.resize(small, (48, 48), interpolation=cv2.INTER_CUBIC)[..., None]
        yield str(i), {"image": image, "label": i % 7, "id": f"bench-{i}"}

  tfds.disable_progress_bar()
  builder = FerBench(data_dir=data_dir, config=encoding, file_format="array_record")
  if not builder.is_prepared():
    builder.download_and_prepare()
  return encoding


def make_config(name: str, builder_config: str | None, data_dir: str, num_workers: int, batch_size: int,
                augment: bool, cache_max_mb: float = 0) -> ml_collections.ConfigDict:
  """The pipeline's config; cache_max_mb=0 reads the files for every batch (the trainer's default caches).

  Starts from the trainer's own `config_schema.base_config()`, so a field the pipeline starts reading is
  there with its default (a hand-built dict here once lacked data.norm_stats_examples: a KeyError).
  """
  from fer_jax import config_schema  # pylint: disable=g-import-not-at-top
  config = config_schema.base_config()
  config.seed, config.batch_size, config.eval_batch_size = 0, batch_size, batch_size
  config.data.update(dict(name=name, config=builder_config or "", data_dir=data_dir, num_workers=num_workers,
                          prefetch=2, normalization="standardize", cache_max_mb=float(cache_max_mb)))
  config.data.augment.update(dict(AUGMENT, enabled=augment))
  return config


def median_rate(fn, repeats: int) -> float:
  """Median over repeats of items/s, where fn() returns the number of items it processed."""
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    n = fn()
    rates.append(n / (time.perf_counter() - start))
  return statistics.median(rates)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", default=None, help="a built dataset name (default: in-script fer_bench)")
  parser.add_argument("--data_dir", default="/tmp/fer_jax_bench")
  parser.add_argument("--num_train", type=int, default=8192)
  parser.add_argument("--encoding", choices=("bytes", "none"), default="bytes",
                      help="image encoding of the in-script dataset (fer2013 writes bytes)")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--batches", type=int, default=40, help="timed batches per repeat")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--workers", default="0,1,2")
  args = parser.parse_args()

  import cv2  # pylint: disable=g-import-not-at-top
  from fer_jax.data import augment as augment_lib  # pylint: disable=g-import-not-at-top
  from fer_jax.data import builders, pipeline, tfexample  # pylint: disable=g-import-not-at-top

  cv2.setNumThreads(1)
  if args.dataset == "synthetic_faces":
    builders.build("synthetic_faces", data_dir=args.data_dir)
  if args.dataset:
    name, builder_config = args.dataset, None
  else:
    name, builder_config = "fer_bench", build_bench_dataset(args.data_dir, args.num_train, args.encoding)
  config = make_config(name, builder_config, args.data_dir, 0, args.batch_size, True)
  info = builders.ensure_built(config)
  print(f"dataset {name}/{builder_config}: train {info.num_examples['train']} images {info.eval_image_shape}; "
        f"batch {args.batch_size}; {os.cpu_count()} CPU cores; medians of {args.repeats} repeats")

  # Parts alone, in the main process.
  builder = builders.prepared_builder(config)  # pylint: disable=protected-access
  records = builder.as_data_source(split="train").data_source
  features = builder.info.features
  decoder = tfexample.ExampleDecoder(features)
  rng = np.random.default_rng(0)
  keys = rng.permutation(len(records))[:4096].tolist()
  raw = [records[k] for k in keys]
  batches = [keys[i:i + args.batch_size] for i in range(0, len(keys), args.batch_size)]
  raw_batches = [raw[i:i + args.batch_size] for i in range(0, len(raw), args.batch_size)]
  source = tfexample.ExampleSource(builder, "train")
  parts = [
      ("read: ArrayRecord, one key at a time", lambda: [records[k] for k in keys]),
      ("read: ArrayRecord, batched (__getitems__)", lambda: [records.__getitems__(b) for b in batches]),
      ("decode: tfds deserialize_example_np", lambda: [features.deserialize_example_np(r) for r in raw]),
      ("decode: ours, one record (protobuf)", lambda: [decoder(r) for r in raw]),
      ("decode: ours, decode_batch (wire + numpy)", lambda: [decoder.decode_batch(b) for b in raw_batches]),
      ("read + decode: ExampleSource.read_batch", lambda: [source.read_batch(b) for b in batches]),
  ]
  for label, fn in parts:
    print(f"  {label:<44} {median_rate(lambda: fn() and len(keys), args.repeats):>9,.0f} images/s")
  images = decoder.decode_batch(raw[:args.batch_size])["image"]
  aug = augment_lib.AugmentConfig.from_config(config.data.augment)
  geo_only = augment_lib.AugmentConfig(**{**aug.__dict__, "erasing_prob": 0.0})

  def run_augment(cfg, n=16):
    for i in range(n):
      augment_lib.augment_batch(images, np.random.default_rng(i), cfg)
    return n * len(images)

  print(f"  {'augment: geometry (one warpAffine/image)':<44} {median_rate(lambda: run_augment(geo_only), args.repeats):>9,.0f} images/s")
  print(f"  {'augment: geometry + erasing':<44} {median_rate(lambda: run_augment(aug), args.repeats):>9,.0f} images/s")

  # The full training pipeline. Wall-clock rates depend on what else runs on
  # the machine; images per CPU-second of the worker processes much less so.
  print(f"  {'':<44} {'wall':>9}  {'wall/worker':>11}  {'per worker-CPU-s':>16}  main-process CPU")
  for augment in (False, True):
    for workers in [int(w) for w in args.workers.split(",")]:
      config = make_config(name, builder_config, args.data_dir, workers, args.batch_size, augment)
      it = iter(pipeline.create_train_dataset(config))
      for _ in range(max(4, 2 * workers)):  # start-up and warm-up, untimed
        next(it)
      children = psutil.Process().children(recursive=True) if workers else []
      walls, cpus, mains = [], [], []
      for _ in range(args.repeats):
        cpu0, main0, start = _cpu(children), time.process_time(), time.perf_counter()
        for _ in range(args.batches):
          next(it)
        wall = time.perf_counter() - start
        main_cpu = time.process_time() - main0
        walls.append(wall)
        mains.append(main_cpu / wall)
        # Worker CPU; with no workers, the main process (its read thread included) does the work.
        cpus.append(_cpu(children) - cpu0 if workers else main_cpu)
      it.close()
      images = args.batches * args.batch_size
      rate = images / statistics.median(walls)
      label = f"pipeline aug={'on ' if augment else 'off'} num_workers={workers}"
      print(f"  {label:<44} {rate:>9,.0f}  {rate / max(workers, 1):>11,.0f}  "
            f"{images / statistics.median(cpus):>16,.0f}  {statistics.median(mains):.0%} of a core")


def _cpu(processes) -> float:
  """User + system CPU seconds used so far by `processes` (grain workers)."""
  total = 0.0
  for p in processes:
    try:
      times = p.cpu_times()
      total += times.user + times.system
    except psutil.NoSuchProcess:
      pass
  return total


if __name__ == "__main__":
  main()
