"""The metric writer: events TensorBoard reads back, written in the caller's thread so errors reach the trainer."""

from __future__ import annotations

import errno
import glob
import os
import sys
import threading

import numpy as np
import pytest
from tensorboardX import record_writer

from fer_jax import checkpointing, tensorboard_writer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from time_to_accuracy import read_events  # noqa: E402  (the reader our benchmarks use)


def test_scalars_images_and_texts_read_back(tmp_path):
  writer = tensorboard_writer.MetricWriter(str(tmp_path))
  writer.write_scalars(3, {"val_accuracy": 0.25, "loss": 1.5})
  writer.write_images(3, {"grid": np.zeros((8, 8, 3), np.uint8), "batch": np.ones((2, 4, 4, 1), np.float32)})
  writer.write_hparams({"model": "cnn", "data": {"name": "fer2013"}})
  writer.close()
  writer.close()  # a second close is harmless
  (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  values = {(e.step, v.tag): v for e in read_events(path) for v in e.summary.value}
  assert values[(3, "val_accuracy")].simple_value == pytest.approx(0.25)
  assert values[(3, "loss")].simple_value == pytest.approx(1.5)
  assert values[(3, "grid")].image.width == 8 and values[(3, "batch")].image.encoded_image_string
  assert b"data.name: fer2013" in values[(0, "config/text_summary")].tensor.string_val[0]


def test_just_logging_writes_no_file(tmp_path):
  writer = tensorboard_writer.MetricWriter(str(tmp_path / "run"), just_logging=True)
  writer.write_scalars(1, {"loss": 1.0})
  writer.close()
  assert not os.path.exists(tmp_path / "run")


def test_a_full_disk_is_an_error_in_the_calling_thread(tmp_path, monkeypatch):
  """tensorboardX's SummaryWriter lost this error in its flush thread (a traceback, then a blocked queue)."""
  monkeypatch.setattr(record_writer, "open_file", lambda path: open("/dev/full", "wb"))  # every write: ENOSPC
  threads = threading.active_count()
  writer = tensorboard_writer.MetricWriter(str(tmp_path))
  assert threading.active_count() == threads
  with pytest.raises(OSError) as error:
    for step in range(1000):  # more than a file buffer's worth, each step a few scalars
      writer.write_scalars(step, {"loss": 1.0, "accuracy": 0.5, "learning_rate": 0.1})
    writer.flush()
  assert error.value.errno == errno.ENOSPC and checkpointing.is_disk_full(error.value)
