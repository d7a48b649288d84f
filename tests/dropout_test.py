"""fer_jax's Dropout keeps each element with probability exactly 1 - rate, like nn.Dropout, from fewer bits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.kernels import dropout


@pytest.mark.parametrize("rate,bits,threshold", [(0.5, 1, 1), (0.25, 2, 3), (0.1, 32, round(0.9 * 2**32)),
                                                 (0.125, 4, 14), (0.3, 32, round(0.7 * 2**32))])
def test_field_bits_are_the_fewest_that_express_the_keep_probability(rate, bits, threshold):
  assert dropout.field_bits(1 - rate) == (bits, threshold)


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.125, 0.0625])
def test_every_field_value_is_kept_with_exactly_the_keep_probability(rate):
  """Enumerate all 2**b values of a b-bit field, in every slot of a word: the kept fraction is exactly 1 - rate."""
  keep = 1 - rate
  b, _ = dropout.field_bits(keep)
  per_word = 32 // b
  values = np.arange(2**b, dtype=np.uint64)
  words = np.zeros((2**b,), np.uint64)
  for slot in range(per_word):
    words |= values << np.uint64(slot * b)  # every slot of word v holds the value v
  mask = np.asarray(dropout.keep_mask(jnp.asarray(words.astype(np.uint32)), (per_word, 2**b), keep))
  # Element (slot s, word v) reads field s of word v, i.e. the value v.
  np.testing.assert_array_equal(mask, np.broadcast_to(np.arange(2**b) < keep * 2**b, mask.shape))
  np.testing.assert_array_equal(mask.sum(axis=1), np.full(per_word, keep * 2**b))


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.3])
def test_module_matches_nn_dropout_in_rate_and_scaling(rate):
  x = jnp.ones((64, 24, 24, 8))
  rngs = {"dropout": jax.random.key(0)}
  y = dropout.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
  kept = np.asarray(y != 0)
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / (1 - rate), rtol=1e-6)
  assert abs(kept.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / kept.size)  # 4 sigma
  reference = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
  if dropout.field_bits(1 - rate)[0] < 32:
    assert not np.array_equal(kept, np.asarray(reference != 0))  # a different stream, same distribution
  # Neighbouring elements share a word but not bits: no correlation between adjacent masks.
  flat = kept.reshape(-1).astype(float)
  assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01


def test_deterministic_and_edge_rates_pass_through():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(dropout.Dropout(0.5, deterministic=True).apply({}, x), x)
  np.testing.assert_array_equal(dropout.Dropout(0.0).apply({}, x, deterministic=False), x)
  np.testing.assert_array_equal(dropout.Dropout(1.0).apply({}, x, deterministic=False), jnp.zeros_like(x))


def test_masks_change_with_the_key():
  x = jnp.ones((1000,))
  apply = lambda seed: dropout.Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(seed)})
  assert not np.array_equal(apply(0), apply(1))
  np.testing.assert_array_equal(apply(2), apply(2))
