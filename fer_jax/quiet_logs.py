"""Drops the library log lines that tell a fer_jax user nothing; every other line, warnings included, stays.

Each entry names the logger the line comes from, the library file that logs it and how the line starts,
so a new message from the same library still shows. tfds and orbax log through absl's logger.
"""

from __future__ import annotations

import logging

# (logger name, part of the logging file's path, start of the message).
NOISE: tuple[tuple[str, str, str], ...] = (
    # tfds reads dataset_info.json each time a builder is made: 26 lines in the quick start.
    ("absl", "/tensorflow_datasets/", "Load dataset info from"),
    # tfds, asked whether a dataset is built, warns that the folder it looked in is empty; we then say more.
    ("absl", "/tensorflow_datasets/", "Variant folder"),
    # tfds announces a build and each file written; fer_jax.data.builders.build logs one line before, one after.
    ("absl", "/tensorflow_datasets/", "Generating dataset"),
    ("absl", "/tensorflow_datasets/", "Done writing"),
    # The evaluation job opens the checkpoints read-only on purpose.
    ("absl", "/orbax/", "Given directory is read only"),
    ("absl", "/orbax/", "CheckpointManagerOptions.read_only=True"),
    # A preemption save carries no validation metrics on purpose (kept as the latest, not ranked among the best).
    ("absl", "/orbax/", "Requested `tracked_metric`; did not provide metrics."),
    # JAX tries a TPU first on every machine; on one without a TPU that is expected.
    ("jax._src.xla_bridge", "/jax/", "Unable to initialize backend 'tpu'"),
    # matplotlib's first run in a fresh HOME.
    ("matplotlib.font_manager", "/matplotlib/", "generated new fontManager"),
)


class _NoiseFilter(logging.Filter):
  """Drops the NOISE lines of one logger."""

  def __init__(self, entries: list[tuple[str, str]]):
    super().__init__()
    self._entries = entries

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    path = record.pathname.replace("\\", "/")
    return not any(fragment in path and str(record.msg).startswith(start) for fragment, start in self._entries)


def install() -> None:
  """Adds the filters to their loggers; calling it again does nothing more."""
  by_logger: dict[str, list[tuple[str, str]]] = {}
  for name, fragment, start in NOISE:
    by_logger.setdefault(name, []).append((fragment, start))
  for name, entries in by_logger.items():
    logger = logging.getLogger(name)
    if not any(isinstance(f, _NoiseFilter) for f in logger.filters):
      logger.addFilter(_NoiseFilter(entries))
