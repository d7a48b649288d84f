"""What the prediction tests share: one tiny training run, synthetic scenes with a face, and predict's CLI.

The fixtures (`workdir`, `loaded`, `folder`) are session fixtures that every test module may ask for by name
(tests/conftest.py loads this module as a plugin): one training run serves them all. The helpers are imported.
"""

from __future__ import annotations

import csv
import pathlib

import cv2
import numpy as np
import pytest

from fer_jax.serving import face_detection, inference, predict
from train_test import tiny_config

HAAR = face_detection.haar_available()
PASTE = (200, 140, 192)  # x, y, side of the face pasted into the 640x480 scene


@pytest.fixture(scope="session")
def workdir(tmp_path_factory, synthetic_tiny_dir) -> str:
  """One tiny training run (checkpoints at steps 4 and 8), standardized inputs, trained once per session."""
  from fer_jax import train

  config = tiny_config(synthetic_tiny_dir)
  config.data.normalization = "standardize"
  path = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(config, path)
  return path


@pytest.fixture(scope="session")
def loaded(workdir) -> inference.LoadedModel:
  return inference.load(workdir)


def synthetic_face(label: int = 3, seed: int = 0) -> np.ndarray:
  from tfds_builders.synthetic_faces import drawing as synthetic_faces
  return synthetic_faces.draw_faces(np.array([label]), seed)[0]


def scene(face: np.ndarray, x: int = PASTE[0], y: int = PASTE[1], side: int = PASTE[2]) -> np.ndarray:
  """A 640x480 BGR frame: a grey gradient with noise and the face scaled up onto it."""
  rng = np.random.default_rng(1)
  frame = np.linspace(60, 200, 640)[None, :] + rng.normal(0, 8, (480, 640))
  frame = np.clip(frame, 0, 255).astype(np.uint8)
  frame[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
  return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)


def iou(a, b) -> float:
  ax, ay, aw, ah = a
  bx, by, bw, bh = b
  w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
  h = max(0, min(ay + ah, by + bh) - max(ay, by))
  return w * h / (aw * ah + bw * bh - w * h)


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> pathlib.Path:
  """photos/: a face in a scene, an unreadable file, a blank image, an empty subfolder, a text file."""
  root = tmp_path_factory.mktemp("inputs") / "photos"
  (root / "empty").mkdir(parents=True)
  cv2.imwrite(str(root / "face.png"), scene(synthetic_face()))
  cv2.imwrite(str(root / "blank.png"), np.full((200, 300, 3), 128, np.uint8))
  (root / "broken.jpg").write_bytes(b"this is not a JPEG")
  (root / "notes.txt").write_text("not an image: ignored")
  return root


def write_video(path: pathlib.Path, frames: int = 6) -> None:
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (640, 480))
  assert writer.isOpened()
  for i in range(frames):
    writer.write(scene(synthetic_face(), x=PASTE[0] + 8 * i))
  writer.release()


def run(args: list[str], capsys) -> tuple[int, str]:
  try:
    code = predict.main(args)
  except SystemExit as e:  # argparse's own errors
    code = e.code
  return code, capsys.readouterr().err


def read_csv(path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def two_face_scene() -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int, int, int]]:
  """A scene with a small face at the top left and a larger one lower right: (image, small box, large box)."""
  image = scene(synthetic_face(3, 0), x=360, y=140, side=220)
  image[60:180, 60:180] = cv2.resize(synthetic_face(5, 1), (120, 120))[..., None]
  return image, (60, 60, 120, 120), (360, 140, 220, 220)
