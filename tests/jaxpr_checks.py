"""What a function's program runs: for tests that compare a fast kernel with XLA's, and must also show that the
fast side did not quietly run XLA's too (two equal programs agree trivially)."""

from __future__ import annotations

import collections
from typing import Any, Callable

import jax


def primitives(fn: Callable[..., Any], *args: Any) -> collections.Counter:
  """How often each primitive occurs in fn's jaxpr at `args`, nested jaxprs (jit, custom_vjp, scan) included."""
  counts: collections.Counter = collections.Counter()

  def walk(jaxpr) -> None:
    for eqn in jaxpr.eqns:
      counts[eqn.primitive.name] += 1
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return counts


def onednn_calls(fn: Callable[..., Any], *args: Any) -> int:
  """How many oneDNN forward convolutions (fer_jax.kernels' FFI custom calls) fn's program makes at `args`."""
  return str(jax.make_jaxpr(fn)(*args)).count("fer_onednn_conv_forward")
