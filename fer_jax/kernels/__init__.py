"""CPU speed-ups for training, each computing what flax/XLA computes to float32 rounding.

XLA:CPU's convolution and max-pool gradients are slow; these replace them in
the training step only. onednn_conv.py runs oneDNN's kernels as XLA FFI
custom calls (onednn_ffi.c, compiled on first use); im2col_conv.py does the
same sums as matrix products; pooling.py is a 2x2 max-pool with a cheap
gradient; dropout.py draws its masks from fewer random bits;
host_allocator.py keeps freed memory mapped. `select(config)` says which a
run uses and why; evaluation, prediction and export use flax's defaults, so
exported models hold no custom call. Parameters are the same either way.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax

from fer_jax.kernels import im2col_conv, onednn_conv, pooling


@dataclasses.dataclass(frozen=True)
class Kernels:
  """What a model's `conv` and `pool` attributes are set to, and why."""
  conv: Any  # a flax Conv module class (nn.Conv, or a partial of it with a custom convolution)
  pool: Callable[[jax.Array], jax.Array] | None  # 2x2 max-pool; None = the model's default
  reason: str

  def model_kwargs(self) -> dict[str, Any]:
    return {"conv": self.conv} | ({"pool": self.pool} if self.pool is not None else {})


DEFAULTS = Kernels(conv=nn.Conv, pool=None, reason="flax's nn.Conv and nn.max_pool (XLA's own)")


def select(config: Any, platform: str | None = None) -> Kernels:
  """The training kernels for config.conv_impl on `platform` (default: this backend's).

  `auto` on CPU: oneDNN's kernels on a single device where the library loads,
  else im2col matrix products. oneDNN runs as XLA FFI custom calls, which have
  no sharding rule: on a multi-device mesh XLA would gather their inputs onto
  every device, so meshes use im2col. Elsewhere (GPU, TPU): XLA's.
  """
  impl = config.get("conv_impl", "auto")  # Model cards written before the field existed lack it.
  platform = platform or jax.default_backend()
  if impl == "xla" or (impl == "auto" and platform != "cpu"):
    return DEFAULTS
  if impl == "onednn":
    onednn_conv.prepare()  # Raises an error that says what is missing.
    return _kernels(onednn_conv, "config.conv_impl=onednn")
  if impl == "auto" and jax.device_count() == 1:
    try:
      onednn_conv.prepare()
      return _kernels(onednn_conv, "config.conv_impl=auto on a 1-device CPU run, where oneDNN's kernels load")
    except onednn_conv.OneDnnUnavailable as e:
      return _kernels(im2col_conv, f"oneDNN is unavailable ({e}); im2col is slower")
  why = "config.conv_impl=im2col" if impl == "im2col" else "config.conv_impl=auto on a multi-device CPU mesh"
  return _kernels(im2col_conv, why)


def _kernels(conv_module: Any, why: str) -> Kernels:
  return Kernels(conv=functools.partial(nn.Conv, conv_general_dilated=conv_module.conv_general_dilated),
                 pool=pooling.max_pool_2x2, reason=f"{conv_module.__name__} convolutions and pooling.max_pool_2x2: {why}")
