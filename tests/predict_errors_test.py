"""predict's failures: bad checkpoints, options and inputs, unwritable or full destinations, missing detectors.

Each is one line a user can act on and a documented exit code (2: the command line, 1: nothing readable,
3: a write failed midway), and no partial output file is left behind.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from fer_jax.serving import face_detection, predict_output
from prediction_fixtures import read_csv, run, write_video
from train_test import tiny_config


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
