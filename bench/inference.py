"""Inference: images/s at batch 256 and latency at batch 1, fer_jax vs PyTorch vs Keras/TensorFlow.

    python bench/inference.py --peer_python /path/to/peers/venv/bin/python
    python bench/inference.py --model vgg --rounds 5

Same workers and alternating turns as bench/train_step.py, with --task infer:
fer_jax a jitted `model.apply(train=False)`; PyTorch eval mode under
inference_mode; Keras `predict_on_batch`. Throughput is the median images/s of
forward passes at --batch (256); latency the median milliseconds of one
forward pass of one image, result on the host.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import worker_protocol  # noqa: E402
from train_step import contenders, print_table, start_workers, versions  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=("cnn", "vgg"), default="cnn")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=10, help="timed batch-256 calls per turn")
  parser.add_argument("--latency_calls", type=int, default=100, help="timed batch-1 calls per turn")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--variants", default="fer_jax", help="fer_jax variants (fer_jax_worker.py)")
  parser.add_argument("--peers", default="torch,keras", help="comma list of torch, torch_compile, keras, keras_xla")
  parser.add_argument("--peer_python", default=sys.executable)
  args = parser.parse_args()

  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; {versions(args.peer_python)}")
  print(f"model {args.model}; median of {args.rounds} turns")
  for batch, calls, title in ((args.batch, args.steps, f"throughput at batch {args.batch}"),
                              (1, args.latency_calls, "latency at batch 1")):
    args.batch = batch
    workers = start_workers(contenders(args, "infer"), batch)
    try:
      results = worker_protocol.interleaved_medians(workers, args.rounds, calls)
    finally:
      for w in workers:
        w.close()
    if batch == 1:
      print(f"\n{title}")
      for name, r in results.items():
        print(f"{name:24s} {1e3 * r['seconds']:8.2f} ms  (min {1e3 / r['max_items_per_s']:.2f} ms)")
    else:
      print_table(f"inference images/s, {title}", results, "images/s", "fer_jax")


if __name__ == "__main__":
  main()
