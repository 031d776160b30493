#!/usr/bin/env bash
# One device run for the GPU results (one H200; JAX and no TensorFlow; <= 9 minutes in all):
#  (a) bench/gpu_throughput.py: training and inference images/s of dmrnet_56, resnet_110 and
#      dilnet_56, mixed_bfloat16, batch 128 and 512, jit-compiled, with MFU against 989 TFLOP/s
#      (the H100/H200 SXM dense bf16 peak) and a measured 8192^3 bf16 matmul;
#  (b) bench/gpu_train.py: dmrnet_56 on CIFAR-10 (JPEG q75 copy) with the short (CPU zoo) recipe
#      - batch 128, lr 0.1, cosine after a 2-epoch warm-up, weight decay 5e-4, label smoothing
#      0.1, bf16 - for as many epochs as the time left allows (planned from (a)'s measured rate;
#      --time-budget-s stops it cleanly in any case).
# Writes to $OUT (at most 8 files come back): gpu_run.log, throughput.json, throughput.md and
# dmrnet_56-cifar10/{metrics.json, model.weights.h5, model.keras, train.log}. Checkpoints go
# to /tmp (they would not come back).
#
#   here:    bash bench/gpu_prepare.sh        (.whl/ and .gpu-data/, both git-ignored)
#   device:  command "bash bench/gpu_run.sh", carry [".whl", ".gpu-data"], timeout_s 600
#   CPU rehearsal (tiny models, 256 images, JAX on the CPU, TensorFlow blocked):
#            DMR_REHEARSAL=1 bash bench/gpu_run.sh
#
# Knobs (environment): GPU_RUN_BUDGET_S (540: the whole script), THROUGHPUT_BUDGET_S (200),
# TRAIN_MODEL (dmrnet_56), TRAIN_BATCH (128), TRAIN_LR (0.1), MAX_EPOCHS (400), EPOCHS (fixed
# count instead of the plan), DATA (the pack, else ../shared/data/cifar10-jpeg); rehearsal only:
# TP_MODELS / TP_REFERENCE / TP_BATCHES (dmrnet_8_tiny / dmrnet_8_tiny / 8,16).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
REHEARSAL=${DMR_REHEARSAL:-0}
if [ "$REHEARSAL" = 1 ]; then
  OUT=${OUT:-runs/gpu-rehearsal}
else
  OUT=${OUT:-runs/gpu-run}
fi
mkdir -p "$OUT"

main() {
  local budget=${GPU_RUN_BUDGET_S:-540}
  local py=python3
  export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
  if [ "$REHEARSAL" = 1 ]; then
    [ -x .venv/bin/python ] && py=.venv/bin/python
    py=${PYTHON:-$py}
    export JAX_PLATFORMS=cpu
    # TensorFlow may be installed here; the device has none: make it unimportable.
    local block
    block=$(mktemp -d)
    printf 'import sys\nsys.modules["tensorflow"] = None\n' > "$block/sitecustomize.py"
    export PYTHONPATH="$block:$PWD"
  else
    if [ -d .whl ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || { echo "wheel install failed"; return 1; }
      export PYTHONPATH=/tmp/site:$PWD
    else
      echo "no .whl/: run bench/gpu_prepare.sh here and carry .whl" >&2
      export PYTHONPATH=$PWD
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  fi
  "$py" - <<'EOF' || return 1
import sys, jax, keras
print("python", sys.version.split()[0], "jax", jax.__version__, "keras", keras.__version__,
      "backend", keras.backend.backend(), "devices", jax.devices())
try:
    import tensorflow  # noqa: F401
    print("tensorflow: importable (the device has none)")
except ImportError:
    print("tensorflow: not importable")
EOF
  if [ "$REHEARSAL" != 1 ] && ! "$py" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
    echo "no GPU visible to JAX: stopping before spending the run" >&2
    return 1
  fi

  local data=${DATA:-.gpu-data/cifar10-jpeg.npz}
  [ -e "$data" ] || data=../shared/data/cifar10-jpeg
  [ -e "$data" ] || { echo "no CIFAR-10 data: run bench/gpu_prepare.sh and carry .gpu-data" >&2; return 1; }

  # ---- (a) throughput ------------------------------------------------------------------------
  local tp_args
  if [ "$REHEARSAL" = 1 ]; then
    tp_args=(--models "${TP_MODELS:-dmrnet_8_tiny}" --reference "${TP_REFERENCE:-dmrnet_8_tiny}"
             --batches "${TP_BATCHES:-8,16}" --min-time 0.1 --repeats 1 --matmul 256
             --time-budget-s 60)
  else
    tp_args=(--models dmrnet_56,resnet_110,dilnet_56 --reference resnet_110 --batches 128,512
             --min-time 1.0 --repeats 3 --matmul 8192 --time-budget-s "${THROUGHPUT_BUDGET_S:-200}")
  fi
  echo "== (a) throughput, $((SECONDS - START)) s in"
  timeout $(( ${THROUGHPUT_BUDGET_S:-200} + 60 )) "$py" bench/gpu_throughput.py "${tp_args[@]}" \
    --modes training,inference --dtype-policy mixed_bfloat16 --peak-tflops 989 \
    --json "$OUT/throughput.json" --markdown "$OUT/throughput.md" ||
    echo "throughput: failed or timed out (rc $?); training anyway"

  # ---- (b) training: as many epochs as the time left allows -----------------------------------
  local model=${TRAIN_MODEL:-dmrnet_56} batch=${TRAIN_BATCH:-128} lr=${TRAIN_LR:-0.1}
  local limit_args=() max_epochs=${MAX_EPOCHS:-400}
  if [ "$REHEARSAL" = 1 ]; then
    model=${TRAIN_MODEL:-dmrnet_8_tiny}
    batch=${TRAIN_BATCH:-32}
    limit_args=(--max-train-examples 256 --max-test-examples 256)
    max_epochs=${MAX_EPOCHS:-2}
  fi
  local left=$(( budget - (SECONDS - START) - 10 ))
  local epochs
  epochs=$("$py" - "$OUT/throughput.json" "$model" "$batch" "$left" "$max_epochs" \
           "${limit_args[1]:-50000}" "${EPOCHS:-}" <<'EOF'
import json, sys
path, model, batch, left, max_epochs, n, fixed = sys.argv[1:8]
batch, left, max_epochs, n = int(batch), float(left), int(max_epochs), int(n)
if fixed:
    print(int(fixed)); sys.exit()
rate = None
try:
    rows = json.load(open(path))["rows"]
    rate = next((r["images_per_s"] for r in rows if r["model"] == model and
                 r["mode"] == "training" and r["batch"] == batch and "images_per_s" in r), None)
except (OSError, ValueError, KeyError):
    pass
# Start (data, build, compiles) ~90 s and the end (precise BN, float32 eval, saving) 45 s; the
# fit loop with the NumPy pipeline and per-epoch validation at ~60 % of the device-resident rate.
epoch_s = (n / (0.6 * rate) + 1.0) if rate else 12.0
print(max(1, min(max_epochs, int((left - 90 - 45) / epoch_s))))
EOF
)
  echo "== (b) training $model for $epochs epochs (budget $left s), $((SECONDS - START)) s in"
  timeout $(( left > 30 ? left : 30 )) "$py" bench/gpu_train.py --model "$model" --data-dir "$data" \
    --epochs "$epochs" --batch-size "$batch" --lr "$lr" --weight-decay 5e-4 \
    --weight-decay-scope all --schedule cosine --warmup-epochs 2 --label-smoothing 0.1 \
    --mixed-precision bf16 --jit --time-budget-s "$left" --reserve-s 45 \
    --output "$OUT/$model-cifar10" --checkpoint-dir "/tmp/dmr-ckpt-$model" --eval-batch-size 500 \
    --data-workers 6 --verbose 2 --overwrite "${limit_args[@]}" ||
    echo "training: failed or timed out (rc $?)"

  echo "== done in $((SECONDS - START)) s"
  ls -la "$OUT" "$OUT/$model-cifar10" 2>/dev/null
  [ -f "$OUT/throughput.md" ] && cat "$OUT/throughput.md"
  [ -f "$OUT/$model-cifar10/metrics.json" ] && "$py" - "$OUT/$model-cifar10/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
keys = ("model", "epochs", "epochs_planned", "completed", "stopped", "test_accuracy", "test_loss",
        "wall_time_s", "fit_time_s", "train_images_per_s", "train_images_per_s_steady",
        "tensorflow_imported", "device")
print(json.dumps({k: m.get(k) for k in keys}, indent=1))
print("decoder:", json.dumps(m["data"]["decoder"]))
EOF
  return 0
}

main 2>&1 | tee "$OUT/gpu_run.log"
