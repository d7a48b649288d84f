"""Build and inspect the fer_jax datasets without TensorFlow.

    python -m fer_jax.data build fer2013 --manual_dir ~/Downloads/fer2013
    python -m fer_jax.data build expw --config rgb96 --manual_dir ~/ExpW --set margin=0.3
    python -m fer_jax.data info fer2013 --data_dir /data/tfds

`info` also reads every record back, so a damaged file shows here (--no_verify skips that); `build
--overwrite` rebuilds a dataset already built. The stock `tfds build` command imports TensorFlow; this
one only needs tensorflow-datasets and array_record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import tensorflow_datasets as tfds

from fer_jax import quiet_logs
from fer_jax.data import shards
from fer_jax.data.builders import AUTO_BUILD, BUILDER_MODULES, DEFAULT_DATA_DIR, DatasetDamagedError, build
from fer_jax.data.builders import make_builder, parse_overrides


def _print_info(builder: tfds.core.DatasetBuilder) -> None:
  info = builder.info
  print(f"{info.full_name} at {builder.data_dir}")
  for split, split_info in sorted(info.splits.items()):
    print(f"  {split:<11} {split_info.num_examples:>7} examples in {split_info.num_shards} shard(s)")
  report = info.metadata.get("build_report") if info.metadata else None
  if report:
    print("  build report:", json.dumps(report, indent=2, sort_keys=True).replace("\n", "\n  "))


def main(argv: list[str] | None = None) -> int:
  quiet_logs.install()
  parser = argparse.ArgumentParser(prog="python -m fer_jax.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for command in ("build", "info"):
    p = sub.add_parser(command)
    p.add_argument("name", choices=sorted(BUILDER_MODULES))
    p.add_argument("--config", default=None, help="builder config, e.g. gray48 or rgb96 for expw")
    p.add_argument("--data_dir", default=None, help=f"where datasets live (default {DEFAULT_DATA_DIR})")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a builder config field, e.g. --set margin=0.3")
    if command == "build":
      p.add_argument("--manual_dir", default=None, help="folder holding what you downloaded")
      p.add_argument("--num_workers", type=int, default=None,
                     help="image-decoding processes (expw; default: one per spare core)")
      p.add_argument("--overwrite", action="store_true", help="rebuild a dataset already built (a damaged one)")
    else:
      p.add_argument("--no_verify", action="store_true", help="skip reading every record to check the files")
  args = parser.parse_args(argv)
  try:
    overrides = parse_overrides(args.set)
  except ValueError as e:
    parser.error(f"--set {e}")
  try:
    if args.command == "build":
      builder = build(args.name, manual_dir=args.manual_dir, config=args.config, data_dir=args.data_dir,
                      overrides=overrides, num_workers=args.num_workers, overwrite=args.overwrite)
    else:
      builder = make_builder(args.name, config=args.config, data_dir=args.data_dir, overrides=overrides)
      if not builder.is_prepared():
        print(f"error: {_not_built(args, builder)}", file=sys.stderr)
        return 1
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  checked = None
  if args.command == "info" and not args.no_verify:
    try:
      checked = shards.verify(builder)
    except DatasetDamagedError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  _print_info(builder)
  if checked:
    print(f"  files: all {checked[0]} records read back intact ({checked[1]:.1f} s)")
  return 0


def _not_built(args: argparse.Namespace, builder: tfds.core.DatasetBuilder) -> str:
  """Where `info` looked, how to point it elsewhere, and how to build."""
  where = (f"--data_dir {args.data_dir}" if args.data_dir else
           "$TFDS_DATA_DIR" if "TFDS_DATA_DIR" in os.environ else f"the default data_dir {DEFAULT_DATA_DIR}")
  config = f" --config {args.config}" if args.config else ""
  manual = "" if args.name in AUTO_BUILD else " --manual_dir <folder with the downloaded files>"
  return (f"{builder.info.full_name} is not built under {where} (looked for {builder.data_dir}). If you built it "
          "elsewhere, pass that folder: --data_dir DIR (or set TFDS_DATA_DIR=DIR); otherwise build it: "
          f"python -m fer_jax.data build {args.name}{config}{manual}.")


if __name__ == "__main__":
  sys.exit(main())
