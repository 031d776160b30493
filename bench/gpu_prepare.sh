#!/usr/bin/env bash
# Here (the CPU machine), before a device run of bench/gpu_run.sh: the Keras wheels into .whl/
# (../shared/tools/gpu-wheels.sh) and CIFAR-10 into .gpu-data/cifar10-jpeg.npz (a pack: the
# 60,000 JPEG files' bytes, zlib-compressed, ~25 MiB, plus the test split's exact tf.data pixels
# as a difference to Pillow's decode; see dmr_keras/numpy_data.py). Both folders are git-ignored
# and travel with `carry`:
#
#   bash bench/gpu_prepare.sh
#   device run: command "bash bench/gpu_run.sh", carry [".whl", ".gpu-data"], timeout_s 600
#
# ../shared/ does not travel to the device machine (only the checkout does, 64 MiB at most), and
# the decoded uint8 arrays (184 MB) are too big to carry: the pack is decoded there (Pillow,
# 16 cores, a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA_DIR:-../shared/data/cifar10-jpeg}
PACK=.gpu-data/cifar10-jpeg.npz

mkdir -p .git/info  # gpu-wheels.sh appends to .git/info/exclude
if ! ls .whl/keras-*.whl >/dev/null 2>&1; then
  bash ../shared/tools/gpu-wheels.sh
fi
if [ ! -f "$PACK" ]; then
  mkdir -p .gpu-data
  "$PY" -m dmr_keras.numpy_data pack "$DATA" "$PACK"
fi
ls -la .whl "$PACK"
local_keras=$("$PY" -c 'import importlib.metadata as m; print(m.version("keras"))' 2>/dev/null || true)
echo "keras here: ${local_keras:-?}; wheel: $(ls .whl/keras-*.whl | xargs -n1 basename)"
# What travels: tracked + untracked-not-ignored files, plus the carried folders (64 MiB at most).
tree_bytes=$( (git ls-files -z; git ls-files -z --others --exclude-standard) |
  xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
carry_bytes=$(du -sb .whl .gpu-data | awk '{s += $1} END {print s}')
total=$((tree_bytes + carry_bytes))
echo "travels: tree $((tree_bytes / 1024)) KiB + carry $((carry_bytes / 1024)) KiB = $((total / 1048576)) MiB (limit 64 MiB)"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "too big for the device tool's 64 MiB" >&2
  exit 1
fi
