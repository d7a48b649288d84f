"""Side-by-side timing of frameworks, each in its own process, in alternating turns.

Each framework runs in a worker process (its own interpreter, so PyTorch,
TensorFlow and JAX never share a process or a thread pool). A worker builds
its model and batch, warms up (compiles), prints READY, then answers
commands on stdin:

    time N   -> runs N iterations, waits for the results, prints {"seconds": S}
    quit     -> exits

The orchestrator (`Worker`, `interleaved_medians`) starts every worker first,
then asks each in turn for a timed block, round after round, so load from
anything else on a shared machine hits all of them alike; it reports the
median over rounds. Only one worker computes at any moment.

Kept free of numpy and of fer_jax: the peers' workers may run in another
virtual environment (`--peer_python`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

READY = "READY"


def serve(iteration: Callable[[], object], wait: Callable[[object], None], warmup: int = 3,
          settle: int = 0) -> None:
  """Worker side: warm up, print READY, then time blocks of `iteration()` on request.

  `iteration` starts one step (it may return before the work is done, as JAX
  and TensorFlow do); `wait(result)` blocks until that result is computed.
  `settle` untimed iterations start every block (to drain buffers an input
  pipeline filled while the other workers had their turn).
  """
  result = None
  for _ in range(warmup):
    result = iteration()
  wait(result)
  print(READY, flush=True)
  for line in sys.stdin:
    command = line.split()
    if not command or command[0] == "quit":
      return
    if command[0] != "time" or len(command) != 2:
      raise SystemExit(f"worker: unknown command {line!r}; expected 'time N' or 'quit'")
    for _ in range(settle):
      result = iteration()
    wait(result)
    start = time.perf_counter()
    for _ in range(int(command[1])):
      result = iteration()
    wait(result)
    print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


class Worker:
  """Orchestrator side: one started worker process."""

  def __init__(self, name: str, command: Sequence[str], items_per_iteration: int, env: dict | None = None,
               start_timeout_s: float = 600.0):
    self.name = name
    self.items_per_iteration = items_per_iteration
    self.command = list(command)
    self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env=env)
    self._expect_ready(start_timeout_s)

  def _expect_ready(self, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for line in self.process.stdout:
      if line.strip() == READY:
        return
      if time.monotonic() > deadline:
        break
    self.close()
    raise RuntimeError(f"worker {self.name!r} did not start (exit {self.process.poll()}); "
                       f"run it alone to see why: {' '.join(self.command)}")

  def seconds_per_iteration(self, iterations: int) -> float:
    self.process.stdin.write(f"time {iterations}\n")
    self.process.stdin.flush()
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f"worker {self.name!r} died (exit {self.process.wait()}): {' '.join(self.command)}")
    return json.loads(line)["seconds"] / iterations

  def close(self) -> None:
    if self.process.poll() is None:
      try:
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.process.wait(timeout=30)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.process.kill()


def interleaved_medians(workers: Sequence[Worker], rounds: int, iterations: int,
                        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)
                        ) -> dict[str, dict[str, float]]:
  """Per worker: median seconds per iteration and items/s over `rounds` alternating turns.

  The order of workers rotates every round so that no one always follows the same neighbour.
  """
  samples: dict[str, list[float]] = {w.name: [] for w in workers}
  for r in range(rounds):
    order = list(workers[r % len(workers):]) + list(workers[:r % len(workers)])
    for worker in order:
      samples[worker.name].append(worker.seconds_per_iteration(iterations))
    log(f"round {r + 1}/{rounds}: " + ", ".join(
        f"{w.name} {w.items_per_iteration / samples[w.name][-1]:.0f}/s" for w in workers))
  results = {}
  for worker in workers:
    seconds = statistics.median(samples[worker.name])
    results[worker.name] = {"seconds": seconds, "items_per_s": worker.items_per_iteration / seconds,
                            "min_items_per_s": worker.items_per_iteration / max(samples[worker.name]),
                            "max_items_per_s": worker.items_per_iteration / min(samples[worker.name])}
  return results
