"""fer_jax.detect_expressions: the one-call API on a real ExpW photo and on arrays, and a light `import fer_jax`."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

import fer_jax
from fer_jax.serving import expressions, pretrained, predict
from prediction_fixtures import PASTE, iou, scene, synthetic_face

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def expw_label_boxes(root, name: str) -> list[tuple[int, int, int, int]]:
  """The labelled faces of one ExpW photo as (x, y, w, h); label.lst has top, left, right, bottom."""
  boxes = []
  for line in (root / "label.lst").read_text().splitlines():
    fields = line.split()
    if fields and fields[0] == name:
      top, left, right, bottom = map(int, fields[2:6])
      boxes.append((left, top, right - left, bottom - top))
  return boxes


def check_faces(faces: list[expressions.Face]) -> None:
  for face in faces:
    assert list(face.probabilities) == list(CLASSES)
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert face.label == max(face.probabilities, key=face.probabilities.get)
  areas = [f.box[2] * f.box[3] for f in faces]
  assert areas == sorted(areas, reverse=True)  # largest first, as predict's rows


@pytest.mark.parametrize("name, faces_found", [("afraid_man_208.jpg", 1), ("afraid_couple_455.jpg", 2)])
def test_a_real_expw_photo(real_data, name, faces_found, tmp_path, capsys):
  root = real_data / "expw_sample"
  path = root / "origin" / name
  faces = fer_jax.detect_expressions(path)
  assert len(faces) == faces_found
  check_faces(faces)
  for label_box in expw_label_boxes(root, name):  # each labelled face is found
    assert max(iou(face.box, label_box) for face in faces) > 0.5, (faces, label_box)
  if name == "afraid_man_208.jpg":  # ExpW labels this face "fear"; the bundled model agrees with p = 0.80
    assert faces[0].label == "fear"
  # The same boxes and probabilities as the command line (which rounds to 6 decimals).
  assert predict.main([str(path), "-o", str(tmp_path / "rows.csv")]) == 0
  rows = list(csv.DictReader(open(tmp_path / "rows.csv", newline="")))
  assert [tuple(int(r[k]) for k in "xywh") for r in rows] == [f.box for f in faces]
  for row, face in zip(rows, faces):
    np.testing.assert_allclose([float(row[c]) for c in CLASSES], list(face.probabilities.values()), atol=1e-6)


def test_arrays_grey_bgr_and_rgb_and_whole_crops():
  bgr = scene(synthetic_face())  # a synthetic face pasted into a 640x480 frame: no real data needed
  faces = fer_jax.detect_expressions(bgr)
  assert len(faces) == 1 and iou(faces[0].box, (PASTE[0], PASTE[1], PASTE[2], PASTE[2])) > 0.5
  check_faces(faces)
  colour = bgr.copy()
  colour[..., 0] //= 2  # halve the blue channel: an RGB array read as BGR would halve red instead
  as_rgb = fer_jax.detect_expressions(colour[..., ::-1], rgb=True)
  assert as_rgb == fer_jax.detect_expressions(colour)
  assert fer_jax.detect_expressions(bgr[..., 0]) == faces  # grey [H, W]: the same pixels for a grey image
  crop = np.ascontiguousarray(bgr[PASTE[1]:PASTE[1] + PASTE[2], PASTE[0]:PASTE[0] + PASTE[2], 0])
  crop = crop[::4, ::4]  # a 48x48 face crop, classified whole
  whole, = fer_jax.detect_expressions(crop, detect=False)
  assert whole.box == (0, 0, 48, 48)
  want = pretrained.load().classifier(kernels="xla")(crop[None, ..., None])[0]
  np.testing.assert_allclose(list(whole.probabilities.values()), want, rtol=1e-5, atol=1e-6)
  assert fer_jax.detect_expressions(np.full((240, 320, 3), 128, np.uint8)) == []  # no face: an empty list


def test_options_choose_the_model_and_tta(workdir, loaded):
  image = scene(synthetic_face())
  face, = fer_jax.detect_expressions(image, workdir=workdir, tta="flip")
  want = loaded.classifier(tta="flip")(loaded.prep.face_pixels(image, face.box)[None])[0]
  np.testing.assert_allclose(list(face.probabilities.values()), want, rtol=1e-5, atol=1e-6)
  assert expressions._cached_detector(workdir=workdir, tta="flip") is expressions._cached_detector(
      workdir=workdir, tta="flip")  # loaded once per set of options


def test_bad_images_say_what_is_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file"):
    fer_jax.detect_expressions(tmp_path / "missing.jpg")
  (tmp_path / "bad.jpg").write_bytes(b"not a JPEG")
  with pytest.raises(ValueError, match="not a decodable image"):
    fer_jax.detect_expressions(tmp_path / "bad.jpg")
  with pytest.raises(ValueError, match="pass uint8 pixels"):
    fer_jax.detect_expressions(np.zeros((48, 48), np.float32))
  with pytest.raises(ValueError, match=r"shape \[4, 48, 48, 3\]"):
    fer_jax.detect_expressions(np.zeros((4, 48, 48, 3), np.uint8))


def test_import_fer_jax_loads_neither_jax_nor_opencv_until_used():
  code = ("import sys, fer_jax\n"
          "heavy = [m for m in ('jax', 'flax', 'cv2', 'numpy') if m in sys.modules]\n"
          "assert not heavy, heavy\n"
          "assert callable(fer_jax.detect_expressions) and 'jax' not in sys.modules\n"
          "print(fer_jax.Face.__name__)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "Face", out.stderr[-2000:]
