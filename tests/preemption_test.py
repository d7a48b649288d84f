"""Training killed (SIGKILL) or preempted (SIGTERM) and restarted ends bitwise equal to an uninterrupted run.

The trainer runs as `python -m fer_jax.main` in a subprocess; the uninterrupted
reference runs in this process with the same config (CPU results are bitwise
reproducible across processes).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import numpy as np

from fer_jax import checkpoint_checksums, checkpointing, eval_job, preemption, train

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from train_test import params_of, tiny_config  # pylint: disable=g-import-not-at-top,wrong-import-position

CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
from train_test import tiny_config

def get_config():
  config = tiny_config({data_dir!r})
  config.update({overrides!r})
  return config
"""


def write_config(tmp_path: pathlib.Path, data_dir: str, **overrides) -> tuple[str, ml_collections.ConfigDict]:
  path = tmp_path / f"config_{len(list(tmp_path.glob('config_*.py')))}.py"
  path.write_text(CONFIG_FILE.format(tests=str(REPO / "tests"), data_dir=data_dir, overrides=overrides))
  config = tiny_config(data_dir)
  config.update(overrides)
  return str(path), config


def start(config_file: str, workdir: str, log: pathlib.Path, *flags: str) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  with open(log, "ab") as f:
    return subprocess.Popen([sys.executable, "-m", "fer_jax.main", "--config", config_file, "--workdir", workdir,
                             *flags], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def finalized_steps(workdir: str) -> list[int]:
  ckpt = checkpointing.checkpoint_dir(workdir)
  return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) if os.path.isdir(ckpt) else []


def tmp_dirs(workdir: str) -> list[str]:
  ckpt = checkpointing.checkpoint_dir(workdir)
  return [n for n in os.listdir(ckpt) if ".orbax-checkpoint-tmp" in n] if os.path.isdir(ckpt) else []


def assert_same_params(reference: str, other: str, config) -> None:
  for a, b in zip(params_of(reference, config), params_of(other, config), strict=True):
    np.testing.assert_array_equal(a, b)


def sigterm_once_logged(proc: subprocess.Popen, log: pathlib.Path, marker: str, wait_after: float = 0.0,
                        timeout: float = 180) -> tuple[int, float, str]:
  """Sends SIGTERM `wait_after` s after `marker` shows in the log; (exit code, seconds from SIGTERM to exit, log)."""
  deadline = time.monotonic() + timeout
  while marker not in log.read_text() and time.monotonic() < deadline:
    assert proc.poll() is None, log.read_text()[-3000:]
    time.sleep(0.05)
  time.sleep(wait_after)
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  rc = proc.wait(timeout=60)
  return rc, time.monotonic() - sent, log.read_text()


def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(tmp_path, synthetic_tiny_dir):
  overrides = dict(num_train_steps=24, checkpoint_every_steps=1, eval_every_steps=1, log_every_steps=1,
                   keep_checkpoints=2)
  config_file, config = write_config(tmp_path, synthetic_tiny_dir, **overrides)
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(config, reference)

  workdir, log = str(tmp_path / "killed"), tmp_path / "killed.log"
  rng = random.Random(0)
  kills, mid_save_kills, after_mid_save = 0, 0, None
  while kills < 6:
    proc = start(config_file, workdir, log)
    before = max(finalized_steps(workdir), default=0)
    aim_mid_save = kills in (1, 3, 5)  # Kill the moment a save's temporary directory shows up.
    delay = rng.uniform(0.0, 0.4)
    progressed_at = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
      if aim_mid_save and tmp_dirs(workdir):
        os.kill(proc.pid, signal.SIGKILL)
        # The kill may land just after orbax's rename: count it mid-save only if a temp dir is left.
        proc.wait()
        if tmp_dirs(workdir):
          mid_save_kills += 1
          if after_mid_save is None:
            after_mid_save = str(tmp_path / "after_mid_save")
            shutil.copytree(workdir, after_mid_save)
        break
      if not aim_mid_save and max(finalized_steps(workdir), default=0) > before:
        progressed_at = progressed_at or time.monotonic()
        if time.monotonic() - progressed_at >= delay:
          os.kill(proc.pid, signal.SIGKILL)
          break
      time.sleep(0.001)
    rc = proc.wait(timeout=30)
    assert rc == -signal.SIGKILL, f"run {kills} ended on its own (rc {rc}) before it was killed:\n" + log.read_text()[-3000:]
    kills += 1
  assert mid_save_kills >= 1, "no kill landed during a checkpoint save"
  assert max(finalized_steps(workdir)) < config.num_train_steps

  proc = start(config_file, workdir, log)
  assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
  assert finalized_steps(workdir)[-1] == config.num_train_steps
  assert not tmp_dirs(workdir), "a restart removes the temporary directories of killed saves"
  assert_same_params(reference, workdir, config)

  # The evaluation job, run on the workdir as the mid-save kill left it, scores only finalized steps. A kill
  # can also land while the retention policy deletes an old step: that half-deleted step is recorded unreadable.
  assert tmp_dirs(after_mid_save)
  steps = eval_job.run(config, after_mid_save, idle_timeout_s=0.0)
  complete = [s for s in finalized_steps(after_mid_save)
              if os.path.exists(os.path.join(checkpointing.step_dir(after_mid_save, s), "_CHECKPOINT_METADATA"))]
  assert steps == complete and steps
  record = json.loads(pathlib.Path(eval_job.eval_dir(after_mid_save, "validation"), "evaluated.json").read_text())
  assert sorted(map(int, record["unreadable_steps"])) == sorted(set(finalized_steps(after_mid_save)) - set(complete))


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path, synthetic_tiny_dir):
  overrides = dict(num_train_steps=400, checkpoint_every_steps=1000, eval_every_steps=1000, log_every_steps=2)
  config_file, config = write_config(tmp_path, synthetic_tiny_dir, **overrides)
  workdir, log = str(tmp_path / "preempted"), tmp_path / "preempted.log"
  proc = start(config_file, workdir, log)
  rc, took, out = sigterm_once_logged(proc, log, "step 4/400")
  assert rc == 0, out[-3000:]
  assert took < 30, f"took {took:.1f} s to save and exit after SIGTERM"
  saved = finalized_steps(workdir)
  assert len(saved) == 1 and 4 <= saved[0] < 400, (saved, out[-2000:])
  assert f"Preempted: saved a checkpoint at step {saved[0]}" in out

  proc = start(config_file, workdir, log)  # The rerun resumes from the preemption checkpoint.
  assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
  assert f"Resumed from {checkpointing.checkpoint_dir(workdir)} at step {saved[0]}" in log.read_text()
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(config, reference)
  assert_same_params(reference, workdir, config)


def test_sigterm_in_train_and_eval_mode_saves_and_skips_the_evaluation(tmp_path, synthetic_tiny_dir):
  overrides = dict(num_train_steps=400, checkpoint_every_steps=1000, eval_every_steps=1000, log_every_steps=2)
  config_file, _ = write_config(tmp_path, synthetic_tiny_dir, **overrides)
  workdir, log = str(tmp_path / "preempted"), tmp_path / "preempted.log"
  proc = start(config_file, workdir, log, "--mode", "train_and_eval")
  deadline = time.monotonic() + 120
  while "step 4/400" not in log.read_text() and time.monotonic() < deadline:
    assert proc.poll() is None, log.read_text()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
  out = log.read_text()
  saved = finalized_steps(workdir)
  assert len(saved) == 1 and f"Preempted: saved a checkpoint at step {saved[0]}" in out, (saved, out[-2000:])
  assert "Evaluated checkpoint steps" not in out and not os.path.exists(os.path.join(workdir, "eval")), out[-2000:]


def test_the_handler_is_installed_in_the_main_thread_only_and_the_previous_one_comes_back(monkeypatch):
  def previous(signum, frame):
    raise AssertionError("the previous handler ran while the preemption notice was installed")

  before = signal.signal(signal.SIGTERM, previous)
  try:
    with preemption.preemption_notice() as notice:
      assert signal.getsignal(signal.SIGTERM) not in (previous, signal.SIG_DFL)
      os.kill(os.getpid(), signal.SIGTERM)  # recorded, not fatal
      deadline = time.monotonic() + 5
      while notice["signal"] is None and time.monotonic() < deadline:
        time.sleep(0.001)
      assert notice["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is previous

    seen = {}

    def in_a_thread():  # signal.signal() raises ValueError outside the main thread: it must not be called
      try:
        with preemption.preemption_notice() as notice:
          seen["notice"], seen["handler"] = notice, signal.getsignal(signal.SIGTERM)
      except Exception as e:  # pylint: disable=broad-except
        seen["error"] = e

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert "error" not in seen and seen["notice"] == {"signal": None} and seen["handler"] is previous, seen

    monkeypatch.setattr(preemption.multiprocessing, "parent_process", lambda: object())  # a grain worker
    with preemption.preemption_notice():
      assert signal.getsignal(signal.SIGTERM) is previous
  finally:
    signal.signal(signal.SIGTERM, before)


SECOND_SIGTERM_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from train_test import tiny_config
from fer_jax import checkpointing, parallel, train

config = tiny_config({data_dir!r})
config.update(num_train_steps=400, checkpoint_every_steps=4, eval_every_steps=4, log_every_steps=1)
real_batch, real_save, batches = parallel.global_batch, checkpointing.save, []

def global_batch(local_batch, mesh):
  if local_batch["image"].shape[0] == config.batch_size:
    batches.append(1)
    if len(batches) == 6:
      os.kill(os.getpid(), signal.SIGTERM)  # the preemption notice, during step 6
  return real_batch(local_batch, mesh)

def save(manager, step, state, data_iterator, metrics):
  real_save(manager, step, state, data_iterator, metrics)
  if metrics is None:  # the preemption save has started: a second SIGTERM now
    print("second SIGTERM at step", step, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    print("SURVIVED the second SIGTERM", flush=True)

parallel.global_batch, checkpointing.save = global_batch, save
train.train_and_evaluate(config, {workdir!r})
print("training returned", flush=True)
"""


def test_a_second_sigterm_during_the_save_kills_at_once_and_the_previous_checkpoint_stays(tmp_path,
                                                                                         synthetic_tiny_dir):
  workdir = str(tmp_path / "run")
  script = SECOND_SIGTERM_SCRIPT.format(tests=str(REPO / "tests"), data_dir=synthetic_tiny_dir, workdir=workdir)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=180)
  assert out.returncode == -signal.SIGTERM, (out.returncode, out.stdout, out.stderr[-3000:])
  assert "second SIGTERM at step 6" in out.stdout and "SURVIVED" not in out.stdout, out.stdout
  assert finalized_steps(workdir) == [4]
  assert checkpoint_checksums.verify(checkpointing.step_dir(workdir, 4)) is not None
