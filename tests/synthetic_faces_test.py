"""SYNTHETIC faces: pixels, determinism, balance, learnability, and the tfds builder."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fer_jax.data import faces
from tfds_builders.synthetic_faces import drawing as sf


def test_shapes_dtype_and_range():
  labels = np.arange(70) % sf.NUM_CLASSES
  faces = sf.draw_faces(labels, seed=0)
  assert faces.shape == (70, 48, 48) and faces.dtype == np.uint8
  # Real pictures: every face uses a wide tonal range, none is blank or saturated.
  spread = faces.reshape(70, -1).std(axis=1)
  assert spread.min() > 10.0, spread.min()
  assert 40 < faces.mean() < 215
  single = sf.draw_face(3, np.random.default_rng(0))
  assert single.shape == (48, 48) and single.dtype == np.uint8


def test_label_order_matches_builders():
  assert sf.EMOTIONS == faces.EMOTIONS


def test_bad_label_raises():
  with pytest.raises(ValueError):
    sf.draw_face(7, np.random.default_rng(0))


def test_deterministic_per_example():
  labels = sf.balanced_labels(300, seed=3)  # more than one internal batch of 256
  a = sf.draw_faces(labels, seed=3)
  assert a.tobytes() == sf.draw_faces(labels, seed=3).tobytes()
  assert (a != sf.draw_faces(labels, seed=4)).any(axis=(1, 2)).all()
  assert (a != sf.draw_faces(labels, seed=3, stream=1)).any(axis=(1, 2)).all()
  # Example i depends only on (seed, stream, i): chunks, batches and single draws agree.
  np.testing.assert_array_equal(sf.draw_faces(labels[25:], seed=3, start=25), a[25:])
  for i in (7, 280):
    np.testing.assert_array_equal(
        sf.draw_face(int(labels[i]), np.random.default_rng([3, 0, i])), a[i])


def test_golden_digest():
  # Same bytes on every machine. If this fails after an intended drawing
  # change, bump GENERATOR_VERSION (new dataset folders) and update the digest;
  # if it fails on one machine only, determinism is broken there.
  faces = sf.draw_faces(np.arange(14) % sf.NUM_CLASSES, seed=0)
  digest = hashlib.sha256(faces.tobytes() + sf.balanced_labels(20, 0).tobytes()).hexdigest()
  assert (sf.GENERATOR_VERSION, digest[:16]) == ("1.0.0", "fac2b326aab7c11e")


def test_balanced_labels():
  labels = sf.balanced_labels(703, seed=0)
  counts = np.bincount(labels, minlength=7)
  assert counts.max() - counts.min() <= 1 and counts.sum() == 703
  assert not np.array_equal(labels, np.arange(703) % 7)  # ids don't give the label away
  np.testing.assert_array_equal(labels, sf.balanced_labels(703, seed=0))
  assert not np.array_equal(labels, sf.balanced_labels(703, seed=0, stream=1))


def _ridge_accuracy(difficulty: float) -> float:
  """Held-out accuracy of a linear classifier on 24x24 standardized pixels."""
  def features(n, stream):
    labels = sf.balanced_labels(n, seed=0, stream=stream)
    x = sf.draw_faces(labels, seed=0, stream=stream, difficulty=difficulty).astype(np.float64)
    x = x.reshape(n, 24, 2, 24, 2).mean(axis=(2, 4)).reshape(n, -1)
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    return x, labels
  x, y = features(1400, 0)
  x_test, y_test = features(700, 1)
  targets = np.eye(sf.NUM_CLASSES)[y]
  w = np.linalg.solve(x.T @ x + 300.0 * np.eye(x.shape[1]), x.T @ targets)
  return float(np.mean((x_test @ w).argmax(1) == y_test))


def test_classes_learnable_but_not_trivial():
  # A linear model on pixels (blind to pose) beats chance (1/7) clearly yet
  # stays far from perfect; clean faces (difficulty 0) are easier. Labels the
  # drawing ignored would give ~0.14 here.
  hard, clean = _ridge_accuracy(1.0), _ridge_accuracy(0.0)
  assert 0.25 < hard < 0.9, hard
  assert clean > hard + 0.05, (clean, hard)


def test_builder_tiny_config_round_trip(tmp_path):
  import tensorflow_datasets as tfds
  from fer_jax.data import builders
  from tfds_builders.synthetic_faces import synthetic_faces as builder_lib

  builder = builders.build("synthetic_faces", config="tiny", data_dir=str(tmp_path))
  config = builder.builder_config
  info = builder.info
  assert info.features["label"].names == list(faces.EMOTIONS)
  assert info.supervised_keys == ("image", "label")
  assert "SYNTHETIC" in info.description
  report = info.metadata["build_report"]
  assert report["synthetic"] and report["generator_version"] == sf.GENERATOR_VERSION
  assert report["seed"] == config.seed

  for stream, split in enumerate(builder_lib.SPLITS):
    size = getattr(config, f"{split}_size")
    assert info.splits[split].num_examples == size
    source = tfds.data_source("synthetic_faces/tiny", split=split, data_dir=str(tmp_path))
    examples = [source[i] for i in range(len(source))]
    assert len(examples) == size
    ids = [e["id"].decode() if isinstance(e["id"], bytes) else str(e["id"]) for e in examples]
    index = np.array([int(i.rsplit("/", 1)[1]) for i in ids])
    assert all(i.startswith(f"synthetic/{split}/") for i in ids)
    np.testing.assert_array_equal(np.sort(index), np.arange(size))
    order = np.argsort(index)
    images = np.stack([examples[i]["image"] for i in order])
    labels = np.array([examples[i]["label"] for i in order])
    np.testing.assert_array_equal(labels, builder_lib.split_labels(config, split))
    assert images.shape == (size, 48, 48, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(
        images[..., 0], sf.draw_faces(labels, config.seed, stream=stream, difficulty=config.difficulty))


def test_a_dataset_built_with_set_trains_under_the_name_the_build_gave_it(tmp_path):
  """`fer_jax.data build synthetic_faces --config tiny --set seed=3` writes `tiny.seed=3`; the trainer's
  `--config.data.config=tiny.seed=3` reads that build, not the plain `tiny`."""
  from fer_jax import config_schema
  from fer_jax.data import builders

  built = builders.build("synthetic_faces", config="tiny", data_dir=str(tmp_path), overrides={"seed": 3})
  assert built.builder_config.name == "tiny.seed=3"
  config = config_schema.base_config()
  config.data.name, config.data.config, config.data.data_dir = "synthetic_faces", "tiny.seed=3", str(tmp_path)
  info = builders.dataset_info(config)
  assert info.data_dir == str(built.data_dir)
  assert builders.make_builder("synthetic_faces", config="tiny.seed=3").builder_config.seed == 3
  assert builders.parse_overrides(["margin=0.3", "channels=1", "fill=noise"]) == {
      "margin": 0.3, "channels": 1, "fill": "noise"}
