"""Every config's training step lowers for GPU (cuda) and TPU, from this CPU-only machine.

The CPU speed-ups (oneDNN FFI calls) are registered for the CPU only: if one
reached an accelerator run, XLA would fail there. jax.export lowers the exact
step the trainer jits for another platform without that hardware, so a GPU or
TPU run's step is checked here, before anyone spends accelerator time on it.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

from fer_jax import kernels, model_factory, optimizers, train

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
# (data.name, data.config) -> the stored image shape, as the builders write it.
IMAGE_SHAPES = {("synthetic_faces", ""): (48, 48, 1), ("fer2013", ""): (48, 48, 1),
                ("expw", ""): (96, 96, 3), ("expw", "rgb96"): (96, 96, 3), ("expw", "gray48"): (48, 48, 1)}


def load_config(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("config_path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_train_step_lowers_for_accelerators(config_path, platform):
  config = load_config(config_path)
  height, width, channels = IMAGE_SHAPES[(config.data.name, config.data.config)]
  if config.data.augment.crop_size:
    height = width = config.data.augment.crop_size
  model = model_factory.create_model(config, 7, kernels.select(config, platform))
  steps_per_epoch, total = 100, 1000
  tx = optimizers.create_optimizer(config, optimizers.create_schedule(config, steps_per_epoch, total), steps_per_epoch)
  state = jax.eval_shape(functools.partial(model_factory.create_train_state, model, tx, (height, width, channels), 0))
  batch = {"image": jax.ShapeDtypeStruct((config.batch_size, height, width, channels), jnp.float32),
           "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
  step = functools.partial(train.train_step, base_key=jax.random.key(0), label_smoothing=config.label_smoothing,
                           class_weights=None, skip_nonfinite=config.nonfinite == "skip")
  exported = jax.export.export(jax.jit(step), platforms=[platform])(state, batch)
  module = exported.mlir_module()
  assert exported.platforms == (platform,)
  custom_calls = set(re.findall(r"stablehlo\.custom_call @(\w+)", module))
  assert not {c for c in custom_calls if "onednn" in c.lower() or "fer_jax" in c}, custom_calls
  assert "stablehlo.convolution" in module  # the convolutions are XLA's own there
