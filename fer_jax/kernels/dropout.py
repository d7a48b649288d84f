"""Dropout whose keep-mask costs a fraction of the random bits `flax.linen.Dropout` draws.

A keep probability of k/2**b needs b random bits per element (1 for rate 0.5), so each 32-bit draw serves
32//b elements; rates that are no multiple of 1/2**16 use one draw per element (within 2**-32 of 1 - rate).
The masks are still independent Bernoulli(1 - rate) draws, from another random stream than nn.Dropout's.
Why and what it gains: docs/BENCHMARKS.md ("What each step gained", 4).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_FIELD_BITS = (1, 2, 4, 8, 16)


def field_bits(keep: float) -> tuple[int, int]:
  """(b, k): the fewest bits b per element, and threshold k, with k / 2**b == keep (b=32: nearest)."""
  for b in _FIELD_BITS:
    k = keep * 2**b
    if k == int(k):
      return b, int(k)
  return 32, min(round(keep * 2**32), 2**32 - 1)


def keep_mask(words: jax.Array, shape: tuple[int, ...], keep: float) -> jax.Array:
  """Bool mask of `shape` from uint32 `words`: flat element i reads field i // W of word i % W (W = words.size).

  Field-major, as a word-major order (a div/mod per element) slows the backward pass, which recomputes the mask.
  """
  b, k = field_bits(keep)
  size = math.prod(shape)
  per_word = 32 // b
  if words.size * per_word < size:
    raise ValueError(f"keep_mask needs {-(-size // per_word)} uint32 words for shape {shape}, got {words.size}.")
  shifts = jnp.arange(per_word, dtype=jnp.uint32) * jnp.uint32(b)
  fields = (words.reshape(1, -1) >> shifts[:, None]) & jnp.uint32(2**b - 1) if b < 32 else words.reshape(1, -1)
  return (fields.reshape(-1)[:size] < jnp.uint32(k)).reshape(shape)


def words_needed(size: int, keep: float) -> int:
  """How many uint32 draws `keep_mask` needs for `size` elements."""
  return -(-size // (32 // field_bits(keep)[0]))


class Dropout(nn.Module):
  """Drop-in for `nn.Dropout(rate, deterministic=...)`: b random bits per element when (1 - rate) * 2**b is whole."""
  rate: float
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - self.rate
    words = jax.random.bits(self.make_rng(self.rng_collection), (words_needed(x.size, keep),), jnp.uint32)
    mask = keep_mask(words, x.shape, keep)
    return lax.select(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))
