"""Fused against Keras BatchNormalization on the TensorFlow backend: training and inference
images/s, side by side in one process.

``dmr_keras.layers.BatchNormalization`` trains with TensorFlow's ``FusedBatchNormV3`` kernel
(see its docstring); ``performance.fused_batchnorm(False)`` makes the same layers use Keras'
own ops. For each model the script builds one model per path with the same weights, warms both
up, then interleaves them (the order alternates per repeat), ``--steps`` steps per timing, so
a noisy machine slows both alike. Each figure is the median over repeats, each ratio the
median of the per-repeat ratios fused / Keras. oneDNN is on, as the command lines set it.

    python bench/fused_batchnorm.py                                  # dmrnet_56, resnet_110, b128
    python bench/fused_batchnorm.py --models dmrnet_8_tiny --batches 8 --size 8 --repeats 2 \\
        --steps 1                                                    # smoke run (the tests)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # before TensorFlow starts
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

PATHS = ("keras", "fused")


def _build(name, size, batch, weights=None):
    import keras

    import zoo
    from dmr_keras import training

    model = zoo.create_model(name, classes=10, input_shape=(size, size, 3))
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=training.make_optimizer(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    return model


def measure(models, sizes, batches, repeats, steps):
    import numpy as np

    from dmr_keras import performance

    rows = []
    for name in models:
        size = sizes
        for batch in batches:
            rng = np.random.default_rng(0)
            x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
            y = rng.integers(0, 10, batch)
            nets, fns = {}, {}
            for path in PATHS:
                with performance.fused_batchnorm(path == "fused"):
                    nets[path] = _build(name, size, batch,
                                        nets["keras"].get_weights() if nets else None)
                    # Trace (the path is fixed when a step is traced) and warm up.
                    nets[path].train_on_batch(x, y)
                    nets[path].predict_on_batch(x)
            for mode in ("training", "inference"):
                for path in PATHS:
                    net = nets[path]
                    fns[path, mode] = (
                        (lambda n=net, x=x, y=y: n.train_on_batch(x, y)) if mode == "training"
                        else (lambda n=net, x=x: n.predict_on_batch(x)))
            times = {key: [] for key in fns}
            for rep in range(repeats):
                for mode in ("training", "inference"):
                    for path in (PATHS if rep % 2 == 0 else PATHS[::-1]):
                        fn = fns[path, mode]
                        start = time.perf_counter()
                        for _ in range(steps):
                            fn()
                        times[path, mode].append(steps * batch / (time.perf_counter() - start))
            for mode in ("training", "inference"):
                keras_ips, fused_ips = times["keras", mode], times["fused", mode]
                rows.append(dict(
                    model=name, batch=batch, mode=mode,
                    keras=statistics.median(keras_ips), fused=statistics.median(fused_ips),
                    ratio=statistics.median(f / k for f, k in zip(fused_ips, keras_ips)),
                    ratios=[round(f / k, 3) for f, k in zip(fused_ips, keras_ips)],
                    keras_runs=[round(v, 1) for v in keras_ips],
                    fused_runs=[round(v, 1) for v in fused_ips]))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="dmrnet_56,resnet_110")
    p.add_argument("--batches", default="128", help="comma-separated batch sizes")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="steps per timing")
    p.add_argument("--json", default=None, help="also write the rows and the machine here")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.repeats < 1 or args.steps < 1 or min(batches) < 1:
        p.error("--repeats, --steps and every batch size must be at least 1")
    rows = measure(args.models.split(","), args.size, batches, args.repeats, args.steps)
    from dmr_keras import performance

    info = dict(common.machine(), onednn=performance.onednn_enabled())
    print(f"Machine: {info}")
    print(common.table(
        ["model", "batch", "mode", "Keras BN img/s", "fused BN img/s", "fused / Keras",
         "per-repeat ratios"],
        [[r["model"], r["batch"], r["mode"], r["keras"], r["fused"], round(r["ratio"], 2),
          " ".join(f"{v:.2f}" for v in r["ratios"])] for r in rows]))
    if args.json:
        from dmr_keras.atomic import write_json

        write_json(args.json, {"machine": info, "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
