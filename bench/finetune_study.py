"""Does fine-tuning from CIFAR-10 pay on a small dataset that is not CIFAR? Measured.

Builds a small image-folder dataset from scikit-learn's 8x8 digits (not CIFAR: grey, 10 digit
classes) with 10 and 50 training images per class, and trains ``dmrnet_20`` on it with
``dmr-train --dataset folder:DIR`` from scratch and from the zoo's CIFAR-10 weights
(``--init-weights dmrnet_20.cifar10_e40``, the zoo's first CIFAR-10 weights, the ones the
study ran with: backbone loaded, new 10-class head), with one fixed
recipe for every run, over 3 seeds; optionally a third arm, ``probe`` (``--freeze-backbone``:
only the new head is trained). Prints (and writes) a table: test top-1 mean +- std over seeds
per cell, the paired per-seed differences against scratch, and the time per run.

The dataset (built once in ``--work``, outside the repository; deterministic):

* Rendering: each 8x8 digit (grey levels 0..16) as a 32x32 RGB PNG: grey level * 255 / 16,
  rounded, each pixel repeated 4x4 (nearest neighbour) over 3 equal channels. This is the
  package's own conversion (``zoo.applications.digits_to_images``, the ``digits`` dataset), so
  the numbers sit next to the full-data ``digits`` runs; the folder loader's 32x32 resize is then
  the identity.
* Split, fixed before any result was seen, independent of the training seed: in each class the
  digits (in scikit-learn's order) are permuted by one ``numpy.random.RandomState(0)`` stream
  (classes 0..9 in turn). The first 50 are the 50-per-class training set, whose first 10 are the
  10-per-class set (nested); the next 5 are ``val/`` (50 images: the per-epoch ``val_*`` lines
  only, never used to choose anything; a small set keeps per-epoch evaluation cheap); all the
  rest (1,247 images, 119-128 per class) are ``test/``. Both folders (``digits-10pc``,
  ``digits-50pc``) have the same ``val/`` and ``test/``. The training subsets are fixed: the seeds
  vary the head / network initialisation, the batch order and the augmentation, not which
  images are trained on.

The recipe (the same for every arm and size; chosen before any run, not tuned on the test
split): 30 epochs, batch 32, SGD Nesterov 0.9 (``dmr-train``'s optimiser), lr 0.05 with a
2-epoch linear warm-up then cosine decay, weight decay 5e-4 on every parameter, label smoothing
0.1, precise BN (``dmr-train``'s defaults otherwise). It is the recipe the zoo's
``dmrnet_20.cifar10`` weights were trained with (``zoo/weights.json``), with batch 32 instead of
128 (so that 10 images per class still give 3 steps per epoch) and lr 0.05 (between the linear
scaling rule's 0.025 and the original 0.1). 30 epochs is 90 steps at 10 per class, 450 at 50.

Each run is a ``dmr-train`` subprocess into ``WORK/runs/<n>pc-<arm>-s<seed>`` (its output in
``<run>.log``; a killed run resumes from its last epoch checkpoint), then its test top-1 is
measured with ``zoo.evaluate.evaluate(run_dir, "folder:DIR", split="test")`` (what ``dmr-eval
RUN --dataset folder:DIR`` prints). ``OUTPUT/finetune.json`` is rewritten atomically after every
finished run; runs already in it (with the same settings) are skipped, so the study resumes after
an interrupt by running the same command again. The ``scratch`` and ``finetune`` arms run first
(all sizes and seeds), the other arms after.

    python bench/finetune_study.py                       # the full study (~1 h on 2 cores)
    python bench/finetune_study.py --arms scratch,finetune,probe   # add the linear probe
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import common  # noqa: E402  (puts the checkout on sys.path)

RESULTS_FILE = "finetune.json"
TABLE_FILE = "finetune.md"
SPLIT_SEED = 0
VAL_PER_CLASS = 5
ARMS = ("scratch", "finetune", "probe")
MAIN_ARMS = ("scratch", "finetune")
# The one recipe of every run (dmr-train flags); --epochs / --batch-size override for smoke runs.
RECIPE = dict(epochs=30, batch_size=32, lr=0.05, schedule="cosine", warmup_epochs=2,
              weight_decay=5e-4, label_smoothing=0.1)


# ---- the dataset ------------------------------------------------------------------------------

def render_digits(flat):
    """``(N, 64)`` grey levels 0..16 -> ``(N, 32, 32, 3)`` uint8: the package's nearest-neighbour
    conversion (``zoo.applications.digits_to_images``), rounded to integers for PNG."""
    import numpy as np

    images = np.asarray(flat, dtype="float32").reshape(-1, 8, 8) * np.float32(255.0 / 16)
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
    return np.repeat(np.round(images).astype("uint8")[..., None], 3, axis=-1)


def split_indices(labels, sizes, val_per_class=VAL_PER_CLASS, limit=None, seed=SPLIT_SEED):
    """``{"train": {size: [idx]}, "val": [idx], "test": [idx]}`` (indices into the digits): per
    class, one permutation; the first ``max(sizes)`` train (the smaller sizes nested as prefixes),
    the next ``val_per_class`` val, the rest (at most ``limit`` per class) test."""
    import numpy as np

    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    pool = max(sizes)
    out = {"train": {n: [] for n in sizes}, "val": [], "test": []}
    for c in sorted(set(labels.tolist())):
        perm = rng.permutation(np.flatnonzero(labels == c))
        if len(perm) < pool + val_per_class + 1:
            raise ValueError(f"class {c} has {len(perm)} images: too few for {pool} train + "
                             f"{val_per_class} val + a test set")
        for n in sizes:
            out["train"][n] += perm[:n].tolist()
        out["val"] += perm[pool:pool + val_per_class].tolist()
        out["test"] += perm[pool + val_per_class:][:limit].tolist()
    return out


def build_datasets(work: Path, sizes, limit=None) -> dict:
    """Write ``WORK/data/digits-<n>pc/{train,val,test}/<class>/<index>.png`` for each size (once;
    a folder whose ``split.json`` matches is kept); returns ``{size: folder}``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from dmr_keras.atomic import write_json

    digits = load_digits()
    pixels, labels = render_digits(digits.data), digits.target
    split = split_indices(labels, sizes, limit=limit)
    folders = {}
    for n in sizes:
        root = work / "data" / f"digits-{n}pc"
        want = {"split_seed": SPLIT_SEED, "val_per_class": VAL_PER_CLASS, "limit": limit,
                "render": "nearest-4x", "train": split["train"][n], "val": split["val"],
                "test": split["test"]}
        stamp = root / "split.json"
        if not (stamp.exists() and json.loads(stamp.read_text()) == want):
            tmp = root.with_name(root.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            for name, ids in (("train", split["train"][n]), ("val", split["val"]),
                              ("test", split["test"])):
                for i in ids:
                    d = tmp / name / str(int(labels[i]))
                    d.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels[i]).save(d / f"{i:04d}.png")
            write_json(tmp / "split.json", want)
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
        folders[n] = root
    return folders


# ---- runs -------------------------------------------------------------------------------------

def dmr_train_command(args, folder: Path, arm: str, seed: int, out_dir: Path) -> list[str]:
    exe = Path(sys.executable).with_name("dmr-train")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "import sys; from dmr_cli import train; "
                                           "sys.exit(train())"]
    cmd += ["--model", args.model, "--dataset", f"folder:{folder}",
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--lr", str(RECIPE["lr"]), "--schedule", RECIPE["schedule"],
            "--warmup-epochs", str(RECIPE["warmup_epochs"]),
            "--weight-decay", str(RECIPE["weight_decay"]),
            "--label-smoothing", str(RECIPE["label_smoothing"]),
            "--seed", str(seed), "--output", str(out_dir), "--verbose", "2"]
    if arm in ("finetune", "probe"):
        cmd += ["--init-weights", args.init_weights]
    if arm == "probe":
        cmd += ["--freeze-backbone"]
    return cmd


def run_training(cmd: list[str], log_path: Path) -> float:
    """Run one ``dmr-train`` (its output into ``log_path``); returns its wall time in seconds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(common.ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        tail = Path(log_path).read_text().splitlines()[-30:]
        raise RuntimeError(f"dmr-train failed (exit {proc.returncode}); the end of {log_path}:\n"
                           + "\n".join(tail))
    return wall


def evaluate_test(run_dir: Path, folder: Path) -> dict:
    """Test top-1 of a finished run: what ``dmr-eval RUN --dataset folder:DIR`` prints."""
    from zoo.evaluate import evaluate

    return evaluate(str(run_dir), f"folder:{folder}", split="test")


def config_of(args) -> dict:
    return {"model": args.model, "init_weights": args.init_weights,
            "recipe": {**RECIPE, "epochs": args.epochs, "batch_size": args.batch_size},
            "data": {"source": "sklearn.datasets.load_digits, rendered 32x32x3 (nearest 4x)",
                     "split_seed": SPLIT_SEED, "val_per_class": VAL_PER_CLASS,
                     "test_limit_per_class": args.limit}}


def run_key(size, arm, seed) -> str:
    return f"{size}pc-{arm}-s{seed}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                  "dmr-finetune-study"),
                   help="datasets and run directories (outside the repository)")
    p.add_argument("--output", default=str(common.ROOT / "bench" / "results" / "finetune"),
                   help=f"where {RESULTS_FILE} and {TABLE_FILE} go")
    p.add_argument("--model", default="dmrnet_20")
    p.add_argument("--init-weights", default="dmrnet_20.cifar10_e40")
    p.add_argument("--sizes", default="10,50", help="training images per class")
    p.add_argument("--arms", default="scratch,finetune", help=f"of {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    p.add_argument("--limit", type=int, default=None,
                   help="at most this many test images per class (smoke runs)")
    p.add_argument("--table-only", action="store_true", help="print the table and exit")
    args = p.parse_args(argv)

    sizes = sorted(int(s) for s in args.sizes.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = [a.strip() for a in args.arms.split(",")]
    for a in arms:
        if a not in ARMS:
            raise SystemExit(f"Unknown arm {a!r}; valid: {', '.join(ARMS)}")
    from dmr_keras.atomic import write_json, write_text

    out = Path(args.output)
    path = out / RESULTS_FILE
    config = config_of(args)
    results = json.loads(path.read_text()) if path.exists() else None
    if results is not None and results["config"] != config:
        raise SystemExit(f"{path} holds results made with other settings:\n"
                         f"  there: {json.dumps(results['config'], sort_keys=True)}\n"
                         f"  now:   {json.dumps(config, sort_keys=True)}\n"
                         "Use another --output (or delete it to start again).")
    if results is None:
        results = {"config": config, "machine": common.machine(), "runs": {}}
    if args.table_only:
        print(format_table(results))
        return 0

    work = Path(args.work)
    folders = build_datasets(work, sizes, limit=args.limit)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    order = [(n, arm, s) for phase in (MAIN_ARMS, tuple(a for a in ARMS if a not in MAIN_ARMS))
             for n in sizes for s in seeds for arm in phase if arm in arms]
    todo = [t for t in order if run_key(*t) not in results["runs"]]
    print(f"{len(order) - len(todo)} of {len(order)} runs already in {path}; {len(todo)} to run "
          f"(work dir {work})", flush=True)
    for n, arm, seed in todo:
        key = run_key(n, arm, seed)
        run_dir = work / "runs" / key
        cmd = dmr_train_command(args, folders[n], arm, seed, run_dir)
        print(f"[{time.strftime('%H:%M:%S')}] {key}: training ...", flush=True)
        wall = run_training(cmd, work / "runs" / f"{key}.log")
        ev = evaluate_test(run_dir, folders[n])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        hist = metrics.get("history", {})
        results["runs"][key] = dict(
            size=n, arm=arm, seed=seed, test_top1=ev["top1"], test_loss=ev["loss"],
            test_images=ev["images"], final_train_accuracy=(hist.get("accuracy") or [None])[-1],
            final_val_accuracy=(hist.get("val_accuracy") or [None])[-1],
            run_wall_s=round(wall, 1), train_time_s=metrics.get("train_time_s"),
            train_images=n * int(metrics["data"]["num_classes"]),
            trainable_params=metrics.get("trainable_params"),
            data_sha256=metrics.get("data", {}).get("sha256"),
            command="dmr-train " + " ".join(cmd[cmd.index("--model"):]),
            finished=datetime.datetime.now().isoformat(timespec="seconds"))
        write_json(path, results)
        print(f"[{time.strftime('%H:%M:%S')}] {key}: test top-1 {ev['top1']:.2f} % "
              f"({ev['images']} images), {wall:.0f} s", flush=True)
    table = format_table(results)
    write_text(out / TABLE_FILE, table + "\n")
    print(table)
    return 0


# ---- the table --------------------------------------------------------------------------------

def format_table(results) -> str:
    runs = list(results["runs"].values())
    cfg = results["config"]
    lines = [f"{cfg['model']} on digits folders (test: {runs[0]['test_images'] if runs else '?'} "
             f"images), {cfg['recipe']['epochs']} epochs, batch {cfg['recipe']['batch_size']}, "
             f"lr {cfg['recipe']['lr']} {cfg['recipe']['schedule']}; init "
             f"{cfg['init_weights']} vs scratch. Test top-1 (%), mean ± std over seeds.", ""]
    rows = []
    sizes = sorted({r["size"] for r in runs})
    for n in sizes:
        by = {(r["arm"], r["seed"]): r for r in runs if r["size"] == n}
        for arm in ARMS:
            seeds = sorted(s for a, s in by if a == arm)
            if not seeds:
                continue
            accs = [by[arm, s]["test_top1"] for s in seeds]
            m, sd = common.mean_std(accs)
            paired = [by[arm, s]["test_top1"] - by["scratch", s]["test_top1"]
                      for s in seeds if ("scratch", s) in by]
            if arm == "scratch" or not paired:
                delta = delta_seeds = "-"
            else:
                dm, dsd = common.mean_std(paired)
                delta = f"{dm:+.2f} ± {dsd:.2f}"
                delta_seeds = " / ".join(f"{d:+.2f}" for d in paired)
            walls = [by[arm, s]["run_wall_s"] for s in seeds]
            trains = [by[arm, s]["train_time_s"] or 0 for s in seeds]
            rows.append([f"{n}", arm, f"{m:.2f} ± {sd:.2f}",
                         " / ".join(f"{a:.2f}" for a in accs), delta_seeds, delta,
                         f"{common.mean_std(trains)[0]:.0f}",
                         f"{common.mean_std(walls)[0]:.0f}"])
    lines.append(common.table(
        ["images/class", "init", "test top-1", "per seed (" + ",".join(
            str(s) for s in sorted({r['seed'] for r in runs})) + ")",
         "minus scratch, per seed", "minus scratch", "train s/run", "wall s/run"], rows,
        aligns="llrrrrrr"))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
