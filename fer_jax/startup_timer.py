"""Where a run's fixed cost goes: the phases from launch to the first training step, and the first validation's.

The trainer logs one line at its first step (`Startup to first step T s: phase s, ...`) and one at its first
validation (`First validation T s: ...`), so a slow start (XLA compilation, GPU autotuning, input workers,
a restore) shows up by name. bench/gpu_check.sh greps both prefixes.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

from absl import logging

from fer_jax import xla_cache

STARTUP_PREFIX = "Startup to first step "
FIRST_VALIDATION_PREFIX = "First validation "
_IMPORTED = time.time()  # The fallback "launch" where /proc is unavailable.


def seconds_since_launch() -> tuple[float, str]:
  """(seconds since this process started, what "launch" means in that figure).

  Linux: the process start time the kernel records (/proc/self/stat, 10 ms ticks since boot) against
  CLOCK_BOOTTIME, so interpreter start, imports and flag parsing count. Elsewhere: since fer_jax's trainer
  modules were imported.
  """
  try:
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()  # The command name (field 2) may hold spaces and ")".
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # Field 22, starttime.
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started), "process start"
  except (OSError, ValueError, IndexError, AttributeError):
    return time.time() - _IMPORTED, "import of fer_jax.startup_timer"


class StartupTimer:
  """Named phases, in seconds, from launch to the first training step; `log()` writes the line once.

  Phases are timed one after the other (never overlapping), so their sum is at most the total; whatever no
  phase covers is reported as "other".
  """

  def __init__(self):
    self.before, self.launch = seconds_since_launch()
    self._t0 = time.perf_counter()
    self.phases: dict[str, float] = {}
    self._cache_events = xla_cache.CacheEvents()
    self.cache_dir: str | None = None  # The persistent compilation cache the trainer uses, and for what.
    self.cache_scope = ""
    self.logged = False

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self.add(name, time.perf_counter() - start)

  def add(self, name: str, seconds: float) -> None:
    self.phases[name] = self.phases.get(name, 0.0) + seconds

  def line(self) -> str:
    """`Startup to first step T s: before the trainer a, <phase> b, ..., other c (launch = ...; XLA cache ...)`."""
    total = self.before + time.perf_counter() - self._t0
    phases = {"before the trainer": self.before, **self.phases}
    phases["other"] = max(0.0, total - sum(phases.values()))
    parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in phases.items())
    return (f"{STARTUP_PREFIX}{total:.2f} s: {parts} (launch = {self.launch}; "
            f"{self._cache_events.summary(self.cache_dir, self.cache_scope)})")

  def log(self) -> None:
    if not self.logged:
      logging.info("%s", self.line())
      self.logged = True
    self._cache_events.close()


def first_validation_line(setup_s: float, compile_s: float, scoring_s: float, *, ahead: bool) -> str:
  """`First validation T s: setup (dataset) a, compile b, scoring c`; later validations log only their result."""
  how = "what was left of the background compile" if ahead else "compiled then"
  return (f"{FIRST_VALIDATION_PREFIX}{setup_s + compile_s + scoring_s:.2f} s: setup (dataset) {setup_s:.2f}, "
          f"compile {compile_s:.2f} ({how}), scoring {scoring_s:.2f}")


def parse(line: str) -> tuple[float, dict[str, float]]:
  """(total seconds, {phase: seconds}) of a `Startup to first step` line, as tests and bench scripts read it."""
  head, rest = line.split(STARTUP_PREFIX, 1)[1].split(" s: ", 1)
  phases = {}
  for part in rest.split(" (launch = ", 1)[0].split(", "):
    name, seconds = part.rsplit(" ", 1)
    phases[name] = float(seconds)
  return float(head), phases
