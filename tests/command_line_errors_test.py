"""Mistakes and damage a user meets at the command line: each is one `error:` line and exit status 1.

A misspelt --config field, a --config file that is not there, a damaged dataset shard (in the trainer and in
`python -m fer_jax.data info`), and `data info` on a dataset it cannot find.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import threading

import pytest

from fer_jax import config_schema
from fer_jax import run_summary
from fer_jax import train
from fer_jax.data import builders
from fer_jax.data import stats

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from reliability_test import run_cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from train_test import tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position


def run_data_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "fer_jax.data", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120, env=env)


def assert_one_error_line(out: subprocess.CompletedProcess, starts: str) -> str:
  """The run failed with status 1 and printed nothing on stderr but one `error:` line; returns it."""
  assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
  assert "Traceback" not in out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith(starts), lines[0]
  return lines[0]


def damage(data_dir: pathlib.Path, split: str) -> pathlib.Path:
  """Flips 64 bytes in the middle of `split`'s ArrayRecord shard (the tiny config has one per split)."""
  (shard,) = (data_dir / "synthetic_faces" / "tiny" / "1.0.0").glob(f"synthetic_faces-{split}.array_record-*")
  size = shard.stat().st_size
  with open(shard, "r+b") as f:
    f.seek(size // 2)
    chunk = f.read(64)
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in chunk))
  return shard


@pytest.fixture
def damaged_train_dir(tmp_path, synthetic_tiny_dir) -> tuple[pathlib.Path, pathlib.Path]:
  """(data_dir, damaged shard): a copy of the tiny dataset whose train shard fails riegeli's hash.

  Its normalization statistics are cached first, as on a dataset already trained on, so the damage is met
  by the training reader (grain's workers when there are any), not by the statistics pass.
  """
  data_dir = tmp_path / "tfds"
  shutil.copytree(synthetic_tiny_dir, data_dir)
  config = config_schema.base_config()
  config.data.name, config.data.config, config.data.data_dir = "synthetic_faces", "tiny", str(data_dir)
  stats.normalization_stats(config)
  return data_dir, damage(data_dir, "train")


# ---------------------------------------------------------------------------- --config mistakes


@pytest.mark.parametrize("override,message", [
    ("--config.batch_szie=128", "error: --config.batch_szie: the config has no field 'batch_szie'. "
                                "Did you mean --config.batch_size?"),
    ("--config.data.nmae=x", "error: --config.data.nmae: the config has no field 'nmae'. Did you mean "
                             "--config.data.name?"),
    ("--config.zzz=1", "error: --config.zzz: the config has no field 'zzz'; the fields and what each means are in "
                       "fer_jax/config_schema.py"),
], ids=["batch_szie", "data.nmae", "zzz"])
def test_misspelt_config_field_is_one_error_line_with_the_suggestion(tmp_path, override, message):
  out = run_cli("--config", "configs/default.py", "--workdir", str(tmp_path / "run"), override)
  assert_one_error_line(out, message)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra", [[], ["--config.batch_size=128"]], ids=["alone", "with_an_override"])
def test_missing_config_file_is_one_error_line(tmp_path, extra):
  out = run_cli("--config", "configs/nosuch.py", "--workdir", str(tmp_path / "run"), *extra)
  assert_one_error_line(out, f"error: --config configs/nosuch.py: no such file (relative paths start in {REPO})")
  assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- a damaged dataset shard


def rebuild_hint(data_dir: pathlib.Path) -> str:
  return f"Rebuild the dataset: python -m fer_jax.data build synthetic_faces --config tiny --data_dir {data_dir} " \
         "--overwrite"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_trainer_stops_on_a_damaged_shard_with_one_line_naming_it(tmp_path, damaged_train_dir, num_workers):
  data_dir, shard = damaged_train_dir
  out = run_cli("--config", "configs/default.py", "--workdir", str(tmp_path / "run"), "--config.smoke_test=True",
                "--config.data.config=tiny", f"--config.data.data_dir={data_dir}", "--config.batch_size=16",
                f"--config.data.num_workers={num_workers}")
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and out.stderr.strip().splitlines()[-1] == errors[0], out.stderr[-3000:]
  assert errors[0].startswith(f"error: The dataset file {shard} is damaged or unreadable (Corrupted Riegeli")
  assert errors[0].endswith(rebuild_hint(data_dir))


def test_trainer_has_stopped_grains_workers_when_a_damaged_shard_error_leaves_it(tmp_path, damaged_train_dir):
  """Else a worker's prefetch thread is still stopping it while the interpreter's exit stops it too: the two
  race, and grain prints a traceback after the error line (seen in CI)."""
  data_dir, shard = damaged_train_dir
  config = tiny_config(str(data_dir))
  config.data.num_workers = 2
  with pytest.raises(builders.DatasetDamagedError, match=re.escape(str(shard))):
    train.Trainer(config, str(tmp_path / "run")).train()
  assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("grain-")]
  assert not multiprocessing.active_children()


def test_data_info_stops_on_a_damaged_shard_and_its_rebuild_command_repairs_it(damaged_train_dir):
  data_dir, shard = damaged_train_dir
  out = run_data_cli("info", "synthetic_faces", "--config", "tiny", "--data_dir", str(data_dir))
  line = assert_one_error_line(out, f"error: The dataset file {shard} is damaged or unreadable (")
  assert line.endswith(rebuild_hint(data_dir)) and not out.stdout
  command = shlex.split(line[line.index("python -m"):])
  rebuilt = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
  out = run_data_cli("info", "synthetic_faces", "--config", "tiny", "--data_dir", str(data_dir))
  assert out.returncode == 0 and "files: all 490 records read back intact" in out.stdout, out.stderr[-3000:]


# ---------------------------------------------------------------------------- data info: not found


def test_data_info_not_found_points_at_data_dir_and_tfds_data_dir(tmp_path):
  empty = tmp_path / "nothing_here"
  out = run_data_cli("info", "fer2013", "--data_dir", str(empty))
  line = assert_one_error_line(out, f"error: fer2013/1.0.0 is not built under --data_dir {empty} (looked for "
                                    f"{empty / 'fer2013' / '1.0.0'}).")
  assert "pass that folder: --data_dir DIR (or set TFDS_DATA_DIR=DIR)" in line
  assert line.endswith("python -m fer_jax.data build fer2013 --manual_dir <folder with the downloaded files>.")
  out = run_data_cli("info", "fer2013", env=dict(os.environ, TFDS_DATA_DIR=str(empty)))
  assert_one_error_line(out, "error: fer2013/1.0.0 is not built under $TFDS_DATA_DIR (looked for "
                             f"{empty / 'fer2013' / '1.0.0'}).")


def test_tensorboard_line_says_how_to_install_it_only_when_missing(monkeypatch):
  real = run_summary.importlib.util.find_spec
  monkeypatch.setattr(run_summary.importlib.util, "find_spec", lambda name: None if name == "tensorboard" else
                      real(name))
  assert run_summary.tensorboard_line("/w").endswith("(TensorBoard is not installed: pip install -e '.[tensorboard]')")
  monkeypatch.setattr(run_summary.importlib.util, "find_spec", lambda name: object())
  assert run_summary.tensorboard_line("/w") == "TensorBoard logs: tensorboard --logdir /w"
