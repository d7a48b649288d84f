"""Metric writer: console log lines plus TensorBoard event files, without TensorFlow.

clu's `metric_writers` imports TensorFlow (clu 0.0.12), not a dependency of fer_jax. This writer keeps clu's
MetricWriter method names and writes events with tensorboardX, which flushes from its own background thread.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from absl import logging


class MetricWriter:
  """Logs scalars on every process; unless `just_logging` (processes other than 0), writes events in `logdir`."""

  def __init__(self, logdir: str | None, *, just_logging: bool = False):
    self._events = None
    if logdir is not None and not just_logging:
      import tensorboardX  # Only the writing process needs it.
      self._events = tensorboardX.SummaryWriter(logdir=logdir, flush_secs=10)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={float(v):.6g}" for k, v in scalars.items()))
    if self._events is not None:
      for key, value in scalars.items():
        self._events.add_scalar(key, float(value), global_step=step)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Images [H, W, C] or [N, H, W, C], uint8 or float in [0, 1]."""
    if self._events is None:
      return
    for key, value in images.items():
      value = np.asarray(value)
      if value.ndim == 4:
        self._events.add_images(key, value, global_step=step, dataformats="NHWC")
      else:
        self._events.add_image(key, value, global_step=step, dataformats="HWC")

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    if self._events is not None:
      for key, value in texts.items():
        self._events.add_text(key, value, global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's config, flattened, as one text summary (readable in TensorBoard's Text tab)."""
    lines = [f"    {k}: {v}" for k, v in sorted(_flatten(hparams).items())]
    self.write_texts(0, {"config": "\n".join(lines)})

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat
