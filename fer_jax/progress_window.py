"""The trainer's console progress: metrics, throughput and ETA over the steps since the last log line."""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Iterator

from absl import logging


class ProgressWindow:
  """Training metrics, throughput and ETA over the steps since the last log line."""

  def __init__(self, total_steps: int, steps_per_epoch: int, batch_size: int):
    self.total_steps, self.steps_per_epoch, self.batch_size = total_steps, steps_per_epoch, batch_size
    self._metrics: list[Any] = []
    self._start, self._excluded = time.perf_counter(), 0.0

  @contextlib.contextmanager
  def excluded(self) -> Iterator[None]:
    """Time spent inside (a validation) is left out of the window's throughput and ETA; its steps stay in."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self._excluded += time.perf_counter() - start

  def add(self, metrics: Any) -> None:
    """One step's clu metrics (train.TrainMetrics)."""
    self._metrics.append(metrics)

  def report(self, step: int, learning_rate: float) -> dict[str, float]:
    """Scalars for the window (then emptied), and the console progress line with ETA."""
    summary = functools.reduce(lambda a, b: a.merge(b), self._metrics).compute()
    steps, elapsed = len(self._metrics), time.perf_counter() - self._start - self._excluded
    scalars = {"train_loss": float(summary["loss"]), "train_accuracy": float(summary["accuracy"]),
               "learning_rate": learning_rate, "images_per_sec": steps * self.batch_size / elapsed,
               "step_time_ms": 1000 * elapsed / steps}
    eta = (self.total_steps - step) * elapsed / steps
    logging.info("step %d/%d (epoch %.2f) loss %.4f acc %.3f lr %.2e %.0f img/s ETA %s", step, self.total_steps,
                 step / self.steps_per_epoch, scalars["train_loss"], scalars["train_accuracy"], learning_rate,
                 scalars["images_per_sec"], _hours_minutes_seconds(eta))
    self._metrics = []
    self._start, self._excluded = time.perf_counter(), 0.0
    return scalars


def _hours_minutes_seconds(seconds: float) -> str:
  """HH:MM:SS, the hours not wrapped at a day."""
  minutes, secs = divmod(int(round(seconds)), 60)
  return f"{minutes // 60:02d}:{minutes % 60:02d}:{secs:02d}"
