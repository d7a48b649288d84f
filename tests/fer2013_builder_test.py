"""Tests for the fer2013 TFDS builder on small files written here, in every layout it reads."""

from __future__ import annotations

import io
import json
import os
import pathlib
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from fer_jax.data import __main__ as data_cli
from fer_jax.data import builders, faces
from tfds_builders.fer2013 import fer2013


def _pixels(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)


def _px_text(pixels: np.ndarray) -> str:
  return " ".join(map(str, pixels.ravel().tolist()))


def _build(manual_dir: pathlib.Path, tmp_path: pathlib.Path) -> tfds.core.DatasetBuilder:
  return builders.build("fer2013", manual_dir=str(manual_dir), data_dir=str(tmp_path / "data"))


def _read(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, tuple[int, np.ndarray]]:
  """Reads a split back with tfds.data_source: id -> (label, 48x48 image)."""
  source = tfds.data_source("fer2013", split=split, data_dir=builder.data_dir_root)
  examples = source.__getitems__(range(len(source)))
  ids = [ex["id"].decode() for ex in examples]
  assert len(set(ids)) == len(ids), "ids must be unique"
  for ex in examples:
    assert ex["image"].shape == (48, 48, 1) and ex["image"].dtype == np.uint8
  return {i: (int(ex["label"]), ex["image"][..., 0]) for i, ex in zip(ids, examples)}


def _splits(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  return {name: split.num_examples for name, split in builder.info.splits.items()}


# ---------------------------------------------------------------------------- CSV


# (line, expected split or skip reason). Row n has id csv/n; the blank line is not numbered.
def _csv_rows() -> tuple[list[str], dict[str, tuple[str, int, np.ndarray]]]:
  good = {}  # id -> (split, label, pixels)
  lines = []

  def ok(label: int, usage: str, split: str, seed: int, quote: bool = False, end: str = "\n"):
    px = _pixels(seed)
    text = f'"{_px_text(px)}"' if quote else _px_text(px)
    good[f"csv/{len(lines)}"] = (split, label, px)
    lines.append(f"{label},{text},{usage}{end}")

  px = _px_text(_pixels(99))
  ok(0, "Training", "train", 0)
  ok(6, "Training", "train", 1)
  ok(3, "PublicTest", "validation", 2)
  ok(5, "PrivateTest", "test", 3)
  ok(4, "Training", "train", 4, quote=True)          # quoted pixels field is fine
  ok(2, "PrivateTest", "test", 5, end="\r\n")       # CRLF line ending is fine
  lines += [
      "3\n",                                         # 6 malformed_line (short)
      "0,1 2 3\n",                                   # 7 malformed_line (2 fields)
      f"0,{px},Training,extra\n",                    # 8 malformed_line (4 fields)
      f"0,{px},Train\n",                             # 9 unknown_usage
      f"0,{px},\n",                                  # 10 unknown_usage (empty)
      f"7,{px},Training\n",                          # 11 unknown_label
      f"x,{px},Training\n",                          # 12 unknown_label
      f"-1,{px},Training\n",                         # 13 unknown_label
      f"0,1.5 {px[px.index(' ') + 1:]},Training\n",  # 14 non_integer_pixel
      f"0,{px[:-3]}abc,Training\n",                  # 15 non_integer_pixel
      f"0,{px.rsplit(' ', 1)[0]},Training\n",        # 16 wrong_pixel_count (2303)
      f"0,{px} 7,Training\n",                        # 17 wrong_pixel_count (2305)
      "0,,Training\n",                               # 18 wrong_pixel_count (0)
      f"0,256 {px.split(' ', 1)[1]},Training\n",     # 19 pixel_out_of_range
      f"0,{px.rsplit(' ', 1)[0]} -1,Training\n",     # 20 pixel_out_of_range
      "\n",                                          # blank: ignored, not numbered
  ]
  good_id = f"csv/{len(lines) - 1}"  # the blank line takes no row number
  px_last = _pixels(6)
  good[good_id] = ("train", 1, px_last)
  lines.append(f"1,{_px_text(px_last)},Training")   # 21, no trailing newline
  return lines, good


EXPECTED_CSV_SKIPS = {"malformed_line": 3, "unknown_usage": 2, "unknown_label": 3,
                      "non_integer_pixel": 2, "wrong_pixel_count": 3, "pixel_out_of_range": 2}


def _write_csv(path: pathlib.Path, lines: list[str], header: str = "emotion,pixels,Usage") -> bytes:
  path.parent.mkdir(parents=True, exist_ok=True)
  content = (header + "\n" + "".join(lines)).encode()
  path.write_bytes(content)
  return content


def _check_csv_build(builder: tfds.core.DatasetBuilder, good: dict) -> None:
  assert _splits(builder) == {"train": 4, "validation": 1, "test": 2}
  for split in ("train", "validation", "test"):
    got = _read(builder, split)
    want = {i: (label, px) for i, (s, label, px) in good.items() if s == split}
    assert sorted(got) == sorted(want)
    for example_id, (label, px) in want.items():
      assert got[example_id][0] == label, example_id
      np.testing.assert_array_equal(got[example_id][1], px, err_msg=example_id)


def test_csv_bad_rows_are_skipped_and_counted(tmp_path):
  lines, good = _csv_rows()
  _write_csv(tmp_path / "manual" / "fer2013.csv", lines)
  builder = _build(tmp_path / "manual", tmp_path)
  _check_csv_build(builder, good)
  report = builder.info.metadata["build_report"]
  assert report["layout"] == "csv"
  assert report["written"] == {"train": 4, "validation": 1, "test": 2}
  assert report["skipped"] == EXPECTED_CSV_SKIPS
  assert report["skipped_total"] == 15
  assert report["skipped_ids"]["malformed_line"] == ["csv/6", "csv/7", "csv/8"]
  assert report["skipped_ids"]["pixel_out_of_range"] == ["csv/19", "csv/20"]
  assert report["empty_splits"] == [] and report["ignored_sources"] == []

  # The report is persisted with the dataset and comes back on reload.
  on_disk = json.loads((pathlib.Path(builder.data_dir) / "metadata.json").read_text())
  assert on_disk["build_report"] == report
  reloaded = tfds.builder("fer2013", data_dir=str(tmp_path / "data"))
  assert reloaded.info.metadata["build_report"] == report
  assert reloaded.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def test_features_and_label_names(tmp_path):
  lines, _ = _csv_rows()
  _write_csv(tmp_path / "manual" / "fer2013.csv", lines[:6])
  builder = _build(tmp_path / "manual", tmp_path)
  features = builder.info.features
  assert features["label"].names == list(faces.EMOTIONS)
  assert features["label"].names[:7] == ["angry", "disgust", "fear", "happy", "sad", "surprise",
                                         "neutral"]
  assert features["image"].shape == (48, 48, 1) and features["image"].np_dtype == np.uint8
  assert isinstance(features["id"], tfds.features.Text)
  assert builder.info.supervised_keys == ("image", "label")
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD


def test_csv_one_folder_down_any_column_order(tmp_path):
  lines, good = _csv_rows()
  # Kaggle's icml_face_data.csv orders the columns differently (with spaces); match by name.
  reordered = []
  for line in lines:
    fields = line.rstrip("\r\n").split(",")
    end = line[len(line.rstrip("\r\n")):]
    reordered.append(f"{fields[0]},{fields[2]},{fields[1]}{end}" if len(fields) == 3 else line)
  _write_csv(tmp_path / "manual" / "fer2013" / "fer2013.csv", reordered, header="emotion, Usage, pixels")
  builder = _build(tmp_path / "manual", tmp_path)
  _check_csv_build(builder, good)
  assert builder.info.metadata["build_report"]["source"].endswith("fer2013/fer2013.csv")
  assert builder.info.metadata["build_report"]["skipped"] == EXPECTED_CSV_SKIPS


def test_tar_gz_is_read_without_extracting(tmp_path):
  lines, good = _csv_rows()
  content = _write_csv(tmp_path / "src" / "fer2013.csv", lines)
  manual = tmp_path / "manual"
  manual.mkdir()
  with tarfile.open(manual / "fer2013.tar.gz", "w:gz") as tar:
    for name, payload in (("fer2013/README", b"readme"), ("fer2013/fer2013.csv", content)):
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  builder = _build(manual, tmp_path)
  _check_csv_build(builder, good)
  assert builder.info.metadata["build_report"]["layout"] == "tar_gz"
  assert builder.info.metadata["build_report"]["skipped"] == EXPECTED_CSV_SKIPS
  assert sorted(p.name for p in manual.iterdir()) == ["fer2013.tar.gz"]


def test_corrupt_tar_gz_is_one_clear_error(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "fer2013.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
  with pytest.raises(fer2013.Fer2013DataError, match="(?i)download it again"):
    _build(manual, tmp_path)


def test_unknown_csv_header_is_one_clear_error(tmp_path):
  _write_csv(tmp_path / "manual" / "fer2013.csv", ["1 2 3\n"], header="pixels")
  with pytest.raises(fer2013.Fer2013DataError, match="emotion,pixels,Usage"):
    _build(tmp_path / "manual", tmp_path)


def test_nothing_usable_is_one_clear_error(tmp_path):
  lines, _ = _csv_rows()
  _write_csv(tmp_path / "manual" / "fer2013.csv", lines[6:-2])  # only the bad rows
  with pytest.raises(fer2013.Fer2013DataError, match="No usable FER2013 examples") as e:
    _build(tmp_path / "manual", tmp_path)
  assert "malformed_line" in str(e.value)
  assert not (tmp_path / "data" / "fer2013" / "1.0.0").exists()


# ---------------------------------------------------------------------------- image folders


def _save(path: pathlib.Path, image: np.ndarray | bytes, fmt: str | None = None) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(image, bytes):
    path.write_bytes(image)
  else:
    Image.fromarray(image).save(path, format=fmt)


def _jpeg_bytes(seed: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(_pixels(seed)).save(buf, format="JPEG")
  return buf.getvalue()


def _expected_pixels(path: pathlib.Path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert("L"))


def test_image_folders_with_usage_prefixes(tmp_path):
  root = tmp_path / "manual"
  # relative path -> (split, label)
  good = {
      "train/angry/Training_1.png": ("train", 0),
      "train/neutral/Training_2.png": ("train", 6),
      "train/sad/Training_2.png": ("train", 4),      # same name in two class folders, as in the real data
      "train/happy/Training_3.jpg": ("train", 3),
      "train/happy/Training_4.png": ("train", 3),    # RGB: reduced to grey
      "train/Fear/Training_5.PNG": ("train", 2),     # folder and extension case do not matter
      "test/angry/PublicTest_1.png": ("validation", 0),
      "test/surprise/PublicTest_2.png": ("validation", 5),
      "test/disgust/PrivateTest_1.png": ("test", 1),
  }
  for seed, rel in enumerate(good):
    if rel.endswith(".jpg"):
      _save(root / rel, _jpeg_bytes(seed))
    elif "Training_4" in rel:
      _save(root / rel, np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    else:
      _save(root / rel, _pixels(seed), fmt="PNG")
  jpeg = _jpeg_bytes(50)
  bad = {
      "train/surprise/Training_6.jpg": jpeg[: len(jpeg) // 2],   # truncated
      "train/surprise/Training_7.jpg": b"this is not a jpeg",    # not an image
      "test/happy/PrivateTest_4.jpg": jpeg[:100],                # truncated
      "train/disgust/notes.txt": b"notes",
      "train/contempt/Training_9.png": _pixels(9),               # unknown class folder
      "train/stray.png": _pixels(10),                            # not in a class folder
      "test/happy/img_3.png": _pixels(11),                       # test/ has prefixes; this has none
      "train/disgust/Training_8.png": np.zeros((64, 64), np.uint8),  # wrong size: skipped
      "train/disgust/.DS_Store": b"\0\0",                        # hidden: ignored
  }
  for rel, payload in bad.items():
    _save(root / rel, payload, fmt=None if isinstance(payload, bytes) else "PNG")

  builder = _build(root, tmp_path)
  assert _splits(builder) == {"train": 6, "validation": 2, "test": 1}
  for split in ("train", "validation", "test"):
    got = _read(builder, split)
    want = {rel: label for rel, (s, label) in good.items() if s == split}
    assert sorted(got) == sorted(want)
    for rel, label in want.items():
      assert got[rel][0] == label, rel
      np.testing.assert_array_equal(got[rel][1], _expected_pixels(root / rel), err_msg=rel)
  np.testing.assert_array_equal(_read(builder, "train")["train/angry/Training_1.png"][1], _pixels(0))

  report = builder.info.metadata["build_report"]
  assert report["layout"] == "image_folders" and report["source"] == str(root)
  assert report["splits_provided"] == ["train", "validation", "test"]
  assert report["empty_splits"] == []
  assert report["skipped"] == {"unreadable_image": 3, "wrong_size": 1, "unsupported_file_type": 1,
                               "unknown_class_folder": 1, "not_in_class_folder": 1,
                               "no_usage_prefix": 1}
  assert sorted(report["skipped_ids"]["unreadable_image"]) == [
      "test/happy/PrivateTest_4.jpg", "train/surprise/Training_6.jpg", "train/surprise/Training_7.jpg"]


def test_image_folders_without_prefixes_make_test_split(tmp_path):
  root = tmp_path / "manual" / "archive"  # one folder down
  _save(root / "train" / "happy" / "a.png", _pixels(1), fmt="PNG")
  _save(root / "test" / "happy" / "b.png", _pixels(2), fmt="PNG")
  _save(root / "test" / "sad" / "b.png", _pixels(3), fmt="PNG")
  builder = _build(tmp_path / "manual", tmp_path)
  assert _splits(builder) == {"train": 1, "test": 2}
  got = _read(builder, "test")
  assert {k: v[0] for k, v in got.items()} == {"test/happy/b.png": 3, "test/sad/b.png": 4}
  np.testing.assert_array_equal(got["test/sad/b.png"][1], _pixels(3))
  report = builder.info.metadata["build_report"]
  assert report["splits_provided"] == ["train", "test"] and report["empty_splits"] == []


def test_empty_split_is_left_out_and_reported(tmp_path):
  # Like the real sample: test/ holds PublicTest_* but no PrivateTest_*.
  root = tmp_path / "manual"
  _save(root / "train" / "fear" / "Training_1.png", _pixels(1), fmt="PNG")
  _save(root / "test" / "fear" / "PublicTest_1.png", _pixels(2), fmt="PNG")
  builder = _build(root, tmp_path)
  assert _splits(builder) == {"train": 1, "validation": 1}
  report = builder.info.metadata["build_report"]
  assert report["empty_splits"] == ["test"]
  assert report["written"] == {"train": 1, "validation": 1}


def test_csv_is_preferred_over_folders(tmp_path):
  root = tmp_path / "manual"
  lines, good = _csv_rows()
  _write_csv(root / "fer2013.csv", lines)
  _save(root / "train" / "happy" / "a.png", _pixels(1), fmt="PNG")
  builder = _build(root, tmp_path)
  _check_csv_build(builder, good)
  report = builder.info.metadata["build_report"]
  assert report["layout"] == "csv"
  assert report["ignored_sources"] == [{"layout": "image_folders", "path": str(root)}]


# ---------------------------------------------------------------------------- nothing found


@pytest.mark.parametrize("contents", ["empty", "unrelated", "missing"])
def test_manual_dir_without_data_is_one_clear_error(tmp_path, contents):
  manual = tmp_path / "manual"
  if contents != "missing":
    manual.mkdir()
  if contents == "unrelated":
    (manual / "notes.txt").write_text("hello")
    (manual / "train").mkdir()
  with pytest.raises(fer2013.ManualDataNotFoundError) as e:
    _build(manual, tmp_path)
  assert isinstance(e.value, FileNotFoundError)
  message = str(e.value)
  for needle in (str(manual), "fer2013.csv", "fer2013.tar.gz", "train/<class>/", "test/<class>/",
                 "challenges-in-representation-learning-facial-expression-recognition-challenge",
                 "msambare/fer2013"):
    assert needle in message


def test_cli_build_prints_report_and_reports_errors(tmp_path, capsys):
  lines, _ = _csv_rows()
  _write_csv(tmp_path / "manual" / "fer2013.csv", lines)
  argv = ["build", "fer2013", "--manual_dir", str(tmp_path / "manual"), "--data_dir", str(tmp_path / "d")]
  assert data_cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "build report" in out and '"pixel_out_of_range": 2' in out
  (tmp_path / "empty").mkdir()
  argv[3] = str(tmp_path / "empty")
  argv[5] = str(tmp_path / "d2")
  assert data_cli.main(argv) == 2
  assert "fer2013.csv" in capsys.readouterr().err


# ---------------------------------------------------------------------------- real data


def test_real_image_folders(real_data, tmp_path):
  builder = _build(real_data / "fer2013", tmp_path)
  assert _splits(builder) == {"train": 28709, "validation": 3589}
  report = builder.info.metadata["build_report"]
  assert report["skipped_total"] == 0 and report["empty_splits"] == ["test"]
  ids = set(_read(builder, "train"))  # _read asserts the ids are unique
  for name, folders in (("Training_52789098.jpg", ("neutral", "surprise")),
                        ("Training_8475486.jpg", ("angry", "surprise"))):
    assert {f"train/{folder}/{name}" for folder in folders} <= ids


def test_real_csv_sample(real_data, tmp_path):
  builder = _build(real_data / "fer2013_csv_sample", tmp_path)
  assert _splits(builder) == {"train": 2400, "validation": 600}
  assert builder.info.metadata["build_report"]["skipped_total"] == 0


def test_unreadable_folder_entries_are_skipped_and_counted(tmp_path, monkeypatch):
  """A self-referential symlink and a class folder that cannot be listed: skipped by reason, the rest built."""
  root = tmp_path / "manual"
  _save(root / "train" / "happy" / "Training_1.png", _pixels(1), fmt="PNG")
  _save(root / "train" / "sad" / "Training_2.png", _pixels(2), fmt="PNG")
  _save(root / "test" / "happy" / "PublicTest_1.png", _pixels(3), fmt="PNG")
  os.symlink("x.jpg", root / "train" / "happy" / "x.jpg")  # x.jpg -> x.jpg: "Too many levels of symbolic links"
  os.symlink("loop", root / "train" / "loop")
  locked = str(root / "train" / "sad")
  real_scandir = os.scandir

  def scandir(path="."):
    if os.fspath(path) == locked:  # chmod 000 does not stop root: refuse the listing as the kernel would
      raise PermissionError(13, "Permission denied", locked)
    return real_scandir(path)

  monkeypatch.setattr(os, "scandir", scandir)
  builder = _build(root, tmp_path)
  assert _splits(builder) == {"train": 1, "validation": 1}
  report = builder.info.metadata["build_report"]
  assert report["skipped"] == {"unreadable_entry": 2, "unreadable_folder": 1}
