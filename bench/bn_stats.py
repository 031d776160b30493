"""Which batch-norm statistics should a finished model evaluate with? Measured on held-out images.

A model ends training with the BatchNorm *moving averages* (momentum 0.99: mostly the last
~100 training batches, augmented). ``dmr-train`` then, by default, replaces them by *precise
BN* (``training.precise_batchnorm``): the equal-weight average of the batch statistics of the
final weights over up to 100 *unaugmented* training batches. pycls and detectron2 compute
precise BN on their training loader, i.e. *augmented* batches. This script compares the three
on images the model never trained on, so the choice is made without the test split:

- ``moving``: the statistics the model was saved with;
- ``precise``: precise BN over ``--batches`` unaugmented batches of the images it trained on;
- ``precise_aug``: the same batches' images with the training augmentation (pad 4, crop, flip).

The models must have been trained on the part of the train split that
``data.load(..., holdout_fraction=F)`` keeps (``bench/claims.py --train-subset N`` keeps
``1 - N / train_examples``): the held-out part is then unseen, and ``--eval-images`` of it
(class-balanced, fixed) measure each variant. Results are saved after every model (atomically)
in ``OUTPUT/bn_stats.json``; the same command skips models already measured (by sha256).

    python bench/bn_stats.py --dataset cifar10 --data-dir ../shared/data/cifar10-jpeg \\
        --holdout-fraction 0.8 --batch-size 64 --output bench/results/bn_stats \\
        runs/claims-cifar10-final/*.keras
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # the dmr-* commands' default
import common  # noqa: E402

VARIANTS = ("moving", "precise", "precise_aug")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help=".keras files trained on the kept part")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--holdout-fraction", type=float, required=True,
                   help="the fraction of each class the models did not train on")
    p.add_argument("--eval-images", type=int, default=10000,
                   help="how many held-out images measure each variant (class-balanced)")
    p.add_argument("--batches", type=int, default=100, help="precise-BN batches")
    p.add_argument("--batch-size", type=int, default=64, help="precise-BN batch size")
    p.add_argument("--seed", type=int, default=0, help="order and augmentation of the batches")
    p.add_argument("--output", default="runs/bn_stats")
    args = p.parse_args(argv)
    for path in args.models:
        if not Path(path).is_file():
            p.error(f"model file {path!r} does not exist")
    if not 0 < args.holdout_fraction < 1:
        p.error(f"--holdout-fraction {args.holdout_fraction} must be in (0, 1)")
    for flag in ("eval_images", "batches", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= 1")
    return args


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def held_out_images(args):
    """``(x, y)``: ``--eval-images`` class-balanced held-out images, always the same ones."""
    import numpy as np

    from dmr_keras import data

    _, held, info = data.load(args.dataset, batch_size=256, data_dir=args.data_dir,
                              augment=False, holdout_fraction=args.holdout_fraction)
    xs, ys = [], []
    for x, y in held:
        xs.append(x.numpy())
        ys.append(y.numpy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    if args.eval_images < len(y):
        _, pick = data.holdout_split(y, args.eval_images / len(y))  # balanced, fixed
        x, y = x[pick], y[pick]
    return x, y, info


def stat_batches(args, augment):
    """The first ``--batches`` batches of the kept part, with or without augmentation. With
    one seed both orders are the same (the shuffle does not depend on ``augment``)."""
    from dmr_keras import data

    train, _, _ = data.load(args.dataset, batch_size=args.batch_size, seed=args.seed,
                            data_dir=args.data_dir, augment=augment, epochs=1,
                            holdout_fraction=args.holdout_fraction)
    return train


def measure(path, variant, args, x, y):
    import keras

    from dmr_keras import training

    keras.backend.clear_session()
    model = keras.saving.load_model(path)
    used = 0
    if variant != "moving":
        used = training.precise_batchnorm(model, stat_batches(args, variant == "precise_aug"),
                                          max_batches=args.batches)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    loss, acc = model.evaluate(x, y, batch_size=256, verbose=0)
    return {"accuracy": float(acc), "loss": float(loss), "batches": used}


def summarise(results) -> str:
    rows = []
    for r in results:
        m = r["moving"]["accuracy"]
        rows.append([r["name"]] + [f"{100 * r[v]['accuracy']:.2f}" for v in VARIANTS]
                    + [f"{100 * (r[v]['accuracy'] - m):+.2f}" for v in VARIANTS[1:]])
    if len(results) > 1:
        cells = ["mean ± std"]
        for v in VARIANTS:
            mean, std = common.mean_std([100 * r[v]["accuracy"] for r in results])
            cells.append(f"{mean:.2f} ± {std:.2f}")
        for v in VARIANTS[1:]:
            d = [100 * (r[v]["accuracy"] - r["moving"]["accuracy"]) for r in results]
            mean, std = common.mean_std(d)
            cells.append(f"{mean:+.2f} ± {std:.2f}, {common.separable(d)}")
        rows.append(cells)
    return common.table(
        ["model", "moving %", "precise %", "precise_aug %", "precise - moving",
         "precise_aug - moving"], rows, "lrrrrr")


def main(argv=None) -> int:
    args = parse_args(argv)
    from dmr_keras.atomic import write_json

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "bn_stats.json"
    setting = {k: getattr(args, k) for k in ("dataset", "holdout_fraction", "eval_images",
                                             "batches", "batch_size", "seed")}
    results = []
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state["setting"] != setting:
            raise SystemExit(f"{state_path} was measured with {state['setting']}, not "
                             f"{setting}: use another --output or delete it")
        results = state["results"]
    done = {r["sha256"] for r in results}
    todo = [(p, sha256(p)) for p in args.models]
    todo = [(p, h) for p, h in todo if h not in done]
    if todo:
        x, y, info = held_out_images(args)
        print(f"# {len(y)} held-out {args.dataset} images ({info.eval_split} part, "
              f"holdout fraction {args.holdout_fraction})", file=sys.stderr, flush=True)
    for path, digest in todo:
        t = time.perf_counter()
        r = {"name": Path(path).stem, "sha256": digest, "eval_images": len(y)}
        for variant in VARIANTS:
            r[variant] = measure(path, variant, args, x, y)
        r["seconds"] = round(time.perf_counter() - t, 1)
        results.append(r)
        write_json(state_path, {"setting": setting, "machine": common.machine(),
                                "results": results})
        print(f"# {r['name']}: " + ", ".join(
            f"{v} {100 * r[v]['accuracy']:.2f} %" for v in VARIANTS), file=sys.stderr,
            flush=True)
    table = summarise(results)
    print(table)
    (out / "bn_stats.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
