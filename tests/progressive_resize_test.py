"""Progressive resizing: the size each step trains on, the resize, the checks, the step and the trainer's loop."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax import config_schema, evaluation, model_factory, models, progressive_resize, train
from train_test import tiny_config  # pylint: disable=g-import-not-at-top


def small_vgg() -> models.VGG:
  """Four 2x2 pools into a dense layer: inputs of 32-47 pixels all end in a 2x2 map, 28 in a 1x1."""
  return models.VGG(stage_features=(4, 4, 8, 8), convs_per_stage=1, dense_features=(8,), batch_norm=False)


def test_size_at_follows_the_phases_then_full_size():
  schedule = progressive_resize.Schedule(sizes=(32, 36), until_steps=(10, 20))
  assert [schedule.size_at(k) for k in (0, 9, 10, 19, 20, 100)] == [32, 32, 36, 36, None, None]
  assert progressive_resize.Schedule().size_at(0) is None


def test_schedule_for_turns_epochs_into_steps_and_rejects_sizes_the_model_cannot_take():
  config = config_schema.base_config()
  config.progressive_sizes, config.progressive_until_epochs = (32, 36), (1.5, 2.25)
  schedule = progressive_resize.schedule_for(config, small_vgg(), (40, 40, 1), steps_per_epoch=100)
  assert schedule == progressive_resize.Schedule((32, 36), (150, 225))
  config.progressive_sizes, config.progressive_until_epochs = (28,), (1.0,)
  with pytest.raises(config_schema.ConfigError, match="28, which gives model VGG other parameter shapes"):
    progressive_resize.schedule_for(config, small_vgg(), (40, 40, 1), steps_per_epoch=100)
  config.progressive_sizes = (40,)
  with pytest.raises(config_schema.ConfigError, match="40, which is not below the 40x40"):
    progressive_resize.schedule_for(config, small_vgg(), (40, 40, 1), steps_per_epoch=100)


@pytest.mark.parametrize("sizes, epochs, message", [
    ((32, 36), (10.0,), "needs one epoch per size"),
    ((36, 32), (10.0, 20.0), "ascending"),
    ((32, 36), (20.0, 10.0), "ascending epochs"),
    ((4,), (10.0,), "8 pixels or more"),
    ((32, 40), (10.0, 20.0), "below the training input's data.augment.crop_size=40"),
])
def test_config_validation_rejects_malformed_fields(sizes, epochs, message):
  config = config_schema.base_config()
  config.data.augment.crop_size = 40
  config.progressive_sizes, config.progressive_until_epochs = sizes, epochs
  with pytest.raises(config_schema.ConfigError, match=message):
    config_schema.validate(config, num_devices=1)


def test_crop_takes_a_random_window_of_each_image_at_its_own_scale():
  images = jnp.arange(64 * 40 * 40, dtype=jnp.float32).reshape(64, 40, 40, 1)  # Every pixel's value unique.
  out = np.asarray(progressive_resize.shrink(images, 32, "crop", jax.random.key(3)))
  assert out.shape == (64, 32, 32, 1)
  offsets = set()
  for i in range(64):
    y, x = divmod(int(out[i, 0, 0, 0]) - i * 1600, 40)
    np.testing.assert_array_equal(out[i], np.asarray(images)[i, y:y + 32, x:x + 32])
    offsets.add((y, x))
  assert len(offsets) > 20 and all(0 <= y <= 8 and 0 <= x <= 8 for y, x in offsets)
  np.testing.assert_array_equal(out, progressive_resize.shrink(images, 32, "crop", jax.random.key(3)))


def test_resize_scales_the_whole_image_down():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 40, 40, 1)), jnp.float32)
  np.testing.assert_array_equal(progressive_resize.shrink(images, 32, "resize", jax.random.key(0)),
                                evaluation.resize(images, 32, 32))


@pytest.mark.parametrize("how", ["crop", "resize"])
def test_train_step_with_an_input_size_trains_on_the_shrunk_batch(how):
  state = model_factory.create_train_state(small_vgg(), optax.sgd(0.1), (40, 40, 1), seed=0)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 40, 40, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 7, 8), jnp.int32)}
  base_key = jax.random.key(0)
  step = jax.jit(functools.partial(train.train_step, base_key=base_key, label_smoothing=0.0, class_weights=None),
                 static_argnames=("input_size", "progressive_how"))
  shrunk, _, _ = step(state, batch, input_size=32, progressive_how=how)
  key = jax.random.fold_in(jax.random.fold_in(base_key, train.CROP_STREAM), state.step)
  by_hand, _, _ = step(state, {**batch, "image": progressive_resize.shrink(batch["image"], 32, how, key)})
  full, _, _ = step(state, batch)
  jax.tree.map(np.testing.assert_array_equal, shrunk.params, by_hand.params)
  assert not np.array_equal(shrunk.params["Dense_0"]["kernel"], full.params["Dense_0"]["kernel"])


def test_the_trainer_runs_each_phase_on_its_own_step(tmp_path, synthetic_tiny_dir):
  config = tiny_config(synthetic_tiny_dir)  # 350 faces at batch 16: 21 steps an epoch, 8 steps in all
  config.data.augment.crop_size = 46        # Two 2x2 pools: 46 and 44 both end in an 11x11 map.
  config.progressive_sizes, config.progressive_until_epochs = (44,), (4 / 21,)
  trainer = train.Trainer(config, str(tmp_path / "run"))
  calls = []

  class Counted:
    def __init__(self, fn, size):
      self.fn, self.size = fn, size

    def __call__(self, *args):
      calls.append(self.size)
      return self.fn(*args)

    def __getattr__(self, name):  # .lower() for the first batch's compile
      return getattr(self.fn, name)

  trainer.checked_train_step = Counted(trainer.checked_train_step, None)
  trainer._resized_steps = {44: Counted(trainer._resized_steps[44], 44)}  # pylint: disable=protected-access
  trainer.train()
  assert calls == [44] * 4 + [None] * 4
