"""Keep freed host memory in the process, so XLA:CPU's per-step buffers stop page-faulting.

glibc serves each step's large temp block (XLA allocates it from a worker thread) by mmap and munmap, so the
kernel zero-fills tens of thousands of pages per step; one arena and high mmap/trim thresholds let the block
be reused (docs/BENCHMARKS.md, "What each step gained", 1). `fer_jax.main` calls `keep_freed_memory()` before
JAX starts its threads; up to `trim_threshold` freed bytes stay mapped. A no-op outside glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from absl import logging

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

DISABLE_ENV = "FER_JAX_DEFAULT_MALLOC"  # Set to 1 to leave glibc's malloc settings alone.


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
  """Tunes glibc malloc for XLA:CPU; returns whether it applied."""
  if os.environ.get(DISABLE_ENV) == "1":
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  applied = (mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
             and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1)
  if not applied:
    logging.warning("host_allocator: glibc refused a mallopt setting; XLA:CPU steps may page-fault.")
  return applied
