"""The launch/ scripts in dry-run mode: the exact gcloud and srun commands they would run, and their errors."""

from __future__ import annotations

import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def dry_run(script: str, *args: str, **env: str) -> list[str]:
  full_env = {"PATH": os.environ["PATH"], "HOME": "/home/u", "DRY_RUN": "1", **env}
  out = subprocess.run(["bash", str(REPO / "launch" / script), *args], env=full_env, capture_output=True,
                       text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  return [line[2:] for line in out.stdout.splitlines() if line.startswith("+ ")]


def test_tpu_vm_script_v4_commands():
  commands = dry_run("tpu_vm.sh", "up", PROJECT="proj", BUCKET="fer-bucket")
  create, archive, scp, install, data, train, evaluate = commands
  assert create == ("gcloud compute tpus tpu-vm create fer-jax-v4-8 --project=proj --zone=us-central2-b "
                    "--accelerator-type=v4-8 --version=tpu-ubuntu2204-base")
  assert archive.startswith(f"git -C {REPO} archive") and archive.endswith(" HEAD")
  assert scp.startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in scp
  assert "--worker=all" in install and "jax[tpu]" in install and "gcsfuse" in install and "python 3.12" in install
  assert "--worker=0" in data and "python -m fer_jax.data build synthetic_faces" in data
  assert "gcloud storage rsync --recursive $HOME/tfds_build gs://fer-bucket/tfds" in data
  assert "--worker=all" in train and "gs://fer-bucket/tfds $HOME/tensorflow_datasets" in train
  assert ("python -m fer_jax.main --config=configs/default.py --workdir=/gcs/fer-bucket/runs/default "
          "--config.data.data_dir=$HOME/tensorflow_datasets >") in train
  assert "--distributed" not in train  # JAX finds the other workers on a TPU VM.
  assert "--worker=0" in evaluate and "JAX_PLATFORMS=cpu" in evaluate
  assert "--mode=eval --distributed=off --config=configs/default.py --workdir=/gcs/fer-bucket/runs/default" in evaluate
  for command in commands:
    if command.startswith("gcloud compute tpus"):
      assert "--project=proj --zone=us-central2-b" in command


def test_tpu_vm_script_v5e_pod_slice_and_teardown():
  env = dict(PROJECT="proj", BUCKET="fer-bucket", ACCELERATOR_TYPE="v5litepod-16", SPOT="1",
             CONFIG="configs/fer2013_cnn.py", DATASET="fer2013", MANUAL_DIR="gs://fer-bucket/manual/fer2013",
             EXTRA_FLAGS="--config.batch_size=256")
  [create] = dry_run("tpu_vm.sh", "create", **env)
  assert create == ("gcloud compute tpus tpu-vm create fer-jax-v5litepod-16 --project=proj --zone=us-west4-a "
                    "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite --spot")
  [data] = dry_run("tpu_vm.sh", "data", **env)
  assert "gcloud storage cp --recursive gs://fer-bucket/manual/fer2013/* $HOME/manual/" in data
  assert "fer_jax.data build fer2013 --manual_dir=$HOME/manual" in data
  [train] = dry_run("tpu_vm.sh", "train", **env)
  assert "--worker=all" in train and "--zone=us-west4-a" in train
  assert "--config=configs/fer2013_cnn.py --workdir=/gcs/fer-bucket/runs/fer2013_cnn" in train
  assert "--config.batch_size=256 >" in train
  [bucket] = dry_run("tpu_vm.sh", "bucket", **env)
  assert bucket == ("gcloud storage buckets create gs://fer-bucket --project=proj --location=us-west4 "
                    "--uniform-bucket-level-access --enable-hierarchical-namespace")
  [logs] = dry_run("tpu_vm.sh", "logs", "eval", "2", **env)
  assert "--worker=2" in logs and "tail -n 100 -F $HOME/fer_eval.log" in logs
  [delete] = dry_run("tpu_vm.sh", "delete", **env)
  assert delete == "gcloud compute tpus tpu-vm delete fer-jax-v5litepod-16 --project=proj --zone=us-west4-a --quiet"


def test_tpu_vm_script_says_what_is_missing():
  out = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh"), "create"], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "DRY_RUN": "1"}, timeout=30)
  assert out.returncode == 2 and "set PROJECT" in out.stderr
  out = subprocess.run(["bash", str(REPO / "launch" / "tpu_vm.sh"), "help"], capture_output=True, text=True,
                       timeout=30)
  assert out.returncode == 0 and "Costs" in out.stdout and "Needs" in out.stdout


def test_slurm_script_commands():
  [srun] = dry_run("slurm_gpu.sbatch", SLURM_SUBMIT_DIR="/shared/fer", SLURM_JOB_ID="77",
                   SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="8", DATA_DIR="/shared/tfds")[1:]
  assert srun == ("srun --nodes=2 --ntasks-per-node=8 --kill-on-bad-exit=1 /shared/fer/.venv/bin/python -m "
                  "fer_jax.main --config=configs/default.py --workdir=/shared/fer/runs/default-77 "
                  "--config.data.data_dir=/shared/tfds --mode=train_and_eval")
  export, cd, srun = dry_run("slurm_gpu.sbatch", PER="node", EVAL="none", SLURM_SUBMIT_DIR="/shared/fer",
                             SLURM_JOB_NUM_NODES="4", SLURM_GPUS_ON_NODE="4", EXTRA_FLAGS="--config.batch_size=1024")
  assert export == "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" and cd == "cd /shared/fer"
  assert "--nodes=4 --ntasks-per-node=1" in srun and srun.endswith("--mode=train --config.batch_size=1024")
  sbatch_header = (REPO / "launch" / "slurm_gpu.sbatch").read_text()
  assert "#SBATCH --gpus-per-node=8" in sbatch_header and "#SBATCH --ntasks-per-node=8" in sbatch_header
