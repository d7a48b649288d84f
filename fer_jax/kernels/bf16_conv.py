"""bfloat16 convolutions on oneDNN's bfloat16 kernels, float32 master weights, for `config.dtype="bfloat16"`.

CPUs with avx512_bf16 (Zen 4 and 5, Intel since Cooper Lake) or AMX compute bfloat16 dot products with float32
accumulation at up to twice the float32 rate. `Conv` is nn.Conv (same fields, same parameters, so checkpoints and
evaluation's nn.Conv agree) with activations in bfloat16 and the bias fused into oneDNN's convolution:
  - the float32 kernel is converted to bfloat16 by the reorder into oneDNN's blocked layout (no extra pass);
  - the kernel and bias gradients come back in float32 (oneDNN sums them in float32), as the float32 master
    weights want them. Flax's own bfloat16 route sums the bias gradient in bfloat16 through XLA, which loses
    it: over 128x48x48 pixels the sum stalls once it outgrows bfloat16's 8 mantissa bits (tests/bf16_conv_test.py).
  - with `relu=True` the ReLU is a post-op of oneDNN's forward kernel, applied as the output is written: no
    pass of XLA's over the activations (each costs about as much as a small convolution here).
Other convolutions (strides, padding as wide as the kernel) go to onednn_conv.conv_general_dilated.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_jax.kernels import im2col_conv, onednn_conv

_NHWC = ("NHWC", "HWIO", "NHWC")
_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flag(cpuinfo: str = "/proc/cpuinfo") -> str | None:
  """The first of avx512_bf16 / amx_bf16 this CPU reports (Linux), else None."""
  try:
    with open(cpuinfo) as f:
      flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
  except OSError:
    return None
  return next((flag for flag in _CPU_FLAGS if flag in flags), None)


@functools.cache
def unavailable_reason() -> str | None:
  """None when oneDNN's bfloat16 convolutions run fast here; else one line saying why not."""
  flag = cpu_bf16_flag()
  if flag is None:
    return "this CPU reports neither avx512_bf16 nor amx_bf16"
  try:
    onednn_conv.prepare()
  except onednn_conv.OneDnnUnavailable as e:
    return f"oneDNN is unavailable ({e})"
  names = implementations((8, 12, 12, 16), (3, 3, 16, 16))
  if any(name.startswith("ref") for name in names):
    return f"oneDNN has only reference bfloat16 kernels here ({', '.join(names)})"
  return None


def implementations(in_shape: tuple[int, ...], kernel_shape: tuple[int, ...], bias: bool = True) -> tuple[str, ...]:
  """oneDNN's kernel names (forward, backward data, backward weights) for a bfloat16 SAME 3x3-style convolution."""
  kh, kw = kernel_shape[:2]
  pads = ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))
  return onednn_conv._plan(tuple(in_shape), tuple(kernel_shape), pads, "bfloat16", bias).implementations


class Conv(nn.Conv):
  """nn.Conv computing in bfloat16 on oneDNN, bias fused, parameters and their gradients in float32.

  Covers what the models use: 2-D NHWC, shared weights, no mask, groups or dilation. Stride-1 calls run on
  oneDNN's bfloat16 kernels; others on onednn_conv.conv_general_dilated (float32 oneDNN where it can, else
  im2col or lax), the bias added in `dtype` and its gradient summed in float32.
  """
  relu: bool = False  # Return relu(conv): fused into oneDNN's kernel, else nn.relu after it

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if (inputs.ndim != 4 or self.mask is not None or not self.shared_weights or self.feature_group_count != 1
        or self.input_dilation not in (None, 1, (1, 1)) or self.kernel_dilation not in (None, 1, (1, 1))
        or not isinstance(self.kernel_size, (tuple, list))):
      raise ValueError(f"fer_jax.kernels.bf16_conv.Conv covers 2-D NHWC convolutions without masks, groups or "
                       f"dilation (got input shape {inputs.shape} and {self}); use flax.linen.Conv for the rest.")
    kernel_shape = (*self.kernel_size, inputs.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x = inputs.astype(self.dtype or jnp.float32)
    strides = self.strides if isinstance(self.strides, (tuple, list)) else (self.strides or 1,) * 2
    pads = im2col_conv.stride1_nhwc_pads(x, jax.ShapeDtypeStruct(kernel_shape, x.dtype), strides, self.padding,
                                         None, None, _NHWC, 1, 1, None)
    if (pads is not None and onednn_conv.pads_within_kernel(pads, self.kernel_size) and x.dtype == jnp.bfloat16
        and kernel.dtype == jnp.float32 and (bias is None or bias.dtype == jnp.float32)):
      return onednn_conv._conv(x, kernel, bias, pads, self.relu)
    y = onednn_conv.conv_general_dilated(x, kernel.astype(x.dtype), strides, self.padding, dimension_numbers=_NHWC)
    y = y if bias is None else _add_bias(y, bias)
    return nn.relu(y) if self.relu else y


@jax.custom_vjp
def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias in y's dtype, the bias gradient summed in float32 (XLA's transpose would sum it in y's dtype)."""
  return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
  return _add_bias(y, bias), bias  # (a few floats; only its dtype is needed)


def _add_bias_bwd(bias, dy):
  return dy, jnp.sum(dy, axis=tuple(range(dy.ndim - 1)), dtype=jnp.float32).astype(bias.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)

