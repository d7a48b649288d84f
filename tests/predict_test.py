"""Prediction from a real (tiny) training run: loading, detection, CLI rows and formats, video, TTA, errors."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import pathlib
import shutil
import sys

import cv2
import numpy as np
import pytest

from fer_jax.serving import classifier as classifier_lib
from fer_jax.serving import face_detection, inference, predict, predict_output, smoothing
from train_test import tiny_config

HAAR = face_detection.haar_available()
needs_haar = pytest.mark.skipif(
    not HAAR, reason=f"OpenCV {cv2.__version__} has no Haar cascade (CascadeClassifier and its XML ship with "
    "opencv-python-headless < 5)")
PASTE = (200, 140, 192)  # x, y, side of the face pasted into the 640x480 scene


_TRAINED: dict[str, str] = {}  # export_test imports these fixtures: one training run for both modules


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, synthetic_tiny_dir) -> str:
  """One tiny training run (checkpoints at steps 4 and 8), standardized inputs: shared by every test here."""
  if "workdir" not in _TRAINED:
    from fer_jax import train

    config = tiny_config(synthetic_tiny_dir)
    config.data.normalization = "standardize"
    path = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(config, path)
    _TRAINED["workdir"] = path
  return _TRAINED["workdir"]


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


def test_preprocessing_rules():
  card = {"dataset": "fer2013", "class_names": list("abcdefg"), "num_classes": 7, "image_shape": [48, 48, 1],
          "crop_size": 0, "normalization": {"kind": "unit", "mean": None, "std": None}}
  assert inference.Preprocessing.from_card(card).margin == 0.0  # FER2013: tight crops
  expw = dict(card, dataset="expw", image_shape=[96, 96, 3])
  # ExpW: label box (Haar box / 0.91) plus the builder's 0.2 margin on each side.
  assert inference.Preprocessing.from_card(expw).margin == pytest.approx((1.4 / 0.91 - 1) / 2)
  assert inference.Preprocessing.from_card(dict(expw, face_margin=0.3)).margin == pytest.approx((1.6 / 0.91 - 1) / 2)
  prep = inference.Preprocessing.from_card(expw, margin=0.5)
  bgr = np.zeros((100, 200, 3), np.uint8)
  bgr[..., 2] = 255  # red in BGR
  face = prep.face_pixels(bgr, (80, 40, 20, 20))  # grows to 40x40, clipped to the image
  assert face.shape == (96, 96, 3) and (face[..., 0] == 255).all() and (face[..., 2] == 0).all()  # RGB
  grey = inference.Preprocessing.from_card(card).face_pixels(bgr)
  assert grey.shape == (48, 48, 1) and grey.dtype == np.uint8


def test_centre_crop_and_colour_models():
  """An ExpW-like model: RGB, standardized, trained on 8x8 crops of 12x12 images."""
  import jax
  import jax.numpy as jnp

  from fer_jax import models

  model = models.create_model("cnn", num_classes=7, dtype=jnp.float32, conv_features=(4,), dense_features=(8,))
  prep = inference.Preprocessing(class_names=tuple("abcdefg"), image_shape=(12, 12, 3), crop_size=8,
                                 normalization="standardize", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
  assert prep.input_shape == (8, 8, 3)
  variables = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 8, 8, 3)), train=False)
  faces = np.random.default_rng(0).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
  x = (faces.astype(np.float32) / 255 - np.float32(prep.mean)) / np.float32(prep.std)
  expected = jax.nn.softmax(model.apply(variables, x[:, 2:10, 2:10], train=False))
  got = inference.FaceClassifier(inference.probabilities_fn(model.apply, prep), variables, prep)(faces)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  ten = inference.FaceClassifier(inference.probabilities_fn(model.apply, prep, "ten_crop"), variables, prep)
  crops = [x[:, :8, :8], x[:, :8, 4:], x[:, 4:, :8], x[:, 4:, 4:], x[:, 2:10, 2:10]]
  crops += [c[:, :, ::-1] for c in crops]  # the four corners and the centre, each also mirrored
  expected = np.mean([jax.nn.softmax(model.apply(variables, c, train=False)) for c in crops], axis=0)
  np.testing.assert_allclose(ten(faces), expected, rtol=1e-5, atol=1e-6)


def test_classifier_pads_batches_without_changing_results(loaded):
  classifier = loaded.classifier(batch_size=4)
  faces = np.random.default_rng(0).integers(0, 256, (7, 48, 48, 1), dtype=np.uint8)
  together = classifier(faces)  # chunks of 4 and 3 (padded to 4)
  one_by_one = np.concatenate([classifier(faces[i:i + 1]) for i in range(7)])
  np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(together.sum(axis=1), 1.0, rtol=1e-5)
  assert classifier_lib.bucket_size(3, 32) == 4 and classifier_lib.bucket_size(33, 32) == 32
  with pytest.raises(ValueError, match=r"uint8 \[N, 48, 48, 1\]"):
    classifier(np.zeros((2, 32, 32, 1), np.uint8))


def test_folder_without_detection_gives_exact_rows(loaded, workdir, folder, tmp_path, capsys):
  out = tmp_path / "rows.csv"
  code, err = run(["--workdir", workdir, str(folder), "--no-detect", "--output", str(out)], capsys)
  assert code == 0
  rows = read_csv(out)
  assert list(rows[0]) == ["file", "frame", "face", "x", "y", "w", "h", "label", *loaded.prep.class_names, "error"]
  got = [(r["file"], r["frame"], r["face"], r["x"], r["y"], r["w"], r["h"], r["error"]) for r in rows]
  assert got == [
      (str(folder / "blank.png"), "0", "0", "0", "0", "300", "200", ""),
      (str(folder / "broken.jpg"), "", "", "", "", "", "", "not a decodable image (18 bytes)"),
      (str(folder / "face.png"), "0", "0", "0", "0", "640", "480", ""),
  ]
  assert f"{folder / 'broken.jpg'}: not a decodable image" in err
  # The probabilities are the classifier's on the whole image, resized like the dataset.
  image = cv2.imread(str(folder / "face.png"))
  expected = loaded.classifier()(loaded.prep.face_pixels(image)[None])[0]
  probs = np.array([float(rows[2][c]) for c in loaded.prep.class_names])
  np.testing.assert_allclose(probs, expected, atol=1e-6)
  assert rows[2]["label"] == loaded.prep.class_names[int(np.argmax(expected))]


@pytest.mark.parametrize("detector", ["yunet", "haar"])
def test_folder_with_detection_gives_exact_rows(workdir, folder, tmp_path, capsys, detector):
  if detector == "haar" and not HAAR:
    pytest.skip("this OpenCV has no Haar cascade")
  out = tmp_path / "rows.csv"
  code, err = run(["--workdir", workdir, str(folder), "--output", str(out), "--detector", detector], capsys)
  assert code == 0
  rows = read_csv(out)
  assert [(r["file"], r["frame"], r["face"], r["error"]) for r in rows] == [
      (str(folder / "blank.png"), "0", "", "no face found"),
      (str(folder / "broken.jpg"), "", "", "not a decodable image (18 bytes)"),
      (str(folder / "face.png"), "0", "0", ""),
  ]
  box = tuple(int(rows[2][k]) for k in "xywh")
  assert iou(box, (PASTE[0], PASTE[1], PASTE[2], PASTE[2])) > 0.5
  assert f"{folder / 'blank.png'}: no face found" in err


def test_jsonl_parses_and_probabilities_sum_to_one(loaded, workdir, folder, tmp_path, capsys):
  out = tmp_path / "rows.jsonl"
  code, _ = run(["--workdir", workdir, str(folder), "--no-detect", "--format", "jsonl", "-o", str(out)], capsys)
  assert code == 0
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert [os.path.basename(line["file"]) for line in lines] == ["blank.png", "broken.jpg", "face.png"]
  for line in lines:
    assert set(line) == {"file", "frame", "face", "box", "label", "probabilities", "error"}
    if line["error"] is None:
      probs = line["probabilities"]
      assert list(probs) == list(loaded.prep.class_names)
      assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
      assert line["label"] == max(probs, key=probs.get)
  assert lines[1]["error"].startswith("not a decodable image") and lines[1]["probabilities"] is None


def test_csv_to_stdout(workdir, folder, capsys):
  assert predict.main(["--workdir", workdir, str(folder / "face.png"), "--no-detect"]) == 0
  rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
  assert len(rows) == 1 and rows[0]["error"] == ""
  assert sum(float(rows[0][c]) for c in ("angry", "disgust", "fear", "happy", "sad", "surprise",
                                          "neutral")) == pytest.approx(1.0, abs=1e-5)


def test_video_gives_a_row_per_frame_and_annotations(workdir, tmp_path, capsys):
  video = tmp_path / "clip.mp4"
  write_video(video, frames=6)
  out, annotated = tmp_path / "rows.csv", tmp_path / "annotated"
  detect = ["--detector", "haar"] if HAAR else ["--no-detect"]
  code, _ = run(["--workdir", workdir, str(video), str(tmp_path / "missing.png"), "--output", str(out),
                 "--annotate", str(annotated), *detect], capsys)
  assert code == 0
  rows = read_csv(out)
  assert [(r["frame"], r["face"]) for r in rows[:-1]] == [(str(i), "0") for i in range(6)]
  assert rows[-1]["error"] == "no such file or directory"
  if HAAR:  # the face moves 8 pixels right per frame
    for i, r in enumerate(rows[:-1]):
      assert iou(tuple(int(r[k]) for k in "xywh"), (PASTE[0] + 8 * i, PASTE[1], PASTE[2], PASTE[2])) > 0.5
  capture = cv2.VideoCapture(str(annotated / "clip.mp4"))
  frames = 0
  while capture.read()[0]:
    frames += 1
  assert frames == 6


def test_annotate_writes_images(workdir, folder, tmp_path, capsys):
  annotated = tmp_path / "annotated"
  code, _ = run(["--workdir", workdir, str(folder), "--no-detect", "--annotate", str(annotated),
                 "-o", str(tmp_path / "rows.csv")], capsys)
  assert code == 0
  written = sorted(str(p.relative_to(annotated)) for p in annotated.rglob("*") if p.is_file())
  assert written == ["photos/blank.png", "photos/face.png"]
  drawn = cv2.imread(str(annotated / "photos/face.png"))
  assert drawn.shape == (480, 640, 3)
  original = cv2.imread(str(folder / "face.png"))
  assert not np.array_equal(drawn, original)  # the box and label are drawn
  # Exactly the input with its whole-image box (--no-detect) and the classifier's label drawn (PNG: lossless).
  loaded = inference.load(workdir)
  probs = loaded.classifier()(loaded.prep.face_pixels(original)[None])
  expected = predict_output.draw(original, [(0, 0, 640, 480)], probs, loaded.prep.class_names)
  np.testing.assert_array_equal(drawn, expected)
  assert (drawn[240, :2] == (0, 255, 0)).all() and (drawn[240, 2:4] == original[240, 2:4]).all()  # a green border


def test_checkpoint_path_and_step(loaded, workdir, folder, tmp_path, capsys):
  image = str(folder / "face.png")
  outs = {}
  for name, args in {"latest": ["--workdir", workdir], "path": ["--checkpoint", f"{workdir}/checkpoints/8"],
                     "step4": ["--workdir", workdir, "--step", "4"]}.items():
    outs[name] = tmp_path / f"{name}.csv"
    assert run([*args, image, "--no-detect", "-o", str(outs[name])], capsys)[0] == 0
  assert outs["latest"].read_text() == outs["path"].read_text()
  assert outs["latest"].read_text() != outs["step4"].read_text()
  assert loaded.step == 8 and inference.load(checkpoint=f"{workdir}/checkpoints/4").step == 4


def test_bad_checkpoints_exit_2_with_a_message(workdir, folder, tmp_path, capsys):
  image = str(folder / "face.png")
  cases = {
      "does not exist": ["--workdir", str(tmp_path / "nowhere")],
      "checkpoints/99 does not exist": ["--checkpoint", f"{workdir}/checkpoints/99"],
      "available steps: 4, 8": ["--workdir", workdir, "--step", "5"],
      "no finished checkpoint": ["--workdir", str(tmp_path)],
      "is not a checkpoint step directory": ["--checkpoint", f"{workdir}/checkpoints"],
      "at most one of": ["--workdir", workdir, "--checkpoint", f"{workdir}/checkpoints/8"],
  }
  (tmp_path / "checkpoints").mkdir()
  for message, args in cases.items():
    code, err = run([*args, image, "--no-detect"], capsys)
    assert code == 2 and message in err, (args, err)
  # A model.json that describes another network than the checkpoint holds.
  card = json.loads((pathlib.Path(workdir) / "model.json").read_text())
  card["config"]["model_kwargs"]["conv_features"] = [8, 32]
  (tmp_path / "other.json").write_text(json.dumps(card))
  code, err = run(["--workdir", workdir, "--model_card", str(tmp_path / "other.json"), image, "--no-detect"], capsys)
  assert code == 2 and "does not match the model" in err and "Conv_1" in err


def test_nothing_readable_exits_1(workdir, folder, tmp_path, capsys):
  out = tmp_path / "rows.csv"
  code, err = run(["--workdir", workdir, str(folder / "empty"), str(folder / "broken.jpg"),
                   str(tmp_path / "missing.png"), "--no-detect", "-o", str(out)], capsys)
  assert code == 1 and "no input could be read" in err
  assert [(r["file"], r["error"]) for r in read_csv(out)] == [
      (str(folder / "empty"), "no image or video files in this folder"),
      (str(folder / "broken.jpg"), "not a decodable image (18 bytes)"),
      (str(tmp_path / "missing.png"), "no such file or directory"),
  ]


def test_flip_tta_is_the_mean_of_plain_and_mirrored(loaded):
  plain, flip = loaded.classifier(), loaded.classifier(tta="flip")
  face = synthetic_face()[:, :, None]
  faces = np.stack([face, face[:, ::-1]])
  p = plain(faces)
  np.testing.assert_allclose(flip(faces[:1])[0], (p[0] + p[1]) / 2, rtol=1e-5, atol=1e-7)
  half = face[:, :24]
  symmetric = np.concatenate([half, half[:, ::-1]], axis=1)[None]
  np.testing.assert_allclose(flip(symmetric), plain(symmetric), rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="ten_crop.* needs a model trained on crops"):
    loaded.classifier(tta="ten_crop")


def test_real_fer2013_images(real_data, loaded):
  """Real FER2013 crops: --no-detect keeps their pixels as the dataset stores them; the cascade finds them."""
  paths = sorted((real_data / "fer2013" / "test" / "happy").glob("*.jpg"))[:20]
  found = 0
  detector = face_detection.HaarFaceDetector() if HAAR else None
  for path in paths:
    image, error = predict.read_image(str(path))
    assert error == ""
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(loaded.prep.face_pixels(image)[..., 0], grey)
    if detector is not None:
      boxes = detector(scene(grey))
      found += len(boxes) == 1 and iou(boxes[0], (PASTE[0], PASTE[1], PASTE[2], PASTE[2])) > 0.5
  if detector is not None:
    assert found >= 0.6 * len(paths), f"the cascade found {found} of {len(paths)} real faces"


@pytest.mark.parametrize("option,message", [
    (["--margin", "-5"], "--margin -5.0 must be a fraction of the box side in [0, 2]"),
    (["--margin", "nan"], "--margin nan must be"),
    (["--batch_size", "12"], "--batch_size 12 must be a power of two"),
    (["--min_neighbors", "-1"], "--min_neighbors -1 must be >= 0"),
    (["--detector", "haar", "--scale_factor", "1.0"], "scale_factor=1.0 must be > 1"),
    (["--scale_factor", "1.1"], "--cascade and --scale_factor are Haar cascade settings: add --detector haar"),
    (["--min_score", "2"], "min_score=2.0 must be in [0, 1]"),
    (["--detector", "dlib"], "argument --detector: invalid choice: 'dlib'"),
    (["--smooth", "three"], "argument --smooth: invalid int value: 'three'"),
    (["--smooth", "0"], "--smooth 0 must be >= 1"),
])
def test_bad_option_values_are_one_error_line(workdir, folder, tmp_path, capsys, option, message):
  out = tmp_path / "rows.csv"
  code, err = run(["--workdir", workdir, *option, str(folder / "face.png"), "-o", str(out)], capsys)
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and lines[0].startswith(f"predict: error: {message}"), err
  assert not out.exists()


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


def test_unwritable_destinations_fail_at_start_in_one_line(workdir, folder, tmp_path, capsys):
  (tmp_path / "file.txt").write_text("a file, not a folder")
  for option in ("--output", "--annotate"):
    target = str(tmp_path / "file.txt" / "inside")
    code, err = run(["--workdir", workdir, str(folder / "face.png"), "--no-detect", option, target], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"predict: error: cannot write {option} {target}: ")


def test_output_on_a_full_disk_exits_3_and_leaves_no_partial_file(workdir, folder, tmp_path, capsys, monkeypatch):
  class FullAfterHeader:  # the csv writer of a disk that fills up after the header line
    def __init__(self, *args, **kwargs):
      self.rows = 0

    def writerow(self, row):
      self.rows += 1
      if self.rows > 1:
        _no_space()

  monkeypatch.setattr(predict_output.csv, "writer", FullAfterHeader)
  out = tmp_path / "out" / "rows.csv"
  code, err = run(["--workdir", workdir, str(folder / "face.png"), "--no-detect", "-o", str(out)], capsys)
  assert code == 3 and err.strip().splitlines() == [
      f"predict: error: cannot write --output {out}: No space left on device; stopped, and no partial file was left."]
  assert os.listdir(out.parent) == []


def test_annotate_on_a_full_disk_exits_3_and_leaves_no_partial_file(workdir, folder, tmp_path, capsys, monkeypatch):
  real_open = open

  class HalfWritten:  # files of a disk that fills up after the start-up check
    def __new__(cls, path, mode):
      return real_open(path, mode) if "fer_jax_probe" in str(path) else super().__new__(cls)

    def __init__(self, path, mode):
      self.f = real_open(path, mode)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

    def write(self, data):
      self.f.write(data[:len(data) // 2])
      _no_space()

  monkeypatch.setattr(predict_output, "open", HalfWritten, raising=False)
  annotated = tmp_path / "annotated"
  code, err = run(["--workdir", workdir, str(folder / "face.png"), "--no-detect", "--annotate", str(annotated)],
                  capsys)
  assert code == 3 and err.strip().splitlines() == [
      f"predict: error: cannot write the annotated copy {annotated / 'face.png'}: No space left on device; "
      "stopped, and no partial file was left."]
  assert [p for p in annotated.rglob("*") if p.is_file()] == []


def test_an_annotated_video_that_does_not_read_back_is_removed(workdir, tmp_path, capsys, monkeypatch):
  video = tmp_path / "clip.mp4"
  write_video(video, frames=4)
  # Frames counted but lost on the way to the file, as on a full disk (OpenCV reports no write errors).
  monkeypatch.setattr(predict_output.AnnotatedVideo, "write", lambda self, frame: setattr(self, "frames",
                                                                                            self.frames + 1))
  annotated = tmp_path / "annotated"
  code, err = run(["--workdir", workdir, str(video), "--no-detect", "--annotate", str(annotated)], capsys)
  assert code == 3 and "cannot write the annotated video" in err and "0 of 4 frames came out" in err
  assert [p for p in annotated.rglob("*") if p.is_file()] == []


def test_camera_streams_the_rows_of_its_frames_and_smooth_means_the_last_k(workdir, tmp_path, capsys):
  """A video file stands in for the capture device (OpenCV opens both the same way)."""
  video = tmp_path / "clip.mp4"
  write_video(video, frames=6)
  detect = ["--detector", "haar"] if HAAR else ["--no-detect"]
  plain, smoothed = tmp_path / "plain.csv", tmp_path / "smoothed.csv"
  assert run(["--workdir", workdir, str(video), "-o", str(plain), *detect], capsys)[0] == 0
  code, err = run(["--workdir", workdir, "--camera", str(video), "--smooth", "3", "-o", str(smoothed), *detect],
                  capsys)
  assert code == 0, err
  plain_rows, smooth_rows = read_csv(plain), read_csv(smoothed)
  assert [r["file"] for r in smooth_rows] == [f"camera:{video}"] * 6
  names = list(predict.load_classifier(predict.build_parser().parse_args(["--workdir", workdir, "x"])).class_names)
  probs = np.array([[float(r[n]) for n in names] for r in plain_rows])
  for i, row in enumerate(smooth_rows):  # one face, followed across frames: the mean of its last 3
    np.testing.assert_allclose([float(row[n]) for n in names], probs[max(0, i - 2):i + 1].mean(axis=0), atol=2e-6)
    assert row["label"] == names[int(np.argmax([float(row[n]) for n in names]))]


def test_smoother_follows_each_face_by_overlap():
  smoother = smoothing.FaceSmoother(2)
  a, b = np.eye(3)[0], np.eye(3)[1]
  np.testing.assert_allclose(smoother([(0, 0, 10, 10), (50, 0, 10, 10)], np.stack([a, b])), np.stack([a, b]))
  # The faces swap order and move a little; a third face appears far away and starts its own history.
  out = smoother([(52, 1, 10, 10), (1, 0, 10, 10), (200, 200, 10, 10)], np.stack([a, b, b]))
  np.testing.assert_allclose(out, np.stack([(b + a) / 2, (a + b) / 2, b]))
  out = smoother([(1, 0, 10, 10)], np.stack([a]))
  np.testing.assert_allclose(out, [(b + a) / 2])  # only the last 2 frames of that face


def test_show_without_a_display_is_one_error_line(workdir, folder, capsys, monkeypatch):
  monkeypatch.delenv("DISPLAY", raising=False)
  monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
  code, err = run(["--workdir", workdir, "--show", str(folder / "face.png")], capsys)
  assert code == 2 and err.strip().splitlines() == [
      "predict: error: --show needs a display, and neither $DISPLAY nor $WAYLAND_DISPLAY is set."]
  code, err = run(["--workdir", workdir], capsys)
  assert code == 2 and "give INPUT files or folders, or --camera N" in err


def test_without_yunet_predict_falls_back_to_haar_unless_asked_for_yunet(workdir, folder, capsys, monkeypatch):
  def missing():
    raise face_detection.DetectorUnavailableError("the YuNet detector needs the 'yuface' package.")
  monkeypatch.setattr(face_detection, "_yunet_backend", missing)
  code, err = run(["--workdir", workdir, str(folder / "face.png")], capsys)
  assert code == 0 and "predict: note: the YuNet detector needs the 'yuface' package. Using the Haar cascade" in err
  code, err = run(["--workdir", workdir, "--detector", "yunet", str(folder / "face.png")], capsys)
  assert code == 2 and err.strip() == "predict: error: the YuNet detector needs the 'yuface' package."


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


def two_face_scene() -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int, int, int]]:
  """A scene with a small face at the top left and a larger one lower right: (image, small box, large box)."""
  image = scene(synthetic_face(3, 0), x=360, y=140, side=220)
  image[60:180, 60:180] = cv2.resize(synthetic_face(5, 1), (120, 120))[..., None]
  return image, (60, 60, 120, 120), (360, 140, 220, 220)


@pytest.mark.parametrize("detector", ["yunet", "haar"])
def test_detectors_put_the_largest_face_first(detector):
  if detector == "haar" and not HAAR:
    pytest.skip("this OpenCV has no Haar cascade")
  image, small, large = two_face_scene()
  for video in (True, False):
    boxes = face_detection.create(detector, video=video)(image)
    assert len(boxes) == 2, boxes
    assert iou(boxes[0], large) > 0.4 and iou(boxes[1], small) > 0.4, boxes  # largest first, not reading order


def test_predict_numbers_the_faces_of_a_frame_largest_first(workdir, tmp_path, capsys):
  image, small, large = two_face_scene()
  cv2.imwrite(str(tmp_path / "two.png"), image)
  out = tmp_path / "rows.csv"
  assert run(["--workdir", workdir, str(tmp_path / "two.png"), "--detector", "yunet", "-o", str(out)], capsys)[0] == 0
  rows = read_csv(out)
  assert [r["face"] for r in rows] == ["0", "1"]
  assert iou(tuple(int(rows[0][k]) for k in "xywh"), large) > 0.4
  assert iou(tuple(int(rows[1][k]) for k in "xywh"), small) > 0.4


def save_poisoned_steps(workdir: str, copy: pathlib.Path, synthetic_tiny_dir: str) -> None:
  """Copies the run and adds step 9 with a NaN parameter and step 10 with an Inf one, both sealed."""
  import jax

  from fer_jax import checkpoint_checksums, checkpointing, train
  from fer_jax.data import pipeline

  shutil.copytree(workdir, copy)
  config = tiny_config(synthetic_tiny_dir)
  config.data.normalization = "standardize"  # as the workdir fixture trained
  trainer = train.Trainer(config, str(copy))
  manager = checkpointing.create_manager(str(copy), config)
  state = checkpointing.restore(manager, 8, trainer.abstract_state)
  train_iter = iter(pipeline.create_train_dataset(config))
  for step, value in ((9, np.nan), (10, np.inf)):
    leaves, treedef = jax.tree.flatten(state.params)
    leaves[-1] = leaves[-1].at[0].set(value)
    checkpointing.save(manager, step, state.replace(params=jax.tree.unflatten(treedef, leaves)), train_iter, None)
  manager.wait_until_finished()
  manager.close()
  checkpoint_checksums.seal_finalized(checkpointing.checkpoint_dir(str(copy)))


def test_predict_refuses_a_checkpoint_with_nan_or_inf_parameters(workdir, synthetic_tiny_dir, folder, tmp_path,
                                                                 capsys):
  copy = tmp_path / "run"
  save_poisoned_steps(workdir, copy, synthetic_tiny_dir)
  image = str(folder / "face.png")
  for step in (9, 10):
    out = tmp_path / f"step{step}.csv"
    code, err = run(["--workdir", str(copy), "--step", str(step), image, "--no-detect", "-o", str(out)], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"predict: error: checkpoint {copy / 'checkpoints' / str(step)} holds NaN or Inf parameters (damaged, or "
        "saved from a diverged run): use another step (--step N)."], err
    assert not out.exists()
  assert run(["--workdir", str(copy), "--step", "8", image, "--no-detect"], capsys)[0] == 0


def test_unreadable_inputs_and_faceless_videos_give_their_error_rows(workdir, tmp_path, capsys):
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 100)
  faceless = tmp_path / "faceless.mp4"
  writer = cv2.VideoWriter(str(faceless), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (640, 480))
  for i in range(3):
    writer.write(np.full((480, 640, 3), 100 + 20 * i, np.uint8))
  writer.release()
  out = tmp_path / "rows.csv"
  inputs = [str(tmp_path / n) for n in ("empty.png", "broken.mp4", "faceless.mp4")]
  code, err = run(["--workdir", workdir, *inputs, "--detector", "yunet", "-o", str(out)], capsys)
  assert code == 0, err  # the faceless video was read
  assert [(r["file"], r["frame"], r["error"]) for r in read_csv(out)] == [
      (inputs[0], "", "empty file"),
      (inputs[1], "", "cannot read video (not a video, or this OpenCV has no decoder for it)"),
      (inputs[2], "", "no face found in any of the 3 frames"),
  ]
  assert f"{inputs[2]}: no face found in any of the 3 frames" in err


def test_a_camera_that_cannot_be_read_is_an_error_row(workdir, tmp_path, capsys):
  out = tmp_path / "rows.csv"
  code, err = run(["--workdir", workdir, "--camera", "97", "--no-detect", "-o", str(out)], capsys)
  assert code == 1 and "predict: camera:97: cannot read camera 97" in err and "no input could be read" in err
  assert [(r["file"], r["error"]) for r in read_csv(out)] == [("camera:97", "cannot read camera 97")]


def test_dtype_sets_the_compute_dtype(workdir, folder, tmp_path, capsys):
  import jax.numpy as jnp

  assert inference.load(workdir, dtype="bfloat16").model.dtype == jnp.bfloat16
  assert inference.load(workdir).model.dtype == jnp.float32  # the config's
  image = str(folder / "face.png")
  probs = {}
  for name, extra in {"config": [], "float32": ["--dtype", "float32"], "bfloat16": ["--dtype", "bfloat16"]}.items():
    out = tmp_path / f"{name}.jsonl"
    assert run(["--workdir", workdir, image, "--no-detect", "--format", "jsonl", "-o", str(out), *extra],
               capsys)[0] == 0
    probs[name] = np.array(list(json.loads(out.read_text())["probabilities"].values()))
  np.testing.assert_array_equal(probs["float32"], probs["config"])
  assert not np.array_equal(probs["bfloat16"], probs["float32"])  # computed in bfloat16 ...
  np.testing.assert_allclose(probs["bfloat16"], probs["float32"], atol=0.03)  # ... to about 2-3 digits
  code, err = run(["--exported", str(tmp_path / "model.fer"), "--dtype", "float32", image], capsys)
  assert code == 2 and "--dtype, --step, --model_card and --kernels do not apply to --exported artifacts" in err
