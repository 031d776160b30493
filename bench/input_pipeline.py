"""Is the input pipeline fast enough? Training images/s the pipeline delivers vs what a model
trains at, measured side by side in one run, as a ratio.

    python bench/input_pipeline.py --data-dir ../shared/data/cifar10-jpeg
    python bench/input_pipeline.py --dataset digits --models dmrnet_8_tiny --steps 5

For each dataset source it times: the first ``load`` (decoding every image into the uint8
cache), a second ``load`` (served from the cache), and iterating the augmented, shuffled,
batched train set (``--pipeline-batches`` batches after a warm-up batch). For each model it
times ``train_on_batch`` on in-memory batches of the same shape (after a warm-up step). It
prints a table and the ratio pipeline / training images/s per model; the issue asks for >= 5x
dmrnet_56's rate. Everything runs in this one process, one after the other, on the same cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, table  # noqa: E402


def time_pipeline(dataset, data_dir, batch_size, batches):
    from dmr_keras import data

    start = time.perf_counter()
    train, _, info = data.load(dataset, batch_size=batch_size, data_dir=data_dir, epochs=1)
    first_load = time.perf_counter() - start
    start = time.perf_counter()
    train, _, info = data.load(dataset, batch_size=batch_size, data_dir=data_dir, epochs=1)
    second_load = time.perf_counter() - start
    it = iter(train)
    next(it)  # warm-up: builds the pipeline, fills the prefetch buffer
    batches = min(batches, info.train_examples // batch_size - 1)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    return dict(dataset=info.name, source=info.source, train_examples=info.train_examples,
                first_load_s=round(first_load, 2), cached_load_s=round(second_load, 2),
                batches=batches, images_per_s=round(batches * batch_size / elapsed, 1),
                image_shape=list(info.image_shape), num_classes=info.num_classes)


def time_training(model_name, batch_size, steps, shape, classes):
    import keras
    import numpy as np

    from dmr_keras import training
    from zoo.registry import create_model

    model = create_model(model_name, classes=classes, input_shape=tuple(shape))
    model.compile(optimizer=training.make_optimizer(0.1), loss=training.make_loss(0.1))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, *shape)).astype("float32")
    y = rng.integers(0, classes, batch_size)
    model.train_on_batch(x, y)  # warm-up: traces and compiles
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    elapsed = time.perf_counter() - start
    del model
    keras.backend.clear_session()
    return dict(model=model_name, steps=steps, images_per_s=round(steps * batch_size / elapsed, 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--models", default="dmrnet_56,dmrnet_20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--pipeline-batches", type=int, default=100)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    pipe = time_pipeline(args.dataset, args.data_dir, args.batch_size, args.pipeline_batches)
    runs = [time_training(m, args.batch_size, args.steps, pipe["image_shape"],
                          pipe["num_classes"]) for m in args.models.split(",") if m]
    print(f"## Input pipeline vs training, batch {args.batch_size}, one process\n")
    print(table(["dataset", "source", "first load s", "cached load s", "pipeline img/s"],
                [[pipe["dataset"], pipe["source"], pipe["first_load_s"], pipe["cached_load_s"],
                  pipe["images_per_s"]]]))
    print()
    print(table(["model", "train img/s", "pipeline / train"],
                [[r["model"], r["images_per_s"], f"{pipe['images_per_s'] / r['images_per_s']:.1f}x"]
                 for r in runs]))
    if args.json:
        from dmr_keras.atomic import write_json

        write_json(args.json, {"machine": machine(), "batch_size": args.batch_size,
                               "pipeline": pipe, "training": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
