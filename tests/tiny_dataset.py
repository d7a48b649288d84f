"""A tiny tfds dataset built in the test session, whose images say which example and split they are.

Shared by the input pipeline's tests and the record decoder's: `data_dir` is a session fixture every test
module may ask for (tests/conftest.py loads this module as a plugin; train_test and multiprocess_test
override the name with their own synthetic dataset).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

SPLIT_SIZES = {"train": 103, "validation": 37, "test": 50}


EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class FerTinyTest(tfds.core.GeneratorBasedBuilder):
  """7-class dataset whose pixel (0, 0, 0) holds the example index and (0, 1, 0) the split code."""

  VERSION = tfds.core.Version("1.0.0")
  # Image encodings: gray12/rgb16 tfds's default (int64 varints), zlib12 zlib, bytes12 raw bytes
  # plus a float Scalar, like ExpW.
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in ("gray12", "rgb16", "zlib12", "bytes12")]

  def _info(self) -> tfds.core.DatasetInfo:
    name = self.builder_config.name
    shape = (16, 16, 3) if name == "rgb16" else (12, 12, 1)
    encoding = {"zlib12": "zlib", "bytes12": "bytes"}.get(name, "none")
    features = {"image": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=encoding),
                "label": tfds.features.ClassLabel(names=EMOTIONS),
                "id": tfds.features.Text()}
    if name == "bytes12":
      features["confidence"] = tfds.features.Scalar(dtype=np.float32)
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in SPLIT_SIZES}

  def _generate_examples(self, split):
    code = list(SPLIT_SIZES).index(split)
    shape = self.info.features["image"].shape
    for i in range(SPLIT_SIZES[split]):
      image = np.random.default_rng([code, i]).integers(0, 256, shape, dtype=np.uint8)
      image[0, 0, 0], image[0, 1, 0] = i, code
      yield f"{split}-{i}", example(self.info.features, image, i % 7, f"{split}-{i}")


def example(features, image, label, id_):
  out = {"image": image, "label": label, "id": id_}
  if "confidence" in features:
    out["confidence"] = 0.25 + label / 10
  return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """The four configs of FerTinyTest, built once per session as ArrayRecord files."""
  tfds.disable_progress_bar()
  path = str(tmp_path_factory.mktemp("tfds"))
  for name in ("gray12", "rgb16", "zlib12", "bytes12"):
    FerTinyTest(data_dir=path, config=name, file_format="array_record").download_and_prepare()
  return path
