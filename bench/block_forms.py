"""Separate per-branch convolutions vs one grouped convolution for the merge-and-run block.

The two forms compute the same function: K streams of C channels, each branch
conv3x3-BN-ReLU-conv3x3-BN, merge = average of the streams. The grouped form stacks the streams
on the channel axis and runs ``Conv2D(groups=K)``. This script times a training step and an
inference step of a stage of blocks in each form, interleaved and repeated, and prints the
median, spread and the ratio grouped/separate.

    python bench/block_forms.py [--blocks 9] [--channels 16] [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
from keras import ops  # noqa: E402

from dmr_keras.layers import MergeAndRunBlock  # noqa: E402


class GroupedMergeAndRun(keras.layers.Layer):
    """The same block on channel-stacked streams with grouped convolutions (bench only)."""

    def __init__(self, filters, num_branches, **kwargs):
        super().__init__(**kwargs)
        self.k, self.c = num_branches, filters
        kc = filters * num_branches
        self.conv1 = keras.layers.Conv2D(kc, 3, padding="same", use_bias=False, groups=self.k)
        self.bn1 = keras.layers.BatchNormalization(momentum=0.99, epsilon=2e-5)
        self.conv2 = keras.layers.Conv2D(kc, 3, padding="same", use_bias=False, groups=self.k)
        self.bn2 = keras.layers.BatchNormalization(momentum=0.99, epsilon=2e-5)

    def call(self, x, training=None):
        h = ops.relu(self.bn1(self.conv1(x), training=training))
        h = self.bn2(self.conv2(h), training=training)
        b, hh, ww = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        mean = ops.mean(ops.reshape(x, (b, hh, ww, self.k, self.c)), axis=3)
        return ops.relu(ops.tile(mean, (1, 1, 1, self.k)) + h)


def build(form, blocks, channels, k, size):
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)(inp)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    if form == "separate":
        for _ in range(blocks):
            x = MergeAndRunBlock(channels, k)(x)
        x = keras.layers.Add()(x)
    else:
        x = keras.layers.Concatenate()([x] * k)
        for _ in range(blocks):
            x = GroupedMergeAndRun(channels, k)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10)(x)
    model = keras.Model(inp, out)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=9)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--branches", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch)
    models = {f: build(f, args.blocks, args.channels, args.branches, args.size)
              for f in ("separate", "grouped")}
    times = {(f, mode): [] for f in models for mode in ("train", "infer")}
    for m in models.values():  # warm up: trace and compile both steps
        m.train_on_batch(x, y)
        m.predict_on_batch(x)
    for _ in range(args.repeats):
        for f, m in models.items():  # interleaved, so drift hits both forms alike
            t = time.perf_counter()
            for _ in range(args.steps):
                m.train_on_batch(x, y)
            times[(f, "train")].append((time.perf_counter() - t) / args.steps)
            t = time.perf_counter()
            for _ in range(args.steps):
                m.predict_on_batch(x)
            times[(f, "infer")].append((time.perf_counter() - t) / args.steps)

    print(f"backend={keras.backend.backend()} blocks={args.blocks} C={args.channels} "
          f"K={args.branches} batch={args.batch} size={args.size} repeats={args.repeats}")
    print(f"{'step':<6} {'form':<9} {'median ms':>10} {'min':>8} {'max':>8} {'img/s':>8}")
    for mode in ("train", "infer"):
        for f in models:
            t = times[(f, mode)]
            med = statistics.median(t)
            print(f"{mode:<6} {f:<9} {med * 1e3:10.1f} {min(t) * 1e3:8.1f} {max(t) * 1e3:8.1f} "
                  f"{args.batch / med:8.0f}")
        ratio = statistics.median(times[("grouped", mode)]) / statistics.median(
            times[("separate", mode)])
        print(f"{mode:<6} grouped/separate time ratio: {ratio:.2f}x")


if __name__ == "__main__":
    main()
