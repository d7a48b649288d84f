"""conv_relu_pool equals relu(conv + b) then nn.max_pool, in outputs and in all three gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fer_jax import conv_pool


def _conv(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _reference(x, kernel, bias):
  return nn.max_pool(jax.nn.relu(_conv(x, kernel) + bias), (2, 2), strides=(2, 2))


@pytest.mark.parametrize("shape,features", [((2, 8, 8, 1), 5), ((3, 12, 12, 4), 8), ((2, 7, 9, 3), 4)])
def test_outputs_and_gradients_match_the_plain_stage(shape, features):
  """In float64, where near-ties between window entries do not flip under rounding (see im2col_conv_test)."""
  with jax.enable_x64(True):
    kx, kk, kb, kd = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, shape, jnp.float64)
    kernel = jax.random.normal(kk, (3, 3, shape[-1], features), jnp.float64)
    z = nn.max_pool(_conv(x, kernel), (2, 2), strides=(2, 2))  # pooled conv, before bias and ReLU
    bias = -jnp.median(z, axis=(0, 1, 2)) + 0.1 * jax.random.normal(kb, (features,), jnp.float64)  # ~half clipped
    y_ref, vjp_ref = jax.vjp(_reference, x, kernel, bias)
    y, vjp = jax.vjp(jax.jit(conv_pool.conv_relu_pool), x, kernel, bias)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert float(jnp.mean(y_ref > 0)) > 0.2 and float(jnp.mean(y_ref == 0)) > 0.05  # both ReLU branches exercised
    dy = jax.random.normal(kd, y.shape, jnp.float64)
    for name, g, g_ref in zip(("x", "kernel", "bias"), vjp(dy), vjp_ref(dy)):
      np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-10, err_msg=name)


def test_bias_and_relu_after_the_max_are_exact_in_float32():
  """Monotone bias and ReLU commute with max bit for bit, so the pooled outputs are equal, not just close."""
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 2))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 2, 6))
  bias = jax.random.normal(jax.random.key(3), (6,))
  z = _conv(x, kernel)
  pooled_first = jnp.maximum(nn.max_pool(z, (2, 2), strides=(2, 2)) + bias, 0)
  np.testing.assert_array_equal(pooled_first, nn.max_pool(jax.nn.relu(z + bias), (2, 2), strides=(2, 2)))
