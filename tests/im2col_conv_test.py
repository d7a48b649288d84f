"""im2col convolutions equal lax's, forward and both gradients, and the models built on them equal plain Flax."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fer_jax import models
from fer_jax.kernels import im2col_conv, pooling
from fer_jax.kernels.dropout import Dropout
import jaxpr_checks  # tests/, on pytest's path

IM2COL_CONV = functools.partial(nn.Conv, conv_general_dilated=im2col_conv.conv_general_dilated)

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, w, padding):
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)


def _im2col(x, w, padding):
  return im2col_conv.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)


CASES = [  # (input shape, kernel hw, padding); also used by onednn_conv_test.py
    ((3, 12, 12, 1), (3, 3), "SAME"),      # the CNN's first layer: one input channel
    ((4, 8, 8, 16), (3, 3), "SAME"),
    ((2, 9, 7, 5), (3, 3), "VALID"),       # odd sizes, no padding
    ((2, 10, 10, 3), (5, 3), ((2, 1), (0, 3))),  # non-square kernel, uneven explicit padding
    ((5, 6, 6, 4), (1, 1), "SAME"),
]


def check_matches_lax(conv, shape, kernel, padding):
  """`conv(x, w, padding)` equals lax's stride-1 NHWC convolution, forward and both gradients, to float32 rounding."""
  kx, kw, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (*kernel, shape[-1], 6)) * 0.3
  y_ref = _lax_conv(x, w, padding)
  y = jax.jit(conv, static_argnums=2)(x, w, padding)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  dy = jax.random.normal(kd, y_ref.shape)
  loss = lambda f: (lambda x, w: jnp.sum(f(x, w, padding) * dy))
  grads_ref = jax.grad(loss(_lax_conv), argnums=(0, 1))(x, w)
  grads = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))(x, w)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(g_ref))))


@pytest.mark.parametrize("shape,kernel,padding", CASES)
def test_forward_and_gradients_match_lax(shape, kernel, padding):
  check_matches_lax(_im2col, shape, kernel, padding)


def test_unsupported_cases_fall_back_to_lax():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(2), (3, 3, 4, 4))
  strided = im2col_conv.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC)
  np.testing.assert_array_equal(strided, lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC))
  jaxpr = str(jax.make_jaxpr(lambda x, w: im2col_conv.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=NHWC))(x, w))
  assert "custom_vjp_call" in jaxpr and "conv_general_dilated" not in jaxpr
  grouped = str(jax.make_jaxpr(lambda x, w: im2col_conv.conv_general_dilated(
      x, w[:, :, :2], (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2))(x, w))
  assert "conv_general_dilated" in grouped


class PlainCNN(nn.Module):
  """The seeds' CNN written the textbook Flax way: nn.Conv (lax), nn.max_pool (reduce_window).

  Its dropout is fer_jax's (tests/dropout_test.py checks its distribution), so
  that both networks draw the same masks.
  """

  @nn.compact
  def __call__(self, x, train=False):
    for features in (32, 64, 128):
      x = nn.max_pool(nn.relu(nn.Conv(features, (3, 3), padding="SAME")(x)), (2, 2), strides=(2, 2))
      x = Dropout(0.25, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    for features in (256, 128):
      x = Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(features)(x)))
    return nn.Dense(7)(x)


def test_fast_cnn_matches_plain_flax_cnn_in_outputs_and_gradients():
  """Same parameters, same dropout draws: logits and every parameter gradient agree.

  In float64: in float32 the two orders of summation differ by ~1e-7, which is
  enough to flip the winner of a near-tied max-pool window now and then, and a
  flipped winner moves one gradient entry wholesale (a real property of
  max-pooling, not an error of either formulation).
  """
  with jax.enable_x64(True):
    fast = models.CNN(conv=IM2COL_CONV, pool=pooling.max_pool_2x2, dtype=jnp.float64)
    x = jax.random.uniform(jax.random.key(3), (8, 48, 48, 1), jnp.float64)
    labels = jnp.arange(8) % 7
    params = jax.tree.map(lambda p: p.astype(jnp.float64), PlainCNN().init(jax.random.key(4), x)["params"])
    assert jax.tree.structure(params) == jax.tree.structure(fast.init(jax.random.key(4), x)["params"])

    def loss(model, params):
      logits = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(5)})
      logits = logits.astype(jnp.float64)
      return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)), logits

    (loss_ref, logits_ref), grads_ref = jax.value_and_grad(functools.partial(loss, PlainCNN()), has_aux=True)(params)
    fast_step = jax.value_and_grad(functools.partial(loss, fast), has_aux=True)
    used = jaxpr_checks.primitives(fast_step, params)
    assert "conv_general_dilated" not in used and "reduce_window_max" not in used, used  # im2col's, not XLA's
    (loss_fast, logits_fast), grads = jax.jit(fast_step)(params)
    np.testing.assert_allclose(logits_fast, logits_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(loss_fast, loss_ref, rtol=1e-6)
    for path, g_ref in jax.tree_util.tree_leaves_with_path(grads_ref):
      g = functools.reduce(lambda t, k: t[k.key], path, grads)
      np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(g_ref)) + 1e-12),
                                 err_msg=jax.tree_util.keystr(path))


def test_vgg_with_im2col_matches_vgg_with_lax():
  x = jax.random.uniform(jax.random.key(6), (4, 48, 48, 1))
  small = dict(stage_features=(8, 16), dense_features=(32,))
  plain, fast = models.VGG(**small), models.VGG(conv=IM2COL_CONV, pool=pooling.max_pool_2x2, **small)
  variables = plain.init(jax.random.key(7), x)
  out_ref, _ = plain.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(8)})
  out, _ = fast.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(8)})
  np.testing.assert_allclose(out, out_ref, rtol=1e-4, atol=1e-5)
  used = jaxpr_checks.primitives(functools.partial(fast.apply, train=False), variables, x)
  assert "conv_general_dilated" not in used and "reduce_window_max" not in used, used
