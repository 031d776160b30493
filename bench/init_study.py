"""Why the paper's deep models fail on a short run at lr 0.1, and which fix works: measured.

Trains one model (default ``dmrnet_56``) on the offline digits set with the default recipe
(``dmr-train``'s: SGD Nesterov 0.9, lr 0.1, the paper's step schedule, weight decay 1e-4 on every
parameter, batch 64, 6 epochs) under each candidate fix, each in its own process, and prints a
table: logit std and loss at initialisation, first-epoch training loss, final training accuracy,
test accuracy with the moving BN statistics and after precise BN.

Candidates: ``none`` (the reference as written), ``warmup`` / ``warmup2`` / ``warmup3`` (linear
warm-up from lr 0.01 over the first 1 / 2 / 3 epochs, He et al. / Goyal et al.; it always ends
before the first decay), ``zero_init`` (last BN scale of every branch at 0, Goyal et al.),
``both`` (zero_init and a one-epoch warm-up). Results are written atomically to
``OUTPUT/init_study.json`` after every run; runs already there are skipped.

    python bench/init_study.py --output runs/init-study
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import common  # noqa: E402,F401  (puts the checkout on sys.path)

CANDIDATES = {
    "none": dict(warmup_epochs=0, zero_init_last_bn=False),
    "warmup": dict(warmup_epochs=1, zero_init_last_bn=False),
    "warmup2": dict(warmup_epochs=2, zero_init_last_bn=False),
    "warmup3": dict(warmup_epochs=3, zero_init_last_bn=False),
    "zero_init": dict(warmup_epochs=0, zero_init_last_bn=True),
    "both": dict(warmup_epochs=1, zero_init_last_bn=True),
}


def run_one(model_name, candidate, epochs, batch_size, seed):
    import keras
    import numpy as np

    from dmr_keras import data, training
    from zoo.registry import create_model

    keras.utils.set_random_seed(seed)
    cfg = CANDIDATES[candidate]
    train_ds, test_ds, info = data.load("digits", batch_size=batch_size, seed=seed)
    steps = info.train_examples // batch_size
    reg = training.kernel_weight_decay(1e-4)
    net = create_model(model_name, classes=10, kernel_regularizer=reg, bias_regularizer=reg,
                       zero_init_last_bn=cfg["zero_init_last_bn"], classifier_activation=None)
    x0, y0 = next(iter(test_ds))
    logits = keras.ops.convert_to_numpy(net(x0, training=True))
    init_loss = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y0, logits))
    sched = training.learning_rate_schedule("paper", 0.1, epochs, steps,
                                            warmup_epochs=cfg["warmup_epochs"])
    net.compile(optimizer=training.make_optimizer(sched),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    start = time.perf_counter()
    hist = net.fit(train_ds, epochs=epochs, verbose=0, shuffle=False).history
    wall = time.perf_counter() - start
    _, test_acc = net.evaluate(test_ds, verbose=0)
    plain, _, _ = data.load("digits", batch_size=batch_size, seed=seed, augment=False)
    used = training.precise_batchnorm(net, plain)
    _, precise_acc = net.evaluate(test_ds, verbose=0)
    return dict(model=model_name, candidate=candidate, seed=seed, epochs=epochs,
                batch_size=batch_size, init_logit_std=float(np.std(logits)),
                init_loss=init_loss, first_epoch_loss=hist["loss"][0],
                final_train_accuracy=hist["accuracy"][-1], train_loss=hist["loss"],
                test_accuracy=float(test_acc), test_accuracy_precise_bn=float(precise_acc),
                precise_bn_batches=used, wall_s=round(wall, 1),
                conv_init=_describe_init(net))


def _describe_init(net):
    init = net.get_layer("stem_conv").kernel_initializer
    cfg = init.get_config()
    return (f"{type(init).__name__}({cfg.get('scale')}, {cfg.get('mode')}, "
            f"{cfg.get('distribution')})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="dmrnet_56")
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", default="0")
    p.add_argument("--output", default="runs/init-study")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        cand, seed = args.worker.split(":")
        print(json.dumps(run_one(args.model, cand, args.epochs, args.batch_size, int(seed))))
        return 0
    import subprocess

    from dmr_keras.atomic import write_json

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "init_study.json"
    results = json.loads(path.read_text()) if path.exists() else []
    for cand in args.candidates.split(","):
        if cand not in CANDIDATES:
            raise SystemExit(f"Unknown candidate {cand!r}; valid: {', '.join(CANDIDATES)}")
        for seed in (int(s) for s in args.seeds.split(",")):
            if any(r["candidate"] == cand and r["seed"] == seed and r["model"] == args.model
                   and r["epochs"] == args.epochs for r in results):
                continue
            cmd = [sys.executable, __file__, "--worker", f"{cand}:{seed}", "--model",
                   args.model, "--epochs", str(args.epochs), "--batch-size",
                   str(args.batch_size)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"run {cand}:{seed} failed")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            write_json(path, results)
            print(f"done {cand} seed {seed}", flush=True)
    print_table(results)
    return 0


def print_table(results):
    head = ("model", "candidate", "seed", "conv init", "init logit std", "init loss",
            "epoch-1 loss", "final train acc", "test acc", "test acc (precise BN)", "train s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        init = r.get("conv_init", "HeNormal (truncated)")
        print(f"| {r['model']} | {r['candidate']} | {r['seed']} | {init} | "
              f"{r['init_logit_std']:.2f} | "
              f"{r['init_loss']:.2f} | {r['first_epoch_loss']:.2f} | "
              f"{100 * r['final_train_accuracy']:.1f} % | {100 * r['test_accuracy']:.2f} % | "
              f"{100 * r['test_accuracy_precise_bn']:.2f} % | {r['wall_s']} |")


if __name__ == "__main__":
    raise SystemExit(main())
