"""SIGTERM as a preemption notice: the trainer finishes its step, saves a checkpoint and exits (docs/GUARANTEES.md)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from typing import Any

from absl import logging


@contextlib.contextmanager
def preemption_notice():
  """Records SIGTERM (a preemption notice) instead of dying; yields a dict whose "signal" is set then.

  Installed only in the main thread of the launching process (never in grain workers); the previous handler
  comes back on exit. A second SIGTERM, while the checkpoint is written, ends the process the default way.
  """
  notice: dict[str, Any] = {"signal": None}
  if threading.current_thread() is not threading.main_thread() or multiprocessing.parent_process() is not None:
    yield notice
    return

  def handler(signum, frame):
    del frame
    if notice["signal"] is not None:
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
    notice["signal"] = signal.Signals(signum).name
    logging.warning("%s received: finishing the current step, saving a checkpoint and exiting.", notice["signal"])

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield notice
  finally:
    signal.signal(signal.SIGTERM, previous)
