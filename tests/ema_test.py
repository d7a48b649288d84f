"""The moving average of the parameters (config.ema_decay): its update rule, and that validation, the
evaluation job and inference all score the average while validation also reports the raw parameters."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax import checkpointing, config_schema, eval_job, model_factory, models, train
from fer_jax.serving import inference
from train_test import tiny_config, tiny_run


def _tiny_state(ema: bool) -> model_factory.TrainState:
  model = models.create_model("cnn", num_classes=7, dtype=jnp.float32, conv_features=(4,), dense_features=(8,))
  return model_factory.create_train_state(model, optax.sgd(0.5), (48, 48, 1), seed=0, ema=ema)


def _batch(seed: int, nan: bool = False) -> dict[str, jnp.ndarray]:
  rng = np.random.default_rng(seed)
  image = rng.random((8, 48, 48, 1), dtype=np.float32)
  if nan:
    image[0, 0, 0, 0] = np.nan
  return {"image": jnp.asarray(image), "label": jnp.asarray(rng.integers(0, 7, 8), jnp.int32)}


def _step(decay: float, skip_nonfinite: bool = False):
  return jax.jit(functools.partial(train.train_step, base_key=jax.random.key(0), label_smoothing=0.0,
                                   class_weights=None, skip_nonfinite=skip_nonfinite, ema_decay=decay))


def _close(a, b) -> bool:
  return all(np.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_the_average_moves_by_the_warmed_up_decay_each_step():
  step = _step(0.5)
  state = _tiny_state(ema=True)
  assert _close(state.ema_params, state.params)
  expected = state.params
  for k in range(3):
    old_ema = state.ema_params
    state, _, finite = step(state, _batch(k))
    assert bool(finite)
    decay = min(0.5, (1 + k) / (10 + k))  # 0.1, 0.18, 0.25: the warm-up rule, then capped at config's decay.
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, old_ema, state.params)
    assert _close(state.ema_params, expected), k
  assert not _close(state.ema_params, state.params)  # An average, not a copy.
  assert float(model_factory.ema_decay_at(0.999, 10**6)) == pytest.approx(0.999)


def test_without_ema_the_state_holds_no_average_and_inference_uses_the_parameters():
  state, _, _ = _step(0.0)(_tiny_state(ema=False), _batch(0))
  assert jax.tree.leaves(state.ema_params) == []
  assert model_factory.model_variables(state)["params"] is state.params


def test_a_skipped_nonfinite_step_leaves_the_average_alone():
  state = _tiny_state(ema=True)
  state, _, _ = _step(0.9)(state, _batch(0))
  before = jax.tree.map(np.asarray, state.ema_params)
  state, _, finite = _step(0.9, skip_nonfinite=True)(state, _batch(1, nan=True))
  assert not bool(finite)
  assert _close(state.ema_params, before)


def test_ema_decay_outside_0_1_is_a_config_error():
  config = config_schema.base_config()
  config.ema_decay = 1.0
  with pytest.raises(config_schema.ConfigError, match="ema_decay"):
    config_schema.validate(config, num_devices=1, process_count=1)


def test_a_run_with_ema_is_validated_evaluated_and_served_by_the_average(tmp_path, synthetic_tiny_dir):
  config = tiny_config(synthetic_tiny_dir)
  config.ema_decay = 0.9
  config.optimizer, config.learning_rate = "sgd", 0.3  # Steps large enough that average and parameters differ.
  workdir = str(tmp_path / "run")
  last = train.train_and_evaluate(config, workdir)
  assert {"val_accuracy", "val_loss", "raw_val_accuracy", "raw_val_loss"} <= set(last)
  assert last["val_loss"] != pytest.approx(last["raw_val_loss"], abs=1e-6)

  trainer = train.Trainer(config, workdir)
  manager = checkpointing.create_manager(workdir, read_only=True)
  state = checkpointing.restore(manager, 8, trainer.abstract_state)
  assert not _close(state.ema_params, state.params)

  loaded = inference.load(workdir, step=8)  # predict, export and bundling all load through here
  assert _close(loaded.variables["params"], state.ema_params)

  assert eval_job.run(config, workdir) == [4, 8]
  report = json.loads((tmp_path / "run/eval/validation/step_8/metrics.json").read_text())
  assert report["plain"]["loss"] == pytest.approx(last["val_loss"], rel=1e-4)
  assert report["plain"]["loss"] != pytest.approx(last["raw_val_loss"], rel=1e-4)


def test_a_resumed_run_continues_the_average_where_it_stopped(tmp_path, synthetic_tiny_dir):
  """4 steps, then a rerun to 8, ends with the same average as 8 steps straight: it is checkpointed."""
  config = tiny_config(synthetic_tiny_dir)
  config.ema_decay = 0.9
  train.train_and_evaluate(config, str(tmp_path / "straight"))
  first_half = tiny_config(synthetic_tiny_dir)
  first_half.ema_decay, first_half.num_train_steps = 0.9, 4  # constant learning rate: the same first 4 updates
  train.train_and_evaluate(first_half, str(tmp_path / "resumed"))
  train.train_and_evaluate(config, str(tmp_path / "resumed"))

  def average(workdir):
    manager = checkpointing.create_manager(workdir, read_only=True)
    return checkpointing.restore(manager, 8, train.Trainer(config, workdir).abstract_state).ema_params

  for a, b in zip(jax.tree.leaves(average(str(tmp_path / "straight"))),
                  jax.tree.leaves(average(str(tmp_path / "resumed")))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_late_decay_replaces_the_decay_from_its_step_on():
  assert float(model_factory.ema_decay_at(0.9, 10**5, late_decay=0.99, late_from_step=10**5 + 1)) == pytest.approx(0.9)
  assert float(model_factory.ema_decay_at(0.9, 10**5, late_decay=0.99, late_from_step=10**5)) == pytest.approx(0.99)
  assert float(model_factory.ema_decay_at(0.9, 20, late_decay=0.99, late_from_step=10)) == pytest.approx(21 / 30)
  state = _tiny_state(ema=True).replace(step=jnp.asarray(100, jnp.int32))  # Warm-up: 101/110, above both.
  for late_from_step, decay in ((100, 0.8), (101, 0.5)):
    step = jax.jit(functools.partial(train.train_step, base_key=jax.random.key(0), label_smoothing=0.0,
                                     class_weights=None, ema_decay=0.5, late_ema=(0.8, late_from_step)))
    new, _, _ = step(state, _batch(0))
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, new.params)
    assert _close(new.ema_params, expected), late_from_step


def test_the_trainer_averages_with_the_configs_late_decay(tmp_path, synthetic_tiny_dir):
  """Same seed and data: a late decay from epoch 0 changes the average's validation loss, one after the run not."""
  def val_loss(late_decay: float, from_epoch: float, name: str) -> float:
    return tiny_run(synthetic_tiny_dir, str(tmp_path / name), ema_decay=0.1, optimizer="sgd", learning_rate=0.3,
                    late_ema_decay=late_decay, late_ema_from_epoch=from_epoch)["val_loss"]  # 8 steps: warm-up 0.1-0.47.

  plain = val_loss(0.0, 0.0, "plain")
  assert abs(val_loss(0.4, 0.0, "late") - plain) > 1e-4
  assert val_loss(0.4, 1000.0, "after_the_run") == plain


def test_a_late_decay_needs_a_moving_average():
  config = tiny_config("unused")
  config.ema_decay, config.late_ema_decay = 0.0, 0.999
  with pytest.raises(config_schema.ConfigError, match="late_ema_decay=0.999.*ema_decay > 0"):
    config_schema.validate(config, num_devices=1, process_count=1)
