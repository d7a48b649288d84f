"""Keep freed host memory in the process, so XLA:CPU's per-step buffers stop page-faulting.

Every XLA:CPU execution allocates its temporary buffers afresh (for the seeds'
CNN at batch 64, one block of ~140 MB) from one of its worker threads. glibc
gives a non-main thread a separate arena that cannot hold a block that large, so
each step mmap()s it and munmap()s it again, and the kernel zero-fills
36,000-58,000 fresh pages per step: a third of the CPU time went to the kernel
and the CNN trained at 262 instead of 353 images/s (docs/BENCHMARKS.md). Restricting malloc to the main arena
and raising its mmap and trim thresholds lets the block be reused.

`keep_freed_memory()` must run before JAX starts its threads: `fer_jax.main`
calls it first. The cost is that up to `trim_threshold` bytes of freed memory
stay mapped to the process. A no-op outside glibc (macOS, musl).
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
