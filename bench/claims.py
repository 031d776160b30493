"""The paper's claim 1, measured: merge-and-run vs identity vs ResNet at equal parameters.

Zhao et al. (arXiv 1611.07718) claim that, at about the same number of parameters, a
merge-and-run network (DMRNet) is more accurate than the same network with identity mappings
(DILNet) and than a deeper ResNet. This script trains each model with each seed for the same
number of epochs with the paper's recipe (SGD Nesterov 0.9, lr divided by 10 at 1/2, 3/4 and 7/8
of the run, weight decay 1e-4 on kernels) and reports the final test accuracy, mean and std over
seeds, the per-seed difference to the reference model (paired: seed s of every model sees the
same data order), and a plot.

Offline default, ``--dataset digits``: scikit-learn's 1,797 handwritten digits at their native
8x8 resolution (the 32x32 form only repeats pixels and costs 16x the compute). With all 1,437
standard training images every model scores ~99 % and the claim cannot show, so the default
trains on ``--train-per-class`` images per class drawn (fixed by ``--data-seed``) from the
standard training split, and tests on every digit not trained on (augmentation: 1-pixel pad
and random 8x8 crop, the 32x32 recipe's 4 pixels scaled down). Its learning rate is 0.01: at
the paper's 0.1 these deep networks do not start converging on 8x8 digits within a few hundred
steps (He et al. warmed ResNet-110 up at 0.01 on CIFAR for the same reason), and with too few
steps batch norm's moving averages (momentum 0.99) never settle. Any other ``dmr-train`` dataset
(``cifar10``, ``cifar100``, ``svhn``, ``folder:PATH``) uses its standard pipeline and split.

Results are saved after every run (atomically) in ``OUTPUT/claims.json``; the same command
started again skips the runs already done, so a long CIFAR study survives interruption. Runs on
datasets other than digits also save every epoch (``--work-dir``) and continue a killed run
after its last saved epoch, with the batches an uninterrupted run sees. ``--keep-models DIR``
keeps each run's final model (``DIR/NAME-seedS.keras``), e.g. for ``bench/bn_stats.py``.

    python bench/claims.py                                    # digits, 4 models x 3 seeds
    python bench/claims.py --dataset cifar10 --epochs 300 --batch-size 64 --size 32 \\
        --output runs/claims-cifar10                          # the paper's setting, on a GPU

Claim 3 (depth sweep): ``--models dmrnet_14,resnet_26,dmrnet_20,resnet_38,dmrnet_26,resnet_50
--plot-params`` adds ``OUTPUT/error_vs_params.png``, test error against parameters with one
line per mapping.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # the dmr-* commands' default (issue 16)
import common  # noqa: E402

DEFAULT_MODELS = "dmrnet_56,dilnet_56,resnet_110,dmrnet_38_k3"


def digits_native(train_per_class: int, data_seed: int):
    """``(x_train, y_train, x_test, y_test)``: 8x8x3 digits in [0, 1], the documented split."""
    import numpy as np
    from sklearn.datasets import load_digits

    from dmr_keras.data import digits_split

    d = load_digits()
    images = np.repeat((d.data.reshape(-1, 8, 8, 1) / 16.0).astype("float32"), 3, axis=-1)
    labels = d.target.astype("int64")
    train_idx, _ = digits_split()
    if train_per_class:
        rng = np.random.RandomState(data_seed)
        chosen = []
        for c in range(10):
            idx = train_idx[labels[train_idx] == c]
            if train_per_class > len(idx):
                raise ValueError(
                    f"--train-per-class {train_per_class} exceeds the {len(idx)} training "
                    f"images of class {c}; use at most {min(np.bincount(labels[train_idx]))}, "
                    "or 0 for the whole standard training split.")
            chosen.append(rng.choice(idx, train_per_class, replace=False))
        train_idx = np.sort(np.concatenate(chosen))
    test_mask = np.ones(len(labels), bool)
    test_mask[train_idx] = False
    return images[train_idx], labels[train_idx], images[test_mask], labels[test_mask]


def digits_datasets(args, seed):
    import tensorflow as tf

    x_tr, y_tr, x_te, y_te = digits_native(args.train_per_class, args.data_seed)
    mean = x_tr.mean(axis=(0, 1, 2))
    std = x_tr.std(axis=(0, 1, 2))

    def aug(example, r):
        x, y = example
        x = tf.pad(x, [[1, 1], [1, 1], [0, 0]])
        crop = tf.image.stateless_random_crop(x, (8, 8, 3), seed=tf.stack([r, r // 7 + 1]))
        return crop, y

    train = (tf.data.Dataset.from_tensor_slices((x_tr, y_tr))
             .shuffle(len(x_tr), seed=seed, reshuffle_each_iteration=True))
    if args.augment:
        randoms = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
        train = tf.data.Dataset.zip(train, randoms).map(aug)
    train = train.map(lambda x, y: ((x - mean) / std, y)).batch(args.batch_size).prefetch(2)
    test = (tf.data.Dataset.from_tensor_slices(((x_te - mean) / std, y_te))
            .batch(256).prefetch(2))
    return train, test, len(x_tr), len(x_te), 10


def datasets(args, seed, initial_epoch=0):
    """``(train, test, train examples, test examples, classes)`` for one seed.

    Datasets other than digits are epoch-keyed (``data.load(epochs=, initial_epoch=)``): the
    batches of epoch e depend only on ``(seed, e)``, so a run resumed from its epoch checkpoint
    sees the batches of an uninterrupted one. ``--train-subset N``: training uses a fixed,
    class-balanced subset of about N images of the training split, the same for every model and
    seed (the part :func:`dmr_keras.data.holdout_split` keeps, which depends on the labels
    only); the test split is always whole.
    """
    if args.dataset == "digits":
        return digits_datasets(args, seed)
    from dmr_keras import data

    keyed = {"epochs": args.epochs, "initial_epoch": initial_epoch}
    train, test, info = data.load(args.dataset, batch_size=args.batch_size, seed=seed,
                                  data_dir=args.data_dir, **keyed)
    n_train = info.train_examples
    if args.train_subset:
        if args.train_subset >= n_train:
            raise ValueError(f"--train-subset {args.train_subset} is not smaller than the "
                             f"{n_train} training images of {args.dataset}; use 0 for all")
        train, _, sub = data.load(args.dataset, batch_size=args.batch_size, seed=seed,
                                  data_dir=args.data_dir,
                                  holdout_fraction=1 - args.train_subset / n_train, **keyed)
        n_train = sub.train_examples
    return train, test, n_train, info.eval_examples, info.num_classes


def run_dir(args, name, seed) -> Path:
    """Where a CIFAR-style run keeps its epoch checkpoints until its result is saved."""
    return Path(args.work_dir) / f"{name}-seed{seed}"


def run_one(args, name, seed):
    """Train ``name`` with ``seed`` and measure it on the test split. Datasets other than digits
    save the model (weights, optimizer, step counter) after every epoch in
    ``WORK_DIR/NAME-seedS/``; started again, the run continues after its last saved epoch with
    the batches an uninterrupted run would have seen, and the directory is removed once the run's
    result is in ``claims.json``. (Digits runs take seconds and keep their original, unkeyed
    pipeline, so the committed digits study stays reproducible.)"""
    import keras

    import zoo
    from dmr_keras import training
    from dmr_keras.flops import count_flops

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    keyed = args.dataset != "digits"
    ckpt_dir = run_dir(args, name, seed)
    resume = training.latest_checkpoint(ckpt_dir) if keyed else None
    initial_epoch = min(resume["epoch"], args.epochs) if resume else 0
    train, test, n_train, n_test, classes = datasets(args, seed, initial_epoch)
    steps = n_train // args.batch_size if keyed else -(-n_train // args.batch_size)
    if steps < 1:
        raise ValueError(f"--batch-size {args.batch_size} is larger than the {n_train} "
                         "training images")
    if resume:
        model = keras.saving.load_model(resume["path"])
        print(f"# {name} seed {seed}: resuming after epoch {resume['epoch']} "
              f"({resume['path']})", file=sys.stderr, flush=True)
    else:
        model = zoo.create_model(
            name, classes=classes, input_shape=(args.size, args.size, 3),
            kernel_regularizer=training.kernel_weight_decay(args.weight_decay))
        schedule = training.learning_rate_schedule("paper", args.lr, args.epochs, steps)
        model.compile(optimizer=training.make_optimizer(schedule),
                      loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    t = time.perf_counter()
    if keyed:
        checkpoint = training.EpochCheckpoint.continuing(ckpt_dir, resume, keep=1)
        model.fit(train, epochs=args.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                  verbose=0, shuffle=False, callbacks=[checkpoint])
        # every attempt's epochs (a resumed run's own history starts at its resume)
        history, seconds = checkpoint.history, sum(checkpoint.epoch_times.values())
    else:
        history = model.fit(train, epochs=args.epochs, verbose=0, shuffle=False).history
        seconds = time.perf_counter() - t
    loss, acc = model.evaluate(test, verbose=0)
    if args.keep_models:  # the model as measured, e.g. for bench/bn_stats.py
        from dmr_keras.atomic import atomic_path

        with atomic_path(Path(args.keep_models) / f"{name}-seed{seed}.keras") as tmp:
            model.save(tmp)
    return {"model": name, "seed": seed, "test_accuracy": float(acc), "test_loss": float(loss),
            "train_accuracy": float(history["accuracy"][-1]),
            "params": int(model.count_params()), "mflops": count_flops(model) / 1e6,
            "train_examples": n_train, "test_examples": n_test, "seconds": seconds,
            **({"resumed_at_epoch": initial_epoch} if initial_epoch else {})}


def summarise(args, results):
    by = {}
    for r in results:
        by.setdefault(r["model"], {})[r["seed"]] = r
    ref = by.get(args.reference, {})
    rows = []
    for name in args.models:
        runs = by.get(name, {})
        if not runs:
            continue
        accs = [100 * runs[s]["test_accuracy"] for s in sorted(runs)]
        mean, std = common.mean_std(accs)
        diffs = [100 * (runs[s]["test_accuracy"] - ref[s]["test_accuracy"])
                 for s in sorted(runs) if s in ref]
        dmean, dstd = common.mean_std(diffs) if diffs and name != args.reference else (None, 0)
        wins = sum(d > 0 for d in diffs)
        sep = separable(diffs) if dmean is not None else "-"
        any_run = next(iter(runs.values()))
        rows.append([name, f"{any_run['params'] / 1e6:.3f}M", any_run["mflops"], len(accs),
                     " ".join(f"{a:.2f}" for a in accs), f"{mean:.2f} ± {std:.2f}",
                     f"{dmean:+.2f} ± {dstd:.2f}" if dmean is not None else "-",
                     f"{wins}/{len(diffs)}" if dmean is not None else "-", sep,
                     statistics.median([runs[s]["seconds"] for s in runs])])
    return common.table(
        ["model", "params", "MFLOP/img", "seeds", "test acc % per seed", "mean ± std",
         f"vs {args.reference} (paired)", "wins", "separable (paired t, 95 %)", "train s"],
        rows, "lrrrlrrrlr")


separable = common.separable  # paired t-test (kept here: the claims tables' name)


def plot(args, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, name in enumerate(args.models):
        accs = [100 * r["test_accuracy"] for r in results if r["model"] == name]
        if not accs:
            continue
        mean, std = common.mean_std(accs)
        ax.errorbar([i], [mean], yerr=[std], fmt="o", capsize=6, color="C0", ms=8)
        ax.scatter([i + 0.12] * len(accs), accs, s=14, color="C1", zorder=3)
    ax.set_xticks(range(len(args.models)), args.models)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{args.dataset}: {args.epochs} epochs, mean ± std over seeds (dots: seeds)",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    common.save_png(fig, path)


def param_lines(args, results) -> dict:
    """``{line label: [(params in M, mean error %, std, model), ...]}`` in order of size: one
    line per mapping (``DMRNet``, ``DILNet``, ``ResNet``; ``DMRNet K=3`` for other K)."""
    import zoo

    lines = {}
    for name in args.models:
        errors = [100 * (1 - r["test_accuracy"]) for r in results if r["model"] == name]
        if not errors:
            continue
        params = next(r["params"] for r in results if r["model"] == name)
        config = zoo.get_variant(name).config
        label = {"merge_and_run": "DMRNet", "identity": "DILNet", "resnet": "ResNet"}[
            config["mapping"]]
        if config["mapping"] != "resnet" and config["num_branches"] != 2:
            label += f" K={config['num_branches']}"
        lines.setdefault(label, []).append((params / 1e6, *common.mean_std(errors), name))
    return {label: sorted(points) for label, points in lines.items()}


def plot_params(args, results, path):
    """Claim 3: test error (mean ± std over seeds) against parameters, one line per mapping."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = param_lines(args, results)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (label, points) in enumerate(sorted(lines.items())):
        xs, means, stds, names = zip(*points)
        ax.errorbar(xs, means, yerr=stds, fmt="o-", capsize=4, color=f"C{i}", label=label)
        for x, y, name in zip(xs, means, names):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{args.dataset}: {args.epochs} epochs, mean ± std over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    common.save_png(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir")
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--reference", default="resnet_110")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None,
                   help="default: 0.01 on the 8x8 digits (0.1 does not start converging there "
                        "within this budget), else the paper's 0.1")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--size", type=int, default=None,
                   help="input side (default: 8 for digits, 32 otherwise)")
    p.add_argument("--train-per-class", type=int, default=50,
                   help="digits only: training images per class (0: the whole training split)")
    p.add_argument("--data-seed", type=int, default=0, help="digits only: which subset")
    p.add_argument("--train-subset", type=int, default=0,
                   help="other datasets: train on a fixed, class-balanced subset of about N "
                        "training images (0: all); the test split stays whole")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--plot-params", action="store_true",
                   help="also plot test error against parameters, a line per mapping "
                        "(claim 3's depth sweep): OUTPUT/error_vs_params.png")
    p.add_argument("--output", default="bench/results/claims")
    p.add_argument("--work-dir", default=None,
                   help="datasets other than digits: where each run's epoch checkpoints live "
                        "until its result is saved (default: runs/claims-DATASET, outside the "
                        "committed results)")
    p.add_argument("--keep-models", default=None, metavar="DIR",
                   help="also save each run's final model as DIR/NAME-seedS.keras (not in "
                        "claims.json's setting: it changes no result)")
    args = p.parse_args(argv)

    import zoo
    from dmr_keras.data import check_dataset
    args.dataset = check_dataset(args.dataset)
    args.models = [m for m in args.models.split(",") if m]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    for name in args.models:
        zoo.get_variant(name)
    if args.epochs < 1 or args.batch_size < 1 or not args.seeds:
        p.error("--epochs and --batch-size must be >= 1 and --seeds non-empty")
    if args.train_subset < 0 or (args.train_subset and args.dataset == "digits"):
        p.error(f"--train-subset {args.train_subset}: a number of images >= 0, for datasets "
                "other than digits (digits: --train-per-class)")
    args.size = args.size or (8 if args.dataset == "digits" else 32)
    args.lr = args.lr or (0.01 if args.dataset == "digits" else 0.1)
    if args.dataset == "digits" and args.size != 8:
        p.error(f"--size {args.size}: this study uses the digits at their native 8x8 "
                "(dmr-train's digits are the same images repeated to 32x32)")
    args.work_dir = args.work_dir or os.path.join("runs", f"claims-{args.dataset}")
    out = Path(args.output)
    state_path = out / "claims.json"
    setting = {k: getattr(args, k) for k in ("dataset", "epochs", "batch_size", "lr",
                                              "weight_decay", "size", "train_per_class",
                                              "data_seed", "augment")}
    if args.train_subset:  # only when used: studies from before it keep their setting
        setting["train_subset"] = args.train_subset
    results = []
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("setting") != setting:
            p.error(f"{state_path} holds results of another setting ({state.get('setting')}); "
                    "use another --output or delete it")
        results = state["results"]
    from dmr_keras.atomic import write_json

    done = {(r["model"], r["seed"]) for r in results}
    mach = common.machine()
    for seed in args.seeds:  # seeds outermost: a stopped study has every model at equal seeds
        for name in args.models:
            if (name, seed) in done:
                continue
            r = run_one(args, name, seed)
            results.append(r)
            write_json(state_path, {"setting": setting, "machine": mach,
                                    "results": results})
            shutil.rmtree(run_dir(args, name, seed), ignore_errors=True)
            print(f"# {name} seed {seed}: test accuracy {100 * r['test_accuracy']:.2f} % "
                  f"({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    results = [r for r in results if r["model"] in args.models and r["seed"] in args.seeds]
    print(f"{args.dataset}, {args.size}x{args.size}, {args.epochs} epochs, batch "
          f"{args.batch_size}, lr {args.lr}, wd {args.weight_decay}, train "
          f"{results[0]['train_examples']} / test {results[0]['test_examples']} images")
    print(summarise(args, results))
    plot(args, results, out / "claims.png")
    print(f"plot: {out / 'claims.png'}; results: {state_path}")
    if args.plot_params:
        plot_params(args, results, out / "error_vs_params.png")
        print(f"error against parameters: {out / 'error_vs_params.png'}")


if __name__ == "__main__":
    main()
