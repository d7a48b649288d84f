"""Finding, building and describing the datasets: every dataset is a tfds builder in tfds_builders/.

`make_builder`/`build` are what `python -m fer_jax.data` runs; the trainer asks `ensure_built` (synthetic_faces
builds itself, the real datasets say how to build them) and `dataset_info` (shapes, classes, split sizes).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import sys
import textwrap
import time
from typing import Any, Mapping, NamedTuple

import tensorflow_datasets as tfds
from absl import logging

from fer_jax.data import augment

# Builder name -> its module, imported when asked for (registering it with tfds); tfds_builders never imports us.
BUILDER_MODULES: dict[str, str] = {
    "fer2013": "tfds_builders.fer2013.fer2013",
    "expw": "tfds_builders.expw.expw",
    "synthetic_faces": "tfds_builders.synthetic_faces.synthetic_faces",
}

DEFAULT_DATA_DIR = os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  """The builder class for `name` (a key of BUILDER_MODULES); importing its module registers it with tfds."""
  if name not in BUILDER_MODULES:
    raise ValueError(f"Unknown dataset {name!r}; known: {sorted(BUILDER_MODULES)}.")
  module = importlib.import_module(BUILDER_MODULES[name])
  for value in vars(module).values():
    if isinstance(value, type) and issubclass(value, tfds.core.GeneratorBasedBuilder) and value.name == name:
      return value
  raise RuntimeError(f"{BUILDER_MODULES[name]} defines no builder named {name!r}.")


def make_builder(name: str, *, config: str | None = None, data_dir: str | None = None,
                 overrides: dict[str, Any] | None = None, num_workers: int | None = None) -> tfds.core.DatasetBuilder:
  """Instantiates a builder writing ArrayRecord files, with optional config field overrides.

  Overrides make a new config whose name records them (e.g. `rgb96.margin=0.3`), so datasets built with
  different settings never overwrite each other. `num_workers` (decoding processes) is for expw.
  """
  cls = builder_class(name)
  builder_config = None
  if cls.BUILDER_CONFIGS:
    config = config or cls.BUILDER_CONFIGS[0].name  # "" (the config files' default) means the first config.
    if config not in cls.builder_configs and "." in config:  # A name make_builder gave: "rgb96.margin=0.3,..".
      config, named = config.split(".", 1)
      overrides = {**parse_overrides(named.split(",")), **(overrides or {})}
    if config not in cls.builder_configs:
      raise ValueError(f"Unknown config {config!r} for {name}; known: {sorted(cls.builder_configs)}.")
    builder_config = cls.builder_configs[config]
    if overrides:
      fields = {f.name for f in dataclasses.fields(builder_config)}
      unknown = set(overrides) - fields
      if unknown:
        tfds_fields = {"name", "version", "release_notes", "supported_versions", "description", "tags"}
        raise ValueError(f"Unknown option(s) {sorted(unknown)} for {name}/{builder_config.name}; "
                         f"known: {sorted(fields - tfds_fields)}.")
      suffix = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
      builder_config = dataclasses.replace(builder_config, name=f"{builder_config.name}.{suffix}", **overrides)
  elif config or overrides:
    raise ValueError(f"Dataset {name} has no builder configs; drop --config/--set.")
  extra = {}
  if num_workers is not None:
    if "num_workers" not in inspect.signature(cls.__init__).parameters:
      raise ValueError(f"Dataset {name} builds in one process; drop --num_workers.")
    extra["num_workers"] = num_workers
  return cls(data_dir=data_dir or DEFAULT_DATA_DIR, config=builder_config, file_format="array_record", **extra)


def parse_overrides(items: list[str]) -> dict[str, Any]:
  """["margin=0.3", "seed=1"] -> {"margin": 0.3, "seed": 1}: values read as JSON (numbers, booleans, lists),
  else kept as strings. ValueError for an item without "="."""
  overrides = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"expected FIELD=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError:
      overrides[key] = value
  return overrides


def build(name: str, *, manual_dir: str | None = None, config: str | None = None, data_dir: str | None = None,
          overrides: dict[str, Any] | None = None, num_workers: int | None = None,
          overwrite: bool = False) -> tfds.core.DatasetBuilder:
  """Builds (or reuses) dataset `name` and returns its builder; `overwrite` rebuilds one already built."""
  builder = make_builder(name, config=config, data_dir=data_dir, overrides=overrides, num_workers=num_workers)
  if builder.is_prepared() and not overwrite:
    return builder
  source = os.path.expanduser(manual_dir) if manual_dir else None
  # tfds prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and prepared": nothing
  # is downloaded here, so say what happens instead.
  builder._log_download_bytes = lambda: None  # pylint: disable=protected-access
  builder._log_download_done = lambda: None  # pylint: disable=protected-access
  origin = source or ("images it draws itself" if name in AUTO_BUILD else "its manual_dir")
  logging.info("Building dataset %s in %s from %s.", builder.info.full_name, builder.data_dir, origin)
  start = time.perf_counter()
  modes = tfds.download.GenerateMode
  mode = modes.REUSE_CACHE_IF_EXISTS if overwrite else modes.REUSE_DATASET_IF_EXISTS  # The former rebuilds.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=source, download_mode=mode))
  counts = ", ".join(f"{split} {info.num_examples}" for split, info in sorted(builder.info.splits.items()))
  logging.info("Built %s in %.0f s: %s examples.", builder.info.full_name, time.perf_counter() - start, counts)
  return builder


def rebuild_command(builder: tfds.core.DatasetBuilder) -> str:
  """The command line that rebuilds `builder`'s dataset in place (for a damaged or outdated copy)."""
  words = ["python -m fer_jax.data build", builder.name]
  if builder.builder_config is not None:
    config, *overrides = builder.builder_config.name.split(".", 1)  # make_builder names overrides "config.k=v,..".
    words.append(f"--config {config}")
    words += [f"--set {item}" for item in ",".join(overrides).split(",") if item]
  words.append(f"--data_dir {builder.data_dir_root}")
  if builder.name not in AUTO_BUILD:
    words.append("--manual_dir <folder with the downloaded files>")
  words.append("--overwrite")
  return " ".join(words)


AUTO_BUILD = ("synthetic_faces",)


class DatasetNotBuiltError(FileNotFoundError):
  """The dataset has not been prepared under the configured data_dir."""


class DatasetDamagedError(RuntimeError):
  """A file of a built dataset fails riegeli's checksums, or cannot be read: rebuilding it is the fix."""


class DatasetInfo(NamedTuple):
  """What the model and trainer need to know about the data."""
  name: str
  image_shape: tuple[int, int, int]  # training input (after any random crop)
  eval_image_shape: tuple[int, int, int]  # full-size eval images
  num_classes: int
  class_names: tuple[str, ...]
  num_examples: Mapping[str, int]  # per split
  data_dir: str  # the versioned folder holding the ArrayRecord files


def _builder(config: Any) -> tfds.core.DatasetBuilder:
  """Our builder for config.data (tfds-registered names also work, e.g. in tests)."""
  name, builder_config = config.data.name, config.data.config or None
  data_dir = config.data.data_dir or DEFAULT_DATA_DIR
  if name in BUILDER_MODULES:
    return make_builder(name, config=builder_config, data_dir=data_dir)
  return tfds.builder(name, config=builder_config, data_dir=data_dir, file_format="array_record")


def _not_built_message(config: Any, builder: tfds.core.DatasetBuilder) -> str:
  name = config.data.name
  data_dir = config.data.data_dir or DEFAULT_DATA_DIR
  builder_config = config.data.config
  config_flag = f" --config {builder_config}" if builder_config else ""
  if name in AUTO_BUILD:
    how = (f"  python -m fer_jax.data build {name}{config_flag} --data_dir {data_dir}\n"
           "or call fer_jax.data.builders.ensure_built(config) (the trainer does).")
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

  With several hosts sharing one disk, call it on process 0 and wait for it before the others read.
  """
  if config.data.name in AUTO_BUILD and not _builder(config).is_prepared():
    if not sys.stderr.isatty():
      tfds.disable_progress_bar()  # In a log file its redraws are lines of noise; build() logs start and end.
    build(config.data.name, config=config.data.config or None, data_dir=config.data.data_dir or None)
  return dataset_info(config)  # Raises DatasetNotBuiltError, saying how to build it, if still missing.


def dataset_info(config: Any) -> DatasetInfo:
  """Shapes, classes and split sizes; raises DatasetNotBuiltError if the dataset is missing."""
  builder = prepared_builder(config)
  features = builder.info.features
  image_shape = tuple(int(d) for d in features["image"].shape)
  if len(image_shape) != 3:
    raise ValueError(f"Expected (H, W, C) images, {config.data.name} has shape {image_shape}.")
  aug = augment.AugmentConfig.from_config(config.data.augment)
  height, width = aug.output_hw(*image_shape[:2])
  label = features["label"]
  return DatasetInfo(name=config.data.name, image_shape=(height, width, image_shape[2]), eval_image_shape=image_shape,
                     num_classes=int(label.num_classes), class_names=tuple(label.names),
                     num_examples={split: int(info.num_examples) for split, info in builder.info.splits.items()},
                     data_dir=str(builder.data_dir))


def ensure_built_once(config: Any) -> DatasetInfo:
  """ensure_built (and the normalization statistics' cache) on process 0 first; the others wait, then read.

  All at once would race on the shared data_dir. Process 0 reaches the barrier even when it fails, so every
  process then raises instead of hanging.
  """
  import jax  # pylint: disable=g-import-not-at-top  (grain workers import this module; they never build)

  from fer_jax import distributed  # pylint: disable=g-import-not-at-top
  from fer_jax.data import stats  # pylint: disable=g-import-not-at-top

  if jax.process_count() == 1:
    return ensure_built(config)
  error = None
  if jax.process_index() == 0:
    try:
      ensure_built(config)
      if config.data.normalization == "standardize":
        stats.normalization_stats(config)  # Writes the stats cache the others then read.
    except Exception as e:  # pylint: disable=broad-except
      error = e
  distributed.barrier("fer_jax:dataset_built")
  if error is not None:
    raise error
  try:
    return dataset_info(config)
  except DatasetNotBuiltError as e:
    if jax.process_index() == 0:
      raise
    raise DatasetNotBuiltError(
        f"Process {jax.process_index()} cannot see the dataset process 0 has: {e}\nWith several hosts, "
        "config.data.data_dir must be the same shared path on every host (NFS, a Cloud Storage FUSE "
        "mount), or a copy of the built dataset at the same path on each host.") from e
