"""Model shapes, dtypes and the seeds' architecture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import models


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


def test_bfloat16_compute_keeps_float32_params():
  model = models.create_model("cnn", num_classes=7, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  assert model.apply(variables, jnp.zeros((1, 48, 48, 1))).dtype == jnp.float32


def test_unknown_model_names_the_choices():
  with pytest.raises(ValueError, match="config.model='vgg19'.*cnn"):
    models.create_model("vgg19", num_classes=7, dtype=jnp.float32)
