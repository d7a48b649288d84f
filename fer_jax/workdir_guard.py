"""What a training workdir promises: one trainer at a time, and one setup for its whole life.

`TrainerLock` holds WORKDIR/trainer.lock (an flock the kernel drops when its process dies) while training;
`check_setup` refuses a rerun that changes what WORKDIR/setup.json recorded. docs/GUARANTEES.md ("One trainer
per workdir, one setup per workdir") says what each refuses and what may change between runs.
"""

from __future__ import annotations

import datetime
import fcntl
import itertools
import json
import os
import socket
from typing import Any

import jax
from absl import logging

from fer_jax.checkpointing import WorkdirError

LOCK_FILE = "trainer.lock"
SETUP_FILE = "setup.json"
# Dotted config fields that the checkpoints' shapes or the data order depend on.
SETUP_FIELDS = ("model", "model_kwargs", "data.name", "data.config", "data.augment.crop_size", "batch_size", "seed",
                "optimizer")


class TrainerLock:
  """Context manager: holds WORKDIR/trainer.lock, or raises WorkdirError naming the trainer that does."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.enabled = enabled
    self._fd: int | None = None

  def __enter__(self) -> "TrainerLock":
    if not self.enabled:
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(fd) or "holder unknown"
      os.close(fd)
      raise WorkdirError(f"{os.path.dirname(self.path)} is in use by another trainer ({holder}): stop it first, "
                         "or train in another --workdir.") from None
    except OSError as e:  # A file system without flock (some network mounts): train, but say what is lost.
      os.close(fd)
      logging.warning("Cannot lock %s (%s): nothing stops a second trainer on this workdir.", self.path,
                      e.strerror or e)
      return self
    previous = _holder(fd)
    if previous:
      logging.warning("Taking over %s: the trainer that held it (%s) ended without releasing it.", self.path, previous)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def __exit__(self, *exc: Any) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # Empty: released cleanly (a killed holder leaves its name for the warning).
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _holder(fd: int) -> str | None:
  """The holder written in the lock file, or None when it is empty (released cleanly) or unreadable."""
  try:
    holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except ValueError:
    return None
  return f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}" if holder else None


def _setup_fields(config: Any) -> dict[str, Any]:
  """SETUP_FIELDS of a ConfigDict or of its JSON dict, flattened to dotted names (model_kwargs.x, ...)."""
  flat: dict[str, Any] = {}

  def add(name: str, value: Any) -> None:
    if hasattr(value, "items"):
      for key, item in value.items():
        add(f"{name}.{key}", item)
    elif value is not None:
      flat[name] = value

  for field in SETUP_FIELDS:
    value = config
    for part in field.split("."):
      value = value.get(part) if hasattr(value, "get") else None
    add(field, value)
  return json.loads(json.dumps(flat))  # tuples -> lists, as they come back from the file


def state_layout(abstract_state: Any) -> list[str]:
  """The training state's parts down to where a parameter tree starts: `.params`, `.ema_params` (the moving
  average), `.opt_state[1][0].trace` (each optimizer transform's state, by its place in the chain), ....

  Config fields outside SETUP_FIELDS add or move parts (ema_decay 0 or not, grad_clip_norm, weight_decay,
  schedule=plateau), and a checkpoint restores only into the layout it was saved with.
  """
  parts = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
    outer = itertools.takewhile(lambda key: not isinstance(key, jax.tree_util.DictKey), path)
    parts.add(jax.tree_util.keystr(tuple(outer)))
  return sorted(parts)


def setup_of(config: Any, *, image_shape: tuple[int, ...], process_count: int, abstract_state: Any) -> dict[str, Any]:
  """What this run's checkpoints and data order depend on: SETUP_FIELDS, input shape, process count and the
  training state's layout."""
  return {**_setup_fields(config), "image_shape": list(image_shape), "process_count": process_count,
          "state_layout": state_layout(abstract_state)}


def _recorded_setup(workdir: str) -> tuple[dict[str, Any] | None, str]:
  """(setup, file it came from): setup.json, else the config in model.json of a workdir older than setup.json."""
  path = os.path.join(workdir, SETUP_FILE)
  card = os.path.join(workdir, "model.json")  # fer_jax.model_card.FILENAME
  for source in (path, card):
    if not os.path.exists(source):
      continue
    try:
      with open(source) as f:
        stored = json.load(f)
    except (OSError, ValueError) as e:
      raise WorkdirError(f"{source} is not readable JSON ({e}); restore it, or train in a new --workdir.") from None
    return (_setup_fields(stored.get("config") or {}) if source == card else stored), source
  return None, path


def check_setup(workdir: str, setup: dict[str, Any]) -> None:
  """Raises WorkdirError naming every field whose value differs from what the workdir recorded."""
  workdir = os.path.abspath(workdir)
  stored, source = _recorded_setup(workdir)
  if stored is None:
    return
  # Compared: what was recorded, and every model keyword argument (one added or dropped counts too).
  fields = sorted(set(stored) | {k for k in setup if k.startswith("model_kwargs.")})
  unset = "(unset)"
  changed = [_change(k, stored.get(k, unset), setup.get(k, unset)) for k in fields
             if stored.get(k, unset) != setup.get(k, unset)]
  if changed:
    raise WorkdirError(
        f"{workdir} was trained with another setup, which its checkpoints and data order depend on "
        f"({'; '.join(changed)}): rerun with the values recorded in {source}, or train in a new --workdir.")


def _change(field: str, old: Any, new: Any) -> str:
  if field == "state_layout":  # Compared only where setup.json recorded it: a list on both sides.
    moved = [f"-{part}" for part in old if part not in new] + [f"+{part}" for part in new if part not in old]
    return (f"state_layout: {' '.join(moved)} (ema_decay 0 or not, grad_clip_norm, weight_decay or "
            "schedule=plateau changed)")
  return f"{field}: {old!r} -> {new!r}"


def record_setup(workdir: str, setup: dict[str, Any]) -> None:
  """Writes WORKDIR/setup.json (atomically) unless it is there."""
  path = os.path.join(os.path.abspath(workdir), SETUP_FILE)
  if os.path.exists(path):
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(setup, f, indent=2)
  os.replace(tmp, path)
