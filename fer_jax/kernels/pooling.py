"""2x2/2 max-pooling as a reshape and a max, with the gradient lax's max-pool has.

XLA:CPU runs `nn.max_pool`'s gradient (a `select_and_scatter_add`) slowly. Here the gradient goes, as there,
to the first maximum of each window in row-major order, recorded in the forward pass as an int8 index.
Outputs and gradients equal `nn.max_pool`'s exactly (tests/pooling_test.py; docs/BENCHMARKS.md has the gain).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """[N, H, W, C] -> [N, H//2, W//2, C]; like nn.max_pool(x, (2, 2), strides=(2, 2)) (odd edges dropped)."""
  return _max_pool_fwd(x)[0]


def _max_pool_fwd(x):
  """(pooled, (winner int8 in 0..3 = 2*row + col of the first maximum in each window, input H and W))."""
  n, h, w, c = x.shape
  windows = x[:, :h - h % 2, :w - w % 2, :].reshape(n, h // 2, 2, w // 2, 2, c)
  top_left, top_right = windows[:, :, 0, :, 0, :], windows[:, :, 0, :, 1, :]
  bottom_left, bottom_right = windows[:, :, 1, :, 0, :], windows[:, :, 1, :, 1, :]
  y = jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))
  winner = jnp.where(top_left == y, 0, jnp.where(top_right == y, 1, jnp.where(bottom_left == y, 2, 3)))
  return y, (winner.astype(jnp.int8), (h, w))


def _max_pool_bwd(residuals, dy):
  """Each dy to its window's winner, zeros elsewhere, at the input's size."""
  winner, in_hw = residuals
  n, ho, wo, c = dy.shape
  position = jnp.arange(4, dtype=jnp.int8).reshape(1, 1, 2, 1, 2, 1)
  dx = jnp.where(winner[:, :, None, :, None, :] == position, dy[:, :, None, :, None, :], jnp.zeros((), dy.dtype))
  dx = dx.reshape(n, 2 * ho, 2 * wo, c)
  return (jnp.pad(dx, ((0, 0), (0, in_hw[0] - 2 * ho), (0, in_hw[1] - 2 * wo), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)
