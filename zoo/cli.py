"""`dmr-zoo`: browse the registry, fetch and verify weights, publish a training run, export.

    dmr-zoo list [PATTERN]                  a table of models (and their weight tags)
    dmr-zoo info NAME                       the model card as JSON
    dmr-zoo fetch NAME.TAG                  resolve a weights file (package, cache, mirror, URL)
    dmr-zoo verify                          re-hash shipped and cached weights per key
    dmr-zoo publish RUN_DIR --tag TAG       a finished dmr-train run -> a manifest entry
    dmr-zoo export NAME[.TAG] --format saved_model|onnx|tflite --output PATH
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cmd_list(args) -> int:
    from zoo.registry import list_models, model_info

    rows = []
    for name in list_models(args.pattern):
        info = model_info(name)
        err = info["paper"].get("errors", {})
        rows.append([name, info["form"], str(info["depth"]), str(info["width"]),
                     str(info["num_branches"]), info["mapping"], f"{info['params'] / 1e6:.2f}M",
                     f"{info['flops'] / 1e9:.2f}G",
                     " / ".join(f"{k} {v}" for k, v in err.items()) or "-",
                     ", ".join(info["weights"]) or "-"])
    header = ["name", "form", "depth", "w", "K", "mapping", "params", "FLOPs",
              "paper error %", "weights"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_info(args) -> int:
    from zoo.registry import model_info

    print(json.dumps(model_info(args.name), indent=2))
    return 0


def cmd_fetch(args) -> int:
    from zoo.weights import fetch

    print(fetch(args.key))
    return 0


def cmd_verify(args) -> int:
    from zoo import weights

    results = weights.verify_cache()
    for r in results:
        detail = f"  sha256 {r.actual}, expected {r.expected}" if r.status == "BAD" else ""
        print(f"{r.status:<7}  {r.key}  {r.where}  {r.path}{detail}")
    counts = {s: sum(r.status == s for r in results) for s in ("OK", "MISSING", "BAD")}
    print(f"{len({r.key for r in results})} key(s) checked in {weights.SHIPPED_DIR} and "
          f"{weights.cache_dir()}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts["BAD"] else 0


def publish(run_dir, tag: str, *, manifest=None, dest=None, origin=None,
            license: str = "MIT"):
    """Turn a finished ``dmr-train`` run into a weights manifest entry (and copy its weights).

    Reads ``RUN_DIR/metrics.json`` and ``RUN_DIR/model.weights.h5``; the entry records the
    sha256, the test metrics, the data's input shape and preprocessing and the command.
    """
    from dmr_keras.training import head_classes_in_weights_file
    from zoo import weights as W
    from zoo.registry import get_variant

    run = Path(run_dir)
    metrics_path, weights_path = run / "metrics.json", run / "model.weights.h5"
    for p in (metrics_path, weights_path):
        if not p.exists():
            raise ValueError(f"{p} is missing: `publish` takes the --output directory of a "
                             "finished dmr-train run.")
    metrics = json.loads(metrics_path.read_text())
    model = metrics["model"]
    get_variant(model)
    if not tag or not tag.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"`tag` must be letters, digits, '_' or '-'. Received: {tag!r}")
    data = metrics.get("data") or {}
    entry = W.WeightEntry(
        key=f"{model}.{tag}", model=model, tag=tag,
        file_name=f"{model}.{tag}.weights.h5", sha256=W.sha256_file(weights_path),
        origin=origin, dataset=metrics["dataset"],
        classes=head_classes_in_weights_file(weights_path),
        input_shape=tuple(data.get("image_shape") or ()),
        preprocessing={"scale": "0-1", "mean": data.get("mean"), "std": data.get("std")},
        metrics={"test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"],
                 "epochs": metrics["epochs"]},
        license=license, command=metrics.get("command", ""),
        class_names=tuple(data["class_names"]) if data.get("class_names") else None,
    )
    return W.add_entry(entry, manifest or W.MANIFEST_PATH, weights_file=weights_path,
                       dest_dir=dest or W.SHIPPED_DIR)


def cmd_publish(args) -> int:
    entry = publish(args.run_dir, args.tag, manifest=args.manifest, dest=args.dest,
                    origin=args.origin, license=args.license)
    print(f"published {entry.key}: {entry.file_name} sha256 {entry.sha256} "
          f"test_accuracy {entry.metrics['test_accuracy']:.4f}")
    return 0


def cmd_export(args) -> int:
    import numpy as np

    from dmr_keras.digits import load_digits_images
    from zoo.export import export_model, run_exported
    from zoo.registry import create_model

    model = create_model(args.name)
    path = export_model(model, args.output, args.format)
    shape = model.input_shape[1:]
    x = load_digits_images()[0][:4]
    if tuple(shape) != x.shape[1:]:
        x = np.random.default_rng(0).random((4, *[s or 32 for s in shape])).astype("float32")
    want = np.asarray(model(x, training=False))
    got = run_exported(path, args.format, x)
    print(f"exported {args.name} to {path} ({args.format}); max abs difference from Keras on "
          f"4 images: {float(np.max(np.abs(got - want))):.2e}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="dmr-zoo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="table of registered models")
    s.add_argument("pattern", nargs="?", default="*")
    s.set_defaults(fn=cmd_list)
    s = sub.add_parser("info", help="model card (JSON)")
    s.add_argument("name")
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("fetch", help="resolve and check a weights file")
    s.add_argument("key", help="NAME.TAG, e.g. dmrnet_8_tiny.digits")
    s.set_defaults(fn=cmd_fetch)
    s = sub.add_parser("verify", help="re-hash shipped and cached weights: OK/MISSING/BAD")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("publish", help="turn a dmr-train run into a manifest entry")
    s.add_argument("run_dir")
    s.add_argument("--tag", required=True, help="e.g. cifar10")
    s.add_argument("--manifest", default=None, help="manifest JSON (default: the package's)")
    s.add_argument("--dest", default=None, help="where the weights file goes (default: package)")
    s.add_argument("--origin", default=None, help="download URL, once uploaded")
    s.add_argument("--license", default="MIT")
    s.set_defaults(fn=cmd_publish)
    s = sub.add_parser("export", help="SavedModel / ONNX / TFLite, checked against Keras")
    s.add_argument("name", help="NAME or NAME.TAG")
    s.add_argument("--format", required=True, choices=["saved_model", "onnx", "tflite"])
    s.add_argument("--output", required=True)
    s.set_defaults(fn=cmd_export)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as err:
        print(f"dmr-zoo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
