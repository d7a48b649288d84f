#!/usr/bin/env bash
# fer_jax on a Cloud TPU VM: one v4-8 host, or a multi-host slice such as v5litepod-16 (4 hosts).
#
#   PROJECT=my-project BUCKET=my-fer-bucket launch/tpu_vm.sh bucket    # once: the shared bucket
#   PROJECT=my-project BUCKET=my-fer-bucket launch/tpu_vm.sh up        # create, install, data, train, eval
#   PROJECT=my-project BUCKET=my-fer-bucket launch/tpu_vm.sh logs      # follow worker 0's training log
#   PROJECT=my-project BUCKET=my-fer-bucket launch/tpu_vm.sh delete    # stop paying
#   DRY_RUN=1 PROJECT=p BUCKET=b launch/tpu_vm.sh up                   # print the exact commands, run none
#
# Steps (run one at a time, or `up` for the first five):
#   bucket  create gs://$BUCKET (hierarchical namespace, so directory renames through the FUSE
#           mount are atomic, which orbax relies on when it finalizes a checkpoint)
#   create  create the TPU VM ($ACCELERATOR_TYPE in $ZONE)
#   install copy this checkout (git HEAD) to every worker; install Python 3.12 (uv), jax[tpu],
#           fer_jax and Cloud Storage FUSE; mount gs://$BUCKET at $MOUNT on every worker
#   data    build $DATASET once, on worker 0, and upload it to gs://$BUCKET/tfds
#   train   on --worker=all: copy the dataset to local disk, start one training process per worker
#           (JAX finds the other workers itself); checkpoints and TensorBoard go to
#           $MOUNT/runs/$RUN, i.e. gs://$BUCKET/runs/$RUN, which every worker sees
#   eval    start the evaluation job on worker 0's CPU (the TPU belongs to training)
#   logs    follow a log: `logs [train|eval] [WORKER]` (default: train, worker 0)
#   stop    stop training and evaluation on every worker
#   delete  delete the TPU VM (the bucket, with data and runs, stays)
#
# Needs: the gcloud CLI, logged in (`gcloud auth login`), with the Cloud TPU API enabled in
# PROJECT (`gcloud services enable tpu.googleapis.com`); TPU quota for ACCELERATOR_TYPE in ZONE
# (IAM & Admin > Quotas; or a TRC grant); permission to create a bucket; git (install sends
# `git archive HEAD`, so commit what you want to run). Workers need outbound internet (PyPI).
#
# Costs (approximate on-demand list prices as published in 2025; check
# https://cloud.google.com/tpu/pricing before running, written 2026-11):
#   v4-8          4 chips x ~$3.22/chip-hour  = ~$13/hour   (us-central2-b)
#   v5litepod-8   8 chips x ~$1.20/chip-hour  = ~$10/hour   (1 host)
#   v5litepod-16 16 chips x ~$1.20/chip-hour  = ~$19/hour   (4 hosts)
#   SPOT=1 costs roughly a third to half of that, but the VM can be reclaimed at any time.
#   The VM bills while it exists (READY), idle or not: run `delete` when done. Storage of a
#   dataset and a few checkpoints is cents per month.
#
# Settings (environment variables; defaults in brackets):
#   PROJECT          Google Cloud project (required)
#   BUCKET           bucket name without gs:// (required)
#   ACCELERATOR_TYPE [v4-8]; e.g. v5litepod-16 for a 4-host v5e slice
#   ZONE             [us-central2-b for v4, us-west4-a for v5e, us-east5-b for v6e]
#   RUNTIME_VERSION  [tpu-ubuntu2204-base for v4, v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e for v6e]
#   TPU_NAME         [fer-jax-$ACCELERATOR_TYPE]
#   SPOT             [0]; 1 for a Spot VM
#   CONFIG           [configs/default.py] (built-in synthetic faces; fer2013 needs MANUAL_DIR)
#   RUN              [run name, default derived from CONFIG]; the workdir is $MOUNT/runs/$RUN
#   DATASET          [synthetic_faces]; DATASET_CONFIG [builder config, e.g. rgb96 for expw]
#   MANUAL_DIR       [none] gs:// folder holding the downloaded files (fer2013.csv, ExpW, ...)
#   MOUNT            [/gcs/$BUCKET] where each worker mounts the bucket
#   EXTRA_FLAGS      [none] more flags for training and evaluation, e.g. "--config.batch_size=256"
#   DRY_RUN          [0]; 1 prints every command instead of running it

set -euo pipefail

STEP="${1:-help}"
DRY_RUN="${DRY_RUN:-0}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
case "$ACCELERATOR_TYPE" in
  v4-*) default_zone=us-central2-b; default_runtime=tpu-ubuntu2204-base ;;
  v5litepod-*|v5e-*) default_zone=us-west4-a; default_runtime=v2-alpha-tpuv5-lite ;;
  v6e-*) default_zone=us-east5-b; default_runtime=v2-alpha-tpuv6e ;;
  *) default_zone=""; default_runtime="" ;;
esac
ZONE="${ZONE:-$default_zone}"
RUNTIME_VERSION="${RUNTIME_VERSION:-$default_runtime}"
TPU_NAME="${TPU_NAME:-fer-jax-${ACCELERATOR_TYPE}}"
SPOT="${SPOT:-0}"
CONFIG="${CONFIG:-configs/default.py}"
RUN="${RUN:-$(basename "$CONFIG" .py)}"
DATASET="${DATASET:-synthetic_faces}"
DATASET_CONFIG="${DATASET_CONFIG:-}"
MANUAL_DIR="${MANUAL_DIR:-}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

if [[ "$STEP" == help || "$STEP" == -h || "$STEP" == --help ]]; then usage; exit 0; fi
[[ -n "${PROJECT:-}" ]] || die "set PROJECT to your Google Cloud project (gcloud config get-value project)."
[[ -n "${BUCKET:-}" ]] || die "set BUCKET to a bucket name (without gs://) for the dataset and the runs."
[[ "$BUCKET" != gs://* ]] || die "BUCKET is a name, not a URL: drop the gs:// prefix."
[[ -n "$ZONE" && -n "$RUNTIME_VERSION" ]] \
  || die "no default zone/runtime for ACCELERATOR_TYPE=$ACCELERATOR_TYPE: set ZONE and RUNTIME_VERSION."
MOUNT="${MOUNT:-/gcs/$BUCKET}"
WORKDIR="$MOUNT/runs/$RUN"
REGION="${ZONE%-*}"
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"

# Prints a command so that it can be pasted into a shell (arguments quoted only when they need it).
show() {
  local word out=()
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
  done
  echo "+ ${out[*]}"
}

run() {
  show "$@"
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

tpu_ssh() {  # tpu_ssh WORKER COMMAND: run COMMAND in a login shell on one worker, or on all.
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker="$1" --command="$2"
}

# Commands run on the workers. Single-quoted: $HOME and friends expand there, not here.
activate='source $HOME/fer_venv/bin/activate && cd $HOME/fer_jax'
mount_bucket="mkdir -p $MOUNT && (mountpoint -q $MOUNT || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $BUCKET $MOUNT)"
train_flags="--config=$CONFIG --workdir=$WORKDIR --config.data.data_dir=\$HOME/tensorflow_datasets${EXTRA_FLAGS:+ $EXTRA_FLAGS}"

step_bucket() {
  run gcloud storage buckets create "gs://$BUCKET" --project="$PROJECT" --location="$REGION" \
    --uniform-bucket-level-access --enable-hierarchical-namespace
}

step_create() {
  local spot=()
  [[ "$SPOT" == 1 ]] && spot=(--spot)
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${spot[@]}"
}

step_install() {
  local archive="${TMPDIR:-/tmp}/$TPU_NAME-src.tar.gz"
  run git -C "$REPO_ROOT" archive --format=tar.gz --output="$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:fer_jax-src.tar.gz" --project="$PROJECT" \
    --zone="$ZONE" --worker=all
  # jax >= 0.7 needs Python >= 3.11; the TPU images ship 3.10, so uv provides 3.12. gcsfuse mounts
  # the bucket as a local folder: fer_jax's workdir code uses plain file paths, not gs:// URLs.
  tpu_ssh all "set -e
rm -rf \$HOME/fer_jax && mkdir -p \$HOME/fer_jax && tar -xzf \$HOME/fer_jax-src.tar.gz -C \$HOME/fer_jax
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
\$HOME/.local/bin/uv venv --python 3.12 --allow-existing \$HOME/fer_venv
VIRTUAL_ENV=\$HOME/fer_venv \$HOME/.local/bin/uv pip install -U 'jax[tpu]' -e \$HOME/fer_jax
if ! command -v gcsfuse >/dev/null; then
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -q && sudo apt-get install -y -q fuse gcsfuse
fi
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
$mount_bucket
$activate && python -c 'import jax, fer_jax; print(\"installed jax\", jax.__version__)'"
}

step_data() {
  local fetch="" manual="" builder_config=""
  if [[ -n "$MANUAL_DIR" ]]; then
    fetch="mkdir -p \$HOME/manual && gcloud storage cp --recursive ${MANUAL_DIR%/}/* \$HOME/manual/ && "
    manual=" --manual_dir=\$HOME/manual"
  fi
  [[ -n "$DATASET_CONFIG" ]] && builder_config=" --config=$DATASET_CONFIG"
  # Built once, on one worker; every worker then copies it (train step), so none builds its own.
  local cmd="set -e; $activate && ${fetch}python -m fer_jax.data build $DATASET$builder_config$manual"
  cmd+=" --data_dir=\$HOME/tfds_build && gcloud storage rsync --recursive \$HOME/tfds_build gs://$BUCKET/tfds"
  tpu_ssh 0 "$cmd"
}

step_train() {
  # setsid + nohup + redirections: the process outlives the ssh session, which returns at once.
  local cmd="set -e; $mount_bucket; $activate && mkdir -p \$HOME/tensorflow_datasets"
  cmd+=" && gcloud storage rsync --recursive gs://$BUCKET/tfds \$HOME/tensorflow_datasets"
  cmd+=" && (setsid nohup python -m fer_jax.main $train_flags > \$HOME/fer_train.log 2>&1 < /dev/null"
  cmd+=" & echo \$! > \$HOME/fer_train.pid) && echo started training, log \$HOME/fer_train.log"
  tpu_ssh all "$cmd"
}

step_eval() {
  # JAX_PLATFORMS=cpu and --distributed=off: a separate 1-process job on worker 0's CPU; it restores
  # the checkpoints the TPU processes write (any topology restores) and scores each one once.
  local cmd="set -e; $mount_bucket; $activate && (JAX_PLATFORMS=cpu setsid nohup python -m fer_jax.main"
  cmd+=" --mode=eval --distributed=off $train_flags > \$HOME/fer_eval.log 2>&1 < /dev/null"
  cmd+=" & echo \$! > \$HOME/fer_eval.pid) && echo started the evaluation job, log \$HOME/fer_eval.log"
  tpu_ssh 0 "$cmd"
}

step_logs() {
  local which="${1:-train}" worker="${2:-0}"
  [[ "$which" == train || "$which" == eval ]] || die "logs takes train or eval, got '$which'."
  tpu_ssh "$worker" "tail -n 100 -F \$HOME/fer_$which.log"
}

step_stop() {
  tpu_ssh all "for f in \$HOME/fer_train.pid \$HOME/fer_eval.pid; do [ -f \$f ] && kill \$(cat \$f); rm -f \$f; done; true"
}

step_delete() {
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
}

case "$STEP" in
  bucket|create|install|data|train|eval|stop|delete) "step_$STEP" ;;
  logs) shift; step_logs "$@" ;;
  up) step_create; step_install; step_data; step_train; step_eval
      echo "Follow training: $0 logs. TensorBoard:"
      echo "  gcloud storage rsync --recursive gs://$BUCKET/runs/$RUN runs/$RUN && tensorboard --logdir runs/$RUN" ;;
  *) die "unknown step '$STEP'; one of: bucket create install data train eval logs stop delete up ($0 help)" ;;
esac
