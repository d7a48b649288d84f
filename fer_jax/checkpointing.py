"""Orbax checkpoints of the training state and the input iterator.

Layout: WORKDIR/checkpoints/<step>/{state,data}. `state` holds parameters,
batch-norm statistics, optimizer state and step; `data` the grain iterator's
position (one file per process), so a restart continues on exactly the next
batch. Saves are asynchronous; orbax writes each step into a temporary
directory and renames it when complete, so readers only ever see finalized steps.
"""

from __future__ import annotations

import os
from typing import Any

import grain
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
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator: grain.DatasetIterator,
         metrics: dict[str, float]) -> None:
  """Starts an asynchronous save; `metrics` must hold val_accuracy for best-checkpoint selection."""
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
