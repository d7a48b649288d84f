"""Tests for fer_jax.data.pipeline against a tiny ArrayRecord dataset built here (tests/tiny_dataset.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import time

import grain
import ml_collections
import numpy as np
import pytest

from fer_jax import config_schema
from fer_jax.data import builders, pipeline, stats, tfexample
from tiny_dataset import EMOTIONS, SPLIT_SIZES, FerTinyTest


def make_config(data_dir: str, **data_overrides) -> ml_collections.ConfigDict:
  augment = dict(enabled=False, rotation_deg=0.0, shift=0.0, zoom=0.0, hflip=False, crop_size=0,
                 crop_padding=0, erasing_prob=0.0, erasing_area=(0.02, 0.25), erasing_aspect=(0.3, 3.3))
  augment.update(data_overrides.pop("augment", {}))
  config = config_schema.base_config()
  config.seed, config.batch_size, config.eval_batch_size = 0, 8, 6
  config.data.update({**dict(name="fer_tiny_test", config="gray12", data_dir=data_dir, normalization="unit",
                             cache_max_mb=0), **data_overrides})
  config.data.augment.update(augment)
  return config


ALL_AUGMENT = dict(enabled=True, rotation_deg=10.0, shift=0.1, zoom=0.1, hflip=True, crop_size=10,
                   crop_padding=2, erasing_prob=0.5)


def indices_of(images: np.ndarray) -> np.ndarray:
  """Example indices stored in pixel (0, 0, 0) of unaugmented 'unit' images."""
  return np.round(images[:, 0, 0, 0] * 255).astype(np.int64)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_dataset_info(data_dir):
  info = builders.dataset_info(make_config(data_dir, augment=ALL_AUGMENT))
  assert info.image_shape == (10, 10, 1) and info.eval_image_shape == (12, 12, 1)
  assert info.num_classes == 7 and info.class_names == EMOTIONS
  assert dict(info.num_examples) == SPLIT_SIZES
  info = builders.dataset_info(make_config(data_dir, config="rgb16"))
  assert info.image_shape == info.eval_image_shape == (16, 16, 3)


def test_not_built_error_names_data_dir_and_command(tmp_path):
  config = make_config(str(tmp_path / "empty"))
  for fn in (builders.dataset_info, builders.ensure_built, pipeline.create_train_dataset,
             pipeline.create_eval_dataset):
    with pytest.raises(builders.DatasetNotBuiltError) as e:
      fn(config)
    message = str(e.value)
    assert str(tmp_path / "empty") in message
    assert "python -m fer_jax.data build fer_tiny_test --config gray12" in message
    assert "--manual_dir" in message


def test_ensure_built_builds_auto_datasets(tmp_path, monkeypatch):
  calls = []

  def fake_build(name, *, config=None, data_dir=None, **kwargs):
    calls.append((name, config, data_dir))
    return FerTinyTest(data_dir=data_dir, config=config, file_format="array_record").download_and_prepare()

  monkeypatch.setattr(builders, "AUTO_BUILD", ("fer_tiny_test",))
  monkeypatch.setattr(builders, "build", fake_build)
  config = make_config(str(tmp_path))
  info = builders.ensure_built(config)
  assert calls == [("fer_tiny_test", "gray12", str(tmp_path))]
  assert dict(info.num_examples) == SPLIT_SIZES
  builders.ensure_built(config)  # already built: no second build
  assert len(calls) == 1


def test_train_batches_are_full_and_shaped(data_dir):
  config = make_config(data_dir, augment=ALL_AUGMENT, config="rgb16")
  batches = take(iter(pipeline.create_train_dataset(config)), 30)  # > 2 epochs of 103
  for batch in batches:
    assert set(batch) == {"image", "label"}
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, 10, 10, 3)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (8,)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert ((0 <= batch["label"]) & (batch["label"] < 7)).all()


@pytest.mark.parametrize("builder_config", ["gray12", "zlib12", "bytes12"])
def test_train_labels_match_images(data_dir, builder_config):
  batch = next(iter(pipeline.create_train_dataset(make_config(data_dir, config=builder_config))))
  np.testing.assert_array_equal(batch["label"], indices_of(batch["image"]) % 7)


def test_shuffle_differs_across_epochs_and_is_reproducible(data_dir):
  config = make_config(data_dir)
  config.batch_size = SPLIT_SIZES["train"]  # one batch per epoch

  def epochs(config, n=3):
    return [indices_of(b["image"]) for b in take(iter(pipeline.create_train_dataset(config)), n)]

  first = epochs(config)
  for order in first:
    assert sorted(order) == list(range(SPLIT_SIZES["train"]))
  assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
  for a, b in zip(first, epochs(config)):
    np.testing.assert_array_equal(a, b)
  config.seed = 1
  assert not np.array_equal(first[0], epochs(config, 1)[0])


@pytest.mark.parametrize("batch_size", [4, 7, 25])  # 25 > 10 keys: batches span several epochs
def test_shuffled_key_batches_cover_each_epoch_once(batch_size):
  keys = np.arange(3, 30, 3)  # a process's shard: 9 keys
  batches = pipeline.ShuffledKeyBatches(keys, batch_size, seed=7)
  stream = np.concatenate([batches[b] for b in range(9 * 4 // batch_size + 1)])
  epochs = [stream[i:i + 9] for i in range(0, 36, 9)]
  for epoch in epochs:
    assert sorted(epoch) == list(keys)
  assert any(not np.array_equal(epochs[0], e) for e in epochs[1:])
  fresh = pipeline.ShuffledKeyBatches(keys, batch_size, seed=7)
  np.testing.assert_array_equal(fresh[3], batches[3])  # random access, no hidden state
  assert not np.array_equal(pipeline.ShuffledKeyBatches(keys, batch_size, seed=8)[0], batches[0])


def test_processes_read_disjoint_shards_covering_the_split(data_dir):
  config = make_config(data_dir)
  config.batch_size = 2  # one example per process per batch
  seen = []
  for p in range(2):
    shard_size = len(range(p, SPLIT_SIZES["train"], 2))
    batches = take(iter(pipeline.create_train_dataset(config, process_index=p, process_count=2)),
                   shard_size)
    indices = np.concatenate([indices_of(b["image"]) for b in batches])
    assert len(set(indices)) == shard_size  # a full epoch of its shard, no repeats
    seen.append(set(indices))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(SPLIT_SIZES["train"]))


def test_global_batch_must_divide(data_dir):
  config = make_config(data_dir)
  config.batch_size = 9
  with pytest.raises(ValueError, match="multiple of the process count 2"):
    pipeline.create_train_dataset(config, process_index=0, process_count=2)


def test_augmentation_is_seeded(data_dir, monkeypatch):
  config = make_config(data_dir, augment=ALL_AUGMENT)
  a = take(iter(pipeline.create_train_dataset(config)), 3)
  assert_batches_equal(a, take(iter(pipeline.create_train_dataset(config)), 3))
  # Another seed augments the same examples differently: the shuffle held fixed, so only augmentation can differ.
  shuffled = pipeline.ShuffledKeyBatches
  monkeypatch.setattr(pipeline, "ShuffledKeyBatches", lambda keys, batch_size, seed: shuffled(keys, batch_size, 0))
  a = take(iter(pipeline.create_train_dataset(config)), 1)
  config.seed = 5
  b = take(iter(pipeline.create_train_dataset(config)), 1)
  np.testing.assert_array_equal(a[0]["label"], b[0]["label"])  # the same examples
  assert not np.array_equal(a[0]["image"], b[0]["image"])


def test_iterator_state_round_trip(data_dir):
  config = make_config(data_dir, augment=ALL_AUGMENT, normalization="standardize")
  ds = pipeline.create_train_dataset(config)
  it = iter(ds)
  take(it, 3)
  state = it.get_state()
  expected = take(it, 4)
  json.dumps(state)  # checkpointable as JSON
  fresh = iter(pipeline.create_train_dataset(config))
  fresh.set_state(state)
  assert_batches_equal(expected, take(fresh, 4))


def test_iterator_orbax_checkpoint_round_trip(data_dir, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  config = make_config(data_dir, augment=ALL_AUGMENT)
  it = iter(pipeline.create_train_dataset(config))
  take(it, 5)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(5, args=ocp.args.Composite(
        params=ocp.args.StandardSave({"w": np.arange(3.0)}),
        data_iter=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = take(it, 3)

  fresh = iter(pipeline.create_train_dataset(config))
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        params=ocp.args.StandardRestore({"w": np.zeros(3)}),
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(restored["params"]["w"], np.arange(3.0))
  assert_batches_equal(expected, take(restored["data_iter"], 3))


def test_workers_give_the_same_batches_as_the_main_process(data_dir):
  config = make_config(data_dir, augment=ALL_AUGMENT)
  expected = take(iter(pipeline.create_train_dataset(config)), 4)
  config.data.num_workers = 2
  it = iter(pipeline.create_train_dataset(config))
  try:
    got = take(it, 4)
    state = it.get_state()
  finally:
    it.close()
  assert_batches_equal(expected, got)
  assert json.loads(json.dumps(state)) == state  # per-worker state, checkpointable as JSON


def test_workers_outlive_a_sigterm_to_the_whole_job(data_dir):
  """SLURM and systemd signal every process of a job; the trainer turns SIGTERM into a save, which needs more
  batches from the workers than they hold ready."""
  config = make_config(data_dir, augment=ALL_AUGMENT)
  expected = take(iter(pipeline.create_train_dataset(config)), 40)  # 3 epochs: far beyond grain's buffer
  config.data.num_workers = 1
  it = iter(pipeline.create_train_dataset(config))
  try:
    got = take(it, 2)
    workers = multiprocessing.active_children()
    assert workers
    for worker in workers:
      os.kill(worker.pid, signal.SIGTERM)
    time.sleep(0.5)
    assert all(worker.is_alive() for worker in workers)
    got += take(it, 38)
  finally:
    it.close()
  assert_batches_equal(expected, got)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_in_memory_cache_gives_the_same_batches_as_reading_the_files(data_dir, num_workers):
  config = make_config(data_dir, augment=ALL_AUGMENT, num_workers=num_workers)
  cached = make_config(data_dir, augment=ALL_AUGMENT, num_workers=num_workers, cache_max_mb=1)
  batches = []
  for c in (config, cached):
    it = iter(pipeline.create_train_dataset(c))
    try:
      batches.append(take(it, 30))  # > 2 epochs of the 103 training examples
    finally:
      if num_workers:
        it.close()
  assert_batches_equal(*batches)


def test_cache_is_used_when_the_split_fits(data_dir):
  builder = builders.prepared_builder(make_config(data_dir))
  source = tfexample.ExampleSource(builder, "train")
  keys = np.arange(len(source))  # 103 images of 12x12x1: 0.014 MB
  reader = lambda **kw: pipeline.train_reader(source, keys, builder, make_config(data_dir, **kw))
  assert isinstance(reader(), tfexample.ExampleSource)  # make_config sets cache_max_mb=0: never
  assert isinstance(reader(cache_max_mb=1), pipeline.CachedExamples)
  assert isinstance(reader(cache_max_mb=0.01), tfexample.ExampleSource)


def test_cached_examples_read_each_process_shard_only(data_dir):
  source = tfexample.ExampleSource(FerTinyTest(data_dir=data_dir, config="gray12",
                                                    file_format="array_record"), "train")
  keys = np.arange(1, len(source), 2)
  cached = pipeline.CachedExamples(source, keys, chunk=7)
  images, labels = cached.read_batch(keys[::-1])
  expected_images, expected_labels = source.read_batch(keys[::-1])
  np.testing.assert_array_equal(images, expected_images)
  np.testing.assert_array_equal(labels, expected_labels)
  with pytest.raises(KeyError, match="not among the cached examples"):
    cached.read_batch([0])
  assert pickle.loads(pickle.dumps(cached))._images is None  # workers load their own copy


def test_standardize_uses_cached_train_stats(data_dir):
  config = make_config(data_dir, normalization="standardize", config="rgb16")
  mean, std = stats.normalization_stats(config)
  assert len(mean) == len(std) == 3
  builder = FerTinyTest(data_dir=data_dir, config="rgb16", file_format="array_record")
  assert os.path.exists(os.path.join(builder.data_dir, stats._STATS_FILE))
  train = np.concatenate([b["image"] for b in take(iter(pipeline.create_train_dataset(config)), 12)])
  np.testing.assert_allclose(train.mean(axis=(0, 1, 2)), 0.0, atol=0.1)
  np.testing.assert_allclose(train.std(axis=(0, 1, 2)), 1.0, atol=0.1)
  batch = next(iter(pipeline.create_eval_dataset(config)))
  unit = next(iter(pipeline.create_eval_dataset(make_config(data_dir, config="rgb16"))))
  np.testing.assert_allclose(batch["image"][batch["mask"]],
                             ((unit["image"] - np.float32(mean)) / np.float32(std))[unit["mask"]], rtol=1e-5,
                             atol=1e-5)
  # A new process reads the statistics from the file rather than recomputing them: doctored, they come back.
  path = os.path.join(builder.data_dir, stats._STATS_FILE)
  original = open(path).read()
  doctored = {key: {**entry, "mean": [0.25] * 3} for key, entry in json.loads(original).items()}
  try:
    stats._STATS_CACHE.clear()
    with open(path, "w") as f:
      json.dump(doctored, f)
    assert stats.normalization_stats(config)[0] == pytest.approx([0.25] * 3)
  finally:
    with open(path, "w") as f:
      f.write(original)
    stats._STATS_CACHE.clear()


@pytest.mark.parametrize("split", ["validation", "test"])
@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_sees_every_example_exactly_once(data_dir, split, process_count):
  config = make_config(data_dir, augment=ALL_AUGMENT)  # eval ignores augmentation
  config.eval_batch_size = 6 if process_count == 1 else 12  # 37 and 50 are not multiples of these
  local_batch = config.eval_batch_size // process_count
  seen, batch_counts = [], []
  for p in range(process_count):
    ds = pipeline.create_eval_dataset(config, split, process_index=p, process_count=process_count)
    batches = list(ds)
    assert_batches_equal(batches, list(ds))  # iterable more than once, same result
    batch_counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (local_batch, 12, 12, 1) and batch["image"].dtype == np.float32
      assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool
      images, labels = batch["image"][batch["mask"]], batch["label"][batch["mask"]]
      np.testing.assert_array_equal(np.round(images[:, 0, 1, 0] * 255), list(SPLIT_SIZES).index(split))
      np.testing.assert_array_equal(labels, indices_of(images) % 7)
      seen.extend(indices_of(images))
      assert (batch["image"][~batch["mask"]] == 0).all()
  assert len(set(batch_counts)) == 1
  assert sorted(seen) == list(range(SPLIT_SIZES[split]))


def test_eval_pads_with_fully_masked_batches_when_needed(data_dir):
  config = make_config(data_dir)
  config.eval_batch_size = 3 * 6  # 37 examples over 3 processes: shards of 13, 12, 12 -> 3 batches each
  counts = []
  for p in range(3):
    masks = [b["mask"] for b in pipeline.create_eval_dataset(config, process_index=p, process_count=3)]
    counts.append(len(masks))
    assert sum(int(m.sum()) for m in masks) == len(range(p, 37, 3))
  assert counts == [3, 3, 3]
