"""2x2/2 max-pooling as a reshape and a max, with the gradient lax's max-pool has.

`flax.linen.max_pool` is a `reduce_window`; its gradient is a
`select_and_scatter_add`, which XLA:CPU runs slowly (in the seeds' CNN the
pooling gradients cost more than some convolutions). For non-overlapping 2x2
windows the same forward pass is a reshape and a max, and the gradient goes,
like select_and_scatter's, to the first maximum of each window in row-major
order, ties included. Outputs and gradients equal `nn.max_pool`'s exactly
(tests/pooling_test.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """[N, H, W, C] -> [N, H//2, W//2, C]; like nn.max_pool(x, (2, 2), strides=(2, 2)) (odd edges dropped)."""
  return _max_pool_fwd(x)[0]


def _windows(x: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  return x[:, :h - h % 2, :w - w % 2, :].reshape(n, h // 2, 2, w // 2, 2, c)


def _max_pool_fwd(x):
  y = _windows(x).max(axis=(2, 4))
  return y, (x, y)


def _max_pool_bwd(residuals, dy):
  x, y = residuals
  windows = _windows(x)
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(2):
    row = []
    for j in range(2):
      first = (windows[:, :, i, :, j, :] == y) & ~taken  # The first maximum in row-major order gets the gradient.
      taken = taken | first
      row.append(jnp.where(first, dy, jnp.zeros((), dy.dtype)))
    rows.append(jnp.stack(row, axis=3))  # [N, H/2, W/2, 2, C]
  dx = jnp.stack(rows, axis=2).reshape(windows.shape[0], windows.shape[1] * 2, windows.shape[3] * 2, -1)
  _, h, w, _ = x.shape
  return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)
