"""Face detection: the Haar cascade and YuNet find the faces of synthetic scenes and of real ExpW photos."""

from __future__ import annotations

import os
import pathlib
import sys

import cv2
import numpy as np
import pytest

from fer_jax.serving import face_detection
from prediction_fixtures import HAAR, PASTE, iou, scene, synthetic_face, two_face_scene


def test_detector_finds_an_upscaled_synthetic_face():
  if not HAAR:
    with pytest.raises(face_detection.DetectorUnavailableError, match=r"opencv-python-headless>=4.9,<5"):
      face_detection.HaarFaceDetector()
    pytest.skip(f"OpenCV {cv2.__version__} has no Haar cascade")
  for preset in (face_detection.VIDEO, face_detection.IMAGE):
    detector = face_detection.HaarFaceDetector(**preset)
    boxes = detector(scene(synthetic_face()))
    assert len(boxes) == 1 and iou(boxes[0], (PASTE[0], PASTE[1], PASTE[2], PASTE[2])) > 0.5, boxes
    assert detector(np.full((480, 640, 3), 128, np.uint8)) == []


def test_detector_unavailable_says_what_to_install(monkeypatch):
  monkeypatch.setattr(face_detection, "_cascade_class", lambda: None)
  with pytest.raises(face_detection.DetectorUnavailableError, match=r"opencv-python-headless>=4.9,<5.*--no-detect"):
    face_detection.HaarFaceDetector()


@pytest.mark.parametrize("detector", ["yunet", "haar"])
def test_detectors_put_the_largest_face_first(detector):
  if detector == "haar" and not HAAR:
    pytest.skip("this OpenCV has no Haar cascade")
  image, small, large = two_face_scene()
  for video in (True, False):
    boxes = face_detection.create(detector, video=video)(image)
    assert len(boxes) == 2, boxes
    assert iou(boxes[0], large) > 0.4 and iou(boxes[1], small) > 0.4, boxes  # largest first, not reading order


def test_yunet_finds_the_labelled_expw_faces_better_than_haar(real_data):
  """Issue 16's bar on real scene photos: recall >= 85% at IoU 0.4, fewer false boxes per photo than Haar."""
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
  import face_detection as bench  # bench/face_detection.py  pylint: disable=g-import-not-at-top

  data = os.path.join(real_data, "expw_sample")
  truth = bench.labelled_faces(data)
  names = sorted(truth)[::4]  # 250 of the 999 photos
  scores = {}
  for name in ("yunet", "haar"):
    detector = face_detection.create(name, video=False)
    hits = false = 0
    for image_name in names:
      found = [(x, y, x + w, y + h) for x, y, w, h in detector(cv2.imread(os.path.join(data, "origin", image_name)))]
      matched = bench.matches(truth[image_name], np.asarray(found, np.float64).reshape(-1, 4))
      hits, false = hits + matched, false + len(found) - matched
    scores[name] = (hits / sum(len(truth[n]) for n in names), false / len(names))
  assert scores["yunet"][0] >= 0.85 and scores["yunet"][1] < scores["haar"][1], scores


def test_yunet_leaves_the_openmp_setting_of_the_process_alone(monkeypatch):
  """Its libgomp is set to one thread while it loads; subprocesses and oneDNN must not inherit that."""
  monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
  face_detection.YuNetFaceDetector()
  assert "OMP_NUM_THREADS" not in os.environ
