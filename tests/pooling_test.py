"""max_pool_2x2 equals nn.max_pool's 2x2/2 pooling in outputs and gradients, ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.kernels import pooling


def _reference(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2), (3, 48, 48, 32)])
def test_random_inputs_match_exactly(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  dy = jax.random.normal(jax.random.key(1), _reference(x).shape)
  np.testing.assert_array_equal(pooling.max_pool_2x2(x), _reference(x))
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * dy))(x)
  np.testing.assert_array_equal(jax.jit(lambda: grad(pooling.max_pool_2x2))(), grad(_reference))


def test_ties_send_the_gradient_to_the_first_maximum_like_lax():
  """ReLU outputs tie at zero all the time: the gradient must go where select_and_scatter puts it."""
  x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (4, 6, 6, 5)).astype(np.float32))  # many ties
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * jnp.arange(1.0, 1 + f(x).size).reshape(f(x).shape)))(x)
  np.testing.assert_array_equal(grad(pooling.max_pool_2x2), grad(_reference))
  assert float(jnp.sum(grad(pooling.max_pool_2x2) != 0)) == _reference(x).size  # one winner per window
