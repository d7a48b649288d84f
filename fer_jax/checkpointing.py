"""Orbax checkpoints of the training state and the input iterator.

Layout: WORKDIR/checkpoints/<step>/{state,data}. `state` holds parameters,
batch-norm statistics, optimizer state and step; `data` the grain iterator's
position (one file per process), so a restart continues on exactly the next
batch. Saves are asynchronous; orbax writes each step into a temporary
directory and renames it when complete, so readers only ever see finalized steps;
a writable manager deletes the temporary directories a killed run left behind.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

VAL_ACCURACY = "val_accuracy"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, config: ml_collections.ConfigDict | None = None, *,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the latest `keep_checkpoints` plus the best `keep_best_checkpoints` by validation accuracy."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  else:
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=config.keep_checkpoints),
        checkpoint_managers.BestN(get_metric_fn=lambda m: m[VAL_ACCURACY], n=config.keep_best_checkpoints,
                                  keep_checkpoints_without_metrics=False),
    ])
    # A save cut short by a kill leaves <step>.orbax-checkpoint-tmp-*; never listed as a step, removed here.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: grain.DatasetIterator,
         metrics: dict[str, float] | None) -> None:
  """Starts an asynchronous save; `metrics` holds val_accuracy for best-checkpoint selection.

  None (a save on a preemption notice, without validation) keeps the step out of
  the best-N ranking; the latest-N policy still keeps it.
  """
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator)), metrics=metrics)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: grain.DatasetIterator | None = None) -> Any:
  """Restores the state onto `abstract_state`'s shardings (any topology); moves the iterator in place."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


class WorkdirError(OSError):
  """The workdir cannot hold checkpoints (read-only, or too little free space)."""


def state_bytes(abstract_state: Any) -> int:
  """Bytes of one saved training state (parameters, optimizer state, batch-norm statistics)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state) if hasattr(x, "dtype"))


def check_workdir(workdir: str, checkpoint_bytes: int, keep: int) -> None:
  """Fails at start-up, before any compute, if checkpoints could not be written to `workdir`.

  Writes and removes a probe file (a read-only mount fails here, not at the
  first save) and compares free space with `keep` + 1 checkpoints (the one in
  flight) plus 10%; orbax would otherwise fail mid-save, leaving only a
  temporary directory (never a corrupt finalized step).
  """
  workdir = os.path.abspath(workdir)
  probe = os.path.join(workdir, f".fer_jax_write_probe.{socket.gethostname()}.{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
      os.write(fd, b"\0" * 4096)
    finally:
      os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"The workdir {workdir} is not writable ({e.strerror or e}): checkpoints could not be "
                       "saved. Use a --workdir on a writable filesystem, or fix its permissions.") from None
  needed = int(checkpoint_bytes * (keep + 1) * 1.1)
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise WorkdirError(
        f"The workdir {workdir} has {free / 2**20:.1f} MiB free, but {keep + 1} checkpoints of "
        f"{checkpoint_bytes / 2**20:.1f} MiB (keep_checkpoints + keep_best_checkpoints + the one being written) "
        f"need about {needed / 2**20:.1f} MiB. Free some space, use another --workdir, or lower "
        "config.keep_checkpoints / config.keep_best_checkpoints.")
