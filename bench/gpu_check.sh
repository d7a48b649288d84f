#!/usr/bin/env bash
# The GPU recipe, checked in one short call (at most 8 minutes on one GPU):
#   1. VGG (configs/fer2013_vgg.py's network) bfloat16 training images/s at batch 256:
#      fer_jax against PyTorch eager and torch.compile, side by side (bench/train_step.py);
#   2. model FLOPs utilisation: XLA's FLOP count of that step x steps/s / the GPU's bf16 peak;
#   3. the PublicTest accuracy configs/fer2013_vgg.py reaches in a fixed short budget
#      (GPU_EPOCHS epochs, cosine schedule fitted to them), and the minutes it took.
#
# Here, on the CPU machine, once (wheels for the GPU image's Python 3.12, FER2013 as one file):
#   bash bench/gpu_check.sh prepare            # writes .whl/ and .gpu/ (both git-ignored, ~60 MB)
# Then with the device tool:  run(command="bash bench/gpu_check.sh run", carry=[".whl", ".gpu"], timeout_s=540)
# Results: $OUT/gpu_check.txt (and the train log) come back; numbers go to docs/BENCHMARKS.md.
#   bash bench/gpu_check.sh run --cpu_smoke    # the same steps, tiny, on this CPU: checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-}"
SMOKE="${2:-}"
# Wheels the GPU image lacks (it has jax, flax, optax, orbax, numpy, opencv, matplotlib, absl, etils, protobuf).
WHEELS="grain==0.2.18 tensorflow-datasets==4.9.10 array-record==0.8.6 clu==0.0.12 ml-collections==1.1.0
  tensorboardX==2.6.5 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 docstring-parser==0.18.0
  tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2"
PEAK_BF16_TFLOPS="${PEAK_BF16_TFLOPS:-989}"  # H100/H200 SXM dense bfloat16, the datasheet figure
GPU_EPOCHS="${GPU_EPOCHS:-30}"
TRAIN_LIMIT_S="${TRAIN_LIMIT_S:-270}"

if [[ "$MODE" == prepare ]]; then
  rm -rf .whl && mkdir -p .whl .gpu
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w"
  done
  python3 -m pip wheel -q --no-deps -w .whl promise==2.3  # pure Python, published as a source archive only
  python3 bench/gpu_payload.py pack ../shared/data/fer2013 .gpu/fer2013_jpeg.npz
  du -sh .whl .gpu
  exit 0
fi
[[ "$MODE" == run ]] || { echo "usage: bash bench/gpu_check.sh prepare | run [--cpu_smoke]" >&2; exit 2; }

OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
REPORT="$OUT/gpu_check.txt"
SCRATCH="$(mktemp -d)"
if [[ "$SMOKE" != --cpu_smoke ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
  DEVICE=cuda BATCH=256 STEPS=20 ROUNDS=5 PEER_PYTHON=python3
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$REPORT"
else  # tiny, on the CPU, from this checkout's venv: checks every step of the script, measures nothing
  export PYTHONPATH="$PWD"
  DEVICE=cpu BATCH=8 STEPS=2 ROUNDS=1 PEER_PYTHON="${FER_JAX_PEER_PYTHON:-python3}" GPU_EPOCHS=0.02
  echo "cpu smoke run" | tee "$REPORT"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee -a "$REPORT"

echo "== 1. VGG bfloat16 training images/s, batch $BATCH" | tee -a "$REPORT"
python3 bench/train_step.py --model vgg --batch "$BATCH" --dtype bfloat16 --device "$DEVICE" \
  --variants fer_jax --peers torch,torch_compile --peer_python "$PEER_PYTHON" \
  --steps "$STEPS" --rounds "$ROUNDS" --json "$SCRATCH/step.json" | tee -a "$REPORT"

echo "== 2. model FLOPs utilisation" | tee -a "$REPORT"
python3 bench/fer_jax_worker.py --model vgg --batch "$BATCH" --dtype bfloat16 --variant plain --flops \
  > "$SCRATCH/flops.json"
python3 - "$SCRATCH/flops.json" "$SCRATCH/step.json" "$PEAK_BF16_TFLOPS" <<'EOF' | tee -a "$REPORT"
import json, sys
flops = json.load(open(sys.argv[1]))
results = json.load(open(sys.argv[2]))["results"]
peak = float(sys.argv[3]) * 1e12
per_image = flops["flops_per_step"] / flops["batch"]
print(f"XLA's count: {per_image / 1e9:.2f} GFLOP per training image (forward + backward)")
for name, r in results.items():
  achieved = r["items_per_s"] * per_image
  print(f"{name:20s} {r['items_per_s']:9.0f} images/s  {achieved / 1e12:7.1f} TFLOP/s  MFU {achieved / peak:6.1%}"
        f" of {peak / 1e12:.0f}")
EOF

echo "== 3. configs/fer2013_vgg.py for $GPU_EPOCHS epochs (limit ${TRAIN_LIMIT_S}s), PublicTest accuracy" \
  | tee -a "$REPORT"
python3 bench/gpu_payload.py unpack .gpu/fer2013_jpeg.npz "$SCRATCH/fer2013"
python3 -m fer_jax.data build fer2013 --manual_dir "$SCRATCH/fer2013" --data_dir "$SCRATCH/tfds" > /dev/null 2>&1
start=$(date +%s)
set +e
timeout "$TRAIN_LIMIT_S" python3 -m fer_jax.main --config configs/fer2013_vgg.py --workdir "$SCRATCH/run" \
  --config.data.data_dir="$SCRATCH/tfds" --config.num_epochs="$GPU_EPOCHS" --config.eval_every_steps=1000 \
  --config.checkpoint_every_steps=100000 --config.log_every_steps=200 > "$OUT/train.log" 2>&1
status=$?
set -e
echo "trainer exit status $status after $(( $(date +%s) - start )) s (124: stopped at the limit)" | tee -a "$REPORT"
python3 bench/time_to_accuracy.py "$SCRATCH/run" --thresholds 0.6,0.65,0.68,0.7 | tee -a "$REPORT"
