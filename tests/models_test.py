"""Model shapes, dtypes and the seeds' architecture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import models
from fer_jax.kernels import pooling


@pytest.mark.parametrize("name,kwargs,shape", [
    ("cnn", {}, (48, 48, 1)),
    ("vgg", {"stage_features": (8, 8, 8, 8), "dense_features": (16,)}, (40, 40, 1)),
    ("resnet", {"stage_features": (8, 8, 8, 8)}, (96, 96, 3)),
    ("resnet", {"stage_features": (8, 8, 8, 8), "stem": "small"}, (48, 48, 1)),
])
def test_models_give_finite_float32_logits_checks_shape_and_dtype_only(name, kwargs, shape):
  model = models.create_model(name, num_classes=7, dtype=jnp.float32, **kwargs)
  variables = model.init(jax.random.key(0), jnp.zeros((2, *shape)))
  logits, _ = model.apply(variables, jnp.ones((2, *shape)), train=True, rngs={"dropout": jax.random.key(1)},
                          mutable=["batch_stats"])
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_seeds_cnn_layout():
  """conv 32/64/128 (3x3) and dense 256, 128, 7 on 48x48x1: the seeds' network."""
  model = models.create_model("cnn", num_classes=7, dtype=jnp.float32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)))["params"]
  kernels = [params[k]["kernel"].shape for k in sorted(params, key=lambda k: (k[:4], int(k.split("_")[1])))]
  assert kernels == [(3, 3, 1, 32), (3, 3, 32, 64), (3, 3, 64, 128),
                     (6 * 6 * 128, 256), (256, 128), (128, 7)]


@pytest.mark.parametrize("pool", [models.max_pool_2x2, pooling.max_pool_2x2], ids=["flax", "kernels"])
def test_ceil_pool_keeps_an_odd_maps_last_row_and_column_in_value_and_gradient(pool):
  x = jnp.arange(25, dtype=jnp.float32).reshape(1, 5, 5, 1)
  ceil_pool = lambda x: pool(models.pad_to_even(x))
  np.testing.assert_array_equal(ceil_pool(x)[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
  winners = np.zeros((5, 5))
  winners[np.ix_([1, 3, 4], [1, 3, 4])] = 1
  np.testing.assert_array_equal(jax.grad(lambda x: ceil_pool(x).sum())(x)[0, :, :, 0], winners)


@pytest.mark.parametrize("ceil_pool,side", [(False, 2), (True, 3)])
def test_vgg_on_40x40_crops_flattens_a_2x2_map_or_with_ceil_pool_3x3(ceil_pool, side):
  """40 -> 20 -> 10 -> 5 -> 2 drops the 5x5 map's last row and column; ceil pooling gives 3x3."""
  model = models.create_model("vgg", num_classes=7, dtype=jnp.float32, stage_features=(8, 8, 8, 8),
                              dense_features=(16,), ceil_pool=ceil_pool)
  params = model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 1)))["params"]
  assert params["Dense_0"]["kernel"].shape == (side * side * 8, 16)


def test_bfloat16_compute_keeps_float32_params():
  model = models.create_model("cnn", num_classes=7, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert model.apply(variables, jnp.zeros((1, 48, 48, 1))).dtype == jnp.float32


def test_unknown_model_names_the_choices():
  with pytest.raises(ValueError, match="config.model='vgg19'.*cnn"):
    models.create_model("vgg19", num_classes=7, dtype=jnp.float32)
