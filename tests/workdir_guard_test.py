"""One trainer per workdir, and a workdir keeps the setup it was started with (fer_jax/workdir_guard.py)."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import socket
import sys

import pytest

from fer_jax import checkpointing, eval_job, model_card, train, workdir_guard

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reliability_test import run_cli  # noqa: E402
from train_test import tiny_config  # noqa: E402


def cli_args(workdir, data_dir, *extra: str) -> list[str]:
  """configs/default.py shrunk to the tiny synthetic faces: 4 steps, one checkpoint."""
  return ["--config", "configs/default.py", "--workdir", str(workdir), "--config.data.config=tiny",
          f"--config.data.data_dir={data_dir}", "--config.num_train_steps=4", "--config.eval_every_steps=4",
          "--config.checkpoint_every_steps=4", *extra]


@pytest.fixture
def trained(tmp_path, synthetic_tiny_dir) -> pathlib.Path:
  workdir = tmp_path / "run"
  train.train_and_evaluate(tiny_config(synthetic_tiny_dir), str(workdir))
  return workdir


def test_second_trainer_refuses_naming_the_holder(tmp_path, synthetic_tiny_dir):
  workdir = tmp_path / "run"
  with workdir_guard.TrainerLock(str(workdir)):
    out = run_cli(*cli_args(workdir, synthetic_tiny_dir))
  assert out.returncode != 0 and "Traceback" not in out.stderr
  line = out.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: {workdir} is in use by another trainer (pid {os.getpid()} on host "
                         f"{socket.gethostname()}, since "), line
  assert sorted(os.listdir(workdir)) == [workdir_guard.LOCK_FILE]  # nothing else written


def test_a_lock_left_by_a_dead_trainer_is_taken_over_with_a_warning(tmp_path, caplog):
  lock = tmp_path / workdir_guard.LOCK_FILE
  lock.write_text(json.dumps({"host": "gone", "pid": 999999, "since": "2026-01-01T00:00:00+00:00"}))
  with caplog.at_level(logging.WARNING, logger="absl"):
    with workdir_guard.TrainerLock(str(tmp_path)):
      assert json.loads(lock.read_text())["pid"] == os.getpid()
  assert "ended without releasing it" in caplog.text and "pid 999999 on host gone" in caplog.text
  assert lock.read_text() == ""  # released cleanly: the next trainer has nothing to warn about


def test_rerun_with_another_setup_is_refused_before_anything_is_written(tmp_path, synthetic_tiny_dir):
  workdir = tmp_path / "run"
  assert run_cli(*cli_args(workdir, synthetic_tiny_dir)).returncode == 0
  card = (workdir / model_card.FILENAME).read_text()
  out = run_cli(*cli_args(workdir, synthetic_tiny_dir, "--config.batch_size=32", "--config.seed=3",
                          "--config.model_kwargs.dense_features=(64,)"))
  assert out.returncode != 0 and "Traceback" not in out.stderr
  line = out.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: {workdir} was trained with another setup"), line
  for change in ("batch_size: 64 -> 32", "seed: 0 -> 3", "model_kwargs.dense_features: [128] -> [64]"):
    assert change in line, line
  assert (workdir / model_card.FILENAME).read_text() == card
  assert sorted(os.listdir(checkpointing.checkpoint_dir(str(workdir)))) == ["4"]
  # Safe changes go through: more steps and other cadences resume the same run.
  out = run_cli(*cli_args(workdir, synthetic_tiny_dir, "--config.num_train_steps=6", "--config.log_every_steps=3"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "6" in os.listdir(checkpointing.checkpoint_dir(str(workdir)))


def test_a_workdir_older_than_setup_json_is_checked_against_its_model_json(trained, synthetic_tiny_dir):
  (trained / workdir_guard.SETUP_FILE).unlink()
  config = tiny_config(synthetic_tiny_dir)
  config.model_kwargs.conv_features = (8, 32)
  with pytest.raises(checkpointing.WorkdirError, match=r"model_kwargs.conv_features: \[8, 16\] -> \[8, 32\]"):
    train.Trainer(config, str(trained)).train()
  assert not (trained / workdir_guard.SETUP_FILE).exists()


def test_a_rerun_that_adds_a_moving_average_is_refused_and_its_checkpoints_are_kept(trained, synthetic_tiny_dir):
  config = tiny_config(synthetic_tiny_dir)
  config.ema_decay = 0.99  # adds .ema_params to the state: the checkpoints cannot restore into it
  with pytest.raises(checkpointing.WorkdirError, match=r"state_layout: \+\.ema_params \(ema_decay"):
    train.Trainer(config, str(trained)).train()
  assert sorted(os.listdir(checkpointing.checkpoint_dir(str(trained)))) == ["4", "8"]


def test_an_intact_checkpoint_that_does_not_fit_the_state_is_not_called_damaged(trained, synthetic_tiny_dir):
  setup = json.loads((trained / workdir_guard.SETUP_FILE).read_text())
  del setup["state_layout"]  # as a workdir recorded before the layout was
  (trained / workdir_guard.SETUP_FILE).write_text(json.dumps(setup))
  config = tiny_config(synthetic_tiny_dir)
  config.grad_clip_norm = 1.0  # moves the optimizer's state one place down its chain
  with pytest.raises(checkpointing.WorkdirError, match="Checkpoint step 8 in .* is intact .* does not restore"):
    train.Trainer(config, str(trained)).train()
  assert sorted(os.listdir(checkpointing.checkpoint_dir(str(trained)))) == ["4", "8"]
  assert not (trained / "damaged_checkpoints").exists()


def test_the_eval_job_works_beside_a_held_lock(trained, synthetic_tiny_dir):
  with workdir_guard.TrainerLock(str(trained)):
    assert eval_job.run(tiny_config(synthetic_tiny_dir), str(trained)) == [4, 8]
