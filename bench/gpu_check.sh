#!/usr/bin/env bash
# The GPU figures of issue 22 in one device call of at most 8 minutes on one H200:
#   1. configs/fer2013_gpu.py trained from launch, the compilation cache cold (a fresh machine): the trainer's
#      start-up line ("Startup to first step ...") and first-validation line, the minutes from launch to 70% and
#      to 72% PublicTest, and how long the process took to exit after its last log line;
#   2. the recipe on its short schedule (--config.num_epochs=$SHORT_EPOCHS) from launch: the minutes to 70%.
#      The cache is warm for everything but the train step (the schedule's length is a constant compiled into it);
#   3. that short run launched again for WARM_LIMIT_S seconds: its start-up line with the cache warm throughout;
#   4. VGG (fer2013_vgg.py's network) bfloat16 training images/s at batch 256: fer_jax against PyTorch eager
#      and torch.compile, side by side (bench/train_step.py);
#   5. model FLOPs utilisation: the step's FLOPs counted on the CPU backend (bench/flop_count.py; XLA:GPU's
#      cost analysis gives None) x images/s / the GPU's bf16 peak.
# Each section has a time limit, so that the call ends inside 8 minutes; the report is written as it goes.
# RECIPE_ARGS="--config.x=y ..." adds overrides to every recipe launch (sections 1-3), e.g. a tuned num_epochs.
#
# Here, on the CPU machine, once (downloads wheels for the GPU image's Python 3.12 from PyPI; FER2013 as one file):
#   bash bench/gpu_check.sh prepare      # writes .whl/ (11 MiB) and .gpu/ (39 MiB), both git-ignored, and checks
#                                        # the wheels (bench/gpu_wheels_check.py; imports too where a Python 3.12 is)
# Then with the device tool (GPU):
#   run(command="bash bench/gpu_check.sh run", carry=[".whl", ".gpu"], timeout_s=480, kind="nvidia-h200")
#   (the H200 named: issue 22's bars are set on one; a call without a kind gets an H100, the same image)
# Results: $OUT/gpu_check.txt, train.log, train_short.log, train_warm.log and build.log come back; the numbers go
# to docs/BENCHMARKS.md (GPU).
#   bash bench/gpu_check.sh run --cpu_smoke   # every step, tiny, on this CPU: checks the script, measures nothing
#     (FER2013_DIR=folder-or-csv-dir: the data to build; default the .gpu payload, else ../shared/data/fer2013)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-}"
SMOKE="${2:-}"
PY="${PYTHON:-python3}"
# Wheels the GPU image lacks (bench/gpu_image_packages.txt lists what it has; gpu_wheels_check.py checks the closure).
WHEELS="grain==0.2.18 tensorflow-datasets==4.9.10 array-record==0.8.6 clu==0.0.12 ml-collections==1.1.0
  tensorboardX==2.6.5 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 docstring-parser==0.18.0
  tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 portpicker==1.6.0"
PEAK_BF16_TFLOPS="${PEAK_BF16_TFLOPS:-989}"  # H100/H200 SXM dense bfloat16, the datasheet figure
# Limits, so that the call ends inside 8 minutes (~60 s of installs, unpacking and the dataset build besides).
TRAIN_LIMIT_S="${TRAIN_LIMIT_S:-170}"        # section 1: start-up + the recipe's epochs + validations + exit
SHORT_EPOCHS="${SHORT_EPOCHS:-60}"           # section 2's schedule, for 70% within 60 s
SHORT_LIMIT_S="${SHORT_LIMIT_S:-80}"         # section 2
WARM_LIMIT_S="${WARM_LIMIT_S:-30}"           # section 3: a third launch, to its first steps
STEP_LIMIT_S="${STEP_LIMIT_S:-90}"           # section 4, all contenders
read -r -a RECIPE_ARGS <<< "${RECIPE_ARGS:-}"

if [[ "$MODE" == prepare ]]; then
  rm -rf .whl && mkdir -p .whl .gpu
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w"
  done
  python3 -m pip wheel -q --no-deps -w .whl promise==2.3  # pure Python, published as a source archive only
  "$PY" bench/gpu_payload.py pack ../shared/data/fer2013 .gpu/fer2013_jpeg.npz
  PY312="${PY312:-}"
  for candidate in python3.12 ~/.pyenv/versions/3.12*/bin/python; do  # the first that runs (pyenv shims may not)
    [[ -z "$PY312" ]] && "$candidate" --version >/dev/null 2>&1 && PY312="$candidate"
  done
  if [[ -n "$PY312" ]]; then
    "$PY" bench/gpu_wheels_check.py .whl --import_check "$PY312"
  else
    echo "no Python 3.12 here (set PY312=...): import check skipped, static check only"
    "$PY" bench/gpu_wheels_check.py .whl
  fi
  du -sh .whl .gpu
  echo "carried in all (the working tree's tracked files + .whl + .gpu; the limit is 64 MiB):" \
    "$(( ( $(git ls-files -z | xargs -0 cat | wc -c) + $(cat .whl/* .gpu/* | wc -c) ) / 1048576 )) MiB"
  exit 0
fi
[[ "$MODE" == run ]] || { echo "usage: bash bench/gpu_check.sh prepare | run [--cpu_smoke]" >&2; exit 2; }

OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
REPORT="$OUT/gpu_check.txt"
SCRATCH="$(mktemp -d)"
TRAIN_OVERRIDES=()
if [[ "$SMOKE" != --cpu_smoke ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
  MODEL=vgg DEVICE=cuda BATCH=256 STEPS=20 ROUNDS=3 PEER_PYTHON=python3 FLOPS_BATCH=8 DTYPE=bfloat16
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$REPORT"
else  # tiny, on the CPU, from this checkout's interpreter: checks every step of the script, measures nothing
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  MODEL=cnn DEVICE=cpu BATCH=8 STEPS=1 ROUNDS=1 PEER_PYTHON="${FER_JAX_PEER_PYTHON:-$PY}" FLOPS_BATCH=2 DTYPE=float32
  TRAIN_LIMIT_S="${SMOKE_LIMIT_S:-900}" SHORT_LIMIT_S="${SMOKE_LIMIT_S:-900}" WARM_LIMIT_S="${SMOKE_LIMIT_S:-900}"
  STEP_LIMIT_S="${SMOKE_LIMIT_S:-900}"
  # A tiny float32 VGG (XLA:CPU compiles bfloat16 convolutions slowly), read in the training process.
  TRAIN_OVERRIDES=(--config.smoke_test=True --config.data.num_workers=0 --config.batch_size=8 --config.dtype=float32
    --config.eval_batch_size=16 "--config.model_kwargs.stage_features=(8,8,8,8)"
    "--config.model_kwargs.dense_features=(16,)")
  echo "cpu smoke run" | tee "$REPORT"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
"$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$REPORT"

if [[ -n "${FER2013_DIR:-}" ]]; then
  MANUAL="$FER2013_DIR"
elif [[ -f .gpu/fer2013_jpeg.npz ]]; then
  MANUAL="$SCRATCH/fer2013"
  "$PY" bench/gpu_payload.py unpack .gpu/fer2013_jpeg.npz "$MANUAL"
else
  MANUAL=../shared/data/fer2013
fi
build_start=$(date +%s)
"$PY" -m fer_jax.data build fer2013 --manual_dir "$MANUAL" --data_dir "$SCRATCH/tfds" > "$OUT/build.log" 2>&1 \
  || { tail -20 "$OUT/build.log"; exit 1; }
echo "dataset built in $(( $(date +%s) - build_start )) s (not counted below)" | tee -a "$REPORT"

# train_from_launch NAME LIMIT_S THRESHOLDS [overrides...]: the recipe from launch into $SCRATCH/NAME, log
# $OUT/NAME.log; reports the trainer's start-up and first-validation lines, its validations, its exit, and the
# minutes from launch to each accuracy in THRESHOLDS (none when empty).
train_from_launch() {
  local name="$1" limit="$2" thresholds="$3" launch ended status
  shift 3
  launch=$(date +%s.%N)
  set +e
  timeout "$limit" "$PY" -m fer_jax.main --config configs/fer2013_gpu.py --workdir "$SCRATCH/$name" \
    --config.data.data_dir="$SCRATCH/tfds" "${TRAIN_OVERRIDES[@]}" "${RECIPE_ARGS[@]}" "$@" > "$OUT/$name.log" 2>&1
  status=$?
  set -e
  ended=$(date +%s.%N)
  "$PY" - "$OUT/$name.log" "$launch" "$ended" "$status" <<'EOF' | tee -a "$REPORT"
import datetime, re, sys
log, launch, ended, status = open(sys.argv[1]).read(), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print(f"trainer exit status {status} after {ended - launch:.1f} s" +
      (" (124: stopped at the limit)" if status == 124 else ""))
for prefix, absent in (("Startup to first step ", "(no startup line)"),
                       ("First validation ", "(no first-validation line)")):
  lines = [l for l in log.splitlines() if prefix in l]  # the trainer's INFO lines (issue 22, item 1)
  print(lines[0][lines[0].index(prefix):] if lines else absent)
for l in log.splitlines():
  if re.search(r"Model \w+: |validation \(", l):
    print(l.split("] ", 1)[-1])
stamps = re.findall(r"^[IWE](\d{4}) (\d\d:\d\d:\d\d\.\d+)", log, re.M)
if stamps:  # absl's MMDD HH:MM:SS.us, local time of this machine
  day, clock = stamps[-1]
  now = datetime.datetime.fromtimestamp(ended)
  last = datetime.datetime.strptime(f"{now.year}{day} {clock}", "%Y%m%d %H:%M:%S.%f")
  print(f"the process ended {(now - last).total_seconds():.1f} s after its last log line")
EOF
  [[ -z "$thresholds" ]] && return 0
  "$PY" bench/time_to_accuracy.py "$SCRATCH/$name" --launch_time "$launch" --thresholds "$thresholds" \
    | tee -a "$REPORT" || true
}

echo "== 1. configs/fer2013_gpu.py from launch (limit ${TRAIN_LIMIT_S}s; compilation cache cold)" | tee -a "$REPORT"
train_from_launch train "$TRAIN_LIMIT_S" 0.6,0.65,0.7,0.72
echo "== 2. the short schedule, --config.num_epochs=$SHORT_EPOCHS, from launch (limit ${SHORT_LIMIT_S}s;" \
  "compilation cache warm but for the train step)" | tee -a "$REPORT"
train_from_launch train_short "$SHORT_LIMIT_S" 0.6,0.65,0.7,0.72 --config.num_epochs="$SHORT_EPOCHS"
echo "== 3. the short schedule launched again, compilation cache warm (limit ${WARM_LIMIT_S}s: start-up only)" \
  | tee -a "$REPORT"
train_from_launch train_warm "$WARM_LIMIT_S" "" --config.num_epochs="$SHORT_EPOCHS"

echo "== 4. $MODEL $DTYPE training images/s, batch $BATCH (limit ${STEP_LIMIT_S}s)" | tee -a "$REPORT"
set +e
timeout "$STEP_LIMIT_S" "$PY" bench/train_step.py --model "$MODEL" --batch "$BATCH" --dtype "$DTYPE" \
  --device "$DEVICE" \
  --variants fer_jax --peers torch,torch_compile --peer_python "$PEER_PYTHON" \
  --steps "$STEPS" --rounds "$ROUNDS" --json "$SCRATCH/step.json" 2>&1 | tee -a "$REPORT"
set -e

echo "== 5. model FLOPs utilisation" | tee -a "$REPORT"
"$PY" bench/fer_jax_worker.py --model "$MODEL" --batch "$FLOPS_BATCH" --dtype bfloat16 --variant plain --flops \
  > "$SCRATCH/flops.json"
"$PY" - "$SCRATCH/flops.json" "$SCRATCH/step.json" "$PEAK_BF16_TFLOPS" <<'EOF' | tee -a "$REPORT"
import json, os, sys
flops = json.load(open(sys.argv[1]))
peak = float(sys.argv[3]) * 1e12
per_image = flops["flops_per_step"] / flops["batch"]
xla = flops["xla_flops_per_step"] / flops["batch"] if flops.get("xla_flops_per_step") else None
print(f"model FLOPs (convolutions and matrix products, forward + backward, counted on the {flops['backend']} "
      f"backend): {per_image / 1e9:.2f} GFLOP per training image; XLA's cost analysis there: "
      + (f"{xla / 1e9:.2f}" if xla else "none"))
results = json.load(open(sys.argv[2]))["results"] if os.path.exists(sys.argv[2]) else {}
if not results:
  print("no images/s from section 4, so no MFU")
for name, r in results.items():
  achieved = r["items_per_s"] * per_image
  print(f"{name:20s} {r['items_per_s']:9.0f} images/s  {achieved / 1e12:7.1f} TFLOP/s  MFU {achieved / peak:6.1%}"
        f" of {peak / 1e12:.0f}")
EOF
rm -rf "$SCRATCH"
