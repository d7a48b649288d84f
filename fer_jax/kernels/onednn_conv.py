"""Stride-1 convolutions on oneDNN's CPU kernels (the `onednn-cpu-gomp` wheel), the ones TensorFlow and PyTorch use.

Python builds oneDNN's primitives once per shape through its C API (ctypes); XLA runs them inside a
`custom_vjp` as FFI custom calls (onednn_ffi.c, compiled on first use) on its own NHWC buffers. Results agree
with lax to float32 rounding (tests/onednn_conv_test.py). Covered: 2-D NHWC/HWIO, stride 1, no dilation or
groups, padding narrower than the kernel; the rest goes to im2col_conv. `_conv` also takes bfloat16 activations
with a fused float32 bias and, optionally, a fused ReLU (bf16_conv.py's route). Without the library or a C
compiler `available()` is False.
Calls are serialised and GOMP_SPINCOUNT lowered so libgomp's threads leave XLA's the cores: docs/BENCHMARKS.md
("What each step gained", 5) has the why and the measurements.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import subprocess
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from fer_jax.kernels import im2col_conv

_PACKAGE = "onednn-cpu-gomp"
_LIBRARY = "libdnnl.so.3"

# Constants of oneDNN 3.x's C API (oneapi/dnnl/dnnl_types.h).
_BF16, _F32 = 2, 3
_TAG_ANY, _TAG_A, _TAG_NHWC, _TAG_HWIO = 1, 2, 22, 28
_FORWARD_TRAINING, _CONVOLUTION_DIRECT, _ELTWISE_RELU, _CPU_ENGINE, _DEFAULT_STREAM = 64, 1, 0x20, 1, 1
_QUERY_IMPL_INFO_STR, _QUERY_WEIGHTS_MD, _QUERY_DIFF_WEIGHTS_MD = 8, 131, 132
_DATA_TYPES = {"float32": _F32, "bfloat16": _BF16}

_Dims = ctypes.c_int64 * 12
# Weight buffers start on a cache line, as oneDNN's own allocations do. numpy's start 16 bytes past one (glibc
# malloc), and AMX tile loads across cache lines then ran the bfloat16 kernels 2-3x slower (docs/BENCHMARKS.md).
_ALIGNMENT = 64


class OneDnnUnavailable(RuntimeError):
  """oneDNN's library could not be loaded; the message says why and what to install."""


class _Library:
  """The loaded libdnnl with one CPU engine and stream."""

  def __init__(self, path: str):
    self.path = path
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # Read by libgomp when it loads (module docstring).
    self.lib = ctypes.CDLL(path)
    self.lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
    self.lib.dnnl_primitive_desc_query_md.restype = ctypes.c_void_p
    self.engine = self.create("dnnl_engine_create", _CPU_ENGINE, 0)
    self.stream = self.create("dnnl_stream_create", self.engine, _DEFAULT_STREAM)

  def create(self, function: str, *args: Any, what: str = "") -> ctypes.c_void_p:
    """Calls oneDNN's `function(&handle, *args)` and returns the handle; raises if it fails."""
    handle = ctypes.c_void_p()
    status = getattr(self.lib, function)(ctypes.byref(handle), *args)
    if status != 0:
      raise RuntimeError(f"oneDNN's {function}{what} returned status {status} "
                         "(see dnnl_status_t in oneapi/dnnl/dnnl_types.h).")
    return handle

  def memory_desc(self, dims: Sequence[int], tag: int, data_type: int = _F32) -> ctypes.c_void_p:
    return self.create("dnnl_memory_desc_create_with_tag", len(dims), _Dims(*dims), data_type, tag)

  def primitive(self, primitive_desc: ctypes.c_void_p) -> ctypes.c_void_p:
    return self.create("dnnl_primitive_create", primitive_desc)

  def reorder(self, src_desc: ctypes.c_void_p, dst_desc: ctypes.c_void_p) -> ctypes.c_void_p:
    return self.primitive(self.create("dnnl_reorder_primitive_desc_create", src_desc, self.engine, dst_desc,
                                      self.engine, None))

  def query_md(self, primitive_desc: ctypes.c_void_p, what: int) -> ctypes.c_void_p:
    return ctypes.c_void_p(self.lib.dnnl_primitive_desc_query_md(primitive_desc, what, 0))

  def buffer(self, desc: ctypes.c_void_p) -> np.ndarray:
    """Room for `desc`, starting at a multiple of _ALIGNMENT bytes."""
    size = self.lib.dnnl_memory_desc_get_size(desc)
    raw = np.empty(size + _ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return raw[start:start + size]  # A view: it keeps `raw` alive.

  def relu_attribute(self) -> ctypes.c_void_p:
    """Primitive attributes with one post-op: ReLU on the output, applied as the kernel writes it."""
    post_ops = self.create("dnnl_post_ops_create")
    status = self.lib.dnnl_post_ops_append_eltwise(post_ops, _ELTWISE_RELU, ctypes.c_float(0), ctypes.c_float(0))
    attribute = self.create("dnnl_primitive_attr_create")
    if status != 0 or self.lib.dnnl_primitive_attr_set_post_ops(attribute, post_ops) != 0:
      raise RuntimeError("oneDNN refused a ReLU post-op (dnnl_post_ops_append_eltwise / _attr_set_post_ops).")
    return attribute  # The post-ops are copied into it; both stay allocated, as plans live for the process.

  def implementation(self, primitive_desc: ctypes.c_void_p) -> str:
    """oneDNN's name for the kernel a primitive descriptor runs, e.g. `brg:avx512_core_bf16` (or `ref:any`)."""
    name = ctypes.c_char_p()
    self.lib.dnnl_primitive_desc_query(primitive_desc, _QUERY_IMPL_INFO_STR, 0, ctypes.byref(name))
    return (name.value or b"?").decode()


@functools.cache
def load() -> _Library:
  """The loaded library; raises OneDnnUnavailable saying what is missing."""
  try:
    files = importlib.metadata.files(_PACKAGE) or []
  except importlib.metadata.PackageNotFoundError as e:
    raise OneDnnUnavailable(f"The {_PACKAGE} package is not installed (pip install {_PACKAGE}); "
                            "or set config.conv_impl=im2col.") from e
  path = next((str(file.locate()) for file in files if file.name == _LIBRARY), None)
  if path is None:
    raise OneDnnUnavailable(f"The {_PACKAGE} package has no {_LIBRARY}; reinstall it, or set config.conv_impl=im2col.")
  try:
    return _Library(path)
  except OSError as e:  # E.g. libgomp.so.1 missing.
    raise OneDnnUnavailable(f"Could not load {path}: {e}. Install the system's libgomp1, or set "
                            "config.conv_impl=im2col.") from e


def available() -> bool:
  """Whether oneDNN's library loads and its FFI handlers build on this machine."""
  try:
    prepare()
  except OneDnnUnavailable:
    return False
  return True


def prepare() -> _Library:
  """Loads the library and registers the FFI handlers; raises OneDnnUnavailable saying what is missing."""
  library = load()
  _register_handlers(library.path)
  return library


class _CPlan(ctypes.Structure):
  """onednn_ffi.c's `Plan`: the handles its handlers run on (same field order)."""
  _fields_ = [(name, ctypes.c_void_p) for name in (
      "engine", "stream", "src_md", "dst_md", "hwio_md", "bias_md", "forward", "backward_data", "backward_weights",
      "forward_weights_md", "backward_data_weights_md", "diff_weights_md", "to_forward_weights",
      "to_backward_data_weights", "from_diff_weights", "forward_weights", "backward_data_weights", "diff_weights")]


class _Plan:
  """oneDNN's three convolution primitives for one shape: NHWC/HWIO data, weights reordered to oneDNN's layout.

  `dtype` is the activations' (src, dst and their gradients); weights, bias and their gradients are float32
  in XLA's buffers whatever it is. For bfloat16 the weight reorders convert to and from bfloat16 on the way
  into oneDNN's layout, and oneDNN accumulates in float32 and writes the weight and bias gradients in float32.
  With `bias`, the forward adds it and the weight-gradient pass also returns its gradient (summed in float32).
  With `relu`, the forward applies a ReLU to its output (a post-op); the gradient passes take dy already masked.
  """

  def __init__(self, in_shape: tuple[int, ...], kernel_shape: tuple[int, ...], pads: im2col_conv.Pads,
               dtype: str = "float32", bias: bool = False, relu: bool = False):
    lib = prepare()
    (n, h, w, cin), (kh, kw, _, cout) = in_shape, kernel_shape
    data_type = _DATA_TYPES[dtype]
    self.out_shape = (n, h + sum(pads[0]) - kh + 1, w + sum(pads[1]) - kw + 1, cout)
    src = lib.memory_desc((n, cin, h, w), _TAG_NHWC, data_type)  # oneDNN's dims are NCHW; the tag gives the layout.
    dst = lib.memory_desc((n, cout, *self.out_shape[1:3]), _TAG_NHWC, data_type)
    hwio = lib.memory_desc((cout, cin, kh, kw), _TAG_HWIO)
    bias_md = lib.memory_desc((cout,), _TAG_A) if bias else None
    blocked = lib.memory_desc((cout, cin, kh, kw), _TAG_ANY, data_type)  # oneDNN chooses: its direct kernels.
    diff_blocked = lib.memory_desc((cout, cin, kh, kw), _TAG_ANY)  # float32 weight gradients
    geometry = (_Dims(1, 1), _Dims(0, 0), _Dims(pads[0][0], pads[1][0]), _Dims(pads[0][1], pads[1][1]))
    what = f" for {dtype} input {in_shape}, kernel {kernel_shape}"
    forward = lib.create("dnnl_convolution_forward_primitive_desc_create", lib.engine, _FORWARD_TRAINING,
                         _CONVOLUTION_DIRECT, src, blocked, bias_md, dst, *geometry,
                         lib.relu_attribute() if relu else None, what=what)
    backward_data = lib.create("dnnl_convolution_backward_data_primitive_desc_create", lib.engine,
                               _CONVOLUTION_DIRECT, src, blocked, dst, *geometry, forward, None, what=what)
    backward_weights = lib.create("dnnl_convolution_backward_weights_primitive_desc_create", lib.engine,
                                  _CONVOLUTION_DIRECT, src, diff_blocked, bias_md, dst, *geometry, forward, None,
                                  what=what)
    self.implementations = tuple(lib.implementation(pd) for pd in (forward, backward_data, backward_weights))
    # Queried descriptors point into their primitive descriptors, which are therefore never destroyed
    # (plans live as long as the process, see _plan).
    forward_weights = lib.query_md(forward, _QUERY_WEIGHTS_MD)
    backward_data_weights = lib.query_md(backward_data, _QUERY_WEIGHTS_MD)
    diff_weights = lib.query_md(backward_weights, _QUERY_DIFF_WEIGHTS_MD)
    self._scratch = [lib.buffer(d) for d in (forward_weights, backward_data_weights, diff_weights)]  # kept alive
    self.c_plan = _CPlan(
        lib.engine, lib.stream, src, dst, hwio, bias_md, lib.primitive(forward), lib.primitive(backward_data),
        lib.primitive(backward_weights), forward_weights, backward_data_weights, diff_weights,
        lib.reorder(hwio, forward_weights), lib.reorder(hwio, backward_data_weights), lib.reorder(diff_weights, hwio),
        *[b.ctypes.data for b in self._scratch])
    self.address = np.int64(ctypes.addressof(self.c_plan))  # Passed to the FFI handlers as an attribute.


_plan = functools.cache(_Plan)  # One plan per shape, padding, dtype, bias and ReLU, kept for the process's life.


_TARGETS = ("fer_onednn_conv_forward", "fer_onednn_conv_grads", "fer_onednn_conv_kernel_grad")


def _build_handlers(library_path: str) -> str:
  """Compiles onednn_ffi.c (once per source, headers and library; cached) and returns the shared object's path."""
  source = os.path.join(os.path.dirname(__file__), "onednn_ffi.c")
  include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
  header = os.path.join(include, "xla", "ffi", "api", "c_api.h")
  if not os.path.exists(header):
    raise OneDnnUnavailable(f"jaxlib {jaxlib.__version__} has no XLA FFI headers under {include}.")
  with open(source, "rb") as f, open(header, "rb") as g:
    digest = hashlib.sha256(f.read() + g.read() + library_path.encode()).hexdigest()[:16]
  cache = os.environ.get("FER_JAX_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fer_jax")
  target = os.path.join(cache, f"onednn_ffi-{digest}.so")
  if os.path.exists(target):
    return target
  try:
    os.makedirs(cache, exist_ok=True)
  except OSError as e:
    raise OneDnnUnavailable(f"Cannot create {cache} for the compiled handlers ({e}); set FER_JAX_CACHE_DIR to a "
                            "writable directory, or config.conv_impl=im2col.") from e
  compiler = os.environ.get("CC", "cc")
  partial = f"{target}.{os.getpid()}.tmp"
  library_dir = os.path.dirname(library_path)
  command = [compiler, "-O2", "-shared", "-fPIC", "-std=gnu11", f"-I{include}", source, "-o", partial,
             f"-L{library_dir}", f"-l:{os.path.basename(library_path)}", f"-Wl,-rpath,{library_dir}", "-lpthread"]
  try:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
  except OSError as e:
    raise OneDnnUnavailable(f"No C compiler ({compiler}: {e}) to build {source}; install one (e.g. gcc) "
                            "or set config.conv_impl=im2col.") from e
  if result.returncode != 0:
    raise OneDnnUnavailable(f"Building {source} failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
  os.replace(partial, target)  # Atomic: processes building at once never load half a file.
  return target


@functools.cache
def _register_handlers(library_path: str) -> ctypes.CDLL:
  handlers = ctypes.CDLL(_build_handlers(library_path))
  for name in _TARGETS:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(handlers, name)), platform="cpu")
  return handlers  # Cached: the handlers stay loaded.


def _call(target: str, plan: _Plan, results: Any, *args: jax.Array) -> Any:
  return jax.ffi.ffi_call(target, results)(*args, plan=plan.address)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, pads: im2col_conv.Pads,
          relu: bool = False) -> jax.Array:
  """x (float32 or bfloat16) conv kernel (float32) + bias (float32 or None), then ReLU if `relu`: x's dtype out."""
  plan = _plan(x.shape, kernel.shape, pads, x.dtype.name, bias is not None, relu)
  operands = (x, kernel) if bias is None else (x, kernel, bias)
  return _call("fer_onednn_conv_forward", plan, jax.ShapeDtypeStruct(plan.out_shape, x.dtype), *operands)


def _conv_fwd(x, kernel, bias, pads, relu):
  # symbolic_zeros=True (below) tells which inputs need a gradient: the first layer's images do not,
  # and their gradient would cost more than that layer's other two passes together.
  needs_dx = () if x.perturbed else None  # A residual's tree structure can carry a flag.
  x, kernel, bias = x.value, kernel.value, None if bias is None else bias.value
  y = _conv(x, kernel, bias, pads, relu)
  return y, (x, kernel, bias, needs_dx, y if relu else None)


def _conv_bwd(pads, relu, residuals, dy):
  x, kernel, bias, needs_dx, y = residuals
  zero_bias = None if bias is None else jnp.zeros_like(bias)
  if isinstance(dy, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros_like(x), jnp.zeros_like(kernel), zero_bias
  if relu:  # relu's gradient, where XLA can fuse it with dy's producer (e.g. the pooling's gradient)
    dy = jnp.where(y > 0, dy, jnp.zeros((), dy.dtype))
  plan = _plan(x.shape, kernel.shape, pads, x.dtype.name, bias is not None, relu)
  param_grads = (jax.ShapeDtypeStruct(kernel.shape, jnp.float32),) + (
      () if bias is None else (jax.ShapeDtypeStruct(bias.shape, jnp.float32),))
  if needs_dx is None:
    grads = (jnp.zeros_like(x), *_call("fer_onednn_conv_kernel_grad", plan, param_grads, x, dy))
  else:
    grads = tuple(_call("fer_onednn_conv_grads", plan, (jax.ShapeDtypeStruct(x.shape, x.dtype), *param_grads),
                        x, dy, kernel))
  return grads if bias is not None else (*grads, None)


_conv.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)


def pads_within_kernel(pads: im2col_conv.Pads, kernel_hw: Sequence[int]) -> bool:
  """Whether no side is padded by the kernel's size or more (SAME and VALID never are).

  oneDNN 3.2's gemm-based convolution (the one it picks for few channels) corrupts memory on wider padding,
  e.g. a 3-wide kernel padded by 3: a later call crashes (SIGSEGV). Those convolutions go to im2col.
  """
  return all(lo < k and hi < k for (lo, hi), k in zip(pads, kernel_hw))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated` on oneDNN for stride-1 2-D NHWC/HWIO convolutions, else im2col's.

  bfloat16 operands are computed in float32 here (oneDNN's float32 kernels, the result cast back): CPUs
  without bfloat16 dot products run them no faster, and XLA's bfloat16 convolutions are slower (Conv below
  is the bfloat16 route where the CPU has it).
  """
  pads = im2col_conv.stride1_nhwc_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                       dimension_numbers, feature_group_count, batch_group_count,
                                       preferred_element_type)
  if pads is not None and pads_within_kernel(pads, rhs.shape[:2]) and lhs.dtype in (jnp.float32, jnp.bfloat16):
    return _conv(lhs.astype(jnp.float32), rhs.astype(jnp.float32), None, pads, False).astype(lhs.dtype)
  return im2col_conv.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                          dimension_numbers, feature_group_count, batch_group_count, precision,
                                          preferred_element_type)
