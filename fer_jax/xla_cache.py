"""jax's persistent compilation cache (config.compilation_cache_dir): a rerun loads its XLA programs from disk.

What jax guarantees, checked in its source (jax 0.10, jax/_src/cache_key.py, lru_cache.py, compiler.py):
- An entry's key hashes the program, the jaxlib version, the backend's platform and platform version, the XLA
  flags, the compile options and the devices' kind and topology: another jax/jaxlib, GPU or driver never reads
  an entry it did not write (it compiles and adds its own).
- Only process 0 of a multi-process run writes; an unreadable entry is a warning and a fresh compile, never
  an error.
- Writes are NOT atomic by themselves (a plain write of the file) unless the cache has a size limit: then every
  read and write holds a file lock (`filelock`) in the cache folder. So `enable()` sets a limit (MAX_BYTES,
  least recently used entries evicted), which also keeps a per-user cache from growing without bound;
  concurrent runs then never read a half-written entry. Without the `filelock` package (a dependency of
  huggingface_hub and torch, rarely missing) the cache stays unbounded and unlocked, and a torn read only
  costs a warning and a recompile.
On a GPU, jax also keeps XLA's per-fusion autotuning results in the same folder
(jax_persistent_cache_enable_xla_caches), which is most of a warm start's saving there.
"""

from __future__ import annotations

import logging as std_logging
import os
from typing import Any

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache

AUTO = "auto"
MAX_BYTES = 4 << 30
# Compilations faster than this are not written: the run's own programs (state init, train step, eval step)
# take longer, the many small helper jits do not and would only add files. JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS
# in the environment overrides it.
MIN_COMPILE_TIME_S = 0.2


def default_dir() -> str:
  """$XDG_CACHE_HOME/fer_jax/xla, else ~/.cache/fer_jax/xla."""
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fer_jax", "xla")


def resolve(setting: str) -> str | None:
  """The folder config.compilation_cache_dir names ("auto": default_dir()), or None when it is "" (off)."""
  if not setting:
    return None
  return os.path.abspath(os.path.expanduser(default_dir() if setting == AUTO else setting))


def current_dir() -> str | None:
  return jax.config.jax_compilation_cache_dir or None


def enable(setting: str) -> str | None:
  """Points jax's persistent cache at `setting` (see resolve) before anything compiles; returns the folder.

  A folder that cannot be created turns the cache off with a warning: a cache never stops a run.
  """
  path = resolve(setting)
  if path == current_dir():
    return path
  if path is not None:
    try:
      os.makedirs(path, exist_ok=True)
      if not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is not writable")
    except OSError as e:
      logging.warning("XLA compilation cache off: cannot use %s (%s). Set --config.compilation_cache_dir to a "
                      "writable folder, or to '' to silence this.", path, e)
      path = None
  if current_dir() is not None:
    _forget_cache()
  jax.config.update("jax_compilation_cache_dir", path)
  if path is None:
    return None
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
  if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ and _has_filelock():
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  return path


def _forget_cache() -> None:
  """jax reads the folder once per process: makes it forget the old one, without its INFO line about that."""
  logger = std_logging.getLogger("jax._src.compilation_cache")
  level = logger.level
  logger.setLevel(std_logging.WARNING)
  try:
    compilation_cache.reset_cache()
  finally:
    logger.setLevel(level)


def _has_filelock() -> bool:
  try:
    import filelock  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


class CacheEvents:
  """Counts the persistent cache's hits and writes (jax.monitoring events) until `close()`."""

  def __init__(self):
    self.hits = self.writes = 0
    self._listening = True
    jax.monitoring.register_event_listener(self._on_event)

  def _on_event(self, event: str, **kwargs: Any) -> None:
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
      self.hits += 1
    elif event == "/jax/compilation_cache/cache_misses":  # jax records this as it writes an entry.
      self.writes += 1

  def summary(self, path: str | None, scope: str = "") -> str:
    """`XLA compilation cache PATH (SCOPE): N hit(s), M written`, or that it is off (path None)."""
    if path is None:
      return "XLA compilation cache off"
    scope = f" ({scope})" if scope else ""
    return f"XLA compilation cache {path}{scope}: {self.hits} hit(s), {self.writes} written"

  def close(self) -> None:
    if self._listening:
      jax.monitoring.unregister_event_listener(self._on_event)
      self._listening = False
