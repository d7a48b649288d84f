"""What checkpoint checksums cost beside the save and the restore they guard.

    python bench/checkpoint_checksums.py /work/runs/fer2013_cpu --rounds 5

Reads the newest step of a training workdir (its whole state: parameters,
optimizer state, batch-norm statistics), then, round after round, saves it
with orbax into a scratch folder (synchronously, as the trainer's background
save does), seals it (fer_jax/checkpoint_checksums.py: SHA-256 of every
file), verifies it, and restores it. Prints the medians and the checksum cost
as a fraction of the save and of the restore.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("workdir")
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args(argv)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from fer_jax import checkpoint_checksums  # pylint: disable=g-import-not-at-top

  root = os.path.join(os.path.abspath(args.workdir), "checkpoints")
  step = max(int(n) for n in os.listdir(root) if n.isdigit())
  state = ocp.StandardCheckpointer().restore(os.path.join(root, str(step), "state"))
  times: dict[str, list[float]] = {"save": [], "seal": [], "verify": [], "restore": []}
  with tempfile.TemporaryDirectory() as scratch:
    for i in range(args.rounds):
      step_dir = os.path.join(scratch, str(i))
      checkpointer = ocp.StandardCheckpointer()
      start = time.perf_counter()
      checkpointer.save(os.path.join(step_dir, "state"), state)
      checkpointer.wait_until_finished()
      times["save"].append(time.perf_counter() - start)
      times["seal"].append(checkpoint_checksums.seal(step_dir))
      times["verify"].append(checkpoint_checksums.verify(step_dir))
      start = time.perf_counter()
      ocp.StandardCheckpointer().restore(os.path.join(step_dir, "state"))
      times["restore"].append(time.perf_counter() - start)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(scratch, "0")) for f in fs)
  median = {k: statistics.median(v) for k, v in times.items()}
  print(f"step {step} of {args.workdir}: {size / 2**20:.1f} MiB on disk; medians of {args.rounds} rounds")
  for key, seconds in median.items():
    print(f"  {key:8s} {1000 * seconds:8.1f} ms")
  print(f"checksums on save: {median['seal'] / median['save']:.1%} of the save; "
        f"on restore: {median['verify'] / median['restore']:.1%} of the restore")
  return 0


if __name__ == "__main__":
  sys.exit(main())
