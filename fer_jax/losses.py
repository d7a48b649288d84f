"""The training loss: softmax cross-entropy with label smoothing and class weights, and mixup's blended batch.

Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization") trains on convex blends of two faces
whose target is the same blend of their labels. Off by default: on the CPU recipe's second half (alpha 0.4
from epoch 60) it cost 0.4 points of PublicTest accuracy (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class Mix(NamedTuple):
  """How a batch was blended: example i became lam * itself + (1 - lam) * the example labelled partner_labels[i]."""
  partner_labels: jnp.ndarray
  lam: jnp.ndarray


def mixup(images: jnp.ndarray, labels: jnp.ndarray, key: jax.Array, alpha: float,
          on: bool | jax.Array = True) -> tuple[jnp.ndarray, Mix]:
  """Blends each image with its mirror in the batch order (example i with n-1-i) by one lam ~ Beta(alpha, alpha).

  The loader shuffles every epoch, so the pairs are random; reversing needs no permutation draw and pairs
  examples across devices when the batch is sharded. Where `on` is False, lam is 1: the batch and its loss
  come back exactly as without mixup.
  """
  lam = jnp.where(on, jax.random.beta(key, alpha, alpha).astype(jnp.float32), 1.0)
  blended = lam * images.astype(jnp.float32) + (1.0 - lam) * images[::-1].astype(jnp.float32)
  return blended.astype(images.dtype), Mix(labels[::-1], lam)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, *, label_smoothing: float,
                  class_weights: jnp.ndarray | None, mix: Mix | None = None) -> jnp.ndarray:
  """Mean (optionally class-weighted, as in PyTorch) softmax cross-entropy with label smoothing.

  With `mix`, the target of example i is lam * its label + (1 - lam) * its partner's (both smoothed), and its
  class weight blends the same way.
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if mix is not None:
    targets = mix.lam * targets + (1.0 - mix.lam) * jax.nn.one_hot(mix.partner_labels, num_classes)
  losses = optax.softmax_cross_entropy(logits, optax.smooth_labels(targets, label_smoothing))
  if class_weights is None:
    return jnp.mean(losses)
  weights = class_weights[labels]
  if mix is not None:
    weights = mix.lam * weights + (1.0 - mix.lam) * class_weights[mix.partner_labels]
  return jnp.sum(losses * weights) / jnp.sum(weights)
