#!/usr/bin/env bash
# The GPU part of the benchmarks, prepared for the device machine (JAX, no TensorFlow).
#
#   bash ../shared/tools/gpu-wheels.sh        # here: fetch the keras wheels into .whl/
#   device run (carry [".whl"]):  bash bench/gpu.sh
#
# dmrnet_56 / resnet_110 / dilnet_56 on Keras's JAX backend, mixed_bfloat16, batch 256, with
# achieved FLOP/s against the card's dense bf16 peak (PEAK_TFLOPS, default 989: H100/H200 SXM).
# The target: dmrnet_56 trains at >= 30,000 images/s (400 CIFAR epochs in < 12 min).
set -euo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=jax
python3 -c "import jax; print('devices:', jax.devices())"
python3 bench/throughput.py --backends jax --threads default --batches "${BATCHES:-256}" \
  --dtype-policy mixed_bfloat16 --peak-tflops "${PEAK_TFLOPS:-989}" --repeats 5 \
  --min-time 3 --json "$OUT/throughput_gpu.json" | tee "$OUT/throughput_gpu.md"
