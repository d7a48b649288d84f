"""--annotate's drawing: each face's label is drawn whole inside the image, even on 48x48 face crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fer_jax.serving import predict
from fer_jax.serving.predict_output import draw

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@pytest.mark.parametrize("size, box", [
    ((48, 48), (0, 0, 48, 48)),         # a FER2013 crop with --no-detect: no room above or below the box
    ((48, 48), (6, 4, 36, 40)),         # a face filling a crop
    ((640, 480), (600, 300, 40, 40)),   # a face at the right edge: the label would run off to the right
    ((640, 480), (100, 0, 80, 80)),     # at the top edge: the label goes below the box
    ((640, 480), (100, 5, 200, 475)),   # no room above or below: inside the box's top edge
])
def test_the_label_is_drawn_whole_inside_the_image(size, box):
  width, height = size
  image = np.full((height, width, 3), 128, np.uint8)  # grey: the only dark pixels are the label's text
  probs = np.full((1, len(CLASSES)), 0.02, np.float32)
  probs[0, CLASSES.index("surprise")] = 0.88  # the longest class name
  drawn = draw(image, [box], probs, CLASSES)
  assert drawn.shape == image.shape
  assert_whole_label_inside(drawn)


def assert_whole_label_inside(drawn: np.ndarray) -> None:
  height, width = drawn.shape[:2]
  dark = np.argwhere(drawn.max(axis=2) < 64)
  assert len(dark) >= 15, "the label's text is not in the image"
  (r0, c0), (r1, c1) = dark.min(axis=0), dark.max(axis=0)
  # The text's bounding box has label background on every side within the image: nothing was cut off. The
  # label's pixels (green, black and their anti-aliased blends) have no red or blue; the grey image has.
  assert 1 <= r0 and r1 <= height - 2 and 1 <= c0 and c1 <= width - 2, (r0, r1, c0, c1)
  label = drawn[r0 - 1:r1 + 2, c0 - 1:c1 + 2]
  assert (label[..., [0, 2]] == 0).all()


def test_predict_annotates_a_48x48_crop_with_its_label_inside(tmp_path, capsys):
  crop = tmp_path / "crop.png"
  cv2.imwrite(str(crop), np.full((48, 48), 128, np.uint8))
  assert predict.main(["--no-detect", str(crop), "--annotate", str(tmp_path / "out"), "-o", str(tmp_path / "r.csv")]) == 0
  drawn = cv2.imread(str(tmp_path / "out" / "crop.png"))
  assert drawn.shape == (48, 48, 3)
  assert_whole_label_inside(drawn)
