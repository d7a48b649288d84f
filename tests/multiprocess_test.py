"""Multi-host training with real processes: 2 processes x 2 CPU devices over loopback (gloo).

The 2-process run must compute what a 1-process x 4-device run computes from
the same global batches and seed, write logs, model card and reports once,
and leave checkpoints that a 1-process evaluation job restores and scores.

Why the comparison feeds both topologies the same global batches instead of
each run's own input pipeline: by design each process reads its own strided,
separately shuffled shard of the train split, so a 2-process pipeline yields
different (equally valid) batches than a 1-process one. The script therefore
reads the 1-process stream on every process and gives each process its rows
of each global batch; then a real `Trainer.train()` with per-process
pipelines (and a spawned grain worker per process) writes the checkpoint.

Also here: the start-up detection rules. The launch/ scripts' dry runs are in tests/launch_scripts_test.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from fer_jax import distributed

try:
  from portpicker import pick_unused_port
except ImportError:  # portpicker checks TCP and UDP; binding port 0 is good enough on loopback.
  def pick_unused_port() -> int:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      return s.getsockname()[1]

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4
# Per-phase wall-clock limit: a hung collective fails the test instead of hanging CI.
PHASE_TIMEOUT_S = 180

WORKER_SCRIPT = '''
"""One process of a fer_jax run (written by tests/multiprocess_test.py)."""
import json
import os
import shutil
import sys

ARGS = json.loads(sys.argv[1])

if __name__ == "__mp_main__":
  # A grain worker: spawn imports the main module under this name. It must not join the run.
  import jax
  assert not jax.distributed.is_initialized()
  open(os.path.join(ARGS["markers"], f"grain_worker_{ARGS['process_id']}_{os.getpid()}"), "w").close()


def main():
  from fer_jax import distributed
  pid, count = ARGS["process_id"], ARGS["num_processes"]
  if count > 1:
    distributed.initialize("on", coordinator_address=ARGS["coordinator"], num_processes=count,
                           process_id=pid, timeout_s=60)
  import jax
  import numpy as np
  sys.path.insert(0, ARGS["tests"])
  from train_test import tiny_config
  from fer_jax import eval_job, parallel, train
  from fer_jax.data import pipeline

  config = tiny_config(ARGS["data_dir"])
  config.num_train_steps = config.checkpoint_every_steps = config.eval_every_steps = ARGS["steps"]
  config.data.num_workers = 1 if ARGS["train"] else 0
  out = {"process_count": jax.process_count(), "device_count": jax.device_count(),
         "any_process": [distributed.any_process(pid == 1), distributed.any_process(False)]}
  trainer = train.Trainer(config, ARGS["workdir"])

  # The same global batches on every topology: the 1-process stream, each process taking its rows.
  stream_config = config.copy_and_resolve_references()
  stream_config.data.num_workers = 0
  stream = iter(pipeline.create_train_dataset(stream_config))
  local = config.batch_size // count
  rows = slice(pid * local, (pid + 1) * local)
  state, losses = trainer._init_state(), []
  for _ in range(ARGS["steps"]):
    full = next(stream)
    batch = parallel.global_batch({k: v[rows] for k, v in full.items()}, trainer.mesh)
    for shard in batch["label"].addressable_shards:  # process p's rows land at global rows p*local..
      assert np.array_equal(np.asarray(shard.data), full["label"][shard.index]), shard.index
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics.compute()["loss"]))
  out["losses"] = losses
  params = parallel.to_host(state.params)
  if pid == 0:
    np.savez(ARGS["params_out"], *jax.tree.leaves(params))

  if ARGS["train"]:  # The real loop: per-process input shards, validation, checkpoints.
    out["train"] = trainer.train()
  if ARGS["eval_from"]:  # Evaluate a checkpoint written by another topology, from a copy of its folder.
    shutil.copytree(os.path.join(ARGS["eval_from"], "checkpoints"), os.path.join(ARGS["workdir"], "checkpoints"))
  if ARGS["train"] or ARGS["eval_from"]:
    out["evaluated_steps"] = eval_job.run(config, ARGS["workdir"], idle_timeout_s=0.0)
  print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
'''


def run_processes(script: pathlib.Path, args: list[dict], devices_per_process: int, logdir: pathlib.Path,
                  timeout_s: float = PHASE_TIMEOUT_S) -> list[dict]:
  """Starts one process per entry of `args` and returns their RESULT dicts.

  If one fails, the others are killed at once (they would wait in a collective
  for the JAX heartbeat timeout); all are killed at `timeout_s`.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  procs, logs = [], []
  for i, a in enumerate(args):
    out, err = open(logdir / f"p{i}.out", "w"), open(logdir / f"p{i}.err", "w")
    logs.append((out, err))
    procs.append(subprocess.Popen([sys.executable, str(script), json.dumps(a)], env=env, stdout=out, stderr=err,
                                  cwd=str(REPO)))
  deadline = time.monotonic() + timeout_s
  failure = None
  while failure is None and any(p.poll() is None for p in procs):
    bad = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
    if bad:
      failure = f"process {bad[0]} exited with {procs[bad[0]].returncode}"
    elif time.monotonic() > deadline:
      failure = f"timed out after {timeout_s:.0f} s (a hung collective?)"
    else:
      time.sleep(0.2)
  if failure is None and any(p.returncode for p in procs):
    failure = f"exit codes {[p.returncode for p in procs]}"
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()
  for out, err in logs:
    out.close()
    err.close()
  if failure:
    tails = "\n".join(f"--- process {i} stderr ---\n{(logdir / f'p{i}.err').read_text()[-2500:]}"
                      for i in range(len(procs)))
    pytest.fail(f"{failure}\n{tails}")
  results = []
  for i in range(len(procs)):
    lines = [l for l in (logdir / f"p{i}.out").read_text().splitlines() if l.startswith("RESULT ")]
    assert lines, f"process {i} printed no result"
    results.append(json.loads(lines[-1][len("RESULT "):]))
  return results


@pytest.fixture
def data_dir(synthetic_tiny_dir: str) -> str:
  return synthetic_tiny_dir


def test_two_processes_match_one_process_and_checkpoint_moves_topology(tmp_path, data_dir):
  script = tmp_path / "fer_worker.py"
  script.write_text(WORKER_SCRIPT)
  markers = tmp_path / "markers"
  markers.mkdir()
  common = {"tests": str(REPO / "tests"), "data_dir": data_dir, "steps": STEPS, "markers": str(markers)}

  # 2 processes x 2 devices: same-batch steps, then real training, checkpoints and the evaluation job.
  two = tmp_path / "two"
  coordinator = f"127.0.0.1:{pick_unused_port()}"
  logs2 = tmp_path / "logs2"
  logs2.mkdir()
  results2 = run_processes(script, [
      dict(common, process_id=p, num_processes=2, coordinator=coordinator, workdir=str(two), train=True,
           eval_from="", params_out=str(tmp_path / "params2.npz")) for p in range(2)], 2, logs2)
  # 1 process x 4 devices: the same global batches; then the evaluation job on the 2-process checkpoint.
  one = tmp_path / "one"
  logs1 = tmp_path / "logs1"
  logs1.mkdir()
  [result1] = run_processes(script, [
      dict(common, process_id=0, num_processes=1, workdir=str(one), train=False, eval_from=str(two),
           params_out=str(tmp_path / "params1.npz"))], 4, logs1)

  assert [(r["process_count"], r["device_count"]) for r in results2] == [(2, 4), (2, 4)]
  assert [r["any_process"] for r in results2] == [[True, False], [True, False]]  # a SIGTERM on process 1 only
  assert (result1["process_count"], result1["device_count"]) == (1, 4)
  # Every process computed the same (replicated) loss. Across topologies only the order of the
  # float32 gradient all-reduce differs (within a process vs. gloo across processes): rounding-level.
  assert results2[0]["losses"] == results2[1]["losses"]
  np.testing.assert_allclose(results2[0]["losses"], result1["losses"], rtol=1e-5, atol=0)
  params2, params1 = np.load(tmp_path / "params2.npz"), np.load(tmp_path / "params1.npz")
  assert params2.files == params1.files
  for name in params1.files:  # Adam normalises updates, so compare absolutely against the lr (1e-3) scale.
    np.testing.assert_allclose(params2[name], params1[name], rtol=1e-5, atol=1e-6, err_msg=name)

  # Grain workers were spawned and imported the main script, without joining the run.
  assert sorted(p.name.split("_")[2] for p in markers.iterdir()) == ["0", "1"]

  # Written once: one TensorBoard event file, one model card; each process saved its iterator state.
  assert len([n for n in os.listdir(two) if n.startswith("events.out.tfevents")]) == 1
  assert json.loads((two / "model.json").read_text())["num_classes"] == 7
  assert sorted(os.listdir(two / "checkpoints")) == [str(STEPS)]
  iterator_states = {n for n in os.listdir(two / "checkpoints" / str(STEPS) / "data") if n.endswith(".json")}
  assert iterator_states == {"process_0-of-2.json", "process_1-of-2.json"}

  # The 2-process evaluation job and a 1-process one on a copy of the checkpoint agree exactly,
  # and with the trainer's own validation; each scored the split's 70 examples exactly once.
  assert results2[0]["evaluated_steps"] == results2[1]["evaluated_steps"] == [STEPS]
  assert result1["evaluated_steps"] == [STEPS]
  report2 = json.loads((two / f"eval/validation/step_{STEPS}/metrics.json").read_text())
  report1 = json.loads((one / f"eval/validation/step_{STEPS}/metrics.json").read_text())
  assert report1["plain"]["num_examples"] == report2["plain"]["num_examples"] == 70
  assert report1["plain"]["confusion_matrix"] == report2["plain"]["confusion_matrix"]
  assert report1["plain"]["accuracy"] == report2["plain"]["accuracy"]
  assert report2["plain"]["accuracy"] == pytest.approx(results2[0]["train"]["val_accuracy"], rel=1e-6)  # float32
  # The mean loss depends on every predicted probability, not only the argmax: a stronger check.
  np.testing.assert_allclose(report1["plain"]["loss"], report2["plain"]["loss"], rtol=1e-5)
  assert len(os.listdir(two / "eval/validation")) == len(set(os.listdir(two / "eval/validation")))
  record = json.loads((two / "eval/validation/evaluated.json").read_text())
  assert record == {"evaluated_steps": [STEPS], "unreadable_steps": {}}


PREEMPT_WORKER_SCRIPT = """
import json, os, signal, sys
ARGS = json.loads(sys.argv[1])


def main():
  from fer_jax import distributed
  distributed.initialize("on", coordinator_address=ARGS["coordinator"], num_processes=2,
                         process_id=ARGS["process_id"], timeout_s=60)
  sys.path.insert(0, ARGS["tests"])
  from train_test import tiny_config
  from fer_jax import parallel, train

  config = tiny_config(ARGS["data_dir"])
  config.update(num_train_steps=400, log_every_steps=4, eval_every_steps=1000, checkpoint_every_steps=1000)
  real_batch, batches = parallel.global_batch, []

  def global_batch(local_batch, mesh):
    if local_batch["image"].shape[0] == config.batch_size // 2:
      batches.append(1)
      if ARGS["process_id"] == 0 and len(batches) == 5:
        os.kill(os.getpid(), signal.SIGTERM)  # process 0 alone gets the notice, during step 5
    return real_batch(local_batch, mesh)

  parallel.global_batch = global_batch
  trainer = train.Trainer(config, ARGS["workdir"])
  trainer.train()
  print("RESULT " + json.dumps({"preempted_at_step": trainer.preempted_at_step}), flush=True)


if __name__ == "__main__":
  main()
"""


def test_every_process_acts_on_process_0s_notice_at_the_next_log_step(tmp_path, data_dir):
  script = tmp_path / "preempt_worker.py"
  script.write_text(PREEMPT_WORKER_SCRIPT)
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  logs.mkdir()
  coordinator = f"127.0.0.1:{pick_unused_port()}"
  results = run_processes(script, [
      {"tests": str(REPO / "tests"), "data_dir": data_dir, "workdir": str(workdir), "coordinator": coordinator,
       "process_id": p} for p in range(2)], 1, logs)
  # Process 1 never saw a signal; both stopped at step 8, the first log step after the notice, and saved it.
  assert [r["preempted_at_step"] for r in results] == [8, 8]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["8"]
  assert {n for n in os.listdir(workdir / "checkpoints" / "8" / "data") if n.endswith(".json")} == {
      "process_0-of-2.json", "process_1-of-2.json"}


# ---------------------------------------------------------------------------
# Start-up rules (no processes needed).

SLURM_ENV = {"SLURM_JOB_ID": "12", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16", "SLURM_PROCID": "3",
             "SLURM_LOCALID": "3"}


@pytest.mark.parametrize("kwargs, env, expected", [
    ({}, {}, None),
    ({}, {"JAX_PLATFORMS": "cpu"}, None),
    ({"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}, {}, "explicit"),
    ({}, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "explicit"),
    ({}, SLURM_ENV, "slurm"),
    ({}, dict(SLURM_ENV, SLURM_NTASKS="1"), None),  # one task: nothing to join
    ({}, {k: v for k, v in SLURM_ENV.items() if k != "SLURM_STEP_NODELIST"}, None),  # sbatch shell, not srun
    ({}, {"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
    ({}, {"TPU_WORKER_HOSTNAMES": "w0,w1"}, "tpu_vm"),  # GKE; VMs are found by their PCI TPU chips
    ({}, {"TPU_WORKER_HOSTNAMES": "w0,w1", "JAX_PLATFORMS": "cpu"}, None),  # an eval job on a TPU worker's CPU
])
def test_detect(kwargs, env, expected):
  # TPU_SKIP_MDS_QUERY: the answer must not depend on whether the test machine has TPU chips.
  assert distributed.detect(**kwargs, env=dict(env, TPU_SKIP_MDS_QUERY="1")) == expected


def test_initialize_refuses_in_a_child_process(monkeypatch):
  """A grain worker (a multiprocessing child) that imported the main module must not join the run."""
  monkeypatch.setattr(distributed.multiprocessing, "parent_process", lambda: object())
  with pytest.raises(RuntimeError, match="child process"):
    distributed.initialize("on", coordinator_address="127.0.0.1:1", num_processes=2, process_id=1)


def test_initialize_names_missing_flags(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(ValueError, match="--num_processes, --process_id"):
    distributed.initialize("auto", coordinator_address="10.0.0.1:1234")
  assert distributed.initialize("off", coordinator_address="10.0.0.1:1234") is False
  with pytest.raises(ValueError, match="one of"):
    distributed.initialize("yes")


MP_MAIN_IMPORT = """
import runpy
from fer_jax import distributed
def refuse(*args, **kwargs):
  raise AssertionError("distributed.initialize ran while importing the main module")
distributed.initialize = refuse
runpy.run_module("fer_jax.main", run_name="__mp_main__")  # what a spawned grain worker does
from jax._src import xla_bridge
assert not xla_bridge.backends_are_initialized(), "importing fer_jax.main touched a device"
"""


def test_importing_main_as_a_grain_worker_starts_nothing():
  """grain's spawned workers import the main module as __mp_main__: no initialize, no device."""
  out = subprocess.run([sys.executable, "-c", MP_MAIN_IMPORT], capture_output=True, text=True, timeout=120,
                       cwd=str(REPO), env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]

