"""Training: a jit-compiled, data-parallel step over a device mesh, with validation and checkpoints.

Reads top to bottom: data -> model and optimizer -> state (fresh or resumed) ->
jitted step -> loop with logging, validation and asynchronous checkpoints.
"""

import functools
import json
import math
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from flax.training import train_state

from fer_jax import checkpoint_checksums, checkpointing, config_schema, distributed, evaluation, im2col_conv
from fer_jax import input_pipeline, models, onednn_conv, optimizers, parallel, preemption, progress_window
from fer_jax import tensorboard_writer, workdir_guard


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step, plus batch-norm statistics (empty for models without BN)."""
  batch_stats: Any = None


@flax.struct.dataclass  # clu reads these annotations at runtime: no `from __future__ import annotations` here.
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Accuracy


def create_model(config: ml_collections.ConfigDict, num_classes: int, platform: str | None = None) -> nn.Module:
  """The config's model, with the training convolutions that suit `platform` (default: this backend's)."""
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  return models.create_model(config.model, num_classes=num_classes, dtype=dtype,
                             conv=conv_function(config, platform), **config.model_kwargs.to_dict())


def conv_function(config: ml_collections.ConfigDict, platform: str | None = None) -> Any:
  """What the models' convolutions call when training; None is XLA's own.

  `auto` on CPU: oneDNN's kernels (onednn_conv.py) on a single device where the
  library loads, else im2col matrix products (im2col_conv.py). oneDNN runs as
  XLA FFI custom calls, which have no sharding rule: on a multi-device mesh XLA
  would gather their inputs onto every device, so meshes use im2col.
  Elsewhere (GPU, TPU): XLA's.
  """
  impl = config.get("conv_impl", "auto")  # Model cards written before the field existed lack it.
  conv = _pick_conv(impl, platform or jax.default_backend())
  logging.info("Training convolutions (config.conv_impl=%s): %s", impl, "XLA's" if conv is None else conv.__module__)
  return conv


def _pick_conv(impl: str, platform: str) -> Any:
  if impl == "onednn":
    onednn_conv.prepare()  # Raises an error that says what is missing.
    return onednn_conv.conv_general_dilated
  if impl == "auto" and platform == "cpu":
    if jax.device_count() == 1:
      try:
        onednn_conv.prepare()
        return onednn_conv.conv_general_dilated
      except onednn_conv.OneDnnUnavailable as e:
        logging.warning("Training convolutions use im2col, slower than oneDNN: %s", e)
    return im2col_conv.conv_general_dilated
  if impl == "im2col":
    return im2col_conv.conv_general_dilated
  return None


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...],
                       seed: int) -> TrainState:
  variables = model.init({"params": jax.random.key(seed)}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}))


def model_variables(state: TrainState) -> dict[str, Any]:
  """What `model.apply` needs for inference."""
  return {"params": state.params, "batch_stats": state.batch_stats} if state.batch_stats else {"params": state.params}


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, *, label_smoothing: float,
                  class_weights: jnp.ndarray | None) -> jnp.ndarray:
  """Mean (optionally class-weighted, as in PyTorch) softmax cross-entropy with label smoothing."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  losses = optax.softmax_cross_entropy(logits, targets)
  if class_weights is None:
    return jnp.mean(losses)
  weights = class_weights[labels]
  return jnp.sum(losses * weights) / jnp.sum(weights)


def train_step(state: TrainState, batch: dict[str, jnp.ndarray], *, base_key: jax.Array,
               label_smoothing: float, class_weights: jnp.ndarray | None,
               skip_nonfinite: bool = False) -> tuple[TrainState, TrainMetrics, jnp.ndarray]:
  """One optimizer step on a global batch; dropout randomness is fold_in(seed, step).

  Also returns whether the loss and every gradient were finite. With
  `skip_nonfinite`, a non-finite step keeps parameters, optimizer state and
  batch-norm statistics unchanged (its batch is still consumed, the step still counts).
  """
  dropout_key = jax.random.fold_in(base_key, state.step)
  has_bn = bool(state.batch_stats)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats} if has_bn else {"params": params}
    logits, updates = state.apply_fn(variables, batch["image"], train=True, rngs={"dropout": dropout_key},
                                     mutable=["batch_stats"] if has_bn else [])
    loss = cross_entropy(logits, batch["label"], label_smoothing=label_smoothing, class_weights=class_weights)
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  finite = jnp.isfinite(loss)
  for g in jax.tree.leaves(grads):
    finite &= jnp.all(jnp.isfinite(g))
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=loss)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
                            opt_state=opt_state, batch_stats=updates["batch_stats"] if has_bn else state.batch_stats)
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = new_state.replace(params=keep(new_state.params, state.params),
                                  opt_state=keep(new_state.opt_state, state.opt_state),
                                  batch_stats=keep(new_state.batch_stats, state.batch_stats))
  metrics = TrainMetrics.single_from_model_output(loss=loss, logits=logits, labels=batch["label"])
  return new_state, metrics, finite


class NonFiniteError(RuntimeError):
  """A NaN or Inf loss or gradient with config.nonfinite='stop'."""


MODEL_CARD = "model.json"


def write_model_card(config: ml_collections.ConfigDict, workdir: str, info: Any) -> dict[str, Any]:
  """WORKDIR/model.json: what inference needs to rebuild the model and preprocess faces like training.

  Prediction and export read it instead of the dataset, which may not exist on
  the machine that serves the model.
  """
  mean, std = (input_pipeline.normalization_stats(config) if config.data.normalization == "standardize"
               else (None, None))
  card = {
      "dataset": config.data.name, "dataset_config": config.data.config or None,
      "class_names": list(info.class_names), "num_classes": info.num_classes,
      "image_shape": list(info.eval_image_shape),  # full-size input, as stored in the dataset
      "crop_size": int(config.data.augment.crop_size),  # model input side when > 0 (centre crop)
      "normalization": {"kind": config.data.normalization, "mean": mean, "std": std},
      # Margin the builder added around each labelled face box (ExpW), so prediction crops alike.
      "face_margin": getattr(input_pipeline.prepared_builder(config).builder_config, "margin", None),
      "config": json.loads(config.to_json_best_effort()),
  }
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, f".{MODEL_CARD}.tmp")
    with open(tmp, "w") as f:
      json.dump(card, f, indent=2)
    os.replace(tmp, os.path.join(workdir, MODEL_CARD))
  return card


def balanced_class_weights(label_counts: np.ndarray) -> np.ndarray:
  """Inverse-frequency weights normalised to mean 1 over present classes (absent classes get 0)."""
  counts = np.asarray(label_counts, np.float64)
  weights = np.divide(counts.sum() / max((counts > 0).sum(), 1), counts, out=np.zeros_like(counts), where=counts > 0)
  return weights.astype(np.float32)


def check_splits(config: ml_collections.ConfigDict, info: Any) -> None:
  """ConfigError before any compute when the split to train on or to validate on is missing or empty."""
  have = ", ".join(f"{k} ({n})" for k, n in sorted(info.num_examples.items())) or "none"
  for field in ("train_split", "eval_split"):
    split = config.data[field]
    if info.num_examples.get(split, 0) <= 0:
      state = "is empty" if split in info.num_examples else "does not exist"
      raise config_schema.ConfigError(
          f"config.data.{field}={split!r}: that split of {info.name} in {info.data_dir} {state}; its splits are "
          f"{have}. Set --config.data.{field} to one of them, or rebuild the dataset with that split.")


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  if config.smoke_test:
    return 6
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))


class Trainer:
  """Everything a run needs, built once from the config; `train()` runs the loop."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_schema.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
    self.config = config
    self.workdir = workdir
    self.mesh = parallel.create_mesh()
    distributed.ensure_built_once(config)  # process 0 builds, the others wait
    self.info = input_pipeline.dataset_info(config)
    check_splits(config, self.info)
    self.steps_per_epoch = max(1, self.info.num_examples[config.data.train_split] // config.batch_size)
    self.total_steps = total_train_steps(config, self.steps_per_epoch)
    self.model = create_model(config, self.info.num_classes)
    self.schedule = optimizers.create_schedule(config, self.steps_per_epoch, self.total_steps)
    tx = optimizers.create_optimizer(config, self.schedule, self.steps_per_epoch)
    self.replicated = parallel.replicated(self.mesh)
    init = functools.partial(create_train_state, self.model, tx, self.info.image_shape, config.seed)
    self.abstract_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), jax.eval_shape(init))
    self._init_state = jax.jit(init, out_shardings=self.replicated)
    class_weights = None
    if config.class_weights == "balanced":
      class_weights = jnp.asarray(balanced_class_weights(input_pipeline.label_counts(config)))
    # (state, metrics, finite): the loop reads `finite` for the NaN policy; train_step() drops it.
    self.checked_train_step = jax.jit(
        functools.partial(train_step, base_key=jax.random.key(config.seed), label_smoothing=config.label_smoothing,
                          class_weights=class_weights, skip_nonfinite=config.nonfinite == "skip"),
        in_shardings=(self.replicated, parallel.data_sharding(self.mesh)),
        out_shardings=(self.replicated, self.replicated, self.replicated), donate_argnums=0)
    self.preempted_at_step: int | None = None  # Set by train() when it stopped on SIGTERM.
    self.restored_step: int | None = None  # The checkpoint step train() resumed from.
    self.evaluator = evaluation.Evaluator(self.model.apply, self.mesh, num_classes=self.info.num_classes,
                                          crop_size=config.data.augment.crop_size)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, TrainMetrics]:
    """One jitted step (state donated), for callers that drive their own loop."""
    new_state, metrics, _ = self.checked_train_step(state, batch)
    return new_state, metrics

  def validate(self, state: TrainState) -> dict[str, float]:
    eval_ds = input_pipeline.create_eval_dataset(self.config, self.config.data.eval_split,
                                                 process_index=jax.process_index(),
                                                 process_count=jax.process_count())
    confusion, loss = self.evaluator.confusion(model_variables(state), eval_ds)
    accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    return {"val_loss": loss, checkpointing.VAL_ACCURACY: accuracy}

  def _check_finite(self, pending: list[tuple[int, jax.Array]], manager: Any) -> int:
    """How many of the `pending` (step, finite) flags were non-finite; with nonfinite='stop' raises instead.

    Read in batches (at log, validation and save steps), not every step, so the
    device never waits on the host; a non-finite state is never saved.
    """
    if not pending:
      return 0
    flags = jax.device_get([f for _, f in pending])
    bad = [s for (s, _), ok in zip(pending, flags) if not ok]
    pending.clear()
    if bad and self.restored_step is not None and bad[0] == self.restored_step + 1:
      raise NonFiniteError(
          f"Step {bad[0]}, the first after restoring checkpoint step {self.restored_step}: the loss or a gradient "
          f"is NaN or Inf, so that checkpoint may be damaged. Move "
          f"{checkpointing.step_dir(self.workdir, self.restored_step)} aside to resume from an older step, or "
          "check the input data.")
    if bad and self.config.nonfinite == "stop":
      manager.wait_until_finished()
      latest = manager.latest_step()
      kept = (f"the last good checkpoint, step {latest}, is kept in {checkpointing.checkpoint_dir(self.workdir)}"
              if latest is not None else "no checkpoint was saved before it")
      raise NonFiniteError(
          f"Step {bad[0]}: the loss or a gradient is NaN or Inf; training stopped and {kept}. Lower "
          "config.learning_rate, set config.grad_clip_norm, check the input data, or set "
          "config.nonfinite='skip' to skip such updates.")
    for s in bad:
      logging.warning("Step %d: non-finite loss or gradient; the update was skipped (config.nonfinite='skip').", s)
    return len(bad)

  def _restore_or_init(self, manager: Any, train_iter: Any, writer: Any) -> TrainState:
    """The latest checkpoint's state (the iterator moved to its position), or a fresh one."""
    config = self.config
    restored = checkpointing.restore_newest_intact(manager, self.workdir, self.abstract_state, train_iter)
    if restored is not None:
      state, self.restored_step = restored
      logging.info("Resumed from %s at step %d.", checkpointing.checkpoint_dir(self.workdir), self.restored_step)
      return state
    state = self._init_state()
    writer.write_hparams(config.to_dict())
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("Model %s: %s parameters; %d steps (%d per epoch) at global batch %d on %d device(s).",
                 config.model, f"{num_params:,}", self.total_steps, self.steps_per_epoch, config.batch_size,
                 jax.device_count())
    return state

  def train(self) -> dict[str, float]:
    """Trains to `total_steps`, resuming from the latest checkpoint in the workdir; returns last metrics.

    Before anything is written: the workdir's recorded setup must match this
    config, it must be writable with room for the checkpoints, and no other
    trainer may hold it (workdir_guard.py). On SIGTERM it finishes the current
    step, saves a checkpoint at that step and returns early with
    `self.preempted_at_step` set.
    """
    config, workdir = self.config, self.workdir
    setup = workdir_guard.setup_of(config, image_shape=self.info.image_shape, process_count=jax.process_count())
    workdir_guard.check_setup(workdir, setup)
    checkpointing.check_workdir(workdir, checkpointing.state_bytes(self.abstract_state),
                                config.keep_checkpoints + config.keep_best_checkpoints)
    with workdir_guard.TrainerLock(workdir, enabled=jax.process_index() == 0):
      if jax.process_index() == 0:
        workdir_guard.record_setup(workdir, setup)
      try:
        return self._train_locked()
      except Exception as e:  # pylint: disable=broad-except
        if checkpointing.is_disk_full(e):
          raise checkpointing.disk_full_error(workdir, checkpointing.state_bytes(self.abstract_state),
                                              config.keep_checkpoints + config.keep_best_checkpoints) from None
        raise

  def _train_locked(self) -> dict[str, float]:
    config, workdir = self.config, self.workdir
    writer = tensorboard_writer.create_writer(workdir, just_logging=jax.process_index() > 0)
    manager = checkpointing.create_manager(workdir, config)
    train_iter = iter(input_pipeline.create_train_dataset(
        config, process_index=jax.process_index(), process_count=jax.process_count()))
    state = self._restore_or_init(manager, train_iter, writer)
    write_model_card(config, workdir, self.info)  # Only once the state was built or restored.
    step = int(jax.device_get(state.step))

    last: dict[str, float] = {}
    progress = progress_window.ProgressWindow(self.total_steps, self.steps_per_epoch, config.batch_size)
    pending_finite: list[tuple[int, jax.Array]] = []
    skipped = 0
    self.preempted_at_step = None
    try:
      with preemption.preemption_notice() as notice:
        while step < self.total_steps:
          batch = parallel.global_batch(next(train_iter), self.mesh)
          state, step_metrics, finite = self.checked_train_step(state, batch)
          step += 1
          progress.add(step_metrics)
          pending_finite.append((step, finite))
          is_last = step == self.total_steps
          if step % config.log_every_steps == 0 or is_last:
            skipped += self._check_finite(pending_finite, manager)
            scale = float(jax.device_get(optimizers.plateau_scale(state.opt_state)))
            last = progress.report(step, float(self.schedule(step)) * scale)
            if config.nonfinite == "skip":
              last["nonfinite_skipped"] = float(skipped)  # In this window.
              skipped = 0
            writer.write_scalars(step, last)
          # One process's clock or signal must not split the processes: multi-process runs follow process 0.
          preempt = notice["signal"] is not None
          if jax.process_count() > 1:
            preempt = (distributed.from_process_0(preempt) if step % config.log_every_steps == 0 or is_last
                       else False)
          save_now = step % config.checkpoint_every_steps == 0 or is_last
          if step % config.eval_every_steps == 0 or save_now or preempt:
            skipped += self._check_finite(pending_finite, manager)  # Never validate or save a NaN state.
          if step % config.eval_every_steps == 0 or save_now:
            val = self.validate(state)
            writer.write_scalars(step, val)
            last.update(val)
            logging.info("step %d validation (%s): loss %.4f accuracy %.4f", step, config.data.eval_split,
                         val["val_loss"], val[checkpointing.VAL_ACCURACY])
            progress.restart_clock()  # Validation time is not training throughput.
          if save_now:
            checkpointing.save(manager, step, state, train_iter, metrics=val)
          elif preempt:  # Not validated: kept by latest-N, left out of the best-N ranking.
            checkpointing.save(manager, step, state, train_iter, metrics=None)
          if preempt:
            manager.wait_until_finished()
            self.preempted_at_step = step
            logging.warning("Preempted (%s): saved step %d in %s; run the same command again to resume.",
                            notice["signal"], step, checkpointing.checkpoint_dir(workdir))
            break
    finally:
      manager.wait_until_finished()  # A save already started (of a checked, finite state) completes.
      if jax.process_index() == 0:  # Normally done right after each save finalizes; this catches the last.
        checkpoint_checksums.seal_finalized(checkpointing.checkpoint_dir(workdir))
      manager.close()
      writer.flush()
      writer.close()
    return last


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Builds the trainer from `config` and trains in `workdir` (resuming if it holds checkpoints)."""
  return Trainer(config, workdir).train()
