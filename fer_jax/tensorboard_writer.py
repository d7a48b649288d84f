"""A clu MetricWriter that writes TensorBoard event files without TensorFlow.

clu's own SummaryWriter imports TensorFlow and its torch writer imports torch;
neither is a dependency of fer_jax, so events are written with tensorboardX.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorboardX
from clu import metric_writers
from clu.metric_writers import interface


class TensorboardXWriter(interface.MetricWriter):
  """Scalars, images, texts, histograms and hparams as TensorBoard events."""

  def __init__(self, logdir: str):
    self._writer = tensorboardX.SummaryWriter(logdir=logdir, flush_secs=10)

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), global_step=step)

  def write_images(self, step: int, images: Mapping[str, Any]):
    for key, value in images.items():
      value = np.asarray(value)
      if value.ndim == 4:
        self._writer.add_images(key, value, global_step=step, dataformats="NHWC")
      else:
        self._writer.add_image(key, value, global_step=step, dataformats="HWC")

  def write_videos(self, step: int, videos: Mapping[str, Any]):
    del step, videos  # Not used by fer_jax.

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
    del step, audios, sample_rate  # Not used by fer_jax.

  def write_texts(self, step: int, texts: Mapping[str, str]):
    for key, value in texts.items():
      self._writer.add_text(key, value, global_step=step)

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Mapping[str, int] | None = None):
    for key, value in arrays.items():
      self._writer.add_histogram(key, np.asarray(value), global_step=step)

  def write_hparams(self, hparams: Mapping[str, Any]):
    flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
    self._writer.add_text("hparams", "\n".join(f"    {k}: {v}" for k, v in sorted(flat.items())), 0)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def create_writer(logdir: str | None, *, just_logging: bool = False) -> metric_writers.MetricWriter:
  """Console logging plus (on the writing process) TensorBoard events in `logdir`."""
  writers: list[metric_writers.MetricWriter] = [metric_writers.LoggingWriter()]
  if logdir is not None and not just_logging:
    writers.append(TensorboardXWriter(logdir))
  return metric_writers.AsyncMultiWriter(writers)
