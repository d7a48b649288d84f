"""Flax CNNs for 7-class facial expression recognition.

All models map images [N, H, W, C] in [0, 1] (or standardized) to float32 logits [N, num_classes]; `dtype` is
the compute dtype, parameters stay float32. `conv` and `pool` default to flax's: model_factory.py swaps in
fer_jax.kernels' faster CPU versions for training (same parameters), and VGG's `conv_relu` for a convolution
that applies the ReLU itself (oneDNN's bfloat16 kernels fuse it). Dropout is fer_jax.kernels.dropout's:
nn.Dropout's distribution from fewer random bits.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.kernels.dropout import Dropout

Dtype = Any
ModuleDef = Any
PoolFn = Callable[[jnp.ndarray], jnp.ndarray]


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def pad_to_even(x: jnp.ndarray) -> jnp.ndarray:
  """Pads an odd height or width with -inf at the bottom or right, so a 2x2 pool keeps that edge (ceil mode)."""
  pad = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
  return jnp.pad(x, pad, constant_values=-jnp.inf) if any(p[1] for p in pad) else x


class CNN(nn.Module):
  """Plain conv stages (conv 3x3 + ReLU + 2x2 max-pool + dropout), then dense layers.

  With the defaults this is the seeds' FER2013 network: conv 32/64/128, dense 256/128.
  """
  num_classes: int = 7
  conv_features: Sequence[int] = (32, 64, 128)
  dense_features: Sequence[int] = (256, 128)
  conv_dropout: float = 0.25
  dense_dropout: float = 0.5
  dtype: Dtype = jnp.float32
  conv: ModuleDef = nn.Conv
  pool: PoolFn = max_pool_2x2

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.astype(self.dtype)
    for features in self.conv_features:
      x = self.conv(features, (3, 3), padding="SAME", dtype=self.dtype)(x)
      x = self.pool(nn.relu(x))
      x = Dropout(self.conv_dropout, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    for features in self.dense_features:
      x = nn.relu(nn.Dense(features, dtype=self.dtype)(x))
      x = Dropout(self.dense_dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class VGG(nn.Module):
  """VGG-style FER network: stages of (conv 3x3 + BN + ReLU) x n, 2x2 max-pool, then FC.

  The layout of the best published single-network FER2013 recipe
  (Khaireddin & Chen 2021, "Facial Emotion Recognition: State of the Art
  Performance on FER2013"): four stages of two convs, 64/128/256/512 channels.
  """
  num_classes: int = 7
  stage_features: Sequence[int] = (64, 128, 256, 512)
  convs_per_stage: int = 2
  dense_features: Sequence[int] = (1024, 1024)
  dropout: float = 0.5
  batch_norm: bool = True     # False: biased convs and no normalisation (the ablation in BENCHMARKS).
  ceil_pool: bool = False     # True: an odd map's last row and column are pooled too (5x5 -> 3x3, not 2x2).
  dtype: Dtype = jnp.float32
  conv: ModuleDef = nn.Conv
  conv_relu: ModuleDef | None = None  # Without batch norm: a conv that applies the ReLU too (same parameters)
  pool: PoolFn = max_pool_2x2

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.astype(self.dtype)
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)
    for features in self.stage_features:
      for _ in range(self.convs_per_stage):
        fused = self.conv_relu is not None and not self.batch_norm
        conv = self.conv_relu if fused else self.conv
        x = conv(features, (3, 3), padding="SAME", use_bias=not self.batch_norm, dtype=self.dtype)(x)
        if not fused:
          x = nn.relu(norm()(x) if self.batch_norm else x)
      x = self.pool(pad_to_even(x) if self.ceil_pool else x)
    x = x.reshape((x.shape[0], -1))
    for features in self.dense_features:
      x = nn.relu(nn.Dense(features, dtype=self.dtype)(x))
      x = Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class ResidualBlock(nn.Module):
  """ResNet basic block (two 3x3 convs), projection shortcut when the shape changes."""
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  conv: ModuleDef = nn.Conv

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    norm = lambda **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, **kw)
    conv = lambda f, k, s: self.conv(f, (k, k), (s, s), padding="SAME", use_bias=False, dtype=self.dtype)
    y = nn.relu(norm()(conv(self.features, 3, self.strides)(x)))
    y = norm(scale_init=nn.initializers.zeros)(conv(self.features, 3, 1)(y))
    if x.shape != y.shape:
      x = norm()(conv(self.features, 1, self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet-18-style network; `stem='imagenet'` (7x7/2 + max-pool) suits 96x96 inputs."""
  num_classes: int = 7
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  stage_features: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  conv: ModuleDef = nn.Conv  # The 3x3 stem and the residual blocks (the 7x7/2 imagenet stem is always nn.Conv).

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = nn.Conv(self.stage_features[0], (7, 7), (2, 2), padding="SAME", use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    else:
      x = self.conv(self.stage_features[0], (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x))
    for i, (blocks, features) in enumerate(zip(self.stage_sizes, self.stage_features)):
      for j in range(blocks):
        x = ResidualBlock(features, strides=2 if i > 0 and j == 0 else 1, dtype=self.dtype, conv=self.conv)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


MODELS: dict[str, Callable[..., nn.Module]] = {"cnn": CNN, "vgg": VGG, "resnet": ResNet}


def create_model(name: str, *, num_classes: int, dtype: Dtype, **kwargs: Any) -> nn.Module:
  """Builds model `name` (a key of MODELS) with config-given keyword arguments (model_factory.py adds the kernels)."""
  if name not in MODELS:
    raise ValueError(f"config.model={name!r} is not a known model; choose one of {sorted(MODELS)}.")
  return MODELS[name](num_classes=num_classes, dtype=dtype, **kwargs)
