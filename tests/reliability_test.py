"""Faults the trainer and evaluation job must survive or report clearly (see docs/GUARANTEES.md).

NaN/Inf policy, bad configs through the command line, unwritable or full
workdirs, an evaluation job killed between its two writes, and the builder
inputs the builder tests do not already cover (truncated or empty files).
"""

from __future__ import annotations

import collections
import errno
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from fer_jax import checkpointing, eval_job, model_card, parallel, train
from fer_jax.data import builders

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_test import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position


# ---------------------------------------------------------------------------- NaN / Inf


def poison_train_batch(monkeypatch, config, at_step: int) -> None:
  """Makes the `at_step`-th training batch's images NaN (evaluation batches, of another size, pass)."""
  real = parallel.global_batch
  seen = {"train": 0}

  def global_batch(local_batch, mesh):
    if local_batch["image"].shape[0] == config.batch_size:
      seen["train"] += 1
      if seen["train"] == at_step:
        local_batch = dict(local_batch, image=np.full_like(local_batch["image"], np.nan))
    return real(local_batch, mesh)

  monkeypatch.setattr(parallel, "global_batch", global_batch)


def state_at(workdir: str, config, step: int):
  trainer = train.Trainer(config, workdir)
  manager = checkpointing.create_manager(workdir, read_only=True)
  return checkpointing.restore(manager, step, trainer.abstract_state)


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, synthetic_tiny_dir,
                                                                          monkeypatch):
  config = tiny_config(synthetic_tiny_dir)
  assert config.eval_batch_size != config.batch_size
  poison_train_batch(monkeypatch, config, at_step=6)
  workdir = str(tmp_path / "run")
  with pytest.raises(train.NonFiniteError, match="Step 6: the loss or a gradient is NaN or Inf.*step 4"):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ["4"]  # No NaN state saved.
  state = state_at(workdir, config, 4)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_nonfinite_skip_keeps_the_state_and_counts(tmp_path, synthetic_tiny_dir, monkeypatch):
  config = tiny_config(synthetic_tiny_dir)
  config.nonfinite = "skip"
  config.checkpoint_every_steps = 1
  config.eval_every_steps = 1
  poison_train_batch(monkeypatch, config, at_step=8)
  workdir = str(tmp_path / "run")
  last = train.train_and_evaluate(config, workdir)
  assert last["nonfinite_skipped"] == 1.0  # The window of steps 7-8.
  before, after = state_at(workdir, config, 7), state_at(workdir, config, 8)
  assert int(after.step) == 8
  for a, b in zip(jax.tree.leaves((before.params, before.opt_state)), jax.tree.leaves((after.params, after.opt_state)),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(after.params))


def test_nonfinite_skip_keeps_the_batch_norm_statistics(tmp_path, synthetic_tiny_dir, monkeypatch):
  config = tiny_config(synthetic_tiny_dir)
  config.model = "vgg"
  config.model_kwargs = {"stage_features": (4, 4), "convs_per_stage": 1, "dense_features": (8,), "batch_norm": True}
  config.nonfinite = "skip"
  config.num_train_steps = 3
  config.checkpoint_every_steps = config.eval_every_steps = config.log_every_steps = 1
  poison_train_batch(monkeypatch, config, at_step=3)
  workdir = str(tmp_path / "run")
  assert train.train_and_evaluate(config, workdir)["nonfinite_skipped"] == 1.0
  one, two, three = (state_at(workdir, config, s) for s in (1, 2, 3))
  assert one.batch_stats and int(three.step) == 3
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(one.batch_stats), jax.tree.leaves(two.batch_stats))]
  assert all(changed)  # a finite step moves every running mean and variance
  for a, b in zip(jax.tree.leaves((two.params, two.batch_stats)), jax.tree.leaves((three.params, three.batch_stats)),
                  strict=True):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------- bad configs, command line


def run_cli(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, "-m", "fer_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)


@pytest.mark.parametrize("override,devices,message", [
    ("--config.model=alexnet", 1, "error: config.model='alexnet' is not allowed: one of cnn"),
    ("--config.optimizer=adm", 1, "error: config.optimizer='adm' is not allowed: one of adam, adamw, sgd"),
    ("--config.batch_size=0", 1, "error: config.batch_size=0 is not allowed: must be > 0"),
    ("--config.batch_size=3", 2, "error: config.batch_size=3 is not allowed: must divide evenly over the 2 devices; "
                                 "use a multiple of 2, e.g. 2"),
    ("--config.nonfinite=ignore", 1, "error: config.nonfinite='ignore' is not allowed: one of stop, skip"),
    ("--config.learning_rate=inf", 1, "error: config.learning_rate=inf is not allowed: must be a finite number"),
    ("--config.model=vgg", 1, "error: config.model_kwargs sets conv_dropout, conv_features, dense_dropout, "
                              "which model 'vgg' does not take (it takes stage_features"),
])
def test_bad_config_is_one_error_line_before_any_compute(tmp_path, override, devices, message):
  workdir = tmp_path / "run"
  out = run_cli("--config", "configs/default.py", "--workdir", str(workdir), override, devices=devices)
  assert out.returncode != 0
  assert "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(message), out.stderr[-2000:]
  assert not workdir.exists()  # Nothing written, nothing computed.


@pytest.mark.parametrize("field", ["train_split", "eval_split"])
def test_missing_split_is_one_error_line_before_any_compute(tmp_path, synthetic_tiny_dir, field):
  workdir = tmp_path / "run"
  out = run_cli("--config", "configs/default.py", "--workdir", str(workdir), "--config.data.config=tiny",
                f"--config.data.data_dir={synthetic_tiny_dir}", f"--config.data.{field}=nosuch")
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      f"error: config.data.{field}='nosuch': that split of synthetic_faces in "), out.stderr[-2000:]
  assert "does not exist; its splits are test (70), train (350), validation (70)" in out.stderr
  assert not workdir.exists()


def test_eval_job_on_a_missing_split_stops_before_reading_a_step(tmp_path, synthetic_tiny_dir, monkeypatch):
  # FER2013 built from image folders without PublicTest_/PrivateTest_ names has no validation split.
  built = builders.ensure_built_once
  monkeypatch.setattr(builders, "ensure_built_once", lambda config: built(config)._replace(
      num_examples={"train": 350, "test": 70}))
  (tmp_path / "run" / "checkpoints").mkdir(parents=True)
  with pytest.raises(ValueError, match="config.eval.split='validation': that split of synthetic_faces in .* does "
                     r"not exist; its splits are test \(70\), train \(350\). Set --config.eval.split"):
    eval_job.run(tiny_config(synthetic_tiny_dir), str(tmp_path / "run"))


def test_missing_dataset_names_the_folder_and_how_to_build(tmp_path):
  empty = tmp_path / "tfds"
  out = run_cli("--config", "configs/fer2013_cnn.py", "--workdir", str(tmp_path / "run"),
                f"--config.data.data_dir={empty}")
  assert out.returncode != 0 and "Traceback" not in out.stderr
  err = out.stderr[out.stderr.index("error: "):]
  assert err.startswith("error: Dataset 'fer2013' is not built: nothing prepared under " + str(empty / "fer2013"))
  assert "python -m fer_jax.data build fer2013" in err and "--manual_dir" in err
  assert "fer2013.csv or fer2013.tar.gz" in err and "train/<class>/*.jpg" in err  # the files to put there
  assert "tfds_builders/fer2013/README.md" in err


# ---------------------------------------------------------------------------- disk


def test_read_only_workdir_is_a_clear_error(tmp_path, monkeypatch):
  workdir = tmp_path / "ro"
  workdir.mkdir()
  if os.geteuid() != 0:  # chmod does not stop root; then the read-only mount is simulated below.
    workdir.chmod(0o555)
    try:
      with pytest.raises(checkpointing.WorkdirError, match=f"The workdir {workdir} is not writable"):
        checkpointing.check_workdir(str(workdir), 1000, 3)
    finally:
      workdir.chmod(0o755)
  real_open = os.open

  def read_only_open(path, flags, *args, **kwargs):
    if str(path).startswith(str(workdir)) and flags & (os.O_WRONLY | os.O_RDWR):
      raise OSError(errno.EROFS, "Read-only file system", path)
    return real_open(path, flags, *args, **kwargs)

  monkeypatch.setattr(os, "open", read_only_open)
  with pytest.raises(checkpointing.WorkdirError,
                     match=f"The workdir {workdir} is not writable \\(Read-only file system\\).*--workdir"):
    checkpointing.check_workdir(str(workdir), 1000, 3)
  assert os.listdir(workdir) == []


def test_nearly_full_disk_fails_at_start_with_the_numbers(tmp_path, synthetic_tiny_dir, monkeypatch):
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**16, 2**16))
  config = tiny_config(synthetic_tiny_dir)
  workdir = tmp_path / "run"
  trainer = train.Trainer(config, str(workdir))
  size = checkpointing.state_bytes(trainer.abstract_state)
  assert size > 2**16
  with pytest.raises(checkpointing.WorkdirError, match=r"has 0\.1 MiB free, but 7 checkpoints of .* need about"):
    trainer.train()
  assert not (workdir / "checkpoints").exists() and not (workdir / model_card.FILENAME).exists()


# ---------------------------------------------------------------------------- evaluation job


def test_eval_job_killed_between_report_and_record_is_harmless(tmp_path, synthetic_tiny_dir):
  config = tiny_config(synthetic_tiny_dir)
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  assert eval_job.run(config, workdir) == [2, 4]
  out = pathlib.Path(eval_job.eval_dir(workdir, config.eval.split))
  report = (out / "step_4" / "metrics.json").read_text()
  # A kill after step 4's metrics.json but before evaluated.json recorded it.
  (out / "evaluated.json").write_text(json.dumps({"evaluated_steps": [2]}))
  assert eval_job.run(config, workdir) == [4]  # Scored again, same result, recorded once.
  assert (out / "step_4" / "metrics.json").read_text() == report
  assert json.loads((out / "evaluated.json").read_text()) == {"evaluated_steps": [2, 4], "unreadable_steps": {}}
  assert not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------------------- builders: cases not in *_builder_test.py


def _fer_row(label: int, seed: int, usage: str = "Training") -> str:
  pixels = np.random.default_rng(seed).integers(0, 256, 48 * 48)
  return f"{label},{' '.join(map(str, pixels))},{usage}\n"


def test_fer2013_truncated_csv_keeps_whole_rows_and_counts_the_cut_one(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  content = "emotion,pixels,Usage\n" + _fer_row(3, 0) + _fer_row(5, 1, "PublicTest") + _fer_row(2, 2)
  (manual / "fer2013.csv").write_text(content[:-2000])  # A download cut in the middle of the last row.
  builder = builders.build("fer2013", manual_dir=str(manual), data_dir=str(tmp_path / "data"))
  report = builder.info.metadata["build_report"]
  assert report["written"] == {"train": 1, "validation": 1}
  assert report["skipped"] == {"malformed_line": 1}


@pytest.mark.parametrize("content", ["", "emotion,pixels,Usage\n"], ids=["empty_file", "header_only"])
def test_fer2013_empty_csv_is_one_clear_error(tmp_path, content):
  from tfds_builders.fer2013 import fer2013
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "fer2013.csv").write_text(content)
  with pytest.raises(fer2013.Fer2013DataError):
    builders.build("fer2013", manual_dir=str(manual), data_dir=str(tmp_path / "data"))


def test_expw_empty_label_file_and_empty_image(tmp_path):
  manual = tmp_path / "expw"
  (manual / "origin").mkdir(parents=True)
  (manual / "label.lst").write_text("")
  with pytest.raises(ValueError, match="No usable faces"):
    builders.build("expw", manual_dir=str(manual), config="gray48", data_dir=str(tmp_path / "tfds"))
  (manual / "origin" / "empty.jpg").write_bytes(b"")
  (manual / "label.lst").write_text("empty.jpg 0 1 1 20 20 50 2\n")
  with pytest.raises(ValueError, match="No usable faces.*1 (unreadable|truncated)_image"):
    builders.build("expw", manual_dir=str(manual), config="gray48", data_dir=str(tmp_path / "tfds2"))
