"""One real training and evaluation round on tiny synthetic data; resume; 8 devices vs 1."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from fer_jax import checkpointing, config_schema, eval_job, model_card, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(data_dir: str) -> ml_collections.ConfigDict:
  config = config_schema.base_config()
  config.data.name = "synthetic_faces"
  config.data.config = "tiny"
  config.data.data_dir = data_dir
  config.model_kwargs.conv_features = (8, 16)
  config.model_kwargs.dense_features = (32,)
  config.batch_size = 16
  config.eval_batch_size = 32
  config.num_train_steps = 8
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  config.keep_checkpoints = 5
  config.eval.poll_every_s = 0.1
  config.eval.idle_timeout_s = 0.0
  return config


def tiny_run(data_dir: str, workdir: str, **fields) -> dict[str, float]:
  """A real run of tiny_config(data_dir) with `fields` set; its last metrics."""
  config = tiny_config(data_dir)
  for name, value in fields.items():
    config[name] = value
  return train.train_and_evaluate(config, workdir)


@pytest.fixture
def data_dir(synthetic_tiny_dir: str) -> str:
  return synthetic_tiny_dir


def params_of(workdir: str, config) -> list[np.ndarray]:
  trainer = train.Trainer(config, workdir)
  manager = checkpointing.create_manager(workdir, read_only=True)
  state = checkpointing.restore(manager, manager.latest_step(), trainer.abstract_state)
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def test_train_then_eval_job_writes_reports(tmp_path, data_dir):
  config = tiny_config(data_dir)
  config.eval.tta = "flip"
  workdir = str(tmp_path / "run")
  last = train.train_and_evaluate(config, workdir)
  assert np.isfinite(last["train_loss"]) and 0.0 <= last["val_accuracy"] <= 1.0
  assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ["4", "8"]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
  card = json.loads((tmp_path / "run" / model_card.FILENAME).read_text())
  assert card["class_names"][3] == "happy" and card["image_shape"] == [48, 48, 1]
  assert card["normalization"]["kind"] == "unit" and card["config"]["model"] == "cnn"

  steps = eval_job.run(config, workdir)
  assert steps == [4, 8]
  report = json.loads((tmp_path / "run/eval/validation/step_8/metrics.json").read_text())
  assert report["plain"]["num_examples"] == train.builders.dataset_info(config).num_examples["validation"]
  assert set(report) >= {"plain", "flip", "step"} and len(report["plain"]["per_class"]) == 7
  assert (tmp_path / "run/eval/validation/step_8/confusion_matrix.png").exists()
  assert (tmp_path / "run/eval/validation/step_8/sample_predictions.png").exists()
  # A restarted evaluation job does not score again what it already recorded.
  assert eval_job.run(config, workdir) == []


def test_every_optional_path_trains_and_evaluates(tmp_path, data_dir):
  """Batch norm, bfloat16, SGD + plateau, class weights, smoothing, crops and ten-crop TTA together."""
  config = tiny_config(data_dir)
  config.model = "vgg"
  config.model_kwargs = {"stage_features": (4, 4, 4, 4), "convs_per_stage": 1, "dense_features": (8,)}
  config.dtype = "bfloat16"
  config.optimizer, config.schedule, config.learning_rate = "sgd", "plateau", 0.01
  config.weight_decay, config.grad_clip_norm, config.label_smoothing = 1e-4, 1.0, 0.1
  config.class_weights = "balanced"
  config.data.normalization = "standardize"
  config.data.augment.crop_size, config.data.augment.erasing_prob = 40, 0.5
  config.eval.tta = "flip,ten_crop"
  config.num_train_steps = 4
  workdir = str(tmp_path / "run")
  last = train.train_and_evaluate(config, workdir)
  assert np.isfinite(last["train_loss"]) and last["learning_rate"] == 0.01
  assert eval_job.run(config, workdir) == [4]
  report = json.loads((tmp_path / "run/eval/validation/step_4/metrics.json").read_text())
  assert {"plain", "flip", "ten_crop"} <= set(report)
  assert report["ten_crop"]["num_examples"] == report["plain"]["num_examples"] == 70


def test_the_logged_learning_rate_is_the_one_the_last_update_used(tmp_path, data_dir):
  last = tiny_run(data_dir, str(tmp_path / "run"), schedule="warmup_cosine", learning_rate=0.01)
  # Cosine to 0 over 8 updates: the 8th update (optax's count 7) used 0.01 * (1 + cos(7 pi / 8)) / 2, not 0.
  assert last["learning_rate"] == pytest.approx(0.01 * (1 + math.cos(7 * math.pi / 8)) / 2, rel=1e-5)


def test_balanced_class_weights(data_dir):
  counts = train.stats.label_counts(tiny_config(data_dir))
  assert counts.sum() == train.builders.dataset_info(tiny_config(data_dir)).num_examples["train"]
  weights = train.balanced_class_weights(np.array([10, 30, 0, 60]))
  np.testing.assert_allclose(weights, [100 / 3 / 10, 100 / 3 / 30, 0.0, 100 / 3 / 60], rtol=1e-6)


def test_resume_continues_on_the_next_batch(tmp_path, data_dir):
  config = tiny_config(data_dir)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(config, straight)

  resumed = str(tmp_path / "resumed")
  first_half = tiny_config(data_dir)
  first_half.num_train_steps = 4  # constant learning rate: same updates as the first 4 of 8 steps
  train.train_and_evaluate(first_half, resumed)
  train.train_and_evaluate(config, resumed)

  for a, b in zip(params_of(straight, config), params_of(resumed, config)):
    np.testing.assert_array_equal(a, b)


def test_eval_job_skips_partial_checkpoints(tmp_path, data_dir):
  config = tiny_config(data_dir)
  config.num_train_steps = 4
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  # What an interrupted asynchronous save leaves behind: a temporary step directory.
  partial = workdir / "checkpoints" / "8.orbax-checkpoint-tmp-1234567"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "garbage").write_bytes(b"\0" * 100)
  assert eval_job.run(config, str(workdir)) == [4]


MULTI_DEVICE_SCRIPT = """
import sys, json
import jax
from fer_jax import train
sys.path.insert(0, {tests!r})
from train_test import tiny_config
config = tiny_config({data_dir!r})
config.num_train_steps = 3
config.checkpoint_every_steps = 3
config.log_every_steps = 1
trainer = train.Trainer(config, {workdir!r})
last = trainer.train()
print(json.dumps({{"devices": jax.device_count(), "loss": last["train_loss"], "val_loss": last["val_loss"]}}))
"""


def run_with_devices(n: int, workdir: str, data_dir: str) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
  script = MULTI_DEVICE_SCRIPT.format(tests=str(REPO / "tests"), data_dir=data_dir, workdir=workdir)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one_device(tmp_path, data_dir):
  one = run_with_devices(1, str(tmp_path / "one"), data_dir)
  eight = run_with_devices(8, str(tmp_path / "eight"), data_dir)
  assert (one["devices"], eight["devices"]) == (1, 8)
  np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
  np.testing.assert_allclose(eight["val_loss"], one["val_loss"], rtol=1e-5)
