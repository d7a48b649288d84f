"""Metric writer: TensorBoard event files, without TensorFlow.

clu's `metric_writers` imports TensorFlow (clu 0.0.12), not a dependency of fer_jax. This writer keeps clu's
MetricWriter method names and writes events with tensorboardX's event-file writer, in the calling thread:
SummaryWriter's background thread dies on a full disk with a traceback, and its queue then blocks the caller.
The console lines are the callers' (progress_window, the validation and evaluation lines): logging the same
scalars here too printed each of them twice; `--verbosity=1` shows them.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

import numpy as np
from absl import logging
from tensorboardX import event_file_writer, record_writer, summary
from tensorboardX.proto import event_pb2


class MetricWriter:
  """Writes events in `logdir` unless `just_logging` (processes other than 0); scalars go to the debug log."""

  def __init__(self, logdir: str | None, *, just_logging: bool = False, flush_secs: float = 10.0):
    self._events = None
    self._flush_secs, self._last_flush = flush_secs, time.monotonic()
    if logdir is not None and not just_logging:
      record_writer.directory_check(logdir)
      self._events = event_file_writer.EventsWriter(os.path.join(logdir, "events"))

  def _write(self, step: int, summaries: list[Any]) -> None:
    """Appends one event per summary; flushes when the last flush is `flush_secs` old."""
    for one in summaries:
      self._events.write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=one))
    if time.monotonic() - self._last_flush > self._flush_secs:
      self.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.debug("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))
    if self._events is not None:
      self._write(step, [summary.scalar(key, float(value)) for key, value in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Images [H, W, C] or [N, H, W, C], uint8 or float in [0, 1]."""
    if self._events is not None:
      self._write(step, [summary.image(key, np.asarray(value), dataformats="NHWC" if np.ndim(value) == 4 else "HWC")
                         for key, value in images.items()])

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    if self._events is not None:
      self._write(step, [summary.text(key, value) for key, value in texts.items()])

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's config, flattened, as one text summary (readable in TensorBoard's Text tab)."""
    lines = [f"    {k}: {v}" for k, v in sorted(_flatten(hparams).items())]
    self.write_texts(0, {"config": "\n".join(lines)})

  def flush(self) -> None:
    self._last_flush = time.monotonic()
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      events, self._events = self._events, None
      events.close()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat
