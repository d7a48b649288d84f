"""Tests for the ExpW builder (tfds_builders/expw): skip rules, crops, the split, errors, workers.

Every test writes its own tiny ExpW layout under tmp_path and builds into tmp_path, so nothing
touches ~/tensorflow_datasets; the real-data test reads ../shared/data/expw_sample in place.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pathlib
from typing import Any

import cv2
import numpy as np
import pytest

from fer_jax.data import __main__ as data_cli
from fer_jax.data import builders
from tfds_builders.expw import crop
from tfds_builders.expw import expw

H, W = 80, 100  # synthetic scene size (rows, columns)
TRAIN, VALIDATION, TEST = "scene_001.jpg", "scene_000.jpg", "scene_004.jpg"  # see test_split_rule


def _scene(seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (7, 7), 0)


def _jpeg(image: np.ndarray) -> bytes:
  ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
  assert ok
  return buf.tobytes()


def _png(image: np.ndarray) -> bytes:
  """Lossless pixels for exact crop checks; OpenCV decodes by content, whatever the file is named."""
  ok, buf = cv2.imencode(".png", image)
  assert ok
  return buf.tobytes()


def _layout(root: pathlib.Path, lines: list[str], files: dict[str, bytes], image_dir: str = "origin",
            label_file: str = "label.lst") -> pathlib.Path:
  (root / image_dir).mkdir(parents=True)
  for name, content in files.items():
    (root / image_dir / name).write_bytes(content)
  (root / label_file).parent.mkdir(parents=True, exist_ok=True)
  (root / label_file).write_text("\n".join(lines) + "\n", encoding="utf-8")
  return root


def _write(path: pathlib.Path, content: bytes) -> str:
  path.write_bytes(content)
  return str(path)


def _build(manual_dir: pathlib.Path, tmp_path: pathlib.Path, config: str = "gray48", num_workers: int = 0,
           **overrides: Any):
  return builders.build("expw", manual_dir=str(manual_dir), config=config,
                    data_dir=str(tmp_path / "tfds"), overrides=overrides, num_workers=num_workers)


def _examples(builder) -> dict[str, list[dict[str, Any]]]:
  sources = builder.as_data_source()
  return {split: [source[i] for i in range(len(source))] for split, source in sources.items()}


# One line of every kind the builder must survive; the comment is the expected outcome.
MESSY_LINES = [
    f"{TRAIN} 0 10 10 40 40 90.5 3",         # written (train)
    f"{TRAIN} 1 50 70 120 90 80.0 0",        # runs past the right and bottom border: clipped, written
    f"{TRAIN} 2 10 200 260 40 70.0 1",       # box_outside_image (left >= width)
    f"{TRAIN} 3 -50 -50 -10 -10 70.0 1",     # box_outside_image (above and left of the image)
    f"{TRAIN} 0 10 10 40 40 90.5 3",         # duplicate_line (repeats line 1)
    f"{VALIDATION} 0 5 5 45 45 60.0 6",      # written (validation)
    f"{TEST} 0 20 20 60 60 55.5 4",          # written (test)
    f"{TEST} 1 20 30 30 60 40.0 5",          # zero_area_box (right == left)
    "conflict.jpg 0 1 1 20 20 50 2",         # conflicting_duplicate
    "conflict.jpg 0 1 1 20 20 50 5",         # conflicting_duplicate
    "truncated.jpg 0 1 1 20 20 50 2",        # truncated_image
    "notimage.jpg 0 1 1 20 20 50 2",         # unreadable_image
    "missing.jpg 0 1 1 20 20 50 2",          # missing_image
    "missing.jpg 1 30 30 50 50 50 3",        # missing_image
    f"{VALIDATION} 1 5 5 45 45 60.0 7",      # unknown_label
    f"{VALIDATION} 2 5 5 45 45 60.0 happy",  # unknown_label
    "",                                      # blank: not a face, not a skip
    f"{VALIDATION} 3 5 5 45",                # malformed_line (5 fields)
    f"{VALIDATION} 4 5 five 45 45 60.0 1",   # malformed_line (not a number)
    "../etc/x.jpg 0 5 5 45 45 60.0 1",       # malformed_line (a path, not a file name)
]
MESSY_SKIPS = {
    "malformed_line": 3, "unknown_label": 2, "zero_area_box": 1, "duplicate_line": 1,
    "conflicting_duplicate": 2, "below_min_confidence": 0, "missing_image": 2,
    "unreadable_image": 1, "truncated_image": 1, "box_outside_image": 2,
}


def _messy_files() -> dict[str, bytes]:
  good = _jpeg(_scene(1))
  return {TRAIN: good, VALIDATION: _jpeg(_scene(2)), TEST: _jpeg(_scene(3)), "conflict.jpg": good,
          "truncated.jpg": good[:len(good) // 2], "notimage.jpg": b"<html>not an image</html>\n"}


def test_split_rule_hand_computed():
  # first 8 bytes of sha256(name) as hex, their value mod 100, and the split that bucket gives.
  expected = {
      "scene_001.jpg": ("0f3cce2e0d023b76", 74, "train"),
      "scene_000.jpg": ("1fbc480ddcd6684b", 87, "validation"),
      "scene_004.jpg": ("6c77f58be29b3c19", 97, "test"),
      "afraid_couple_455.jpg": ("a539e74fd3652f22", 50, "train"),
  }
  for name, (prefix, bucket, split) in expected.items():
    assert int(prefix, 16) % 100 == bucket
    assert crop.split_bucket(name) == bucket, name
    assert crop.split_for_image(name) == split, name


def test_messy_label_file_exact_counts(tmp_path):
  manual = _layout(tmp_path / "expw", MESSY_LINES, _messy_files())
  builder = _build(manual, tmp_path)
  report = builder.info.metadata["build_report"]
  assert report["skipped"] == MESSY_SKIPS
  assert report["skipped_images"] == {"missing_image": 1, "unreadable_image": 1, "truncated_image": 1}
  assert report["faces_written"] == 4
  assert report["lines"] == 19 and report["blank_lines"] == 1
  assert report["lines"] == report["faces_written"] + report["skipped_total"]
  assert report["examples_per_split"] == {"train": 2, "validation": 1, "test": 1}
  assert report["complete"] and report["splits_without_faces"] == []
  assert "line 5: repeats line 1" in report["skip_examples"]["duplicate_line"]

  examples = _examples(builder)
  ids = {split: sorted(e["id"].decode() for e in rows) for split, rows in examples.items()}
  assert ids == {"train": [f"{TRAIN}/0", f"{TRAIN}/1"], "validation": [f"{VALIDATION}/0"],
                 "test": [f"{TEST}/0"]}
  first = next(e for e in examples["train"] if e["id"].decode() == f"{TRAIN}/0")
  assert first["image"].shape == (48, 48, 1) and first["image"].dtype == np.uint8
  assert first["label"] == 3 and first["confidence"] == pytest.approx(90.5)


def test_known_image_margin_clip_and_colour(tmp_path):
  image = np.zeros((H, W, 3), np.uint8)
  image[:] = (255, 0, 0)              # blue background (BGR)
  image[20:40, 30:50] = (0, 0, 255)   # red square = face 0's box
  image[0:20, 80:100] = (0, 255, 0)   # green corner = visible part of face 1's box
  lines = [f"{TRAIN} 0 20 30 50 40 99 3",     # top left right bottom
           f"{TRAIN} 1 -10 80 110 20 99 3"]   # runs past the top and right border
  manual = _layout(tmp_path / "expw", lines, {TRAIN: _png(image)})
  builder = _build(manual, tmp_path, config="rgb96", image_size=40, margin=0.5)
  report = builder.info.metadata["build_report"]
  assert report["splits_without_faces"] == ["validation", "test"]
  faces = {e["id"].decode(): e["image"] for e in _examples(builder)["train"]}

  # Face 0: 20x20 box + 10 px each side = rows 10:50, cols 20:60, 40x40: copied 1:1 to 40x40 RGB.
  expected = np.zeros((40, 40, 3), np.uint8)
  expected[:] = (0, 0, 255)
  expected[10:30, 10:30] = (255, 0, 0)
  np.testing.assert_array_equal(faces[f"{TRAIN}/0"], expected)

  # Face 1: 30x30 box + 15 px = rows -25:35, cols 65:125, clipped to rows 0:35, cols 65:100.
  assert crop.crop_window((-10, 80, 110, 20), H, W, 0.5) == (0, 35, 65, 100)
  clipped = faces[f"{TRAIN}/1"].astype(int)
  green = (clipped[..., 1] > 128) & (clipped[..., 2] < 128)
  assert green[0, 39] and not green[0, 0] and not green[39, 39] and not green[39, 0]
  assert green.mean() == pytest.approx((20 / 35) ** 2, abs=0.03)  # the green 20x20 of a 35x35 crop


def test_grey_config_uses_luma(tmp_path):
  image = np.zeros((H, W, 3), np.uint8)
  image[:] = (255, 0, 0)
  image[20:40, 30:50] = (0, 0, 255)
  manual = _layout(tmp_path / "expw", [f"{TRAIN} 0 20 30 50 40 99 3"], {TRAIN: _png(image)})
  face = _examples(_build(manual, tmp_path, image_size=40, margin=0.5))["train"][0]["image"]
  assert face.shape == (40, 40, 1)
  assert abs(int(face[20, 20, 0]) - 76) <= 1 and abs(int(face[0, 0, 0]) - 29) <= 1  # 0.299 R, 0.114 B


def test_crop_window_rule():
  assert crop.crop_window((10, 20, 30, 50), 100, 100, 0.0) == (10, 50, 20, 30)
  assert crop.crop_window((10, 20, 30, 50), 100, 100, 0.25) == (0, 60, 17, 33)  # dy=10, dx=2.5->3
  assert crop.crop_window((0, 100, 120, 10), 100, 100, 0.2) is None  # left == width
  assert crop.crop_window((-20, -20, 0, 0), 100, 100, 0.5) is None  # right == 0: no overlap


def test_min_confidence_filters_and_is_recorded(tmp_path):
  lines = [f"{TRAIN} 0 10 10 40 40 10 3", f"{TRAIN} 1 10 50 80 40 50 3", f"{TRAIN} 2 40 10 40 70 90 3"]
  manual = _layout(tmp_path / "expw", lines, {TRAIN: _jpeg(_scene())})
  report = _build(manual, tmp_path, min_confidence=50).info.metadata["build_report"]
  assert report["faces_written"] == 2  # 50 and 90: the threshold itself is kept
  assert report["skipped"]["below_min_confidence"] == 1
  assert report["min_confidence"] == 50.0 and report["settings"]["min_confidence"] == 50.0
  default = _build(manual, tmp_path / "default").info.metadata["build_report"]
  assert default["faces_written"] == 3 and default["min_confidence"] is None


def test_report_persisted_and_readable_after_reload(tmp_path):
  manual = _layout(tmp_path / "expw", MESSY_LINES, _messy_files())
  report = _build(manual, tmp_path).info.metadata["build_report"]
  reloaded = builders.make_builder("expw", config="gray48", data_dir=str(tmp_path / "tfds"), num_workers=0)
  assert reloaded.is_prepared()
  assert reloaded.info.metadata["build_report"] == report
  assert reloaded.info.supervised_keys == ("image", "label")
  assert reloaded.info.features["label"].names == ["angry", "disgust", "fear", "happy", "sad",
                                                   "surprise", "neutral"]


@pytest.mark.parametrize("image_dir,label_file", [("image", "label.lst"), ("Images", "label.lst"),
                                                  ("image/origin", "label/label.lst")])
def test_other_folder_names(tmp_path, image_dir, label_file):
  lines = [f"{TRAIN} 0 10 10 40 40 90 3", f"{TEST} 0 10 10 40 40 90 4"]
  manual = _layout(tmp_path / "expw", lines, {TRAIN: _jpeg(_scene()), TEST: _jpeg(_scene(1))},
                   image_dir=image_dir, label_file=label_file)
  report = _build(manual, tmp_path).info.metadata["build_report"]
  assert report["faces_written"] == 2
  assert report["image_dir"] == str(pathlib.Path(image_dir)) and report["label_file"] == label_file


def test_missing_label_file_is_one_clear_error(tmp_path, capsys):
  manual = tmp_path / "expw"
  (manual / "origin").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=f"expected {manual / 'label.lst'}"):
    _build(manual, tmp_path)
  rc = data_cli.main(["build", "expw", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "cli")])
  err = capsys.readouterr().err
  assert rc == 2 and err.count("error:") == 1 and str(manual / "label.lst") in err


def test_missing_image_folder_is_one_clear_error(tmp_path, capsys):
  manual = tmp_path / "expw"
  manual.mkdir()
  (manual / "label.lst").write_text(f"{TRAIN} 0 10 10 40 40 90 3\n")
  with pytest.raises(FileNotFoundError, match=f"expected {manual / 'origin'}"):
    _build(manual, tmp_path)
  rc = data_cli.main(["build", "expw", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "cli")])
  err = capsys.readouterr().err
  assert rc == 2 and err.count("error:") == 1 and "image folder not found" in err


def test_missing_manual_dir_is_catchable(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    _build(tmp_path / "nowhere", tmp_path)


def test_nothing_usable_is_one_clear_error(tmp_path):
  manual = _layout(tmp_path / "a", ["x.jpg 0 1 1 1 1 50 3", "y.jpg 0 1 1 5 5 50 9"], {})
  with pytest.raises(ValueError, match="No usable faces.*1 unknown_label, 1 zero_area_box"):
    _build(manual, tmp_path / "a")
  manual = _layout(tmp_path / "b", ["x.jpg 0 1 1 5 5 50 3"], {"x.jpg": b"not a jpeg"})
  with pytest.raises(ValueError, match="No usable faces for the .* split.*1 unreadable_image"):
    _build(manual, tmp_path / "b")


def test_bad_config_values_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="channels must be 1 .* or 3"):
    builders.make_builder("expw", config="gray48", data_dir=str(tmp_path), overrides={"channels": 2})
  with pytest.raises(ValueError, match="margin must be"):
    builders.make_builder("expw", config="rgb96", data_dir=str(tmp_path), overrides={"margin": -0.1})
  builder = builders.make_builder("expw", config="rgb96", data_dir=str(tmp_path), overrides={"margin": 0})
  assert builder.builder_config.name == "rgb96.margin=0" and builder.builder_config.margin == 0.0


def test_worker_processes_match_in_process_build_and_stay_light(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top,unused-import  # the trainer's parent has JAX loaded
  manual = _layout(tmp_path / "expw", MESSY_LINES, _messy_files())
  serial = _examples(_build(manual, tmp_path / "serial", num_workers=0))
  parallel_builder = _build(manual, tmp_path / "parallel", num_workers=2)
  parallel = _examples(parallel_builder)
  assert parallel_builder.info.metadata["build_report"]["skipped"] == MESSY_SKIPS
  for split in serial:
    assert [e["id"] for e in parallel[split]] == [e["id"] for e in serial[split]]
    for a, b in zip(parallel[split], serial[split]):
      np.testing.assert_array_equal(a["image"], b["image"])
  probe = "sorted(m.split('.')[0] for m in __import__('sys').modules)"
  (modules,) = crop.ordered_map(eval, [probe], num_workers=1)
  assert "cv2" in modules and not {"jax", "tensorflow_datasets", "tensorflow", "flax"} & set(modules)


def test_dead_worker_is_an_error_not_a_hang():
  with pytest.raises(RuntimeError, match="worker process died.*num_workers=0"):
    list(crop.ordered_map(os._exit, [3], num_workers=1))


def test_jpeg_with_trailing_bytes_is_kept_and_cut_jpeg_is_not(tmp_path):
  good = _jpeg(_scene())
  assert crop.decode_image(_write(tmp_path / "a.jpg", good + b"\0\0trailer"), 1)[0] == "ok"
  for cut in (len(good) - 2, len(good) // 3, 200):
    assert crop.decode_image(_write(tmp_path / "b.jpg", good[:cut]), 3)[0] == crop.TRUNCATED_IMAGE
  assert crop.decode_image(_write(tmp_path / "c.jpg", b""), 3)[0] == crop.UNREADABLE_IMAGE
  assert crop.decode_image(str(tmp_path / "none.jpg"), 3)[0] == crop.MISSING_IMAGE


def test_real_expw_sample(real_data, tmp_path):
  sample = real_data / "expw_sample"
  builder = _build(sample, tmp_path, num_workers=2)
  report = builder.info.metadata["build_report"]
  # All 1,088 label.lst lines are usable: 10 boxes run past the border and are clipped, not dropped.
  assert report["lines"] == 1088 and report["faces_written"] == 1088
  assert report["skipped_total"] == 0 and set(report["skipped"].values()) == {0}
  assert report["images_listed"] == 999
  assert report["examples_per_split"] == {"train": 896, "validation": 92, "test": 100}
  assert report["images_per_split"] == {"train": 817, "validation": 85, "test": 97}

  split_of_image = collections.defaultdict(set)
  for split, rows in _examples(builder).items():
    for e in rows:
      image_name = e["id"].decode().rsplit("/", 1)[0]
      split_of_image[image_name].add(split)
      assert crop.split_for_image(image_name) == split
  assert len(split_of_image) == 999 and all(len(s) == 1 for s in split_of_image.values())

  fractions = report["label_split_fractions"]
  assert set(fractions) == set(expw.EMOTIONS)
  for name, by_split in fractions.items():
    assert sum(report["label_split_counts"][name].values()) >= 150
    assert 0.7 < by_split["train"] < 0.9 and 0.04 < by_split["validation"] < 0.16, (name, by_split)


def test_image_names_that_are_not_utf8_match_their_files_as_bytes(tmp_path):
  """label.lst names are bytes on disk: a Latin-1 name finds its file and gets a readable, stable id."""
  latin1 = b"caf\xe9_scene.jpg"  # not UTF-8
  root = tmp_path / "manual"
  (root / "origin").mkdir(parents=True)
  (root / "origin" / os.fsdecode(latin1)).write_bytes(_jpeg(_scene(1)))
  (root / "origin" / TRAIN).write_bytes(_jpeg(_scene(2)))
  (root / "label.lst").write_bytes(latin1 + b" 0 10 10 40 40 90.5 3\n" + TRAIN.encode() + b" 0 10 10 40 40 90.5 2\n")
  builder = _build(root, tmp_path)
  report = builder.info.metadata["build_report"]
  assert report["skipped_total"] == 0, report["skipped"]
  ids = sorted(e["id"].decode() for split in _examples(builder).values() for e in split)
  assert ids == ["caf\\xe9_scene.jpg/0", f"{TRAIN}/0"]
  assert crop.split_bucket(os.fsdecode(latin1)) == int.from_bytes(
      hashlib.sha256(latin1).digest()[:8], "big") % 100
