"""Orbax checkpoints of the training state and the input iterator, and the start-up checks of the workdir.

Layout: WORKDIR/checkpoints/<step>/{state,data}: `state` holds parameters, batch-norm statistics, optimizer
state and step; `data` the grain iterator's position (one file per process). docs/GUARANTEES.md ("Resume")
says why a killed save never leaves a step that looks finished.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from fer_jax import checkpoint_checksums

VAL_ACCURACY = "val_accuracy"
DamagedCheckpointError = checkpoint_checksums.DamagedCheckpointError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def step_dir(workdir: str, step: int) -> str:
  return os.path.join(checkpoint_dir(workdir), str(step))


def finalized_steps(checkpoint_root: str) -> list[int]:
  """Steps orbax finished writing under `checkpoint_root` (saves in progress have non-numeric names)."""
  if not os.path.isdir(checkpoint_root):
    return []
  return sorted(int(name) for name in os.listdir(checkpoint_root)
                if name.isdigit() and os.path.isdir(os.path.join(checkpoint_root, name, "state")))


def damaged_dir(workdir: str) -> str:
  """Where the trainer moves damaged steps, out of orbax's way (a new save may reuse their step number)."""
  return os.path.join(os.path.abspath(workdir), "damaged_checkpoints")


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
    # cleanup_tmp_directories: a save cut short by a kill leaves <step>.orbax-checkpoint-tmp-*, removed here.
    seal = (lambda: checkpoint_checksums.seal_finalized(checkpoint_dir(workdir))) if jax.process_index() == 0 else None
    # best_fn only makes orbax write each step's metrics to disk (the policy above decides what is kept): without
    # it a restarted run had no metrics for earlier steps, and BestN deleted the best one.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=lambda m: m[VAL_ACCURACY],
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True,
                                           async_options=ocp.AsyncOptions(post_finalization_callback=seal))
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: grain.DatasetIterator,
         metrics: dict[str, float] | None) -> None:
  """Starts an asynchronous save; `metrics` holds val_accuracy for best-checkpoint selection.

  None (a preemption save, not validated) keeps the step out of the best-N ranking; latest-N still keeps it.
  Process 0 first seals the steps finalized since the last save (see `seal_if_finalized`).
  """
  manager.wait_until_finished()  # What manager.save() does first anyway.
  if jax.process_index() == 0:
    checkpoint_checksums.seal_finalized(str(manager.directory))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator)), metrics=metrics)


def seal_if_finalized(workdir: str, step: int) -> int | None:
  """Seals `step` once orbax has renamed it into place; returns `step` until then, then None.

  Orbax's post-finalization callback runs before that rename, so it only seals older steps: without this, a
  run killed between two saves left its newest step, the one a resume reads, without checksums.
  Only `step`: right after the rename orbax's thread deletes the steps the retention policy drops, and sealing
  one of those from here wrote a checksums.json into it mid-deletion (its rmtree failed, the run stopped).
  """
  directory = step_dir(workdir, step)
  if not os.path.isdir(directory):
    return step
  if not checkpoint_checksums.is_sealed(directory):
    checkpoint_checksums.seal(directory)
  return None


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iterator: grain.DatasetIterator | None = None) -> Any:
  """Restores the state onto `abstract_state`'s shardings (any topology); moves the iterator in place."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def verify(workdir: str, step: int) -> bool:
  """True when step's files match their checksums, False (with a warning) when it has none; raises
  DamagedCheckpointError when they do not match."""
  seconds = checkpoint_checksums.verify(step_dir(workdir, step))
  if seconds is None:
    logging.warning("Checkpoint step %d in %s has no checksums (saved before fer_jax wrote them, or its run "
                    "stopped right after saving it): read without verification.", step, checkpoint_dir(workdir))
    return False
  logging.info("Checkpoint step %d verified against its checksums in %.3f s.", step, seconds)
  return True


def restore_newest_intact(manager: ocp.CheckpointManager, workdir: str, abstract_state: Any,
                          data_iterator: grain.DatasetIterator | None = None) -> tuple[Any, int] | None:
  """(state, step) of the newest step that verifies and restores; None when there is no step.

  A damaged step is named in a warning and moved to WORKDIR/damaged_checkpoints (by process 0), never used;
  when every step is damaged, DamagedCheckpointError. A step whose files match their checksums is intact: when
  it does not restore into `abstract_state` (the config changed the state's layout), WorkdirError, and nothing
  is moved.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  problems = []
  for step in steps:
    verified = False
    try:
      verified = verify(workdir, step)
      start = time.perf_counter()
      state = restore(manager, step, abstract_state, data_iterator)
      logging.info("Restored checkpoint step %d in %.2f s.", step, time.perf_counter() - start)
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many types for a damaged step)
      reason = checkpoint_checksums.describe(e)
      if verified:
        raise WorkdirError(
            f"Checkpoint step {step} in {checkpoint_dir(workdir)} is intact (its files match their checksums) "
            f"but does not restore into this run's training state ({reason}): the config differs from the one "
            "it was saved with in a field that shapes the state (ema_decay 0 or not, grad_clip_norm, "
            "weight_decay, schedule=plateau, the model), or the orbax/optax versions do. Rerun with the config "
            f"in {os.path.join(workdir, 'model.json')}, or train in a new --workdir.") from None
      problems.append(f"step {step}: {reason}")
      logging.warning("Checkpoint step %d in %s is damaged (%s): not used; it goes to %s.", step,
                      checkpoint_dir(workdir), reason, damaged_dir(workdir))
      if jax.process_index() == 0:
        os.makedirs(damaged_dir(workdir), exist_ok=True)
        target = os.path.join(damaged_dir(workdir), f"{step}.{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(step_dir(workdir, step), target)
      continue
    if problems:
      manager.reload()
      logging.warning("Resumed from step %d, the newest intact checkpoint (damaged: %s).", step, "; ".join(problems))
    return state, step
  if problems:
    raise DamagedCheckpointError(
        f"Every checkpoint in {checkpoint_dir(workdir)} is damaged ({'; '.join(problems)}); they were moved to "
        f"{damaged_dir(workdir)}. Rerun to start afresh, or restore a good copy of the workdir.")
  return None


class WorkdirError(OSError):
  """The workdir cannot hold checkpoints (read-only, or too little free space)."""


class DiskFullError(WorkdirError):
  """The disk filled up during training: a save failed, and some of its writes may still be running."""


def state_bytes(abstract_state: Any) -> int:
  """Bytes of one saved training state (parameters, optimizer state, batch-norm statistics)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state) if hasattr(x, "dtype"))


def check_workdir(workdir: str, checkpoint_bytes: int, keep: int) -> None:
  """Fails at start-up, before any compute, if checkpoints could not be written to `workdir`.

  Writes and removes a probe file (a read-only mount fails here, not at the first save) and compares free
  space with `keep` + 1 checkpoints (the one in flight) plus 10%, rather than fail mid-save.
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
  # Temporary directories of a save cut short (by a full disk, say) are deleted when the manager opens.
  free = shutil.disk_usage(workdir).free + _tmp_step_bytes(checkpoint_dir(workdir))
  if free < needed:
    raise WorkdirError(
        f"The workdir {workdir} has {free / 2**20:.1f} MiB free, but {keep + 1} checkpoints of "
        f"{checkpoint_bytes / 2**20:.1f} MiB (keep_checkpoints + keep_best_checkpoints + the one being written) "
        f"need about {needed / 2**20:.1f} MiB. Free some space, use another --workdir, or lower "
        "config.keep_checkpoints / config.keep_best_checkpoints.")


def _tmp_step_bytes(root: str) -> int:
  """Bytes held by <step>.orbax-checkpoint-tmp-* directories under WORKDIR/checkpoints."""
  total = 0
  if os.path.isdir(root):
    for name in os.listdir(root):
      if ".orbax-checkpoint-tmp" in name:
        for folder, _, files in os.walk(os.path.join(root, name)):
          total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
  return total


def is_disk_full(error: BaseException) -> bool:
  """Whether `error` or one it came from is ENOSPC (orbax and tensorstore may wrap it, or only say it)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def disk_full_error(workdir: str, checkpoint_bytes: int, keep: int) -> DiskFullError:
  """The one-line error for a disk that filled up during training."""
  needed = int(checkpoint_bytes * (keep + 1) * 1.1)
  return DiskFullError(
      f"The disk holding {os.path.abspath(workdir)} filled up while training (checkpoint saves, or event files): "
      f"{shutil.disk_usage(workdir).free / 2**20:.1f} MiB are free, and {keep + 1} checkpoints of "
      f"{checkpoint_bytes / 2**20:.1f} MiB need about {needed / 2**20:.1f} MiB. Free some space, then run the same "
      "command again to resume from the last finalized checkpoint.")
