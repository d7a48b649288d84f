"""Which checkpoints the manager keeps: the latest N plus the best N by validation accuracy, across restarts."""

from __future__ import annotations

import grain
import jax.numpy as jnp
import ml_collections

from fer_jax import checkpointing


def retention_config(latest: int, best: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"keep_checkpoints": latest, "keep_best_checkpoints": best})


def save_steps(workdir: str, accuracies: dict[int, float | None]) -> list[int]:
  """Saves one tiny state per step with its val_accuracy (None: a preemption save); returns the steps kept."""
  manager = checkpointing.create_manager(workdir, retention_config(latest=1, best=1))
  iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
  for step, accuracy in accuracies.items():
    metrics = None if accuracy is None else {checkpointing.VAL_ACCURACY: accuracy}
    checkpointing.save(manager, step, {"w": jnp.full((2,), float(step))}, iterator, metrics=metrics)
  manager.wait_until_finished()
  kept = sorted(manager.all_steps())
  manager.close()
  return kept


def test_the_best_step_is_kept_beside_the_latest(tmp_path):
  assert save_steps(str(tmp_path), {1: 0.9, 2: 0.1, 3: 0.2}) == [1, 3]


def test_the_best_step_survives_a_restart(tmp_path):
  """A resumed run still knows the metrics of steps saved before it (orbax writes them only if asked)."""
  save_steps(str(tmp_path), {1: 0.9, 2: 0.1})
  assert save_steps(str(tmp_path), {3: 0.2, 4: 0.3}) == [1, 4]
  reader = checkpointing.create_manager(str(tmp_path), read_only=True)
  assert reader.metrics(1) == {checkpointing.VAL_ACCURACY: 0.9}


def test_a_preemption_save_is_kept_as_the_latest_but_not_ranked(tmp_path):
  assert save_steps(str(tmp_path), {1: 0.5, 2: 0.4, 3: None}) == [1, 3]
