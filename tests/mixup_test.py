"""Mixup (config.mixup_alpha): the blend of the batch, its blended loss, and that the trainer's step uses both."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_jax import losses, model_factory, models, train
from train_test import tiny_run


def _batch(seed: int, n: int = 8) -> dict[str, jnp.ndarray]:
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((n, 48, 48, 1), dtype=np.float32)),
          "label": jnp.asarray(rng.permutation(np.arange(n) % 7), jnp.int32)}


def test_mixup_blends_each_face_with_its_mirror_in_the_batch_by_one_lam():
  batch = _batch(0)
  images, mix = losses.mixup(batch["image"], batch["label"], jax.random.key(3), alpha=0.4)
  lam = float(mix.lam)
  assert 0.0 < lam < 1.0 and abs(lam - 0.5) > 1e-3  # A real blend, and not the symmetric one.
  np.testing.assert_allclose(images, lam * batch["image"] + (1 - lam) * batch["image"][::-1], rtol=1e-6)
  np.testing.assert_array_equal(mix.partner_labels, batch["label"][::-1])


def test_mixups_lam_follows_beta_alpha_alpha():
  draw = jax.jit(jax.vmap(lambda k: losses.mixup(jnp.zeros((2, 4, 4, 1)), jnp.zeros(2, jnp.int32), k, 0.4)[1].lam))
  lams = np.asarray(draw(jax.random.split(jax.random.key(0), 4000)))
  assert lams.min() >= 0.0 and lams.max() <= 1.0
  # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.1389, and most mass near 0 and 1.
  assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - 0.1389) < 0.01
  assert 0.35 < np.mean((lams < 0.1) | (lams > 0.9)) < 0.55


@pytest.mark.parametrize("weighted", [False, True])
def test_the_blended_loss_is_lam_times_one_labels_loss_plus_the_rest_times_the_partners(weighted):
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(8, 7)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 7, 8), jnp.int32)
  partners = labels[::-1]
  weights = jnp.asarray(rng.uniform(0.5, 2.0, 7), jnp.float32) if weighted else None
  lam = 0.3

  def per_example(y):
    return optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(y, 7), 0.1))

  if weighted:
    w = lam * weights[labels] + (1 - lam) * weights[partners]
    expected = jnp.sum((lam * per_example(labels) + (1 - lam) * per_example(partners)) * w) / jnp.sum(w)
  else:
    expected = lam * jnp.mean(per_example(labels)) + (1 - lam) * jnp.mean(per_example(partners))
  got = losses.cross_entropy(logits, labels, label_smoothing=0.1, class_weights=weights,
                             mix=losses.Mix(partners, jnp.float32(lam)))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_step_with_mixup_trains_on_the_blend_drawn_from_the_seed_and_step():
  model = models.create_model("cnn", num_classes=7, dtype=jnp.float32, conv_features=(4,), dense_features=(8,),
                              conv_dropout=0.0, dense_dropout=0.0)
  state = model_factory.create_train_state(model, optax.sgd(0.1), (48, 48, 1), seed=0)
  batch, base_key = _batch(2), jax.random.key(5)
  step = jax.jit(functools.partial(train.train_step, base_key=base_key, label_smoothing=0.1, class_weights=None,
                                   mixup_alpha=0.4))
  _, metrics, _ = step(state, batch)

  key = jax.random.fold_in(jax.random.fold_in(base_key, train.MIXUP_STREAM), state.step)
  images, mix = losses.mixup(batch["image"], batch["label"], key, 0.4)
  logits = model.apply({"params": state.params}, images, train=False)
  expected = losses.cross_entropy(logits, batch["label"], label_smoothing=0.1, class_weights=None, mix=mix)
  plain = losses.cross_entropy(model.apply({"params": state.params}, batch["image"], train=False),
                               batch["label"], label_smoothing=0.1, class_weights=None)
  assert abs(float(expected) - float(plain)) > 1e-3  # The check below can tell a blended step from a plain one.
  np.testing.assert_allclose(metrics.compute()["loss"], expected, rtol=1e-5)


def test_the_trainer_steps_with_the_configs_mixup(tmp_path, synthetic_tiny_dir):
  """Same seed and data: mixup changes the logged loss, unless it starts after the run (the step got both fields)."""
  def first_loss(alpha: float, from_epoch: float, name: str) -> float:
    one_step = dict(num_train_steps=1, log_every_steps=1, eval_every_steps=1, checkpoint_every_steps=1)
    return tiny_run(synthetic_tiny_dir, str(tmp_path / name), **one_step, mixup_alpha=alpha,
                    mixup_from_epoch=from_epoch)["train_loss"]

  plain = first_loss(0.0, 0.0, "plain")
  assert abs(first_loss(0.4, 0.0, "mixed") - plain) > 1e-3
  assert first_loss(0.4, 100.0, "mixed_later") == plain


def test_before_mixup_from_step_a_step_is_exactly_the_step_without_mixup():
  model = models.create_model("cnn", num_classes=7, dtype=jnp.float32, conv_features=(4,), dense_features=(8,))
  state = model_factory.create_train_state(model, optax.sgd(0.1), (48, 48, 1), seed=0)
  step = lambda **kw: jax.jit(functools.partial(train.train_step, base_key=jax.random.key(5), label_smoothing=0.1,
                                                class_weights=None, **kw))
  plain, late_mixup = step(), step(mixup_alpha=0.4, mixup_from_step=1)
  plain_state, late_state = state, state
  for k, mixed in enumerate((False, True)):  # Step 0 comes before mixup_from_step, step 1 does not.
    batch = _batch(10 + k)
    plain_state, plain_metrics, _ = plain(plain_state, batch)
    late_state, late_metrics, _ = late_mixup(late_state, batch)
    same = float(plain_metrics.compute()["loss"]) == float(late_metrics.compute()["loss"])
    assert same != mixed, f"step {k}"
    if not mixed:
      for a, b in zip(jax.tree.leaves(plain_state.params), jax.tree.leaves(late_state.params)):
        np.testing.assert_array_equal(a, b)


def test_mixup_draws_come_from_no_step_dropout_key_of_a_long_run():
  base_key = jax.random.key(0)
  mixup_base = jax.random.key_data(jax.random.fold_in(base_key, train.MIXUP_STREAM))
  steps = jnp.arange(2**21, dtype=jnp.uint32)  # Two million steps: 9,000 epochs of FER2013 at batch 128.
  dropout_keys = jax.random.key_data(jax.vmap(lambda s: jax.random.fold_in(base_key, s))(steps))
  assert not bool(jnp.any(jnp.all(dropout_keys == mixup_base, axis=-1)))
