"""Each optimizer and schedule the configs can choose actually optimizes and decays as documented."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax import config_schema, optimizers


def config_for(**fields):
  config = config_schema.base_config()
  for key, value in fields.items():
    config[key] = value
  return config


@pytest.mark.parametrize("optimizer,schedule",
                         list(itertools.product(config_schema.OPTIMIZERS, config_schema.SCHEDULES)))
def test_every_optimizer_and_schedule_reduces_a_quadratic(optimizer, schedule):
  config = config_for(optimizer=optimizer, schedule=schedule, learning_rate=0.05, weight_decay=1e-4,
                      grad_clip_norm=10.0, warmup_epochs=1.0)
  schedule_fn = optimizers.create_schedule(config, steps_per_epoch=5, total_steps=60)
  tx = optimizers.create_optimizer(config, schedule_fn, steps_per_epoch=5)
  params = {"w": jnp.full((3, 3), 2.0), "b": jnp.ones((3,))}
  state = tx.init(params)
  loss_fn = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
  start = loss_fn(params)

  def step(_, carry):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  params, _ = jax.jit(lambda p, s: jax.lax.fori_loop(0, 60, step, (p, s)))(params, state)
  assert loss_fn(params) < 0.5 * start


def test_schedules_by_value():
  warm_cosine = optimizers.create_schedule(
      config_for(schedule="warmup_cosine", learning_rate=0.1, warmup_epochs=2.0), steps_per_epoch=10, total_steps=100)
  assert float(warm_cosine(0)) == 0.0 and np.isclose(warm_cosine(20), 0.1) and np.isclose(warm_cosine(100), 0.0)
  step = optimizers.create_schedule(config_for(schedule="step", learning_rate=0.1, step_every_epochs=3.0,
                                               step_factor=0.1), steps_per_epoch=10, total_steps=100)
  assert np.isclose(step(29), 0.1) and np.isclose(step(30), 0.01) and np.isclose(step(60), 0.001)
  constant = optimizers.create_schedule(config_for(learning_rate=0.3), steps_per_epoch=10, total_steps=100)
  assert np.isclose(constant(0), 0.3) and np.isclose(constant(99), 0.3)


def test_plateau_cuts_the_scale_when_the_loss_stalls():
  config = config_for(schedule="plateau", plateau_patience_epochs=2, plateau_factor=0.5)
  tx = optimizers.create_optimizer(config, optimizers.create_schedule(config, 4, 100), steps_per_epoch=4)
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  assert float(optimizers.plateau_scale(state)) == 1.0
  for _ in range(4 * 4):  # four epochs of a flat loss
    _, state = tx.update({"w": jnp.zeros(2)}, state, params, value=jnp.asarray(1.0))
  assert float(optimizers.plateau_scale(state)) == 0.5


@pytest.mark.parametrize("schedule", ["plateau", "constant"])
def test_plateau_scale_with_batch_norm_params_named_scale(schedule):
  config = config_for(schedule=schedule)
  tx = optimizers.create_optimizer(config, optimizers.create_schedule(config, 4, 100), steps_per_epoch=4)
  state = tx.init({"BatchNorm_0": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}})
  assert float(optimizers.plateau_scale(state)) == 1.0


@pytest.mark.parametrize("optimizer,kernel_update,bias_update", [
    ("sgd", -0.1 * (2 + 0.01), -0.1 * 2),  # L2 added to the gradient: -lr * (g + wd * w)
    ("adam", -0.1, -0.1),                    # L2 added to the gradient, then normalised: -lr per first step
    ("adamw", -0.1 * (1 + 0.01), -0.1),      # decay decoupled from the normalisation: -lr * (g / |g| + wd * w)
])
def test_weight_decay_skips_biases_and_each_optimizer_applies_it_as_documented(optimizer, kernel_update,
                                                                                bias_update):
  config = config_for(optimizer=optimizer, momentum=0.0, learning_rate=0.1, weight_decay=0.01)
  tx = optimizers.create_optimizer(config, optimizers.create_schedule(config, 1, 1), steps_per_epoch=1)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
  updates, _ = tx.update(grads, tx.init(params), params, value=0.0)
  np.testing.assert_allclose(updates["kernel"], kernel_update, rtol=1e-5)
  np.testing.assert_allclose(updates["bias"], bias_update, rtol=1e-5)
