"""oneDNN convolutions equal lax's, forward and both gradients; the CNN trained on them equals the lax one."""

import functools
import importlib.metadata

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fer_jax import kernels, models
from fer_jax.kernels import im2col_conv, onednn_conv
from im2col_conv_test import CASES, NHWC, check_matches_lax  # tests/, on pytest's path
import jaxpr_checks  # tests/, on pytest's path

needs_onednn = pytest.mark.skipif(not onednn_conv.available(), reason="oneDNN's library does not load here")


def _onednn(x, w, padding):
  return onednn_conv.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)


@needs_onednn
@pytest.mark.parametrize("shape,kernel,padding", CASES)
def test_forward_and_gradients_match_lax(shape, kernel, padding):
  check_matches_lax(_onednn, shape, kernel, padding)


def test_uncovered_cases_go_to_im2col_or_lax():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(2), (3, 3, 4, 4))
  jaxpr = lambda f: str(jax.make_jaxpr(f)(x, w))
  strided = jaxpr(lambda x, w: onednn_conv.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=NHWC))
  assert "pure_callback" not in strided and "conv_general_dilated" in strided
  wide = jaxpr(lambda x, w: onednn_conv.conv_general_dilated(x, w, (1, 1), ((1, 3), (1, 1)), dimension_numbers=NHWC))
  assert "fer_onednn" not in wide and "custom_vjp_call" in wide  # im2col's: oneDNN corrupts memory on such pads
  assert "fer_onednn_conv_forward" in jaxpr(_onednn_same)


def _onednn_same(x, w):
  return onednn_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


@needs_onednn
def test_bfloat16_operands_run_onednn_in_float32():
  """Where bf16_conv's bfloat16 kernels are not chosen, bfloat16 convolutions run oneDNN's float32 ones."""
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(2), (3, 3, 4, 4))
  half = lambda x, w: _onednn_same(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert "fer_onednn_conv_forward" in str(jax.make_jaxpr(half)(x, w))
  y = jax.jit(half)(x, w)
  assert y.dtype == jnp.bfloat16
  y_ref = _onednn_same(x.astype(jnp.bfloat16).astype(jnp.float32), w.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_array_equal(y, y_ref.astype(jnp.bfloat16))


@needs_onednn
def test_weight_buffers_start_on_a_cache_line():
  """oneDNN's AMX kernels ran 2-3x slower on weights 16 bytes past a cache line (numpy's malloc'd start)."""
  library = onednn_conv.prepare()
  for floats in (1, 7, 100, 1000, 4096, 10_000, 65_536, 100_003, 300_000, 1 << 20):  # heap and mmap'd sizes
    buffer = library.buffer(library.memory_desc((floats,), onednn_conv._TAG_A))
    assert buffer.ctypes.data % 64 == 0, f"{floats} floats start at {buffer.ctypes.data:#x}"
    assert buffer.nbytes == 4 * floats
  plan = onednn_conv._plan((4, 12, 12, 32), (3, 3, 32, 64), ((1, 1), (1, 1)), "float32", True)
  assert [b.ctypes.data % 64 for b in plan._scratch] == [0, 0, 0]
  assert all(b.ctypes.data == address for b, address in zip(plan._scratch, (
      plan.c_plan.forward_weights, plan.c_plan.backward_data_weights, plan.c_plan.diff_weights)))


@needs_onednn
def test_cnn_on_onednn_matches_cnn_on_lax():
  """Same parameters and dropout draws: loss and logits agree to float32 rounding, and so do the gradients.

  Gradients get a looser bound: a ~1e-7 difference can flip the winner of a
  near-tied max-pool window, which moves one gradient contribution to the
  neighbouring pixel (see im2col_conv_test).
  """
  plain, fast = models.CNN(), models.CNN(**kernels.select(_config("onednn")).model_kwargs())
  x = jax.random.uniform(jax.random.key(3), (8, 48, 48, 1))
  labels = jnp.arange(8) % 7
  params = plain.init(jax.random.key(4), x)["params"]

  def loss(model, params):
    logits = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(5)})
    return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)), logits

  (loss_ref, logits_ref), grads_ref = jax.jit(jax.value_and_grad(functools.partial(loss, plain), has_aux=True))(params)
  fast_step = jax.value_and_grad(functools.partial(loss, fast), has_aux=True)
  assert jaxpr_checks.onednn_calls(fast_step, params) >= 3  # CNN's three convolutions run on oneDNN
  assert "conv_general_dilated" not in jaxpr_checks.primitives(fast_step, params)
  (loss_fast, logits_fast), grads = jax.jit(fast_step)(params)
  np.testing.assert_allclose(logits_fast, logits_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss_fast, loss_ref, rtol=1e-5)
  for path, g_ref in jax.tree_util.tree_leaves_with_path(grads_ref):
    g = functools.reduce(lambda t, k: t[k.key], path, grads)
    np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(g_ref))),
                               err_msg=jax.tree_util.keystr(path))


def _config(impl):
  return ml_collections.ConfigDict({"conv_impl": impl})


def _conv_of(selected):
  return selected.conv.keywords["conv_general_dilated"]


@needs_onednn
def test_auto_trains_on_onednn_on_one_cpu_device():
  assert jax.device_count() == 1
  assert _conv_of(kernels.select(_config("auto"))) is onednn_conv.conv_general_dilated
  assert _conv_of(kernels.select(_config("im2col"))) is im2col_conv.conv_general_dilated
  assert kernels.select(_config("xla")) is kernels.DEFAULTS
  assert kernels.select(_config("auto"), platform="cuda") is kernels.DEFAULTS


def test_missing_library_is_reported_with_the_fix(monkeypatch):
  def not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)

  monkeypatch.setattr(onednn_conv.importlib.metadata, "files", not_installed)
  onednn_conv.load.cache_clear()
  try:
    assert not onednn_conv.available()
    assert _conv_of(kernels.select(_config("auto"))) is im2col_conv.conv_general_dilated
    with pytest.raises(onednn_conv.OneDnnUnavailable, match="pip install onednn-cpu-gomp"):
      kernels.select(_config("onednn"))
  finally:
    onednn_conv.load.cache_clear()


def test_unwritable_cache_is_reported_not_raised(monkeypatch, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  monkeypatch.setenv("FER_JAX_CACHE_DIR", str(blocker / "cache"))  # a directory under a file cannot exist
  with pytest.raises(onednn_conv.OneDnnUnavailable, match="FER_JAX_CACHE_DIR"):
    onednn_conv._build_handlers("/nonexistent/libdnnl.so.3")
