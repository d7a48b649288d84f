"""Inference: images/s at batch 256 and latency at batch 1, fer_jax vs PyTorch vs Keras/TensorFlow.

    python bench/inference.py --peer_python /path/to/peers/venv/bin/python
    python bench/inference.py --model vgg --rounds 5
    python bench/inference.py --predict --batch 64 --rounds 9    # the bundled model: XLA vs oneDNN vs onnxruntime

--predict times what predict and fer_jax.detect_expressions run on detected faces (a BatchedClassifier of the
bundled model, uint8 faces in, probabilities out) on each convolution path, in alternating turns in one
process: faces/s wall-clock and per CPU-second of the process, medians over the rounds, and each path's
largest difference from the XLA path's probabilities.

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


def predict_paths(args: argparse.Namespace) -> None:
  """The bundled model's faces/s through BatchedClassifier: XLA's convolutions, oneDNN's, ONNX Runtime's."""
  import tempfile
  import time

  import numpy as np

  from fer_jax.serving import inference, pretrained

  loaded = pretrained.load()
  paths = {"xla (jax)": loaded.classifier(batch_size=args.batch, kernels="xla")}
  if inference.inference_kernels("auto") is not inference.model_kernels.DEFAULTS:
    paths["onednn (jax, default)"] = loaded.classifier(batch_size=args.batch, kernels="onednn")
  try:
    from fer_jax.serving import onnx_model
    onnx_file = os.path.join(tempfile.mkdtemp(), "bundled.onnx")
    onnx_model.export(loaded, onnx_file)
    paths["onnxruntime"] = onnx_model.load(onnx_file).classifier(batch_size=args.batch)
  except Exception as e:  # noqa: BLE001  (a missing onnx extra only drops that column)
    print(f"onnxruntime skipped: {type(e).__name__}: {e}")
  faces = np.random.default_rng(0).integers(0, 256, (args.batch, *loaded.prep.image_shape), dtype=np.uint8)
  reference = paths["xla (jax)"](faces)
  wall, cpu = {k: [] for k in paths}, {k: [] for k in paths}
  for f in paths.values():
    f(faces)  # compile
  for _ in range(args.rounds):
    for name, f in paths.items():
      t, c = time.perf_counter(), time.process_time()
      for _ in range(args.steps):
        f(faces)
      n = args.batch * args.steps
      wall[name].append(n / (time.perf_counter() - t))
      cpu[name].append(n / (time.process_time() - c))
  with open("/proc/loadavg") as f:
    load = f.read().split()[:3]
  print(f"bundled model, batch {args.batch}, {args.steps} calls per turn, median of {args.rounds} alternating "
        f"turns; load average after: {' '.join(load)}")
  print(f"{'path':24s} {'faces/s':>9s} {'min..max':>13s} {'faces/CPU-s':>12s} {'vs xla':>7s} {'max |diff|':>10s}")
  base = float(np.median(wall["xla (jax)"]))
  for name, f in paths.items():
    med = float(np.median(wall[name]))
    diff = float(np.abs(f(faces) - reference).max())
    print(f"{name:24s} {med:9.0f} {min(wall[name]):6.0f}..{max(wall[name]):<6.0f} {np.median(cpu[name]):12.0f} "
          f"{med / base:6.2f}x {diff:10.1e}")


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
  parser.add_argument("--predict", action="store_true", help="the bundled model's convolution paths (docstring)")
  args = parser.parse_args()
  if args.predict:
    sys.path.insert(0, os.path.dirname(BENCH_DIR))
    predict_paths(args)
    return

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
