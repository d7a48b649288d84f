"""Tests for fer_jax.data.augment: shapes, ranges, each op on its own, determinism."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from fer_jax.data import augment

ALL_OPS = dict(rotation_deg=15.0, shift=0.1, zoom=0.1, hflip=True, crop_padding=4, erasing_prob=0.5)
SINGLE_OPS = [dict(rotation_deg=15.0), dict(shift=0.1), dict(zoom=0.1), dict(hflip=True),
              dict(crop_padding=4), dict(crop_size=40), dict(erasing_prob=1.0)]


def images(n=32, shape=(48, 48, 1), seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def run(x, seed=0, **ops) -> np.ndarray:
  return augment.augment_batch(x, np.random.default_rng(seed), augment.AugmentConfig(**ops))


@pytest.mark.parametrize("shape", [(48, 48, 1), (96, 96, 3)])
@pytest.mark.parametrize("crop_size", [None, 40])
def test_shapes_dtypes_and_range(shape, crop_size):
  x = images(8, shape)
  y = run(x, crop_size=crop_size, **ALL_OPS, erasing_fill="noise")
  size = crop_size or shape[0]
  assert y.shape == (8, size, size, shape[2]) and y.dtype == np.float32
  assert 0.0 <= y.min() and y.max() <= 1.0
  assert x.dtype == np.uint8  # input untouched
  np.testing.assert_array_equal(x, images(8, shape))


def test_everything_off_is_identity():
  x = images()
  np.testing.assert_array_equal(run(x), x.astype(np.float32) / 255)
  cfg = augment.AugmentConfig.from_config(ml_collections.ConfigDict(dict(enabled=False, **ALL_OPS)))
  assert cfg == augment.AugmentConfig() and not cfg.geometric
  assert augment.geometric(x, np.random.default_rng(0), cfg) is x


def test_from_config_reads_and_disables_fields():
  cfg = augment.AugmentConfig.from_config(ml_collections.ConfigDict(dict(
      enabled=True, rotation_deg=10, shift=0.0, zoom=None, hflip=False, crop_size=None, crop_padding=0,
      erasing_prob=0.25, erasing_area=(0.1, 0.2), erasing_aspect=(0.5, 2.0))))
  assert cfg == augment.AugmentConfig(rotation_deg=10.0, erasing_prob=0.25, erasing_area=(0.1, 0.2),
                                      erasing_aspect=(0.5, 2.0))
  assert augment.AugmentConfig.from_config(dict(enabled=True, crop_size=0)).crop_size is None


@pytest.mark.parametrize("ops", SINGLE_OPS, ids=lambda ops: next(iter(ops)))
def test_each_op_alone_changes_images_and_only_when_on(ops):
  x = images()
  off = {key: None if key == "crop_size" else type(value)() for key, value in ops.items()}
  np.testing.assert_array_equal(run(x, **off), x / np.float32(255))
  y = run(x, **ops)
  if "crop_size" not in ops:
    changed = np.any(y != x / np.float32(255), axis=(1, 2, 3))
    assert changed.mean() > 0.3, ops


def test_hflip_flips_exactly_about_half_the_images():
  x = images(64, (48, 48, 3))
  y = augment.geometric(x, np.random.default_rng(3), augment.AugmentConfig(hflip=True))
  flipped = [np.array_equal(a, b[:, ::-1]) for a, b in zip(y, x)]
  same = [np.array_equal(a, b) for a, b in zip(y, x)]
  assert all(f != s for f, s in zip(flipped, same))  # each image is exactly one of the two
  assert 16 < sum(flipped) < 48


@pytest.mark.parametrize("border", ["reflect", "constant"])
def test_pad_and_crop_equals_numpy_pad_then_crop(border):
  x = images(16, (48, 48, 3))
  cfg = augment.AugmentConfig(crop_padding=4, border=border)
  offsets = augment.inverse_affine_matrices(np.random.default_rng(7), 16, 48, 48, cfg)[:, :, 2]
  y = augment.geometric(x, np.random.default_rng(7), cfg)
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect" if border == "reflect" else "constant")
  for i, (dx, dy) in enumerate(np.round(offsets).astype(int) + 4):
    np.testing.assert_array_equal(y[i], padded[i, dy:dy + 48, dx:dx + 48])


def test_random_crop_is_a_window_of_the_image():
  x = images(16)
  cfg = augment.AugmentConfig(crop_size=40)
  offsets = augment.inverse_affine_matrices(np.random.default_rng(1), 16, 48, 48, cfg)[:, :, 2]
  y = augment.geometric(x, np.random.default_rng(1), cfg)
  assert y.shape == (16, 40, 40, 1)
  for i, (dx, dy) in enumerate(np.round(offsets).astype(int)):
    np.testing.assert_array_equal(y[i], x[i, dy:dy + 40, dx:dx + 40])
  assert len({tuple(o) for o in offsets}) > 1


def test_rotation_keeps_the_centre_pixel():
  x = images(8, (49, 49, 1))
  y = augment.geometric(x, np.random.default_rng(0), augment.AugmentConfig(rotation_deg=30.0))
  np.testing.assert_array_equal(y[:, 24, 24], x[:, 24, 24])
  assert not np.array_equal(y, x)


def test_erasing_areas_and_fills():
  x = np.full((64, 48, 48, 1), 0.5, np.float32)
  cfg = augment.AugmentConfig(erasing_prob=1.0, erasing_area=(0.1, 0.2), erasing_aspect=(0.5, 2.0),
                              erasing_fill="zero")
  y = augment.random_erasing(x.copy(), np.random.default_rng(0), cfg)
  fraction = (y == 0).mean(axis=(1, 2, 3))
  assert (fraction > 0.08).all() and (fraction < 0.23).all()  # rounding of h and w
  noise = augment.random_erasing(x.copy(), np.random.default_rng(0), augment.AugmentConfig(erasing_prob=1.0))
  assert ((noise >= 0) & (noise < 1)).all() and (noise != 0.5).any(axis=(1, 2, 3)).all()
  colour = np.random.default_rng(1).random((8, 48, 48, 3), dtype=np.float32)  # channels with different means
  colour[..., 1] *= 0.5
  mean = augment.random_erasing(colour.copy(), np.random.default_rng(0),
                                augment.AugmentConfig(erasing_prob=1.0, erasing_fill="mean"))
  for image, erased in zip(colour, mean):
    filled = (erased != image).any(axis=-1)
    assert 0.01 < filled.mean() < 0.3
    np.testing.assert_allclose(erased[filled], np.broadcast_to(image.mean(axis=(0, 1)), erased[filled].shape),
                               rtol=1e-6)  # each channel's own mean over the image
  half = augment.random_erasing(x.copy(), np.random.default_rng(0), augment.AugmentConfig(erasing_prob=0.5))
  assert 16 < (half != 0.5).any(axis=(1, 2, 3)).sum() < 48


def test_deterministic_under_seed_and_different_across_seeds():
  x = images(16, (48, 48, 3))
  a, b, c = run(x, 1, **ALL_OPS), run(x, 1, **ALL_OPS), run(x, 2, **ALL_OPS)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_enabling_one_op_keeps_the_others_draws():
  rot = augment.inverse_affine_matrices(np.random.default_rng(4), 16, 48, 48, augment.AugmentConfig(rotation_deg=9))
  both = augment.inverse_affine_matrices(np.random.default_rng(4), 16, 48, 48,
                                         augment.AugmentConfig(rotation_deg=9, shift=0.1))
  np.testing.assert_array_equal(rot[:, :, :2], both[:, :, :2])


@pytest.mark.parametrize("bad", [dict(zoom=1.5), dict(rotation_deg=-1), dict(border="wrap"),
                                 dict(erasing_prob=2.0), dict(erasing_area=(0.5, 0.1)),
                                 dict(erasing_fill="blue"), dict(crop_size=-3)])
def test_invalid_settings_raise(bad):
  with pytest.raises(ValueError):
    augment.AugmentConfig(**bad)


def test_crop_larger_than_image_raises():
  with pytest.raises(ValueError, match="larger than"):
    run(images(2), crop_size=64)
