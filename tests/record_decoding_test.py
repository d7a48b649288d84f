"""fer_jax.data.tfexample: our batched decoding of tf.train.Example records gives what tfds's own decoding does."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fer_jax.data import tfexample
from tiny_dataset import FerTinyTest, example


def assert_decoded_equal(got, expected):
  assert got.keys() == expected.keys()
  assert np.asarray(got["image"]).dtype == expected["image"].dtype == np.uint8
  np.testing.assert_array_equal(got["image"], expected["image"])
  for key in set(expected) - {"image"}:
    assert got[key] == expected[key], key


def unstack(batch, i):
  return {key: value[i] for key, value in batch.items()}


@pytest.mark.parametrize("builder_config", ["gray12", "rgb16", "zlib12", "bytes12"])
def test_fast_decoder_equals_tfds(data_dir, builder_config):
  builder = FerTinyTest(data_dir=data_dir, config=builder_config, file_format="array_record")
  features = builder.info.features
  decoder = tfexample.ExampleDecoder(features)
  assert decoder._fallback is None and decoder._wire  # our decoding, not tfds's
  records = list(builder.as_data_source(split="validation").data_source)
  # Edge cases for the varint trick: no pixel >= 128, every pixel >= 128, extremes.
  shape = features["image"].shape
  for fill in (0, 1, 127, 128, 255):
    records.append(features.serialize_example(example(features, np.full(shape, fill, np.uint8), 6, "x")))
  expected = [features.deserialize_example_np(r) for r in records]
  wire = decoder._decode_wire(records)
  assert wire is not None and wire["image"].shape == (len(records), *shape)
  for i, record in enumerate(records):
    assert_decoded_equal(unstack(wire, i), expected[i])
    assert_decoded_equal(decoder(record), expected[i])
  batch = decoder.decode_batch(records[:7])
  for i in range(7):
    assert_decoded_equal(unstack(batch, i), expected[i])


def test_fast_decoder_falls_back_on_unexpected_layouts(data_dir):
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  features = FerTinyTest(data_dir=data_dir, config="gray12", file_format="array_record").info.features
  decoder = tfexample.ExampleDecoder(features)
  records = [features.serialize_example({"image": np.full((12, 12, 1), v, np.uint8), "label": v % 7, "id": "y"})
             for v in (3, 200)]
  proto = tf_example_pb2.Example.FromString(records[1])
  proto.features.feature["extra"].bytes_list.value.extend([b"a", b"b"])  # several values: not our layout
  odd = proto.SerializeToString()
  assert decoder._decode_wire([records[0], odd]) is None
  assert decoder._decode_wire([b"\x0a\x05\x0a"]) is None  # truncated
  batch = decoder.decode_batch([records[0], odd])
  for i, record in enumerate(records):
    assert_decoded_equal(unstack(batch, i), features.deserialize_example_np(record))


def test_decoder_of_features_it_does_not_cover_batches_tfds_decoding():
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
      "label": tfds.features.ClassLabel(num_classes=7),
      "landmarks": tfds.features.Tensor(shape=(None,), dtype=np.int64),  # variable length: tfds's decoding
  })
  decoder = tfexample.ExampleDecoder(features)
  assert decoder._fallback is not None
  examples = [{"image": np.full((4, 4, 1), v, np.uint8), "label": v % 7, "landmarks": np.arange(v % 3 + 1)}
              for v in (3, 200)]
  batch = decoder.decode_batch([features.serialize_example(e) for e in examples])
  assert batch["image"].shape == (2, 4, 4, 1) and list(batch["label"]) == [3, 4]
  for got, e in zip(batch["landmarks"], examples):
    np.testing.assert_array_equal(got, e["landmarks"])
