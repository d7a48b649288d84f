"""Every config field fer_jax reads, with its default, and the start-up check of values.

configs/*.py start from `base_config()`, so a field misspelt in a config file or on the command line
(`--config.lerning_rate=…`) fails at start-up instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import ml_collections

from fer_jax import evaluation, models, optimizers
from fer_jax.data import augment, stats

OPTIMIZERS = optimizers.OPTIMIZERS
SCHEDULES = optimizers.SCHEDULES


def base_config() -> ml_collections.ConfigDict:
  """All fields with neutral defaults; configs/*.py override them."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic_faces"        # tfds builder: synthetic_faces, fer2013, expw.
  c.data.config = ""                     # Builder config, e.g. "rgb96" for expw; "" = the builder's first.
  c.data.data_dir = ""                   # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.data.train_split = "train"
  c.data.eval_split = "validation"       # What the trainer validates on (model selection).
  c.data.num_workers = 0                 # grain worker processes; 0 reads in the training process.
  c.data.prefetch = 2                    # Batches buffered ahead of the training step.
  c.data.normalization = "unit"          # unit: [0, 1]; standardize: per-dataset mean/std.
  c.data.norm_stats_examples = 4096      # Train examples sampled for the standardize mean/std.
  c.data.read_threads = 1                # Threads reading ArrayRecord per training process/worker.
  c.data.cache_max_mb = 1024.0           # Keep the decoded training split in memory (per process/worker) when it
                                         # takes at most this many MB (FER2013: 66); 0 = always read the files.
  c.data.eval_read_threads = 2
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.enabled = True
  c.data.augment.rotation_deg = 10.0
  c.data.augment.shift = 0.1
  c.data.augment.zoom = 0.1
  c.data.augment.hflip = True
  c.data.augment.crop_size = 0           # 0 = none; else random crop in training, centre/ten-crop at eval.
  c.data.augment.crop_padding = 0        # Pad-and-crop back to full size (pixels); 0 = off.
  c.data.augment.erasing_prob = 0.0
  c.data.augment.erasing_area = augment.AugmentConfig.erasing_area    # (min, max) fraction of the image erased.
  c.data.augment.erasing_aspect = augment.AugmentConfig.erasing_aspect  # (min, max) h/w, log-uniform.
  c.data.augment.erasing_fill = augment.AugmentConfig.erasing_fill    # One of augment.ERASING_FILLS.
  c.data.augment.border = augment.AugmentConfig.border  # How rotation/shift/zoom fill pixels from outside the image.

  c.model = "cnn"                        # A key of fer_jax.models.MODELS.
  c.model_kwargs = ml_collections.ConfigDict()
  c.dtype = "float32"                    # Compute dtype; parameters stay float32.
  c.conv_impl = "auto"                   # How training computes stride-1 convolutions: onednn (oneDNN's kernels,
                                         # fastest on CPU), im2col (matrix products), xla (XLA's own). auto = onednn
                                         # on a 1-device CPU run where it loads, im2col on other CPU runs, else xla.

  c.batch_size = 64                      # Global, across all devices and hosts.
  c.eval_batch_size = 256
  c.num_epochs = 10.0
  c.num_train_steps = -1                 # > 0 overrides num_epochs.

  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.momentum = 0.9                       # sgd only.
  c.nesterov = True                      # sgd only.
  c.weight_decay = 0.0                   # Decoupled for adamw; L2 added to gradients for adam/sgd.
  c.grad_clip_norm = 0.0                 # 0 = off.
  c.schedule = "constant"
  c.warmup_epochs = 0.0
  c.step_every_epochs = 30.0             # schedule=step: multiply by step_factor every this many epochs (after warmup).
  c.step_factor = 0.1
  c.plateau_patience_epochs = 5          # schedule=plateau: epochs without train-loss gain before decay.
  c.plateau_factor = 0.5
  c.label_smoothing = 0.0
  c.mixup_alpha = 0.0                    # > 0: train on mixup blends of face pairs and of their labels, one
                                         # lam ~ Beta(alpha, alpha) per batch (fer_jax/losses.py). 0 = off.
  c.mixup_from_epoch = 0.0               # Mixup starts here: a regulariser for the epochs where training accuracy
                                         # overtakes validation; the steps before are exactly those without mixup.
  c.ema_decay = 0.0                      # > 0: keep an exponential moving average of the parameters (decay per
                                         # step, warmed up); validation, best-checkpoint choice, the evaluation
                                         # job, predict and export use it. 0 = off.
  c.late_ema_decay = 0.0                 # > 0: the average's decay from late_ema_from_epoch on (a longer average
  c.late_ema_from_epoch = 0.0            # once the learning rate is low). 0 = ema_decay throughout.
  c.validate_raw_parameters = True       # With a moving average: validation also scores the raw parameters (one
                                         # more pass each time) to show what the average buys. False halves a
                                         # costly view's validation time (multi_scale: ~15 s on 2 Intel AMX cores).
  c.class_weights = "none"               # balanced: weight classes by inverse train frequency.
  c.nonfinite = "stop"                   # A NaN/Inf loss or gradient: stop (keep the last good checkpoint)
                                         # or skip that update (counted as the nonfinite_skipped scalar).

  c.log_every_steps = 50
  c.eval_every_steps = 500               # Validation inside the training job; also at each checkpoint.
  c.validation_view = "plain"            # What validation (and best-checkpoint choice) scores: plain, or a TTA view
                                         # (flip, ten_crop, multi_scale) whose averaged softmax serving would
                                         # then use too.
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2                 # Latest N kept ...
  c.keep_best_checkpoints = 1            # ... plus the best N by validation accuracy.
  c.smoke_test = False                   # Shrinks the run to a few steps to check the plumbing.
  c.compilation_cache_dir = "auto"       # jax's persistent XLA compilation cache, so reruns skip compiling: auto =
                                         # $XDG_CACHE_HOME/fer_jax/xla or ~/.cache/fer_jax/xla; "" = off. Entries
                                         # are keyed by jaxlib version, backend and devices, and read and written
                                         # under a file lock: safe across jax versions and concurrent runs
                                         # (fer_jax/xla_cache.py says what jax guarantees).

  # The separate evaluation job (--mode=eval).
  c.eval = ml_collections.ConfigDict()
  c.eval.split = "validation"            # "test" only when asked for: select models on validation.
  c.eval.tta = ""                        # Comma-separated extra views: flip, ten_crop, multi_scale.
  c.eval.poll_every_s = 10.0
  c.eval.idle_timeout_s = 600.0          # Exit after this long with no new checkpoint.
  c.lock()  # A misspelt field in a config file raises instead of adding a new, unread one ...
  c.model_kwargs.unlock()  # ... except the model's keyword arguments, which depend on the model.
  return c


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and what is allowed."""


def _fail(field: str, value: Any, allowed: str) -> None:
  raise ConfigError(f"config.{field}={value!r} is not allowed: {allowed}.")


def tta_views(config: ml_collections.ConfigDict) -> list[str]:
  """The evaluation job's extra test-time-augmentation views, in order."""
  return [v.strip() for v in config.eval.tta.split(",") if v.strip()]


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted field name, value) of every leaf; tuple elements are leaves of their field."""
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _leaves(value, name + ".")
    elif isinstance(value, (tuple, list)):
      yield from ((name, v) for v in value)
    else:
      yield name, value


def model_fields(name: str) -> tuple[str, ...]:
  """The keyword arguments model `name` takes from config.model_kwargs (the rest come from the config)."""
  set_elsewhere = {"parent", "name", "num_classes", "dtype", "conv", "pool"}
  return tuple(f.name for f in dataclasses.fields(models.MODELS[name]) if f.init and f.name not in set_elsewhere)


def validate(config: ml_collections.ConfigDict, *, num_devices: int, process_count: int = 1) -> None:
  """Raises ConfigError naming the field, its value and what is allowed, before any compute."""
  for field, value in _leaves(config):
    if isinstance(value, float) and not math.isfinite(value):
      _fail(field, value, "must be a finite number")
  # Choices implemented elsewhere come from the code that implements them.
  choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "dtype": ("float32", "bfloat16"),
             "data.normalization": stats.NORMALIZATIONS, "class_weights": ("none", "balanced"),
             "eval.split": ("train", "validation", "test"), "nonfinite": ("stop", "skip"),
             "model": tuple(models.MODELS), "conv_impl": ("auto", "onednn", "im2col", "xla"),
             "data.augment.erasing_fill": augment.ERASING_FILLS, "data.augment.border": tuple(augment.BORDERS)}
  for field, allowed in choices.items():
    value = config
    for part in field.split("."):
      value = value[part]
    if value not in allowed:
      _fail(field, value, "one of " + ", ".join(allowed))
  unknown = sorted(set(config.model_kwargs) - set(model_fields(config.model)))
  if unknown:
    raise ConfigError(
        f"config.model_kwargs sets {', '.join(unknown)}, which model {config.model!r} does not take (it takes "
        f"{', '.join(model_fields(config.model))}): start from a config written for {config.model!r}, or drop them.")
  if not config.data.augment.enabled and config.data.augment.crop_size:
    _fail("data.augment.enabled", False, f"not with data.augment.crop_size={config.data.augment.crop_size}: the "
          "random crop is part of the augmentation, so the model would train on whole images and be validated and "
          "served on crops; set --config.data.augment.crop_size=0 as well (and views without crops)")
  try:
    augment.AugmentConfig.from_config(config.data.augment)
  except ValueError as e:
    raise ConfigError(f"config.data.augment is not allowed: {e}") from None
  for view in tta_views(config):
    if view not in evaluation.TTA_VIEWS:
      _fail("eval.tta", config.eval.tta, "comma-separated views from " + ", ".join(evaluation.TTA_VIEWS))
  if config.validation_view not in evaluation.VIEWS:
    _fail("validation_view", config.validation_view, "one of " + ", ".join(evaluation.VIEWS))
  for field, value, views in (("eval.tta", config.eval.tta, tta_views(config)),
                              ("validation_view", config.validation_view, [config.validation_view])):
    for view in set(views) & set(evaluation.CROP_VIEWS):
      if not config.data.augment.crop_size:
        _fail(field, value, f"{view} needs data.augment.crop_size > 0 (the crop the model was trained on)")
  for field in ("batch_size", "eval_batch_size", "learning_rate", "log_every_steps", "eval_every_steps",
                "checkpoint_every_steps", "keep_checkpoints"):
    if not config[field] > 0:
      _fail(field, config[field], "must be > 0")
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    _fail("num_epochs", config.num_epochs, "must be > 0 when num_train_steps is not set")
  if config.data.num_workers < 0:
    _fail("data.num_workers", config.data.num_workers, "must be >= 0")
  if config.data.get("cache_max_mb", 0) < 0:
    _fail("data.cache_max_mb", config.data.cache_max_mb, "must be >= 0 (0 = never cache)")
  if not 0.0 <= config.label_smoothing < 1.0:
    _fail("label_smoothing", config.label_smoothing, "must be in [0, 1)")
  if not config.mixup_alpha >= 0.0:
    _fail("mixup_alpha", config.mixup_alpha, "must be >= 0: 0 turns mixup off, 0.2-1.0 are usual")
  if not config.mixup_from_epoch >= 0.0:
    _fail("mixup_from_epoch", config.mixup_from_epoch, "must be >= 0 (0 = mixup from the first step)")
  if not 0.0 <= config.ema_decay < 1.0:
    _fail("ema_decay", config.ema_decay, "must be in [0, 1): 0 turns the moving average off, 0.999 averages over "
          "about 1,000 steps")
  if not 0.0 <= config.late_ema_decay < 1.0 or (config.late_ema_decay > 0 and config.ema_decay == 0):
    _fail("late_ema_decay", config.late_ema_decay, "must be in [0, 1), and > 0 only with ema_decay > 0 (it changes "
          "the decay of an average the run keeps)")
  if not config.late_ema_from_epoch >= 0.0:
    _fail("late_ema_from_epoch", config.late_ema_from_epoch, "must be >= 0")
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % num_devices:
      _fail(field, config[field], f"must divide evenly over the {num_devices} devices; "
            f"use a multiple of {num_devices}, e.g. {max(1, config[field] // num_devices) * num_devices}")
    if config[field] % process_count:
      _fail(field, config[field], f"must divide evenly over the {process_count} processes")


def check_splits(config: ml_collections.ConfigDict, info: Any, fields: tuple[str, ...]) -> None:
  """ConfigError before any compute when a split these dotted config fields name is missing or empty in the
  dataset (`info`: fer_jax.data.builders.DatasetInfo)."""
  have = ", ".join(f"{k} ({n})" for k, n in sorted(info.num_examples.items())) or "none"
  for field in fields:
    split = config
    for part in field.split("."):
      split = split[part]
    if info.num_examples.get(split, 0) <= 0:
      state = "is empty" if split in info.num_examples else "does not exist"
      raise ConfigError(
          f"config.{field}={split!r}: that split of {info.name} in {info.data_dir} {state}; its splits are "
          f"{have}. Set --config.{field} to one of them, or rebuild the dataset with that split.")
