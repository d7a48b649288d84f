"""Build and inspect the fer_jax datasets without TensorFlow.

    python -m fer_jax.data build fer2013 --manual_dir ~/Downloads/fer2013
    python -m fer_jax.data build expw --config rgb96 --manual_dir ~/ExpW --set margin=0.3
    python -m fer_jax.data info fer2013

The stock `tfds build` command imports TensorFlow; this one only needs
tensorflow-datasets and array_record.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import sys
from typing import Any

import tensorflow_datasets as tfds

import tfds_builders

DEFAULT_DATA_DIR = os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def builder_class(name: str) -> type[tfds.core.GeneratorBasedBuilder]:
  """Returns the builder class for `name` (one of tfds_builders.BUILDER_MODULES)."""
  if name not in tfds_builders.BUILDER_MODULES:
    raise ValueError(f"Unknown dataset {name!r}; known: {sorted(tfds_builders.BUILDER_MODULES)}.")
  module = importlib.import_module(tfds_builders.BUILDER_MODULES[name])
  for value in vars(module).values():
    if (isinstance(value, type) and issubclass(value, tfds.core.GeneratorBasedBuilder)
        and value.name == name):
      return value
  raise RuntimeError(f"{tfds_builders.BUILDER_MODULES[name]} defines no builder named {name!r}.")


def _parse_value(text: str) -> Any:
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def make_builder(name: str, *, config: str | None = None, data_dir: str | None = None,
                 overrides: dict[str, Any] | None = None,
                 num_workers: int | None = None) -> tfds.core.DatasetBuilder:
  """Instantiates a builder writing ArrayRecord files, with optional config field overrides.

  Overrides make a new config whose name records them (e.g. `rgb96.margin=0.3`),
  so datasets built with different settings never overwrite each other.
  `num_workers` (decoding processes) is for builders that decode images (expw).
  """
  cls = builder_class(name)
  config = config or None  # "" (the config files' default) means the builder's first config.
  builder_config = None
  if cls.BUILDER_CONFIGS:
    builder_config = cls.builder_configs[config or cls.BUILDER_CONFIGS[0].name] if (
        config is None or config in cls.builder_configs) else None
    if builder_config is None:
      raise ValueError(f"Unknown config {config!r} for {name}; known: {sorted(cls.builder_configs)}.")
    if overrides:
      fields = {f.name for f in dataclasses.fields(builder_config)}
      unknown = set(overrides) - fields
      if unknown:
        raise ValueError(f"Unknown option(s) {sorted(unknown)} for {name}/{builder_config.name}; "
                         f"known: {sorted(fields - {'name', 'version', 'release_notes', 'supported_versions', 'description', 'tags'})}.")
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


def build(name: str, *, manual_dir: str | None = None, config: str | None = None,
          data_dir: str | None = None, overrides: dict[str, Any] | None = None,
          num_workers: int | None = None) -> tfds.core.DatasetBuilder:
  """Builds (or reuses) dataset `name` and returns its builder."""
  builder = make_builder(name, config=config, data_dir=data_dir, overrides=overrides, num_workers=num_workers)
  download_config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
  builder.download_and_prepare(download_config=download_config)
  return builder


def _print_info(builder: tfds.core.DatasetBuilder) -> None:
  info = builder.info
  print(f"{info.full_name} at {builder.data_dir}")
  for split, split_info in sorted(info.splits.items()):
    print(f"  {split:<11} {split_info.num_examples:>7} examples in {split_info.num_shards} shard(s)")
  report = info.metadata.get("build_report") if info.metadata else None
  if report:
    print("  build report:", json.dumps(report, indent=2, sort_keys=True).replace("\n", "\n  "))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m fer_jax.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for command in ("build", "info"):
    p = sub.add_parser(command)
    p.add_argument("name", choices=sorted(tfds_builders.BUILDER_MODULES))
    p.add_argument("--config", default=None, help="builder config, e.g. gray48 or rgb96 for expw")
    p.add_argument("--data_dir", default=None, help=f"where datasets live (default {DEFAULT_DATA_DIR})")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a builder config field, e.g. --set margin=0.3")
    if command == "build":
      p.add_argument("--manual_dir", default=None, help="folder holding what you downloaded")
      p.add_argument("--num_workers", type=int, default=None,
                     help="image-decoding processes (expw; default: one per spare core)")
  args = parser.parse_args(argv)
  overrides = {}
  for item in args.set:
    if "=" not in item:
      parser.error(f"--set expects FIELD=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    overrides[key] = _parse_value(value)
  try:
    if args.command == "build":
      builder = build(args.name, manual_dir=args.manual_dir, config=args.config,
                      data_dir=args.data_dir, overrides=overrides, num_workers=args.num_workers)
    else:
      builder = make_builder(args.name, config=args.config, data_dir=args.data_dir, overrides=overrides)
      if not builder.is_prepared():
        print(f"{args.name} is not built under {builder.data_dir}; run `python -m fer_jax.data build {args.name} ...`.",
              file=sys.stderr)
        return 1
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  _print_info(builder)
  return 0


if __name__ == "__main__":
  sys.exit(main())
