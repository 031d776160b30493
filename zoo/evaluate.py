"""`dmr-eval`: measure a model on a dataset's test (or validation) split, timm ``validate.py``
style.

    dmr-eval dmrnet_8_tiny.digits
    dmr-eval dmrnet_20.cifar10 --data-dir ../shared/data/cifar10-jpeg --results-file r.csv
    dmr-eval runs/dmrnet_20-cifar10 my_model.keras tuning_runs/x/best.json --dataset digits
    dmr-eval my.weights.h5 --arch dmrnet_20 --dataset cifar10 --data-dir PATH
    dmr-eval --model-list models.txt --dataset cifar10 --data-dir PATH

A model is a zoo weights key ``name.tag`` (``dmr-zoo list``), a ``dmr-train`` run directory
(its ``model.keras``, or the newest checkpoint of an unfinished run), a ``.keras`` file, a
``.weights.h5`` file with ``--arch NAME``, or a ``dmr-tune`` ``best.json``. The dataset defaults
to the one the weights or the run were trained on. Images go through the package's own eval
pipeline (:func:`dmr_keras.data.load`, no augmentation); where the weights were published with
other normalisation constants than the pipeline's, the images are re-normalised to the
weights' constants. Printed and returned per model: top-1 and top-5 accuracy (percent), the
mean cross-entropy, images, images/s of the forward passes (after the first batch, which
compiles), and the trainable parameter count. The same as a function: :func:`evaluate`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

RESULT_FIELDS = ("model", "dataset", "split", "top1", "top5", "loss", "images", "images_per_s",
                 "params", "image_size", "batch_size")
SPLITS = ("test", "val")


# ---- what a model argument names ----------------------------------------------------------------


def _resolve(source: str, arch: str | None):
    """``(keras model, label, trained dataset or None, preprocessing dict or None)``."""
    from zoo import registry
    from zoo.weights import load_manifest

    text = str(source)
    manifest = load_manifest()
    if text in manifest:
        entry = manifest[text]
        model = registry.create_model(text, include_preprocessing=False)  # data normalised
        pre = entry.preprocessing or {}
        return model, text, entry.dataset, {"mean": pre.get("mean"), "std": pre.get("std")}
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_run_dir(path)
    if text.endswith(".weights.h5"):
        if not path.exists():
            raise ValueError(f"Weights file not found: {path}")
        if arch is None:
            raise ValueError(f"{path} holds weights only: name the architecture with "
                             "--arch NAME (arch='NAME'), e.g. --arch dmrnet_20.")
        model = registry.create_model(arch, weights=str(path))
        return model, f"{arch}:{path}", None, None
    if text.endswith((".keras", ".json")):
        if not path.exists():
            raise ValueError(f"Model file not found: {path}")
        model = registry.create_model(str(path))
        dataset = None
        if text.endswith(".json"):
            dataset = json.loads(path.read_text()).get("dataset")
        return model, str(path), dataset, None
    base, tag = registry.split_name(text)
    if tag is None:
        registry.get_variant(base)  # an unknown name raises with the valid ones
        raise ValueError(f"{text!r} is a model without weights: name weights as NAME.TAG "
                         f"({', '.join(registry.list_models(pretrained=True)) or 'none'}), or "
                         "pass a run directory, a .keras file or a .weights.h5 with --arch.")
    raise ValueError(f"Unknown weights {text!r}: not a registered key (dmr-zoo list), a run "
                     "directory, a .keras / .weights.h5 file or a best.json.")


def _from_run_dir(path: Path):
    import keras

    from dmr_keras import training

    metrics_file, model_file = path / "metrics.json", path / "model.keras"
    if metrics_file.exists() and model_file.exists():
        metrics = json.loads(metrics_file.read_text())
        data = metrics.get("data") or {}
        pre = {"mean": data.get("mean"), "std": data.get("std")} if data.get("mean") else None
        return keras.saving.load_model(model_file), str(path), metrics.get("dataset"), pre
    state = training.latest_checkpoint(path / "checkpoints")
    if state is None:
        raise ValueError(f"{path} is not a dmr-train run: it has neither model.keras + "
                         "metrics.json nor checkpoints/.")
    run = json.loads((path / "run.json").read_text()) if (path / "run.json").exists() else {}
    label = f"{path}@epoch{state['epoch']}"
    return keras.saving.load_model(state["path"]), label, run.get("dataset"), None


# ---- measuring ----------------------------------------------------------------------------------


def _params(model) -> int:
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def _forward(net):
    """The compiled ``predict_on_batch``; a plain call inside a tf.distribute scope, where
    ``predict_on_batch`` splits the batch over the replicas and does not put it back together
    (a 64-image batch gave 128 outputs over 2 CPU devices on TF 2.21)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.distribute.has_strategy():
            return lambda x: net(x, training=False)
    return net.predict_on_batch


def measure(net, eval_ds, *, limit=None, scale=None, shift=None) -> dict:
    """``{"top1", "top5" (percent), "loss" (mean cross-entropy, no regularisation or label
    smoothing), "images", "images_per_s"}`` of ``net`` over the ``(x, y)`` batches of
    ``eval_ds`` (the first ``limit`` images); ``x * scale + shift`` when given. Outputs that are
    not probabilities are taken as logits."""
    import numpy as np

    classes = int(net.output_shape[-1])
    forward = _forward(net)
    k = min(5, classes)
    seen = correct1 = correct5 = 0
    loss_sum = 0.0
    timed_images, timed = 0, 0.0
    for i, (x, y) in enumerate(eval_ds):
        if limit is not None and seen >= limit:
            break
        x, y = x.numpy(), y.numpy()
        if limit is not None:
            x, y = x[:limit - seen], y[:limit - seen]
        if scale is not None:
            x = x * scale + shift
        start = time.perf_counter()
        probs = np.asarray(forward(x), dtype="float64")
        elapsed = time.perf_counter() - start
        if i > 0:
            timed_images += len(y)
            timed += elapsed
        if probs.min() < 0 or not np.allclose(probs.sum(-1), 1.0, atol=1e-3):  # logits
            probs = np.exp(probs - probs.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
        top = np.argsort(-probs, axis=-1)[:, :k]
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(-1).sum())
        loss_sum += float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).sum())
        seen += len(y)
    return {"top1": 100.0 * correct1 / max(seen, 1), "top5": 100.0 * correct5 / max(seen, 1),
            "loss": loss_sum / max(seen, 1), "images": seen,
            "images_per_s": round(timed_images / timed, 1) if timed > 0 else None}


def evaluate(model, dataset: str | None = None, *, data_dir: str | None = None,
             batch_size: int = 256, split: str | None = None, limit: int | None = None,
             arch: str | None = None) -> dict:
    """Top-1 / top-5 accuracy (percent), loss and speed of ``model`` on ``dataset``'s ``split``.

    Args:
        model: a zoo key ``name.tag``, a run directory, a ``.keras`` / ``.weights.h5`` (with
            ``arch``) / ``best.json`` path, or a built ``keras.Model``.
        dataset: a :func:`dmr_keras.data.load` spec; default: what the weights were trained on.
        data_dir: where the dataset is (see :func:`dmr_keras.data.load`).
        split: ``"test"`` or ``"val"`` (a held-out split; folders only). None: ``test`` where
            the dataset has one, else ``val`` (a folder without a train/ + test/ layout, whose
            eval set is the held-out ``validation_split``).
        limit: evaluate the first ``limit`` images of the split only (in its fixed order).

    Returns:
        ``{"model", "dataset", "split", "top1", "top5", "loss", "images", "images_per_s",
        "params", "image_size", "batch_size"}``.
    """
    import keras
    import numpy as np

    from dmr_keras import checks
    from dmr_keras import data as data_lib

    checks.choice("split", split, SPLITS, allow_none=True)
    checks.integer("batch_size", batch_size, 1)
    checks.integer("limit", limit, 1, allow_none=True)
    if isinstance(model, keras.Model):
        net, label, trained_on, pre = model, model.name, None, None
    else:
        net, label, trained_on, pre = _resolve(model, arch)
    dataset = dataset or trained_on
    if dataset is None:
        raise ValueError(f"Which dataset? {label} does not say what it was trained on: pass "
                         "--dataset (dataset=...).")
    spec = data_lib.check_dataset(dataset)
    if split is None:
        split = "test"
        if spec.startswith(data_lib.FOLDER_PREFIX):
            layout = data_lib.split_folders(spec[len(data_lib.FOLDER_PREFIX):])
            split = "test" if layout and "test" in layout else "val"
    height, width = net.input_shape[1:3]
    size = height
    image_size = None
    if spec == "imagenet2012" or spec.startswith(data_lib.FOLDER_PREFIX) and height:
        # a folder model trained at --image-size keep may be non-square
        image_size = (height, width) if spec != "imagenet2012" and width and width != height \
            else height
    _, eval_ds, info = data_lib.load(spec, batch_size=batch_size, data_dir=data_dir,
                                     augment=False, image_size=image_size, eval_split=split)
    classes = int(net.output_shape[-1])
    if classes != info.num_classes:
        raise ValueError(f"{label} has {classes} outputs; {spec} has {info.num_classes} classes. "
                         "Evaluate it on the dataset it was trained on.")
    shift = scale = None
    from zoo.preprocessing import model_preprocessing

    if model_preprocessing(net) is not None:
        # the model normalises 0-255 pixels itself: give it back the pixels of the data
        d_mean, d_std = np.asarray(info.mean, "float32"), np.asarray(info.std, "float32")
        scale, shift = d_std * np.float32(255), d_mean * np.float32(255)
    elif pre and pre.get("mean") and pre.get("std"):
        d_mean, d_std = np.asarray(info.mean, "float32"), np.asarray(info.std, "float32")
        m_mean, m_std = np.asarray(pre["mean"], "float32"), np.asarray(pre["std"], "float32")
        if not (np.allclose(d_mean, m_mean, atol=1e-6) and np.allclose(d_std, m_std, atol=1e-6)):
            # x_model = (x_data * std_d + mean_d - mean_m) / std_m
            scale, shift = d_std / m_std, (d_mean - m_mean) / m_std
    m = measure(net, eval_ds, limit=limit, scale=scale, shift=shift)
    if m["images"] == 0:
        raise ValueError(f"The {split} split of {spec} is empty.")
    return {
        "model": label, "dataset": spec, "split": info.eval_split,
        "top1": round(m["top1"], 4), "top5": round(m["top5"], 4), "loss": round(m["loss"], 6),
        "images": m["images"], "images_per_s": m["images_per_s"],
        "params": _params(net), "image_size": int(size) if size else None,
        "batch_size": batch_size,
    }


# ---- results files ------------------------------------------------------------------------------


def append_results(path, rows: list[dict]) -> None:
    """Append ``rows`` to a ``.csv`` (header written once) or ``.json`` (a list) file,
    atomically (a crash leaves the old file)."""
    from dmr_keras.atomic import atomic_path, write_json

    path = Path(path)
    if path.suffix == ".json":
        old = json.loads(path.read_text()) if path.exists() else []
        if not isinstance(old, list):
            raise ValueError(f"{path} does not hold a JSON list of results; choose another "
                             "--results-file.")
        write_json(path, old + rows)
        return
    if path.suffix != ".csv":
        raise ValueError(f"--results-file must end in .csv or .json. Received: {path}")
    old_text = path.read_text() if path.exists() else ""
    if old_text:
        header = next(csv.reader([old_text.splitlines()[0]]))
        if tuple(header) != RESULT_FIELDS:
            raise ValueError(f"{path} has other columns ({', '.join(header)}); choose another "
                             "--results-file.")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            fh.write(old_text)
            writer = csv.DictWriter(fh, fieldnames=RESULT_FIELDS)
            if not old_text:
                writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k) for k in RESULT_FIELDS})


def format_row(r: dict) -> str:
    ips = f"{r['images_per_s']:.0f} img/s" if r["images_per_s"] else "- img/s"
    return (f"{r['model']}  {r['dataset']}/{r['split']}  top-1 {r['top1']:.2f} %  "
            f"top-5 {r['top5']:.2f} %  loss {r['loss']:.4f}  {r['images']} images  {ips}  "
            f"{r['params']:,} params")


# ---- dmr-zoo verify --accuracy ------------------------------------------------------------------


def verify_accuracy(data_dirs: dict | None = None, tolerance: float = 0.3, keys=None) -> list:
    """Re-measure every manifest entry whose data is present; rows ``{"key", "status",
    "stored", "measured", "detail"}`` with status ``OK``, ``FAIL`` (more than ``tolerance``
    percentage points from the stored test accuracy) or ``SKIPPED`` (no data here, or other
    data than the metric was measured on: its content hash differs)."""
    from dmr_keras import data as data_lib
    from zoo.weights import load_manifest

    data_dirs = dict(data_dirs or {})
    rows = []
    for key, entry in sorted(load_manifest().items()):
        if keys and key not in keys:
            continue
        stored = 100.0 * float(entry.metrics["test_accuracy"])
        row = {"key": key, "stored": round(stored, 4), "measured": None, "detail": ""}
        data_dir = data_dirs.get(entry.dataset)
        needs_dir = entry.dataset in ("cifar10", "cifar100", "svhn", "imagenet2012")
        if needs_dir and data_dir is None:
            rows.append({**row, "status": "SKIPPED",
                         "detail": f"no data: pass --data-dir {entry.dataset}=PATH"})
            continue
        recorded = (entry.metrics.get("data_sha256")
                    or (getattr(entry, "provenance", None) or {}).get("data_sha256"))
        if data_dir is not None and recorded:
            here = data_lib.content_sha256(data_dir)
            if here != recorded:
                rows.append({**row, "status": "SKIPPED",
                             "detail": f"{data_dir} is other data (sha256 {here[:12]}..., the "
                                       f"metric was measured on {recorded[:12]}...)"})
                continue
        result = evaluate(key, entry.dataset, data_dir=data_dir)
        diff = result["top1"] - stored
        status = "OK" if abs(diff) <= tolerance else "FAIL"
        rows.append({**row, "status": status, "measured": result["top1"],
                     "detail": f"{diff:+.2f} points (tolerance {tolerance})"})
    return rows


# ---- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmr-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="*", help="name.tag | run dir | .keras | .weights.h5 (with "
                                             "--arch) | best.json")
    p.add_argument("--model-list", default=None,
                   help="a text file of models, one per line (# comments)")
    p.add_argument("--arch", default=None, help="architecture of a .weights.h5 file")
    p.add_argument("--dataset", default=None,
                   help="cifar10 | cifar100 | svhn | imagenet2012 | digits | folder:PATH "
                        "(default: what the model was trained on)")
    p.add_argument("--data-dir", default=None, help="where the dataset is (see dmr-train)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--split", default=None, choices=SPLITS,
                   help="default: test where the dataset has one, else val (a folder's "
                        "held-out fraction)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--results-file", default=None, help="append the results (.csv or .json)")
    return p


def _read_model_list(path) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"--model-list {path}: {err.strerror}") from None
    return [s.split("#", 1)[0].strip() for s in lines if s.split("#", 1)[0].strip()]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from dmr_keras.startup import run_command

    return run_command("dmr-eval", _main, args)


def _main(args) -> None:
    models = list(args.models)
    if args.model_list:
        models += _read_model_list(args.model_list)
    if not models:
        raise ValueError("Name at least one model (name.tag, run dir, file) or "
                         "--model-list FILE.")
    if args.results_file and Path(args.results_file).suffix not in (".csv", ".json"):
        raise ValueError("--results-file must end in .csv or .json. Received: "
                         f"{args.results_file}")
    from dmr_keras.startup import start_backend

    start_backend()
    rows = []
    for m in models:
        row = evaluate(m, args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
                       split=args.split, limit=args.limit, arch=args.arch)
        print(format_row(row), flush=True)
        rows.append(row)
    if args.results_file:
        append_results(args.results_file, rows)
        print(f"appended {len(rows)} result(s) to {args.results_file}")


if __name__ == "__main__":
    raise SystemExit(main())
