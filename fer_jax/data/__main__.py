"""Build and inspect the fer_jax datasets without TensorFlow.

    python -m fer_jax.data build fer2013 --manual_dir ~/Downloads/fer2013
    python -m fer_jax.data build expw --config rgb96 --manual_dir ~/ExpW --set margin=0.3
    python -m fer_jax.data info fer2013

The stock `tfds build` command imports TensorFlow; this one only needs
tensorflow-datasets and array_record.
"""

from __future__ import annotations

import argparse
import json
import sys

import tensorflow_datasets as tfds

from fer_jax.data.builders import BUILDER_MODULES, DEFAULT_DATA_DIR, build, make_builder


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
    p.add_argument("name", choices=sorted(BUILDER_MODULES))
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
    try:
      overrides[key] = json.loads(value)  # Numbers, booleans, lists; anything else stays a string.
    except json.JSONDecodeError:
      overrides[key] = value
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
