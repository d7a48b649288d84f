"""Prediction from a real (tiny) training run: loading, preprocessing, CLI rows and formats, video, TTA."""

from __future__ import annotations

import csv
import io
import json
import os

import cv2
import numpy as np
import pytest

from fer_jax.serving import classifier as classifier_lib
from fer_jax.serving import face_detection, inference, predict, predict_output, smoothing
from prediction_fixtures import HAAR, PASTE, iou, read_csv, run, scene, synthetic_face, two_face_scene, write_video


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


def test_predict_numbers_the_faces_of_a_frame_largest_first(workdir, tmp_path, capsys):
  image, small, large = two_face_scene()
  cv2.imwrite(str(tmp_path / "two.png"), image)
  out = tmp_path / "rows.csv"
  assert run(["--workdir", workdir, str(tmp_path / "two.png"), "--detector", "yunet", "-o", str(out)], capsys)[0] == 0
  rows = read_csv(out)
  assert [r["face"] for r in rows] == ["0", "1"]
  assert iou(tuple(int(rows[0][k]) for k in "xywh"), large) > 0.4
  assert iou(tuple(int(rows[1][k]) for k in "xywh"), small) > 0.4


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
