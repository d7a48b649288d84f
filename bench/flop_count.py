"""FLOPs of a jitted step, for model FLOPs utilisation, from paths that work whatever the accelerator.

XLA's own count (`Lowered.cost_analysis()`) is None on XLA:GPU (jax 0.11.2 on an H200: issue 22), so
bench/fer_jax_worker.py --flops takes it on the CPU backend (JAX_PLATFORMS=cpu: the same shapes, the same
HLO before backend passes) and, beside it, counts the matrix work in the step's jaxpr, which needs no
backend at all:

  conv_general_dilated  2 x output elements x (kernel elements per output feature)
  dot_general           2 x output elements x (contracted elements)

The jaxpr count covers the convolutions and matrix products (forward and backward: `jax.grad` writes the
backward pass as more of them), not elementwise work: the "model FLOPs" of MFU, for a CNN 3x the forward
multiply-adds x 2 (less the input gradient of the first layer, which nobody asks for). For
fer2013_vgg.py's VGG that is 2.84 GFLOP per training image, equal to the count by hand
(tests/bench_scripts_test.py); XLA:CPU's cost analysis says 2.59 for the same step. Convolutions run as
custom calls (the oneDNN route on the CPU) are invisible to both: count a variant with XLA's convolutions.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator


def _sub_jaxprs(params: dict[str, Any]) -> Iterator[tuple[str, Any]]:
  """(param name, Jaxpr) of every jaxpr nested in an equation's params (pjit, custom_vjp, cond, scan ...)."""
  for name, value in params.items():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      inner = getattr(item, "jaxpr", item)  # ClosedJaxpr -> Jaxpr
      if hasattr(inner, "eqns"):
        yield name, inner


def _eqn_flops(eqn: Any) -> int:
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // out_features
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
  return 0


def jaxpr_matmul_flops(jaxpr: Any) -> int:
  """FLOPs of the convolutions and matrix products in a (Closed)Jaxpr, nested jaxprs included.

  A cond counts its most expensive branch; a scan its body times its length; a custom_vjp's forward
  rule is the function itself (its `call_jaxpr`), so its backward rule is not counted twice.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    nested = list(_sub_jaxprs(eqn.params))
    if eqn.primitive.name == "cond":
      total += max((jaxpr_matmul_flops(j) for _, j in nested), default=0)
      continue
    if eqn.primitive.name.startswith("custom_vjp"):
      nested = [(n, j) for n, j in nested if n == "call_jaxpr"] or nested[:1]
    repeat = int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1
    total += repeat * sum(jaxpr_matmul_flops(j) for _, j in nested)
  return total


def step_flops(fn: Callable, *args: Any) -> dict[str, float | None]:
  """{"xla": XLA's count on the current backend or None where it gives none, "matmul": the jaxpr count}."""
  import jax  # pylint: disable=g-import-not-at-top
  matmul = jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args))
  try:
    cost = jax.jit(fn).lower(*args).cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends raise instead of returning None)
    cost = None
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  xla = float(cost["flops"]) if isinstance(cost, dict) and cost.get("flops") else None
  return {"xla": xla, "matmul": float(matmul)}
