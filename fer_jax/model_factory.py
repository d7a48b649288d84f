"""Building a model and its training state from a config.

The trainer, the evaluation job, inference and export all build here, so a checkpoint always meets the state
it was saved from. Training asks for fer_jax.kernels' CPU kernels; the rest take flax's (same parameters).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from fer_jax import kernels, models, optimizers


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step, plus batch-norm statistics (empty for models without BN) and the
  exponential moving average of the parameters (empty unless config.ema_decay > 0)."""
  batch_stats: Any = None
  ema_params: Any = None


def create_model(config: ml_collections.ConfigDict, num_classes: int,
                 model_kernels: kernels.Kernels = kernels.DEFAULTS) -> nn.Module:
  """config.model with config.model_kwargs; `model_kernels` (kernels.select) for training, defaults otherwise."""
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  fields = {f.name for f in dataclasses.fields(models.MODELS[config.model])} if config.model in models.MODELS else set()
  kernel_kwargs = {k: v for k, v in model_kernels.model_kwargs().items() if k in fields}
  return models.create_model(config.model, num_classes=num_classes, dtype=dtype, **kernel_kwargs,
                             **config.model_kwargs.to_dict())


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...],
                       seed: int, ema: bool = False) -> TrainState:
  """The initial state; with `ema` its moving average starts as a copy of the initial parameters."""
  variables = model.init({"params": jax.random.key(seed)}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=variables.get("batch_stats", {}),
                           ema_params=jax.tree.map(jnp.copy, params) if ema else {})


def ema_decay_at(decay: float, step: jax.Array, late_decay: float = 0.0, late_from_step: int = 0) -> jax.Array:
  """The moving average's decay at `step`, warmed up as min(decay, (1 + step) / (10 + step)) so that early
  averages are not dominated by the random initial weights (TensorFlow's ExponentialMovingAverage rule).

  With `late_decay` > 0 it replaces `decay` from `late_from_step` on: a longer average once the learning
  rate is low, when the weights move little and averaging more of them smooths out their noise.
  """
  step = jnp.asarray(step, jnp.float32)
  if late_decay > 0:
    decay = jnp.where(step >= late_from_step, jnp.float32(late_decay), jnp.float32(decay))
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def model_variables(state: TrainState, raw: bool = False) -> dict[str, Any]:
  """What `model.apply` needs for inference: the moving average of the parameters when the run keeps one
  (config.ema_decay > 0) unless `raw`, else the parameters themselves."""
  params = state.params if raw or not state.ema_params else state.ema_params
  return {"params": params, "batch_stats": state.batch_stats} if state.batch_stats else {"params": params}


@dataclasses.dataclass
class TrainingSetup:
  """A model with its optimizer, schedule and step counts, and how to make (or describe) its state."""
  model: nn.Module
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  steps_per_epoch: int
  total_steps: int
  init: Callable[[], TrainState]

  def abstract_state(self, sharding: jax.sharding.Sharding) -> Any:
    """The state's shapes and dtypes placed with `sharding`: what a checkpoint restores onto."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), jax.eval_shape(self.init))


def training_setup(config: ml_collections.ConfigDict, info: Any,
                   model_kernels: kernels.Kernels = kernels.DEFAULTS) -> TrainingSetup:
  """Everything the state of a run on dataset `info` (data.builders.DatasetInfo) depends on."""
  epoch_steps = max(1, info.num_examples[config.data.train_split] // config.batch_size)
  if config.smoke_test:
    total = 6
  elif config.num_train_steps > 0:
    total = int(config.num_train_steps)
  else:
    total = max(1, int(math.ceil(config.num_epochs * epoch_steps)))
  model = create_model(config, info.num_classes, model_kernels)
  schedule = optimizers.create_schedule(config, epoch_steps, total)
  tx = optimizers.create_optimizer(config, schedule, epoch_steps)
  init = functools.partial(create_train_state, model, tx, info.image_shape, config.seed, ema=config.ema_decay > 0)
  return TrainingSetup(model, schedule, tx, epoch_steps, total, init)
