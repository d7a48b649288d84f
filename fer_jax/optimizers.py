"""optax optimizer and learning-rate schedule chosen by config."""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax

Schedule = Callable[[Any], Any]
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "step", "plateau")


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int) -> Schedule:
  """Learning rate by step: constant, warmup + cosine or step decay (plateau scales on top)."""
  lr = config.learning_rate
  warmup = int(config.warmup_epochs * steps_per_epoch)
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), end_value=0.0)
  if config.schedule == "step":
    main = optax.exponential_decay(lr, transition_steps=max(1, int(config.step_every_epochs * steps_per_epoch)),
                                   decay_rate=config.step_factor, staircase=True)
  else:  # constant, plateau
    main = optax.constant_schedule(lr)
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def _decay_mask(params: Any) -> Any:
  # Decay kernels only: biases and batch-norm scales are left alone, as usual.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: ml_collections.ConfigDict, schedule: Schedule,
                     steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
  """adam / adamw / sgd (Nesterov), weight decay, clipping and reduce-on-plateau; the update takes `value=loss`."""
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.optimizer == "adamw":
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask))
  else:
    if config.weight_decay > 0:  # Classic L2: added to the gradient before the optimizer's scaling.
      parts.append(optax.add_decayed_weights(config.weight_decay, mask=_decay_mask))
    if config.optimizer == "adam":
      parts.append(optax.adam(schedule))
    else:
      parts.append(optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
  if config.schedule == "plateau":
    parts.append(optax.contrib.reduce_on_plateau(
        factor=config.plateau_factor, patience=config.plateau_patience_epochs,
        accumulation_size=max(1, steps_per_epoch)))
  return optax.chain(*parts)


def plateau_scale(opt_state: Any) -> Any:
  """The reduce-on-plateau multiplier (1.0 when that schedule is off).

  Looked up by state type, not by the name `scale`: Adam's moment estimates hold batch-norm `scale`s too.
  """
  is_plateau = lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)
  for node in jax.tree.leaves(opt_state, is_leaf=is_plateau):
    if is_plateau(node):
      return node.scale
  return 1.0
