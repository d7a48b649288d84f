"""bfloat16 oneDNN convolutions agree with flax's float32 ones; a bfloat16 train step agrees with the float32 one.

Tolerance: relative error norms ||a - b|| / ||b|| < 1e-2. bfloat16 keeps 8 significant bits, so rounding the
inputs, the weights and the output each costs up to 2**-9 = 2e-3 relative per element (oneDNN accumulates in
float32, so the sums add no more); together about 3e-3, which is what these cases measure. 1e-2 leaves room for
that and fails on any real mistake (a wrong tap, a lost bias, a gradient summed in bfloat16), which costs O(1)
or, for sums over many pixels, far more than 1e-2.
"""

import functools

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fer_jax import config_schema, kernels, model_factory, train
from fer_jax.kernels import bf16_conv, onednn_conv
from im2col_conv_test import CASES, NHWC  # tests/, on pytest's path

_WHY_NOT = bf16_conv.unavailable_reason() if onednn_conv.available() else "oneDNN's library does not load here"
needs_bf16 = pytest.mark.skipif(_WHY_NOT is not None, reason=f"no oneDNN bfloat16 convolutions: {_WHY_NOT}")
TOLERANCE = 1e-2


def _relative_error(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _assert_close(tree, tree_ref, tolerance=TOLERANCE):
  for path, ref in jax.tree_util.tree_leaves_with_path(tree_ref):
    value = functools.reduce(lambda t, k: t[getattr(k, "key", getattr(k, "idx", None))], path, tree)
    assert value.dtype == ref.dtype, jax.tree_util.keystr(path)
    error = _relative_error(value, ref)
    assert error < tolerance, f"{jax.tree_util.keystr(path)}: relative error {error:.2e}"


@needs_bf16
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("shape,kernel,padding", CASES)
def test_forward_and_gradients_match_flax_float32(shape, kernel, padding, use_bias):
  """Output, input gradient, and float32 kernel and bias gradients, against nn.Conv in float32."""
  fast = bf16_conv.Conv(6, kernel, padding=padding, use_bias=use_bias, dtype=jnp.bfloat16)
  ref = nn.Conv(6, kernel, padding=padding, use_bias=use_bias)
  kx, kp, kb, kd = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(kx, shape)
  params = ref.init(kp, x)["params"]
  if use_bias:
    params["bias"] = jax.random.normal(kb, params["bias"].shape)
  assert jax.tree.map(jnp.shape, fast.init(kp, x)["params"]) == jax.tree.map(jnp.shape, params)
  y_ref = ref.apply({"params": params}, x)
  y = jax.jit(fast.apply)({"params": params}, x)
  assert y.dtype == jnp.bfloat16
  assert _relative_error(y, y_ref) < TOLERANCE
  dy = jax.random.normal(kd, y_ref.shape)
  loss = lambda model: (lambda params, x: jnp.sum(model.apply({"params": params}, x).astype(jnp.float32) * dy))
  grads_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  grads = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(params, x)
  _assert_close(grads, grads_ref)  # float32 parameter gradients (checked), float32 dx (x was float32)


@needs_bf16
def test_bias_gradient_over_many_pixels_is_summed_in_float32():
  """The bias gradient sums 128x48x48 pixels: in bfloat16 that sum stalls (flax's own bfloat16 route does)."""
  x = jax.random.normal(jax.random.key(1), (128, 48, 48, 4))
  conv = bf16_conv.Conv(8, (3, 3), padding="SAME", dtype=jnp.bfloat16)
  params = conv.init(jax.random.key(2), x)["params"]
  grad = jax.jit(jax.grad(lambda p: jnp.sum(conv.apply({"params": p}, x).astype(jnp.float32))))(params)
  assert grad["bias"].dtype == jnp.float32
  np.testing.assert_allclose(grad["bias"], 128 * 48 * 48, rtol=1e-6)  # d(sum y)/d(bias) = number of pixels


@needs_bf16
@pytest.mark.parametrize("use_bias", [True, False])
def test_fused_relu_equals_nn_relu_after_the_convolution(use_bias):
  """relu=True (oneDNN's post-op; the gradient masked where the output is 0) is nn.relu of the unfused Conv."""
  kx, kp, kb, kd = jax.random.split(jax.random.key(4), 4)
  x = jax.random.normal(kx, (4, 12, 12, 8))
  fused = bf16_conv.Conv(16, (3, 3), padding="SAME", use_bias=use_bias, dtype=jnp.bfloat16, relu=True)
  plain = bf16_conv.Conv(16, (3, 3), padding="SAME", use_bias=use_bias, dtype=jnp.bfloat16)
  params = plain.init(kp, x)["params"]
  if use_bias:
    params["bias"] = jax.random.normal(kb, params["bias"].shape)
  apply_fused = lambda params, x: fused.apply({"params": params}, x)
  apply_plain = lambda params, x: nn.relu(plain.apply({"params": params}, x))
  jaxpr = str(jax.make_jaxpr(apply_fused)(params, x))
  assert "fer_onednn_conv_forward" in jaxpr and "relu" not in jaxpr.replace("relu=True", "")
  y, y_ref = jax.jit(apply_fused)(params, x), jax.jit(apply_plain)(params, x)
  assert 0.3 < float(jnp.mean(y_ref == 0)) < 0.7  # the ReLU zeroes about half of the outputs
  np.testing.assert_array_equal(y, y_ref)
  dy = jax.random.normal(kd, y.shape)
  loss = lambda apply: (lambda params, x: jnp.sum(apply(params, x).astype(jnp.float32) * dy))
  grads = jax.jit(jax.grad(loss(apply_fused), argnums=(0, 1)))(params, x)
  grads_ref = jax.jit(jax.grad(loss(apply_plain), argnums=(0, 1)))(params, x)
  jax.tree.map(np.testing.assert_array_equal, grads, grads_ref)


def _count_relus(jaxpr) -> int:
  """ReLUs on 4-D activations (a `max` with the constant 0) in a jaxpr, nested ones included."""
  count = 0
  for eqn in jaxpr.eqns:
    count += (eqn.primitive.name == "max" and eqn.outvars[0].aval.ndim == 4
              and any(isinstance(v, jax.extend.core.Literal) for v in eqn.invars))
    count += sum(_count_relus(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
  return count


def _vgg_cpu_config(dtype):
  config = config_schema.base_config()
  config.model = "vgg"
  config.model_kwargs = ml_collections.ConfigDict(dict(stage_features=(32, 64, 128, 256), convs_per_stage=2,
                                                       dense_features=(256,), dropout=0.5, batch_norm=False))
  config.dtype = dtype
  return config


def _one_step(config, model_kernels, params, batch):
  model = model_factory.create_model(config, 7, model_kernels)
  state = model_factory.create_train_state(model, optax.sgd(1.0), (48, 48, 1), seed=0).replace(params=params)
  step = jax.jit(functools.partial(train.train_step, base_key=jax.random.key(0), label_smoothing=0.1,
                                   class_weights=None))
  new_state, metrics, finite = step(state, batch)
  grads_as_update = jax.tree.map(lambda new, old: old - new, new_state.params, params)  # SGD lr 1: the gradient
  return float(metrics.compute()["loss"]), grads_as_update, bool(finite)


@needs_bf16
def test_vgg_cpu_train_step_in_bfloat16_matches_float32():
  """configs/fer2013_cpu.py's network, one train step on the same batch, parameters and dropout draws.

  bfloat16 on bf16_conv.Conv against float32 on flax's nn.Conv: identical parameter trees (checkpoints and
  evaluation's flax modules agree), the loss within 1e-2. Gradients through eight bfloat16 layers differ from
  float32 ones by 5-25% (rounding flips ReLUs and max-pool winners), as much for flax's own bfloat16 route (XLA's
  convolutions): each of ours must be no further from float32 than 1.2x flax's + 1e-2. A dropped bias or a
  wrong gradient is off by O(1).
  """
  config32, config16 = _vgg_cpu_config("float32"), _vgg_cpu_config("bfloat16")
  bf16_kernels = kernels.select(config16)
  assert bf16_kernels.conv is bf16_conv.Conv, bf16_kernels.reason
  model = model_factory.create_model(config32, 7)
  params = model.init(jax.random.key(3), jnp.zeros((1, 48, 48, 1)))["params"]
  model16 = model_factory.create_model(config16, 7, bf16_kernels)
  relus = lambda model: _count_relus(jax.make_jaxpr(functools.partial(model.apply, train=False))(
      {"params": params}, jnp.zeros((2, 48, 48, 1))).jaxpr)
  assert (relus(model), relus(model16)) == (8, 0)  # The eight convolutions' ReLUs run inside oneDNN's kernels
  params16 = model16.init(jax.random.key(3), jnp.zeros((1, 48, 48, 1)))["params"]
  assert jax.tree.map(lambda p: (p.shape, p.dtype), params16) == jax.tree.map(lambda p: (p.shape, p.dtype), params)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.standard_normal((16, 48, 48, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 7, 16), jnp.int32)}
  loss32, grads32, _ = _one_step(config32, kernels.DEFAULTS, params, batch)
  loss16, grads16, finite = _one_step(config16, bf16_kernels, params, batch)
  _, grads_flax16, _ = _one_step(config16, kernels.DEFAULTS, params, batch)
  assert finite
  assert abs(loss16 - loss32) / loss32 < TOLERANCE, (loss16, loss32)
  for (path, g32), g16, g_flax in zip(jax.tree_util.tree_leaves_with_path(grads32), jax.tree.leaves(grads16),
                                      jax.tree.leaves(grads_flax16)):
    ours, flax16 = _relative_error(g16, g32), _relative_error(g_flax, g32)
    assert ours < 1.2 * flax16 + TOLERANCE, f"{jax.tree_util.keystr(path)}: {ours:.3f} against flax's {flax16:.3f}"


def test_cpu_bf16_flag_reads_proc_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
  assert bf16_conv.cpu_bf16_flag(str(cpuinfo)) == "avx512_bf16"
  cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_tile amx_bf16\n")
  assert bf16_conv.cpu_bf16_flag(str(cpuinfo)) == "amx_bf16"
  cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
  assert bf16_conv.cpu_bf16_flag(str(cpuinfo)) is None
  assert bf16_conv.cpu_bf16_flag(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not onednn_conv.available(), reason="oneDNN's library does not load here")
def test_without_bf16_dot_products_bfloat16_runs_onednn_float32_and_says_why(monkeypatch):
  monkeypatch.setattr(bf16_conv, "cpu_bf16_flag", lambda cpuinfo="": None)
  bf16_conv.unavailable_reason.cache_clear()
  try:
    selected = kernels.select(ml_collections.ConfigDict({"conv_impl": "auto", "dtype": "bfloat16"}))
  finally:
    bf16_conv.unavailable_reason.cache_clear()
  assert selected.conv.keywords["conv_general_dilated"] is onednn_conv.conv_general_dilated
  assert "neither avx512_bf16 nor amx_bf16" in selected.reason
  x = jax.random.normal(jax.random.key(4), (2, 8, 8, 3)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(5), (3, 3, 3, 4)).astype(jnp.bfloat16)
  conv = lambda x, w: onednn_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
  jaxpr = str(jax.make_jaxpr(conv)(x, w))
  assert "fer_onednn_conv_forward" in jaxpr and "convert_element_type" in jaxpr  # oneDNN in float32, cast back
  y = jax.jit(conv)(x, w)
  assert y.dtype == jnp.bfloat16
