"""A tiny quick start through the command line, as a user runs it: what it prints, and what a rerun prints.

One training run (module fixture, its dataset built on first use) serves every test here: its log holds no
library noise and each progress line once; rerunning the finished workdir says it is complete and shows its
metrics; the evaluation job says it is waiting, and stops on a damaged shard of the split it scores.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from fer_jax import run_summary

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from command_line_errors_test import damage  # pylint: disable=g-import-not-at-top,wrong-import-position
from reliability_test import run_cli  # pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = 8
# What a user saw before and what said nothing to them (issue 24, item 10).
NOISE = ("Load dataset info", "Downloading and preparing", "downloaded and prepared", "Generating dataset",
         "Variant folder", "Done writing", "Generating splits", "Unable to initialize backend",
         "Given directory is read only", "read_only=True", "generated new fontManager", "train_loss=",
         "val_accuracy=", "macro_f1=0")


def tiny_args(workdir: pathlib.Path, data_dir: pathlib.Path, *extra: str) -> list[str]:
  return ["--config", "configs/default.py", "--workdir", str(workdir), "--config.data.config=tiny",
          f"--config.data.data_dir={data_dir}", f"--config.num_train_steps={STEPS}", "--config.log_every_steps=2",
          "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4", "--config.batch_size=16",
          "--config.eval_batch_size=35", "--config.model_kwargs.conv_features=(8,16)",
          "--config.model_kwargs.dense_features=(32,)", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, subprocess.CompletedProcess]:
  """(workdir, data_dir, the finished train_and_eval run); the dataset is built by this run."""
  root = tmp_path_factory.mktemp("user_run")
  workdir, data_dir = root / "run", root / "tfds"
  out = run_cli(*tiny_args(workdir, data_dir, "--mode=train_and_eval"))
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, data_dir, out


def test_tiny_run_prints_no_library_noise_and_each_progress_line_once(run):
  _, data_dir, out = run
  text = out.stdout + out.stderr
  assert not [n for n in NOISE if n in text], [line for line in text.splitlines() if any(n in line for n in NOISE)]
  for step in range(2, STEPS + 1, 2):
    assert text.count(f"] step {step}/{STEPS} (epoch") == 1, text
  for step in (4, 8):
    assert text.count(f"] step {step} validation (validation)") == 1
    assert text.count(f"] Evaluated step {step} on validation") == 1
  assert text.count(f"] Building dataset synthetic_faces/tiny/1.0.0 in {data_dir}") == 1
  assert "] Built synthetic_faces/tiny/1.0.0 in " in text
  assert out.stdout.splitlines()[-1].startswith("TensorBoard logs: tensorboard --logdir ")
  assert len(text.splitlines()) <= 20, text  # 17 when written: each line above, plus kernels, model, checksums.


def test_rerun_on_a_finished_workdir_says_it_is_complete_with_its_metrics(run):
  workdir, data_dir, _ = run
  final = json.loads((workdir / "final_metrics.json").read_text())
  report = json.loads((workdir / "eval" / "validation" / f"step_{STEPS}" / "metrics.json").read_text())
  out = run_cli(*tiny_args(workdir, data_dir))
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert lines[0] == (f"This run is already complete: step {STEPS} of {STEPS} is saved in {workdir}/checkpoints. "
                      "To train again, use a new --workdir.")
  assert lines[1] == (f"Final validation (validation, step {STEPS}): accuracy {final['metrics']['val_accuracy']:.4f}, "
                      f"loss {final['metrics']['val_loss']:.4f}; in {workdir}/final_metrics.json")
  assert lines[2] == (f"Evaluation report (validation, step {STEPS}): accuracy {report['plain']['accuracy']:.4f}, "
                      f"macro F1 {report['plain']['macro_f1']:.4f}; in {workdir}/eval/validation/step_{STEPS}/"
                      "metrics.json")
  assert final["step"] == STEPS and final["metrics"]["val_accuracy"] == pytest.approx(report["plain"]["accuracy"])
  assert "progress_window" not in out.stderr  # Not one step trained.


def test_eval_job_says_how_long_it_waits_then_stops(run):
  workdir, data_dir, _ = run
  # A longer run than the one trained: the job waits for step 100, which never comes.
  out = run_cli(*tiny_args(workdir, data_dir, "--mode=eval", "--config.num_train_steps=100",
                           "--config.eval.idle_timeout_s=1", "--config.eval.poll_every_s=0.2"))
  assert out.returncode == 0, out.stderr[-3000:]
  waiting = [line for line in out.stderr.splitlines() if "Waiting for new checkpoints" in line]
  assert len(waiting) == 1 and waiting[0].endswith(
      f"Waiting for new checkpoints in {workdir}/checkpoints; the job stops once step 100 is evaluated, or after "
      "1 s without a new one (eval.idle_timeout_s)."), out.stderr
  assert "No new checkpoint in 1 s; the evaluation job stops." in out.stderr
  assert out.stdout.splitlines()[0] == (f"No new checkpoint to evaluate in {workdir}/checkpoints; reports are in "
                                        f"{workdir}/eval/validation.")


def test_eval_job_stops_on_a_damaged_shard_and_records_no_checkpoint_as_damaged(run, tmp_path):
  workdir, data_dir, _ = run
  fresh, damaged_data = tmp_path / "run", tmp_path / "tfds"
  shutil.copytree(workdir, fresh, ignore=shutil.ignore_patterns("eval"))  # Nothing evaluated yet.
  shutil.copytree(data_dir, damaged_data)
  shard = damage(damaged_data, "validation")
  out = run_cli(*tiny_args(fresh, damaged_data, "--mode=eval"))
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and out.stderr.strip().splitlines()[-1] == errors[0], out.stderr[-3000:]
  assert errors[0].startswith(f"error: The dataset file {shard} is damaged or unreadable (")
  assert errors[0].endswith(f"python -m fer_jax.data build synthetic_faces --config tiny --data_dir {damaged_data} "
                            "--overwrite")
  record = fresh / "eval" / "validation" / "evaluated.json"
  assert not record.exists() or not json.loads(record.read_text())["unreadable_steps"]


def test_a_finished_workdir_without_recorded_metrics_says_how_to_score_it(tmp_path):
  """Finished before final_metrics.json existed, never evaluated: no numbers to show, so say where they come from."""
  lines = run_summary.describe_finished(str(tmp_path), 600, "validation")
  assert lines == [f"This run is already complete: step 600 of 600 is saved in {tmp_path}/checkpoints. To train again, "
                   "use a new --workdir.",
                   "No final metrics were recorded; `--mode eval` scores the checkpoints into "
                   f"{tmp_path}/eval/validation."]
  run_summary.record_final(str(tmp_path), 599, {"val_accuracy": 0.5, "val_loss": 1.0}, "validation")
  assert len(run_summary.describe_finished(str(tmp_path), 600, "validation")) == 2  # Another step's: not shown.
  run_summary.record_final(str(tmp_path), 600, {"val_accuracy": 0.5, "val_loss": 1.0}, "validation")
  assert run_summary.describe_finished(str(tmp_path), 600, "validation")[1] == (
      f"Final validation (validation, step 600): accuracy 0.5000, loss 1.0000; in {tmp_path}/final_metrics.json")
