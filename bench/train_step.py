"""Training-step throughput: fer_jax vs PyTorch vs Keras/TensorFlow (with and without XLA), side by side.

    python bench/train_step.py                                   # seeds' CNN, batch 64
    python bench/train_step.py --model vgg --rounds 5
    python bench/train_step.py --peer_python /path/to/venv/bin/python   # peers installed elsewhere
    python bench/train_step.py --end_to_end       # + fer_jax fed by its augmenting input pipeline
    python bench/train_step.py --baseline ../old  # + another checkout's fer_jax: before/after a change

Each contender is a worker process (bench/fer_jax_worker.py,
bench/peers/torch_worker.py, bench/peers/keras_worker.py) holding its model,
Adam 1e-3, and one in-memory batch of 48x48x1 images. All start and compile
first; then, round after round, each runs --steps training steps in turn, so
that only one computes at a time and load from elsewhere hits all alike
(bench/worker_protocol.py). Prints the median images/s over rounds, the
spread, and ratios to fer_jax. fer_jax's speed-ups are measured one at a
time (--variants): plain Flax, + host allocator, + pooling, + im2col, + dropout
masks from fewer random bits, fer_jax (+ oneDNN's convolutions).

The peers need the `peers` extra (`pip install -e '.[peers]'`, best in a
separate virtual environment: TensorFlow installed next to fer_jax makes tfds
take its TensorFlow code paths); point --peer_python at that interpreter.
A peer that does not start is reported and left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import worker_protocol  # noqa: E402


def contenders(args: argparse.Namespace, task: str) -> list[tuple[str, list[str]]]:
  """(name, command) per worker; fer_jax variants first, then the peers."""
  dtype, device = getattr(args, "dtype", "float32"), getattr(args, "device", "cpu")  # bench/inference.py: defaults
  common = ["--model", args.model, "--task", task, "--batch", str(args.batch)]
  fer = [sys.executable, os.path.join(BENCH_DIR, "fer_jax_worker.py"), *common, "--dtype", dtype]
  out = [(f"fer_jax {v}" if v != "fer_jax" else "fer_jax", fer + ["--variant", v]) for v in args.variants.split(",")]
  if getattr(args, "also_float32", False) and dtype != "float32":  # The same step in float32, same run.
    out.append(("fer_jax float32", fer[:-1] + ["float32", "--variant", "fer_jax"]))
  for tree in filter(None, getattr(args, "baseline", "").split(",")):  # Another checkout's fer_jax, same model.
    tree = os.path.abspath(tree)
    out.append((f"fer_jax @{os.path.basename(tree)}", ["env", f"PYTHONPATH={tree}", sys.executable,
                                                       os.path.join(tree, "bench", "fer_jax_worker.py"), *common,
                                                       "--dtype", dtype, "--variant", "fer_jax"]))
  if getattr(args, "end_to_end", False):
    # The trainer's own input: grain pipeline with augmentation, in the training process (data.num_workers=0).
    out.append(("fer_jax end to end", fer + ["--input", "pipeline", "--workers", "0",
                                            "--data_dir", getattr(args, "data_dir", "/tmp/fer_jax_bench")]))
  peer = [args.peer_python]
  torch_worker = os.path.join(BENCH_DIR, "peers", "torch_worker.py")
  keras_worker = os.path.join(BENCH_DIR, "peers", "keras_worker.py")
  keras_common = [*common] + (["--dtype", dtype] if task == "train" else [])  # mixed_bfloat16 policy
  torch_common = [*common, "--dtype", dtype, "--device", device]
  if "torch" in args.peers.split(","):
    out.append(("pytorch eager", peer + [torch_worker, *torch_common]))
  if "torch_compile" in args.peers.split(","):
    out.append(("pytorch compile", peer + [torch_worker, *torch_common, "--compile"]))
  if "keras" in args.peers.split(","):
    out.append(("keras/tf", peer + [keras_worker, *keras_common]))
  if "keras_xla" in args.peers.split(","):
    out.append(("keras/tf xla", peer + [keras_worker, *keras_common, "--jit_compile"]))
  return out


def start_workers(specs, items_per_iteration: int) -> list[worker_protocol.Worker]:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  workers = []
  for name, command in specs:
    print(f"starting {name} ...", file=sys.stderr, flush=True)
    try:
      workers.append(worker_protocol.Worker(name, command, items_per_iteration, env=env))
    except RuntimeError as e:
      print(f"  left out: {e}", file=sys.stderr, flush=True)
  return workers


def versions(peer_python: str) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  probe = ("import importlib.metadata as m\nfor p in ('torch', 'tensorflow-cpu', 'tensorflow', 'keras'):\n"
           "  try: print(p, m.version(p))\n  except Exception: pass")
  peers = subprocess.run([peer_python, "-c", probe], capture_output=True, text=True).stdout.split("\n")
  return ", ".join([f"jax {jax.__version__}", f"flax {flax.__version__}"] + [p for p in peers if p])


def print_table(title: str, results: dict, unit: str, reference: str, extra: dict | None = None) -> None:
  print(f"\n{title}")
  print(f"{'':24s} {unit:>12s} {'min..max':>15s} {'vs ' + reference:>14s}")
  ref = results.get(reference, {}).get("items_per_s")
  for name, r in results.items():
    ratio = f"{r['items_per_s'] / ref:.2f}x" if ref else "-"
    print(f"{name:24s} {r['items_per_s']:12.0f} {r['min_items_per_s']:7.0f}..{r['max_items_per_s']:<7.0f}"
          f" {ratio:>14s}")
  for line in (extra or {}).values():
    print(line)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=("cnn", "vgg", "vgg_cpu"), default="cnn",
                      help="vgg_cpu: configs/fer2013_cpu.py's network (train it at --batch 128)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype of fer_jax, PyTorch (autocast) and Keras (mixed_bfloat16)")
  parser.add_argument("--also_float32", action="store_true",
                      help="with --dtype bfloat16: also time fer_jax's float32 step in the same run")
  parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                      help="PyTorch's device; fer_jax uses JAX's default backend (a GPU where there is one)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps per turn")
  parser.add_argument("--rounds", type=int, default=7, help="turns per contender; the median is reported")
  parser.add_argument("--variants", default="plain,+malloc,+pool,+im2col,+dropout,fer_jax",
                      help="fer_jax variants (fer_jax_worker.py)")
  parser.add_argument("--peers", default="torch,keras,keras_xla",
                      help="comma list of torch, torch_compile, keras, keras_xla (empty: none)")
  parser.add_argument("--peer_python", default=sys.executable, help="interpreter with torch / tensorflow")
  parser.add_argument("--end_to_end", action="store_true",
                      help="also time fer_jax fed by its input pipeline (augmentation on), as the trainer runs")
  parser.add_argument("--data_dir", default="/tmp/fer_jax_bench",
                      help="--end_to_end: where the bench dataset (bench/input_pipeline.py) is built or found")
  parser.add_argument("--baseline", default="",
                      help="comma-separated checkouts (e.g. a `git worktree` of an older commit) whose fer_jax "
                           "trains the same model in the same run: before/after a change")
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args()

  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; {versions(args.peer_python)}")
  print(f"model {args.model}, batch {args.batch}, {args.dtype}, Adam 1e-3; median of {args.rounds} turns of "
        f"{args.steps} steps")
  workers = start_workers(contenders(args, "train"), args.batch)
  try:
    results = worker_protocol.interleaved_medians(workers, args.rounds, args.steps)
  finally:
    for w in workers:
      w.close()
  extra = {}
  for ours in ("fer_jax", "fer_jax end to end"):
    for peer in ("pytorch eager", "keras/tf", "fer_jax float32"):
      if ours in results and peer in results:
        extra[f"{ours} {peer}"] = (f"{ours} / {peer}: "
                                   f"{results[ours]['items_per_s'] / results[peer]['items_per_s']:.2f}x")
  print_table("training images/s", results, "images/s", "fer_jax", extra)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
