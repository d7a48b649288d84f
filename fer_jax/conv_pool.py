"""One CNN stage, conv 3x3 + bias + ReLU + 2x2 max-pool, as a single op with its own gradient.

On XLA:CPU the seeds' CNN spends much of its step in memory-bound passes over
the full-resolution conv outputs (bias, ReLU, pooling and their gradients).
This op touches those outputs once each way: the im2col product
(im2col_conv.py), then one pass that pools and records each window's winner as
an int8. Bias and ReLU then act on the 4x smaller pooled map, which is exact:
adding a per-channel bias and ReLU are monotone, so they commute with the max
(max(relu(z + b)) == relu(max(z) + b) bit for bit). Backward, the ReLU mask
and the bias gradient are read at pooled size, and the pooled gradient goes to
each window's winner, as `nn.max_pool`'s does.

Gradients equal `relu(conv + b)` then `nn.max_pool`'s (tests/conv_pool_test.py)
except where rounding ties two window entries only after the bias is added;
there lax sends the gradient to the first and this op to the larger one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fer_jax import im2col_conv, pooling


def same_pads(kernel_hw: tuple[int, int]) -> im2col_conv.Pads:
  """lax's "SAME" padding for a stride-1 kernel."""
  return tuple(((k - 1) // 2, k // 2) for k in kernel_hw)


@jax.custom_vjp
def conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """max_pool_2x2(relu(conv_SAME(x [N,H,W,Cin], kernel [kh,kw,Cin,Cout]) + bias)) -> [N, H//2, W//2, Cout]."""
  return _forward(x, kernel, bias)[0]


def _forward(x, kernel, bias):
  z, conv_residuals = im2col_conv.forward(x, kernel, same_pads(kernel.shape[:2]))
  pooled, winner = pooling.max_pool_2x2_argmax(z)
  y = jnp.maximum(pooled + bias, 0)
  return y, (conv_residuals, winner, y, z.shape[1:3])


def _backward(residuals, dy):
  conv_residuals, winner, y, conv_hw = residuals
  dpooled = jnp.where(y > 0, dy, jnp.zeros((), dy.dtype))  # ReLU's gradient at 0 is 0, as jax.nn.relu's.
  dbias = dpooled.sum(axis=(0, 1, 2))
  dz = pooling.unpool_2x2(dpooled, winner, conv_hw)
  kernel = conv_residuals[1]
  dx, dkernel = im2col_conv.backward(same_pads(kernel.shape[:2]), None, conv_residuals, dz)
  return dx, dkernel, dbias.astype(dy.dtype)


conv_relu_pool.defvjp(_forward, _backward)
