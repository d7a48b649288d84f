"""CPU speed-ups for the training step, each computing what flax/XLA computes to float32 rounding.

Convolutions on oneDNN (onednn_conv.py; in bfloat16 with config.dtype="bfloat16" where the CPU has bfloat16 dot
products, bf16_conv.py, which also runs a following ReLU inside oneDNN's kernel) or as matrix products
(im2col_conv.py), a 2x2 max-pool with a cheap gradient, dropout masks from fewer random bits, and malloc kept
from unmapping (host_allocator.py).
`select(config)` says which a run uses and why; evaluation, prediction and export use flax's defaults, so
exported models hold no custom call. docs/BENCHMARKS.md ("What each step gained") has the measurements.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax

from fer_jax.kernels import bf16_conv, im2col_conv, onednn_conv, pooling


@dataclasses.dataclass(frozen=True)
class Kernels:
  """What a model's `conv` and `pool` attributes are set to, and why."""
  conv: Any  # a flax Conv module class (nn.Conv, or a partial of it with a custom convolution)
  pool: Callable[[jax.Array], jax.Array] | None  # 2x2 max-pool; None = the model's default
  reason: str
  conv_relu: Any = None  # a Conv module class that applies a ReLU to its output too; None: conv, then nn.relu

  def model_kwargs(self) -> dict[str, Any]:
    optional = {"pool": self.pool, "conv_relu": self.conv_relu}
    return {"conv": self.conv} | {name: value for name, value in optional.items() if value is not None}


DEFAULTS = Kernels(conv=nn.Conv, pool=None, reason="flax's nn.Conv and nn.max_pool (XLA's own)")


def select(config: Any, platform: str | None = None) -> Kernels:
  """The training kernels for config.conv_impl on `platform` (default: this backend's).

  `auto` on CPU: oneDNN's where it loads, else im2col. oneDNN's FFI custom calls have no sharding rule
  (XLA would gather their inputs onto every device), so multi-device meshes use im2col. GPU, TPU: XLA's.
  With config.dtype="bfloat16", oneDNN's convolutions run in bfloat16 where the CPU has bfloat16 dot
  products (bf16_conv.py), else in float32 (the reason says why).
  """
  selected = _select_float32(config, platform)
  if config.get("dtype", "float32") != "bfloat16" or _conv_of(selected) is not onednn_conv.conv_general_dilated:
    return selected
  why_not = bf16_conv.unavailable_reason()
  if why_not is not None:
    return dataclasses.replace(selected, reason=f"{selected.reason}; in float32 for config.dtype=bfloat16: {why_not}")
  names = ", ".join(sorted(set(bf16_conv.implementations((8, 12, 12, 16), (3, 3, 16, 16)))))
  return Kernels(conv=bf16_conv.Conv, pool=pooling.max_pool_2x2,
                 conv_relu=functools.partial(bf16_conv.Conv, relu=True),
                 reason=f"{bf16_conv.__name__}.Conv in bfloat16 on oneDNN's {names}, ReLUs fused (this CPU has "
                        f"{bf16_conv.cpu_bf16_flag()}): config.dtype=bfloat16; otherwise {selected.reason}")


def _select_float32(config: Any, platform: str | None) -> Kernels:
  """select()'s choice for float32 (and for bfloat16 before the bfloat16 kernels are considered)."""
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


def _conv_of(selected: Kernels) -> Any:
  return getattr(selected.conv, "keywords", {}).get("conv_general_dilated")


def _kernels(conv_module: Any, why: str) -> Kernels:
  return Kernels(conv=functools.partial(nn.Conv, conv_general_dilated=conv_module.conv_general_dilated),
                 pool=pooling.max_pool_2x2,
                 reason=f"{conv_module.__name__} convolutions and pooling.max_pool_2x2: {why}")
