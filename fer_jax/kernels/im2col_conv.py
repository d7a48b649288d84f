"""Stride-1 convolutions as matrix products (im2col): XLA:CPU runs those far faster than its convolutions.

  forward       y  = patches(x) @ W           patches: [N*H*W, kh*kw*C_in], kept for the backward pass
  weight grad   dW = patches(x)^T @ dy        split into 4 row blocks so both cores work on it
  input grad    dx = col2im(dy @ W^T)         the kh*kw shifted contributions summed back

Only the order of summation differs from `lax.conv_general_dilated` (tests/im2col_conv_test.py), whose
signature `conv_general_dilated` keeps; other cases (strides, dilation, groups, layouts) go to lax unchanged.
Measurements: docs/BENCHMARKS.md ("What each step gained", 3).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_LAYOUT = ("NHWC", "HWIO", "NHWC")
_WEIGHT_GRAD_BLOCKS = 4  # Row blocks of the weight-gradient product: one long reduction would run on one core.

Pads = tuple[tuple[int, int], tuple[int, int]]


def _patches(x: jax.Array, kernel_hw: tuple[int, int], pads: Pads, out_hw: tuple[int, int]) -> jax.Array:
  """[N, Ho, Wo, kh*kw*C]: for each output pixel, its receptive field in (kh, kw, C) order (HWIO's order)."""
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  (kh, kw), (ho, wo) = kernel_hw, out_hw
  return jnp.concatenate([xp[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)


def _col2im(z: jax.Array, in_hw: tuple[int, int], kernel_hw: tuple[int, int], pads: Pads) -> jax.Array:
  """Inverse bookkeeping of `_patches`: sums each output pixel's kh*kw contributions into the input grid."""
  n, ho, wo, _ = z.shape
  (h, w), (kh, kw) = in_hw, kernel_hw
  z = z.reshape(n, ho, wo, kh * kw, -1)
  zero = jnp.zeros((), z.dtype)
  total = None
  for t in range(kh * kw):
    i, j = divmod(t, kw)
    # Output pixel (y, x) read input (y + i - pad_lo, x + j - pad_lo): shift its contribution there.
    lo_h, lo_w = i - pads[0][0], j - pads[1][0]
    shifted = lax.pad(z[:, :, :, t, :], zero, [(0, 0, 0), (lo_h, h - ho - lo_h, 0), (lo_w, w - wo - lo_w, 0),
                                               (0, 0, 0)])
    total = shifted if total is None else total + shifted
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, kernel: jax.Array, pads: Pads, precision: Any) -> jax.Array:
  return _conv_fwd(x, kernel, pads, precision)[0]


def _conv_fwd(x, kernel, pads, precision):
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  out_hw = (h + sum(pads[0]) - kh + 1, w + sum(pads[1]) - kw + 1)
  patches = _patches(x, (kh, kw), pads, out_hw)
  y = jnp.dot(patches.reshape(-1, kh * kw * cin), kernel.reshape(kh * kw * cin, cout), precision=precision)
  return y.reshape(n, *out_hw, cout), (patches, kernel, (h, w))


def _conv_bwd(pads, precision, residuals, dy):
  patches, kernel, in_hw = residuals
  kh, kw, cin, cout = kernel.shape
  rows = dy.shape[0] * dy.shape[1] * dy.shape[2]
  blocks = math.gcd(rows, _WEIGHT_GRAD_BLOCKS)
  dkernel = jnp.einsum("bkm,bkn->bmn", patches.reshape(blocks, rows // blocks, kh * kw * cin),
                       dy.reshape(blocks, rows // blocks, cout), precision=precision,
                       preferred_element_type=jnp.promote_types(dy.dtype, jnp.float32)).sum(0)
  z = jnp.dot(dy.reshape(rows, cout), kernel.reshape(kh * kw * cin, cout).T, precision=precision)
  dx = _col2im(z.reshape(*dy.shape[:3], kh * kw * cin), in_hw, (kh, kw), pads)
  return dx.astype(dy.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def stride1_nhwc_pads(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                      padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None,
                      rhs_dilation: Sequence[int] | None, dimension_numbers: Any, feature_group_count: int,
                      batch_group_count: int, preferred_element_type: Any) -> Pads | None:
  """The explicit pads when a `lax.conv_general_dilated` call is a plain stride-1 2-D NHWC/HWIO one, else None."""
  ones = lambda v: v is None or all(d == 1 for d in v)
  if not (lhs.ndim == 4 and all(s == 1 for s in window_strides) and ones(lhs_dilation) and ones(rhs_dilation)
          and feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None
          and lhs.dtype == rhs.dtype and dimension_numbers is not None  # lax's default is NCHW
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT)):
    return None
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return pads if all(lo >= 0 and hi >= 0 for lo, hi in pads) else None


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated`, computed by im2col for stride-1 2-D NHWC/HWIO convolutions."""
  pads = stride1_nhwc_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                           feature_group_count, batch_group_count, preferred_element_type)
  if pads is not None:
    return _conv(lhs, rhs, pads, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                  feature_group_count, batch_group_count, precision, preferred_element_type)
