"""Training: a jit-compiled, data-parallel step, and the loop that steps, logs, validates and saves checkpoints."""

import collections
import functools
import itertools
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics

from fer_jax import checkpoint_checksums, checkpointing, config_schema, distributed, evaluation, kernels, losses
from fer_jax import model_card, model_factory, optimizers, parallel, preemption, progress_window, startup_timer
from fer_jax import tensorboard_writer, validation, workdir_guard, xla_cache
from fer_jax.data import builders, pipeline, stats
from fer_jax.model_factory import TrainState


@flax.struct.dataclass  # clu reads these annotations at runtime: no `from __future__ import annotations` here.
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Accuracy


# Folded into the seed's key for mixup's draws. Dropout's key is fold_in(seed, step), so the id must lie beyond any
# step a run reaches: with 1 the mixup base would be step 1's dropout key.
MIXUP_STREAM = 0x6D697875  # "mixu" in ASCII, about 1.8e9.


def train_step(state: TrainState, batch: dict[str, jnp.ndarray], *, base_key: jax.Array,
               label_smoothing: float, class_weights: jnp.ndarray | None,
               skip_nonfinite: bool = False, ema_decay: float = 0.0, late_ema: tuple[float, int] = (0.0, 0),
               mixup_alpha: float = 0.0, mixup_from_step: int = 0) -> tuple[TrainState, TrainMetrics, jnp.ndarray]:
  """One optimizer step on a global batch (dropout randomness is fold_in(seed, step)), and whether it was finite.

  With `mixup_alpha` > 0 a step from `mixup_from_step` on trains on losses.mixup's blend of the batch (its lam
  drawn from fold_in(fold_in(seed, MIXUP_STREAM), step)); its accuracy metric still counts the unblended labels.

  With `skip_nonfinite`, a non-finite step keeps parameters, optimizer state, batch-norm statistics and the
  moving average unchanged (its batch is still consumed, the step still counts). A state with `ema_params`
  moves them toward the new parameters by model_factory.ema_decay_at(ema_decay, step, *late_ema).
  """
  dropout_key = jax.random.fold_in(base_key, state.step)
  has_bn = bool(state.batch_stats)
  images, mix = batch["image"], None
  if mixup_alpha > 0:
    mixup_key = jax.random.fold_in(jax.random.fold_in(base_key, MIXUP_STREAM), state.step)
    images, mix = losses.mixup(images, batch["label"], mixup_key, mixup_alpha, on=state.step >= mixup_from_step)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats} if has_bn else {"params": params}
    logits, updates = state.apply_fn(variables, images, train=True, rngs={"dropout": dropout_key},
                                     mutable=["batch_stats"] if has_bn else [])
    loss = losses.cross_entropy(logits, batch["label"], label_smoothing=label_smoothing,
                                class_weights=class_weights, mix=mix)
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  finite = jnp.isfinite(loss)
  for g in jax.tree.leaves(grads):
    finite &= jnp.all(jnp.isfinite(g))
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=loss)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
                            opt_state=opt_state, batch_stats=updates["batch_stats"] if has_bn else state.batch_stats)
  if state.ema_params:
    decay = model_factory.ema_decay_at(ema_decay, state.step, *late_ema)
    new_state = new_state.replace(ema_params=optax.incremental_update(new_state.params, state.ema_params, 1.0 - decay))
  if skip_nonfinite:
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = new_state.replace(params=keep(new_state.params, state.params),
                                  opt_state=keep(new_state.opt_state, state.opt_state),
                                  batch_stats=keep(new_state.batch_stats, state.batch_stats),
                                  ema_params=keep(new_state.ema_params, state.ema_params))
  metrics = TrainMetrics.single_from_model_output(loss=loss, logits=logits, labels=batch["label"])
  return new_state, metrics, finite


class NonFiniteError(RuntimeError):
  """A NaN or Inf loss or gradient with config.nonfinite='stop'."""


def balanced_class_weights(label_counts: np.ndarray) -> np.ndarray:
  """Inverse-frequency weights normalised to mean 1 over present classes (absent classes get 0)."""
  counts = np.asarray(label_counts, np.float64)
  weights = np.divide(counts.sum() / max((counts > 0).sum(), 1), counts, out=np.zeros_like(counts), where=counts > 0)
  return weights.astype(np.float32)


# After dispatching step k the loop waits for step k - MAX_STEPS_IN_FLIGHT: the device always has work queued,
# yet a SIGTERM meets at most this many unfinished steps (instead of all the loop raced ahead to).
MAX_STEPS_IN_FLIGHT = 2


def itstime(step: int, every_steps: int, total_steps: int) -> bool:
  """Whether a periodic action (log, validate, save) is due: every `every_steps` steps and at the last step."""
  return step % every_steps == 0 or step == total_steps


def bakes_addresses(model_kernels: kernels.Kernels) -> bool:
  """Whether the step calls oneDNN's FFI kernels, whose attributes hold pointers valid in this process only:
  float32 (a partial over onednn_conv) or bfloat16 (bf16_conv.Conv, which calls them too)."""
  conv = model_kernels.conv
  if isinstance(conv, type) and issubclass(conv, kernels.bf16_conv.Conv):
    return True
  return getattr(conv, "keywords", {}).get("conv_general_dilated") is kernels.onednn_conv.conv_general_dilated


class Trainer:
  """Everything a run needs, built once from the config; `train()` runs the loop."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.startup = startup_timer.StartupTimer()  # Its line is logged at the first step.
    with self.startup.phase("backend init"):
      jax.devices()
    config_schema.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
    self.config = config
    self.workdir = workdir
    self.mesh = parallel.create_mesh()
    with self.startup.phase("dataset open"):
      builders.ensure_built_once(config)  # process 0 builds, the others wait
      self.info = builders.dataset_info(config)
      config_schema.check_splits(config, self.info, ("data.train_split", "data.eval_split"))
    with self.startup.phase("model setup"):
      self._set_up_model(config)

  def _set_up_model(self, config: ml_collections.ConfigDict) -> None:
    model_kernels = kernels.select(config)
    logging.info("Training kernels: %s", model_kernels.reason)
    xla_cache.enable(config.compilation_cache_dir)  # Before anything compiles.
    setup = model_factory.training_setup(config, self.info, model_kernels)
    self.model, self.schedule = setup.model, setup.schedule
    self.steps_per_epoch, self.total_steps = setup.steps_per_epoch, setup.total_steps
    self.replicated = parallel.replicated(self.mesh)
    self.abstract_state = setup.abstract_state(self.replicated)
    self._init_state, self._cache_after_init = self._state_initializer(setup, bakes_addresses(model_kernels))
    balanced = config.class_weights == "balanced"
    class_weights = jnp.asarray(balanced_class_weights(stats.label_counts(config))) if balanced else None
    # (state, metrics, finite): the loop reads `finite` for the NaN policy; train_step() drops it.
    self.checked_train_step = jax.jit(
        functools.partial(train_step, base_key=jax.random.key(config.seed), label_smoothing=config.label_smoothing,
                          class_weights=class_weights, skip_nonfinite=config.nonfinite == "skip",
                          ema_decay=config.ema_decay, mixup_alpha=config.mixup_alpha,
                          late_ema=(config.late_ema_decay, int(config.late_ema_from_epoch * self.steps_per_epoch)),
                          mixup_from_step=int(config.mixup_from_epoch * self.steps_per_epoch)),
        in_shardings=(self.replicated, parallel.data_sharding(self.mesh)),
        out_shardings=(self.replicated, self.replicated, self.replicated), donate_argnums=0)
    self.preempted_at_step: int | None = None  # Set by train() when it stopped on SIGTERM.
    self.restored_step: int | None = None  # The checkpoint step train() resumed from.
    self.evaluator = evaluation.Evaluator(self.model.apply, self.mesh, num_classes=self.info.num_classes,
                                          crop_size=config.data.augment.crop_size)
    self.validator = validation.Validator(config, self.evaluator, self.info.eval_image_shape)

  def _state_initializer(self, setup: model_factory.TrainingSetup,
                         onednn: bool) -> tuple[Callable[[], TrainState], str]:
    """The jitted state init, and the compilation cache setting for what compiles after it.

    On oneDNN's kernels the state is built with flax's (the same parameters, bitwise): oneDNN's put this
    process's addresses into a program, so no later run could load it from the persistent cache. For the same
    reason such runs turn the cache off once the state is built.
    """
    plain, cache_after = setup, self.config.compilation_cache_dir
    self.startup.cache_dir = xla_cache.current_dir()
    if onednn:  # The startup line says "(state init only)"; docs/GUARANTEES.md says why.
      plain, cache_after = model_factory.training_setup(self.config, self.info), ""
      self.startup.cache_scope = "state init only"

    def init_state() -> TrainState:
      return plain.init().replace(apply_fn=setup.model.apply, tx=setup.tx)

    return jax.jit(init_state, out_shardings=self.replicated), cache_after

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, TrainMetrics]:
    """One jitted step (state donated), for callers that drive their own loop."""
    new_state, metrics, _ = self.checked_train_step(state, batch)
    return new_state, metrics

  def validate(self, state: TrainState, stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
    """Validation loss and accuracy; None when `stop()` became true (single-process runs only) midway.

    With a moving average (config.ema_decay > 0) these are the average's, and unless
    config.validate_raw_parameters is off the raw parameters' follow as raw_val_loss and raw_val_accuracy, so
    a run shows what the average buys.
    """
    stop = stop if jax.process_count() == 1 else None
    val = self.validator.run(model_factory.model_variables(state), stop=stop)
    if val is None or not state.ema_params or not self.config.validate_raw_parameters:
      return val
    raw = self.validator.run(model_factory.model_variables(state, raw=True), stop=stop)
    return None if raw is None else {**val, **{f"raw_{k}": v for k, v in raw.items()}}

  def _check_finite(self, pending: list[tuple[int, jax.Array]], manager: Any) -> int:
    """How many of the `pending` (step, finite) flags were non-finite; with nonfinite='stop' raises instead.

    Read at log, validation and save steps, not every step, so the device never waits on the host.
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

  def _preempt_requested(self, notice: dict[str, Any], step: int) -> bool:
    """A SIGTERM arrived; multi-process runs ask every process at log steps (to any, all stop together there)."""
    if jax.process_count() == 1:
      return notice["signal"] is not None
    return itstime(step, self.config.log_every_steps, self.total_steps) and distributed.any_process(
        notice["signal"] is not None)

  def _restore_or_init(self, manager: Any, train_iter: Any, writer: Any) -> TrainState:
    """The latest checkpoint's state (the iterator moved to its position), or a fresh one."""
    config = self.config
    start = time.perf_counter()
    restored = checkpointing.restore_newest_intact(manager, self.workdir, self.abstract_state, train_iter)
    self.startup.add("checkpoint restore" if restored is not None else "checkpoint search", time.perf_counter() - start)
    if restored is not None:
      xla_cache.enable(self._cache_after_init)
      state, self.restored_step = restored
      logging.info("Resumed from %s at step %d.", checkpointing.checkpoint_dir(self.workdir), self.restored_step)
      return state
    with self.startup.phase("state init"):
      state = jax.block_until_ready(self._init_state())
    xla_cache.enable(self._cache_after_init)
    writer.write_hparams(config.to_dict())
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("Model %s: %s parameters; %d steps (%d per epoch) at global batch %d on %d device(s).",
                 config.model, f"{num_params:,}", self.total_steps, self.steps_per_epoch, config.batch_size,
                 jax.device_count())
    return state

  def train(self) -> dict[str, float]:
    """Trains to `total_steps`, resuming from the latest checkpoint in the workdir; returns last metrics.

    First checks the workdir (its recorded setup, free space, no other trainer). On SIGTERM it saves the
    current step and returns early with `self.preempted_at_step` set.
    """
    config, workdir = self.config, self.workdir
    with self.startup.phase("workdir checks"):
      setup = workdir_guard.setup_of(config, image_shape=self.info.image_shape, process_count=jax.process_count(),
                                    abstract_state=self.abstract_state)
      workdir_guard.check_setup(workdir, setup)
      size = checkpointing.state_bytes(self.abstract_state)
      keep = config.keep_checkpoints + config.keep_best_checkpoints
      checkpointing.check_workdir(workdir, size, keep)
    with workdir_guard.TrainerLock(workdir, enabled=jax.process_index() == 0):
      if jax.process_index() == 0:
        workdir_guard.record_setup(workdir, setup)
      try:
        return self._train_locked()
      except Exception as e:  # pylint: disable=broad-except
        if checkpointing.is_disk_full(e):
          raise checkpointing.disk_full_error(workdir, size, keep) from None
        raise

  def _compile_for_first_batch(self, state: TrainState, train_iter: Any) -> Iterator[dict[str, jax.Array]]:
    """Every global batch, the first one fetched now and the train step compiled for it (each phase timed)."""
    with self.startup.phase("input pipeline first batch"):
      first = parallel.global_batch(next(train_iter), self.mesh)
    with self.startup.phase("train-step compile"):  # The call below then finds it in jit's cache.
      self.checked_train_step.lower(state, first).compile()
    return itertools.chain([first], (parallel.global_batch(b, self.mesh) for b in train_iter))

  def _first_step_done(self, finite: jax.Array, dispatched: float) -> None:
    """Logs the startup line once the first step's result is ready; starts compiling the eval step meanwhile."""
    finite.block_until_ready()
    self.startup.add("first step", time.perf_counter() - dispatched)
    self.startup.log()
    self.validator.compile_in_background(model_factory.model_variables(self.abstract_state))

  def _train_locked(self) -> dict[str, float]:
    config, workdir = self.config, self.workdir
    with self.startup.phase("workdir checks"):
      writer = tensorboard_writer.MetricWriter(workdir, just_logging=jax.process_index() > 0)
      manager = checkpointing.create_manager(workdir, config)
    with self.startup.phase("dataset open"):
      train_iter = iter(pipeline.create_train_dataset(
          config, process_index=jax.process_index(), process_count=jax.process_count()))
    try:  # From here on, every way out closes grain's workers first (a failed first batch included).
      state = self._restore_or_init(manager, train_iter, writer)
      if jax.process_index() == 0:
        model_card.write(config, workdir, self.info)  # Only once the state was built or restored.
      step = int(jax.device_get(state.step))
      batches = self._compile_for_first_batch(state, train_iter) if step < self.total_steps else iter(())

      last: dict[str, float] = {}
      progress = progress_window.ProgressWindow(self.total_steps, self.steps_per_epoch, config.batch_size)
      pending_finite: list[tuple[int, jax.Array]] = []
      in_flight: collections.deque[jax.Array] = collections.deque()
      skipped = 0
      unsealed: int | None = None  # The last step saved, until it is sealed.
      self.preempted_at_step = None
      with preemption.preemption_notice() as notice:
        signalled = lambda: notice["signal"] is not None
        while step < self.total_steps:
          dispatched = time.perf_counter()
          state, step_metrics, finite = self.checked_train_step(state, next(batches))
          step += 1
          if unsealed is not None and jax.process_index() == 0:
            unsealed = checkpointing.seal_if_finalized(workdir, unsealed)
          progress.add(step_metrics)
          pending_finite.append((step, finite))
          in_flight.append(finite)
          if not self.startup.logged:
            self._first_step_done(finite, dispatched)
          while len(in_flight) > MAX_STEPS_IN_FLIGHT:
            in_flight.popleft().block_until_ready()
          if itstime(step, config.log_every_steps, self.total_steps):
            skipped += self._check_finite(pending_finite, manager)
            # The rate of this step's update: optax counts updates from 0, so step k's is schedule(k - 1).
            learning_rate = float(self.schedule(step - 1)) * float(jax.device_get(
                optimizers.plateau_scale(state.opt_state)))
            last = progress.report(step, learning_rate)
            if config.nonfinite == "skip":
              last["nonfinite_skipped"] = float(skipped)  # In this window.
              skipped = 0
            writer.write_scalars(step, last)
          preempt = self._preempt_requested(notice, step)
          save = itstime(step, config.checkpoint_every_steps, self.total_steps)
          validate = save or itstime(step, config.eval_every_steps, self.total_steps)
          if validate or preempt:
            skipped += self._check_finite(pending_finite, manager)  # Never validate or save a NaN state.
          with progress.excluded():  # Validation time is not training throughput.
            val = self.validate(state, stop=signalled) if validate and not preempt else None
          if val is not None:
            writer.write_scalars(step, val)
            last.update(val)
            logging.info("step %d validation (%s%s): loss %.4f accuracy %.4f%s", step, config.data.eval_split,
                         "" if config.validation_view == "plain" else f", {config.validation_view} TTA",
                         val["val_loss"], val[checkpointing.VAL_ACCURACY],
                         f" (moving average; raw parameters {val['raw_val_accuracy']:.4f})" if "raw_val_accuracy"
                         in val else "")
          preempt = preempt or (validate and val is None)  # A SIGTERM cut the validation short.
          if save or preempt:  # A preemption save is not validated: kept by latest-N, not ranked among the best.
            checkpointing.save(manager, step, state, train_iter, metrics=val if save and not preempt else None)
            unsealed = step
          if preempt:
            manager.wait_until_finished()
            self.preempted_at_step = step
            logging.warning("Preempted (%s): saved step %d in %s; run the same command again to resume.",
                            notice["signal"], step, checkpointing.checkpoint_dir(workdir))
            break
    finally:
      try:
        manager.wait_until_finished()  # A save already started (of a checked, finite state) completes.
        if jax.process_index() == 0:  # Normally done right after each save finalizes; this catches the last.
          checkpoint_checksums.seal_finalized(checkpointing.checkpoint_dir(workdir))
      finally:  # Also when that save failed (a full disk): no reader thread may outlive the run.
        self._close(train_iter, manager, writer)
    if step == self.total_steps and self.preempted_at_step is None:
      logging.info("Training done: step %d saved in %s.", step, checkpointing.checkpoint_dir(workdir))
    return last

  def _close(self, train_iter: Any, manager: Any, writer: Any) -> None:
    """Stops what could keep the process alive after training: the eval compile, grain's workers, orbax."""
    self.validator.close()
    if hasattr(train_iter, "close"):
      train_iter.close()  # Its workers and prefetch threads now, not at garbage collection.
    manager.close()
    writer.flush()
    writer.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Builds the trainer from `config` and trains in `workdir` (resuming if it holds checkpoints)."""
  return Trainer(config, workdir).train()
