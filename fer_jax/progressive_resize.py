"""Progressive resizing: the early epochs train on downscaled inputs, the rest at the pipeline's full size.

A step on a 32x32 input costs about 0.75x one on 40x40 (the CPU recipe's network, 2 Intel AMX cores), and the
early epochs, which learn coarse features, lose little by it. The train step resizes the pipeline's batch
itself (evaluation.resize: antialiased, linear, the whole field of view), so the input pipeline, its checkpointed position, validation and serving stay
at full size; each size compiles its own train step once, when its first step comes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from fer_jax import config_schema, evaluation


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Input side lengths (pixels) by step: `sizes[i]` until step `until_steps[i]`, then the full size (None)."""
  sizes: tuple[int, ...] = ()
  until_steps: tuple[int, ...] = ()

  def size_at(self, step: int) -> int | None:
    """The side length step `step` (0-based, the state's step count before it) trains on; None = full size."""
    for size, until in zip(self.sizes, self.until_steps):
      if step < until:
        return size
    return None


def schedule_for(config: ml_collections.ConfigDict, model: Any, image_shape: tuple[int, ...],
                 steps_per_epoch: int) -> Schedule:
  """config.progressive_sizes / progressive_until_epochs as a Schedule, checked against `model` and logged.

  Raises config_schema.ConfigError for a size that is not below the training input's or that gives the model
  other parameter shapes (config_schema.validate checked the fields' own form).
  """
  until = tuple(int(round(e * steps_per_epoch)) for e in config.progressive_until_epochs)
  schedule = Schedule(tuple(int(s) for s in config.progressive_sizes), until)
  if schedule.sizes:
    check_model_accepts(model, image_shape, schedule.sizes)
    phases = ", ".join(f"{s}x{s} until step {u} (epoch {e:g})"
                       for s, u, e in zip(schedule.sizes, until, config.progressive_until_epochs))
    logging.info("Progressive resizing: training inputs downscaled to %s, then full size %dx%d.", phases,
                 image_shape[0], image_shape[1])
  return schedule


def shrink(images: jnp.ndarray, size: int, how: str, key: jax.Array) -> jnp.ndarray:
  """The batch at side length `size`: "resize" scales each image down whole; "crop" takes a random
  size x size window of each at its own scale (the pixels a face spans stay as at full size)."""
  if how == "resize":
    return evaluation.resize(images, size, size)
  n, h, w, c = images.shape
  ky, kx = jax.random.split(key)
  ys = jax.random.randint(ky, (n,), 0, h - size + 1)
  xs = jax.random.randint(kx, (n,), 0, w - size + 1)
  window = lambda image, y, x: jax.lax.dynamic_slice(image, (y, x, 0), (size, size, c))
  return jax.vmap(window)(images, ys, xs)


def check_model_accepts(model: Any, image_shape: tuple[int, ...], sizes: tuple[int, ...]) -> None:
  """Raises config_schema.ConfigError when a size gives the model other parameter shapes than the full size does.

  A network that flattens its last feature map into a dense layer takes only sizes that pool down to the same
  map (the CPU recipe's four 2x2 pools: 32-47 all give 2x2); one with global pooling takes any.
  """
  def shapes(hw: int | None) -> Any:
    shape = (1, *image_shape) if hw is None else (1, hw, hw, *image_shape[2:])
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.float32)))
    return jax.tree.map(lambda x: x.shape, variables)

  full = shapes(None)
  height, width = image_shape[:2]
  for size in sizes:
    if size >= min(height, width):
      raise config_schema.ConfigError(f"config.progressive_sizes has {size}, which is not below the {height}x{width} training "
                       "input: list only smaller sizes.")
    if shapes(size) != full:
      raise config_schema.ConfigError(
          f"config.progressive_sizes has {size}, which gives model {type(model).__name__} other parameter shapes "
          f"than its full {height}x{width} input does (its dense layer reads the flattened last feature map). "
          "Pick sizes that pool down to the same last map, or a model with global pooling.")
