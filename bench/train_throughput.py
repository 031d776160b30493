"""Training images/s of a zoo model with and without MirroredStrategy over logical CPU devices.

Each configuration runs in its own process (logical devices must be set before TensorFlow
starts); configurations are interleaved and repeated, and the table gives the median, the
spread and the ratio to the single-device run.

    python bench/train_throughput.py [--model dmrnet_56] [--batch 64] [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(model_name, batch, steps, devices, strategy):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    import zoo
    from dmr_keras import distribute, training

    if devices > 1:
        distribute.configure_cpu_devices(devices)
    plan = distribute.make_plan(strategy, batch)
    rng = np.random.default_rng(0)
    x = rng.random((batch * 4, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, batch * 4)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat()
    with plan.scope():
        model = zoo.create_model(model_name, classes=10,
                                 kernel_regularizer=training.kernel_weight_decay(1e-4))
        model.compile(optimizer=training.make_optimizer(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    t = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    dt = time.perf_counter() - t
    print(json.dumps({"images_per_s": steps * batch / dt, "replicas": plan.num_replicas}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dmrnet_56")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", nargs=2, metavar=("DEVICES", "STRATEGY"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.model, args.batch, args.steps, int(args.worker[0]), args.worker[1])

    configs = [("none", 1), ("mirrored", 2)]
    results = {c: [] for c in configs}
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    for _ in range(args.repeats):
        for strategy, devices in configs:
            out = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch),
                 "--steps", str(args.steps), "--worker", str(devices), strategy],
                env=env, capture_output=True, text=True, check=True)
            results[(strategy, devices)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["images_per_s"] for r in results[configs[0]])
    print(f"model={args.model} batch={args.batch} steps={args.steps} repeats={args.repeats} "
          f"cpus={os.cpu_count()}")
    print(f"{'strategy':<22} {'replicas':>8} {'median img/s':>13} {'min':>7} {'max':>7} "
          f"{'ratio':>6}")
    for (strategy, devices), runs in results.items():
        ips = [r["images_per_s"] for r in runs]
        med = statistics.median(ips)
        label = strategy if devices == 1 else f"{strategy} ({devices} CPU dev)"
        print(f"{label:<22} {runs[0]['replicas']:>8} {med:13.1f} {min(ips):7.1f} {max(ips):7.1f} "
              f"{med / base:6.2f}")


if __name__ == "__main__":
    main()
