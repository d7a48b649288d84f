"""The trainer's progress line: throughput and ETA over the training time of the window (fer_jax/progress_window.py)."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import pytest

from fer_jax import progress_window, train


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
  fake = FakeClock()
  monkeypatch.setattr(progress_window.time, "perf_counter", fake)
  return fake


def step_metrics() -> train.TrainMetrics:
  return train.TrainMetrics.single_from_model_output(loss=jnp.float32(1.0), logits=jnp.eye(2, 7),
                                                     labels=jnp.array([0, 1]))


def test_a_validation_inside_the_window_is_left_out_of_the_throughput(clock, caplog):
  window = progress_window.ProgressWindow(total_steps=1000, steps_per_epoch=100, batch_size=32)
  for _ in range(50):  # 50 steps at 0.1 s, a 30 s validation, 50 more steps at 0.1 s
    clock.now += 0.1
    window.add(step_metrics())
  with window.excluded():
    clock.now += 30.0
  for _ in range(50):
    clock.now += 0.1
    window.add(step_metrics())
  with caplog.at_level(logging.INFO, logger="absl"):
    scalars = window.report(step=100, learning_rate=0.1)
  assert scalars["images_per_sec"] == pytest.approx(320.0)  # 100 steps x 32 images in 10 s of training
  assert scalars["step_time_ms"] == pytest.approx(100.0)
  assert scalars["train_accuracy"] == 1.0
  assert "320 img/s ETA 00:01:30" in caplog.text  # 900 steps left at 0.1 s


def test_the_eta_counts_hours_past_a_day(clock, caplog):
  window = progress_window.ProgressWindow(total_steps=100_001, steps_per_epoch=100, batch_size=32)
  clock.now += 1.0
  window.add(step_metrics())
  with caplog.at_level(logging.INFO, logger="absl"):
    window.report(step=1, learning_rate=0.1)
  assert "ETA 27:46:40" in caplog.text  # 100,000 steps at 1 s
