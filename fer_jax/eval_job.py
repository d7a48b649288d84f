"""The separate evaluation job (`--mode=eval`): scores each new finalized checkpoint of a training workdir once.

Writes WORKDIR/eval/<split>/step_<N>/{metrics.json,confusion_matrix.png,sample_predictions.png}, TensorBoard
events, and evaluated.json: the steps scored, and those unreadable (damaged) with the reason, so a restarted job
never scores a step twice. It exits after the final training step, or after `eval.idle_timeout_s` without a new
checkpoint. docs/GUARANTEES.md ("The evaluation job") lists what it promises.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from fer_jax import checkpoint_checksums, checkpointing, config_schema, distributed, evaluation, model_factory
from fer_jax import parallel, tensorboard_writer, xla_cache
from fer_jax.data import builders, pipeline, stats


def eval_dir(workdir: str, split: str) -> str:
  return os.path.join(os.path.abspath(workdir), "eval", split)


def _load_done(path: str) -> tuple[set[int], dict[int, str]]:
  """(steps scored, {step: why it could not be read}) recorded in evaluated.json."""
  if not os.path.exists(path):
    return set(), {}
  with open(path) as f:
    record = json.load(f)
  return set(record["evaluated_steps"]), {int(k): v for k, v in record.get("unreadable_steps", {}).items()}


def _save_done(path: str, done: set[int], unreadable: dict[int, str]) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"evaluated_steps": sorted(done),
               "unreadable_steps": {str(k): v for k, v in sorted(unreadable.items())}}, f, indent=1)
  os.replace(tmp, path)


class CheckpointEvaluator:
  """Restores a checkpoint's state onto this machine's mesh and scores it with every configured view.

  Builds only what scoring needs: no training step is compiled and no CPU training kernel is loaded.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_schema.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
    self.config = config
    self.split = config.eval.split
    self.views = ["plain", *config_schema.tta_views(config)]
    self.info = builders.ensure_built_once(config)
    config_schema.check_splits(config, self.info, ("eval.split",))
    setup = model_factory.training_setup(config, self.info)
    self.total_steps = setup.total_steps
    mesh = parallel.create_mesh()
    self.abstract_state = setup.abstract_state(parallel.replicated(mesh))
    self.evaluator = evaluation.Evaluator(setup.model.apply, mesh, num_classes=self.info.num_classes,
                                          crop_size=config.data.augment.crop_size)

  def restore(self, manager: Any, workdir: str, step: int) -> dict[str, Any]:
    """The step's inference variables, its files verified first (DamagedCheckpointError when they differ)."""
    checkpointing.verify(workdir, step)
    return model_factory.model_variables(checkpointing.restore(manager, step, self.abstract_state))

  def evaluate(self, variables: dict[str, Any], step: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The step's metrics per view, and its images: the confusion matrix and a grid of sample predictions."""
    report: dict[str, Any] = {"step": step, "split": self.split, "dataset": self.config.data.name}
    names = list(self.info.class_names)
    for view in self.views:
      confusion, loss = self.evaluator.confusion(variables, self._batches(), view)
      report[view] = {"loss": loss, **evaluation.classification_metrics(confusion, names)}
    title = f"{self.config.data.name} {self.split}, step {step}: accuracy {report['plain']['accuracy']:.3f}"
    images, labels, predictions = self.evaluator.sample_predictions(variables, self._batches())
    if self.config.data.normalization == "standardize":  # Back to [0, 1] for display.
      mean, std = stats.normalization_stats(self.config)
      images = images * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return report, {
        "confusion_matrix": evaluation.confusion_matrix_image(np.asarray(report["plain"]["confusion_matrix"]),
                                                              names, title),
        "sample_predictions": evaluation.sample_grid_image(images, labels, predictions, names, title)}

  def _batches(self) -> Any:
    return pipeline.create_eval_dataset(self.config, self.split, process_index=jax.process_index(),
                                        process_count=jax.process_count())


def run(config: ml_collections.ConfigDict, workdir: str, *, idle_timeout_s: float | None = None) -> list[int]:
  """Evaluates new checkpoints until the final step is done or none came for the idle timeout; returns those."""
  idle_timeout_s = config.eval.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
  xla_cache.enable(config.compilation_cache_dir)  # The job's eval steps use flax's kernels: cacheable.
  evaluator = CheckpointEvaluator(config, workdir)
  out_dir = eval_dir(workdir, evaluator.split)
  os.makedirs(out_dir, exist_ok=True)
  done_path = os.path.join(out_dir, "evaluated.json")
  done, unreadable = _load_done(done_path)
  writer = tensorboard_writer.MetricWriter(out_dir, just_logging=jax.process_index() > 0)
  evaluated: list[int] = []
  last_progress = time.monotonic()
  manager = None
  announced = False
  while True:
    if manager is None and distributed.from_process_0(os.path.isdir(checkpointing.checkpoint_dir(workdir))):
      manager = checkpointing.create_manager(workdir, read_only=True)
    steps = []
    if manager is not None:
      manager.reload()
      steps = sorted(s for s in manager.all_steps() if s not in done and s not in unreadable)
    steps = distributed.from_process_0(steps)  # Every process scores the same steps (process 0's view).
    for step in steps:
      try:  # Only reading the checkpoint: a failure while scoring is the data's or the machine's, not the step's.
        variables = evaluator.restore(manager, workdir, step)
      except Exception as e:  # pylint: disable=broad-except  (orbax raises many types for a damaged step)
        if not os.path.isdir(checkpointing.step_dir(workdir, step)):  # Deleted by the trainer's retention policy.
          logging.warning("Skipping checkpoint %d: it was deleted before it could be read.", step)
          continue
        unreadable[step] = checkpoint_checksums.describe(e)
        logging.warning("Checkpoint step %d is damaged (%s): recorded as unreadable in %s; going on.", step,
                        unreadable[step], done_path)
      else:
        report, images = evaluator.evaluate(variables, step)
        scalars = {}
        for view in evaluator.views:
          suffix = "" if view == "plain" else f"_{view}"
          scalars.update({f"{name}{suffix}": report[view][name] for name in ("accuracy", "macro_f1", "loss")})
        scalars.update({f"f1/{name}": v["f1"] for name, v in report["plain"]["per_class"].items()})
        if jax.process_index() == 0:
          step_dir = os.path.join(out_dir, f"step_{step}")
          evaluation.write_report(step_dir, report, images)
          writer.write_scalars(step, scalars)
          writer.write_images(step, images)
          writer.flush()
          logging.info("Evaluated step %d on %s: %s -> %s", step, evaluator.split,
                       ", ".join(f"{k} {v:.4f}" for k, v in scalars.items() if "/" not in k), step_dir)
        done.add(step)
        evaluated.append(step)
      if jax.process_index() == 0:
        _save_done(done_path, done, unreadable)
      last_progress = time.monotonic()
    if evaluator.total_steps in done or evaluator.total_steps in unreadable:
      break
    if distributed.from_process_0(time.monotonic() - last_progress > idle_timeout_s):
      logging.info("No new checkpoint in %.0f s; the evaluation job stops.", idle_timeout_s)
      break
    if not announced:
      logging.info("Waiting for new checkpoints in %s; the job stops once step %d is evaluated, or after %.0f s "
                   "without a new one (eval.idle_timeout_s).", checkpointing.checkpoint_dir(workdir),
                   evaluator.total_steps, idle_timeout_s)
      announced = True
    time.sleep(config.eval.poll_every_s)
  writer.close()
  return evaluated
