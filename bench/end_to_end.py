"""End-to-end training throughput (grain pipeline with augmentation + step) against the bare step.

    python bench/end_to_end.py                  # seeds' CNN, batch 64, 1 grain worker
    python bench/end_to_end.py --workers 0,1,2 --rounds 9

Two kinds of fer_jax worker (bench/fer_jax_worker.py), alternating turns:
  bare step      one in-memory batch, reused: the step alone
  pipeline, k w  each step takes the next batch from the training pipeline
                 (ArrayRecord read, decode, rotation/shift/zoom/flip/pad-crop/
                 erasing augmentation, standardisation, k grain worker
                 processes) and hands it to the device as the trainer does,
                 with the trainer's in-memory cache of the decoded split
                 (data.cache_max_mb).
The dataset is FER2013-shaped (48x48x1, 8,192 images), built in-script
(bench/input_pipeline.py). Prints medians and the pipeline's cost,
1 - pipeline/bare, in percent. The bar: under 5%.
"""

from __future__ import annotations

import argparse
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import worker_protocol  # noqa: E402
from train_step import print_table  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=("cnn", "vgg"), default="cnn")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--workers", default="1", help="comma list of grain worker counts to measure")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--data_dir", default="/tmp/fer_jax_bench")
  args = parser.parse_args()

  import input_pipeline as bench_pipeline  # bench/input_pipeline.py  pylint: disable=g-import-not-at-top
  bench_pipeline.build_bench_dataset(args.data_dir, 8192, "bytes")  # once, before the workers race to build it

  worker = [sys.executable, os.path.join(BENCH_DIR, "fer_jax_worker.py"), "--model", args.model,
            "--batch", str(args.batch), "--data_dir", args.data_dir]
  specs = [("bare step", worker)]
  for k in args.workers.split(","):
    specs.append((f"pipeline, {k} worker(s)", worker + ["--input", "pipeline", "--workers", k]))
  print(f"{os.cpu_count()} CPU cores; model {args.model}, batch {args.batch}; "
        f"median of {args.rounds} turns of {args.steps} steps")
  workers = [worker_protocol.Worker(name, cmd, args.batch) for name, cmd in specs]
  try:
    results = worker_protocol.interleaved_medians(workers, args.rounds, args.steps)
  finally:
    for w in workers:
      w.close()
  bare = results["bare step"]["items_per_s"]
  extra = {name: f"pipeline cost, {name}: {100 * (1 - r['items_per_s'] / bare):.1f}% of the bare step's throughput"
           for name, r in results.items() if name != "bare step"}
  print_table("training images/s", results, "images/s", "bare step", extra)


if __name__ == "__main__":
  main()
