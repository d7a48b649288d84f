"""TFDS builder for SYNTHETIC faces: procedurally drawn 48x48 expressions, no download.

The built-in default dataset, so that training, the input pipeline and the
tests run on a fresh machine. It is NOT real data: the images come from
`tfds_builders.synthetic_faces.drawing` (cartoon faces whose mouth, brows, eyes and nose
follow the label) and only say whether the pipeline learns, never how well a
model recognises real expressions. Features match the FER2013 builder, so
every consumer can swap one for the other.

    python -m fer_jax.data build synthetic_faces --data_dir DIR
    python -m fer_jax.data build synthetic_faces --config tiny --data_dir DIR
    python -m fer_jax.data build synthetic_faces --set train_size=50000 --set seed=1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from fer_jax.data.faces import EMOTIONS
from tfds_builders.synthetic_faces import drawing

# Split name -> random stream id (the position), so splits never share an image.
SPLITS: tuple[str, ...] = ("train", "validation", "test")
_CHUNK = 1000  # images drawn per call

_DESCRIPTION = """\
SYNTHETIC facial expressions (not real data): 48x48 grayscale cartoon faces
drawn procedurally from a seed by tfds_builders.synthetic_faces.drawing, labelled with the 7
FER2013 classes (angry, disgust, fear, happy, sad, surprise, neutral). The
label sets the mouth curve and opening, brow height and slant, eye opening and
nose wrinkles; pose, face shape, hair, tones, lighting, blur, noise and
expression strength vary per example. Built in seconds with no download, as
the default dataset for smoke tests and pipeline checks. Accuracy on it says
nothing about real-world expression recognition.
"""


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
  """Split sizes and seed; any other values give a different, equally valid dataset."""
  train_size: int = 20_000
  validation_size: int = 2_000
  test_size: int = 2_000
  seed: int = 0
  difficulty: float = 1.0  # scales jitter, expression-strength spread and noise


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
  """SYNTHETIC faces with FER2013's features and labels; see the module docstring."""

  name = "synthetic_faces"
  # The builder version is the drawing code's version: new pixels, new dataset folder.
  VERSION = tfds.core.Version(drawing.GENERATOR_VERSION)
  RELEASE_NOTES = {"1.0.0": "First SYNTHETIC faces generator."}
  BUILDER_CONFIGS = [
      SyntheticFacesConfig(name="default", description="SYNTHETIC: 20k/2k/2k faces, seed 0."),
      SyntheticFacesConfig(name="tiny", train_size=350, validation_size=70, test_size=70,
                           description="SYNTHETIC: 350/70/70 faces, for tests."),
  ]

  # tfds derives code_path via the `importlib_resources` backport, which it only requires on
  # Python < 3.9, so the lookup fails on newer Pythons for builders in an installed package.
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    # ArrayRecord by default: random access, and no TensorFlow needed, unlike TFRecord.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly: dataset_info_from_configs wants metadata files in this folder.
    metadata = tfds.core.MetadataDict()
    metadata["build_report"] = build_report(self.builder_config)
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            # Raw bytes like the fer2013 builder (tfds' Image feature needs TensorFlow to encode).
            "image": tfds.features.Tensor(shape=(drawing.SIZE, drawing.SIZE, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=list(EMOTIONS)),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=None,
        citation=None,
        metadata=metadata,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    config = self.builder_config
    stream = SPLITS.index(split)
    labels = split_labels(config, split)
    for lo in range(0, labels.size, _CHUNK):
      images = drawing.draw_faces(labels[lo:lo + _CHUNK], config.seed, stream=stream, start=lo,
                                  difficulty=config.difficulty)
      for i, image in enumerate(images):
        index = lo + i
        yield index, {"image": image[..., None], "label": int(labels[index]),
                      "id": f"synthetic/{split}/{index}"}


def split_labels(config: SyntheticFacesConfig, split: str) -> np.ndarray:
  """The labels of `split` in index order (example `synthetic/<split>/<i>` has labels[i])."""
  return drawing.balanced_labels(getattr(config, f"{split}_size"), config.seed, SPLITS.index(split))


def build_report(config: SyntheticFacesConfig) -> dict[str, Any]:
  """What the build drew, stored in the dataset's metadata (`python -m fer_jax.data info`)."""
  return {
      "synthetic": True,
      "generator": "tfds_builders.synthetic_faces.drawing",
      "generator_version": drawing.GENERATOR_VERSION,
      "seed": config.seed,
      "difficulty": config.difficulty,
      "class_counts": {
          split: dict(zip(EMOTIONS,
                          np.bincount(split_labels(config, split), minlength=drawing.NUM_CLASSES).tolist()))
          for split in SPLITS},
  }
