"""Input normalisation: per-channel mean/std of the training images, cached beside the dataset.

The same statistics go into model.json, so prediction normalises faces exactly as training did.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np

from fer_jax.data import builders, tfexample

NORMALIZATIONS = ("unit", "standardize")  # unit: [0, 1]; standardize: (x - mean) / std per channel.
_STATS_FILE = "fer_jax_normalization.json"


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
  builder = builders.prepared_builder(config)
  source = tfexample.ExampleSource(builder, split or config.data.train_split)
  counts = np.zeros(builder.info.features["label"].num_classes, np.int64)
  for chunk in np.array_split(np.arange(len(source)), max(1, len(source) // 1024)):
    counts += np.bincount(source.read_batch(chunk)[1], minlength=len(counts))
  return counts


def normalization_stats(config: Any) -> tuple[list[float], list[float]]:
  """Per-channel (mean, std) of train images in [0, 1] units, from an evenly spaced sample.

  Computed once per dataset, cached in memory and in a JSON file beside the ArrayRecord files (if writable).
  """
  builder = builders.prepared_builder(config)
  split = config.data.train_split
  limit = int(config.data.norm_stats_examples)
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
    source = tfexample.ExampleSource(builder, split)
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


def normalizer(config: Any) -> Normalizer:
  """config.data.normalization's Normalizer (config_schema checked the name at start-up)."""
  if config.data.normalization == "unit":
    return Normalizer()
  return Normalizer(*normalization_stats(config))
