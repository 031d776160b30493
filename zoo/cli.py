"""`dmr-zoo`: browse the registry, fetch and verify weights, publish a training run, export.

    dmr-zoo list [PATTERN]                  a table of models (and their weight tags)
    dmr-zoo info NAME [--paths]             the model card as JSON (--paths: count the
                                            paths from input to output; builds the model)
    dmr-zoo fetch NAME.TAG                  resolve a weights file (package, cache, mirror, URL)
    dmr-zoo verify [--deep]                 re-hash shipped and cached weights per key
                                            (--deep: and check each one's fingerprint)
    dmr-zoo publish RUN_DIR --tag TAG       a finished dmr-train run -> a manifest entry
    dmr-zoo export NAME[.TAG] --format saved_model|onnx|tflite --output PATH
    dmr-zoo preset NAME.TAG DIR [--overwrite]
                                            a keras-hub preset of the weights (hub extra)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import warnings
from pathlib import Path


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

    # --paths: the paths from input to output, counted on the built model (imports Keras).
    print(json.dumps(model_info(args.name, paths=getattr(args, "paths", False)), indent=2))
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
    code = 1 if counts["BAD"] else 0
    if getattr(args, "deep", False):
        code = max(code, verify_deep(results))
    if getattr(args, "accuracy", False):
        code = max(code, verify_accuracy_cli(args.data_dir or [], args.tolerance))
    return code


def _data_dirs(pairs) -> dict:
    dirs = {}
    for pair in pairs:
        dataset, sep, path = pair.partition("=")
        if not sep or not dataset or not path:
            raise ValueError(f"--data-dir takes DATASET=PATH (e.g. cifar10=../data/cifar10). "
                             f"Received: {pair!r}")
        dirs[dataset.strip().lower()] = path
    return dirs


def verify_accuracy_cli(pairs, tolerance: float) -> int:
    """``dmr-zoo verify --accuracy``: re-measure each entry whose data is here
    (:func:`zoo.evaluate.verify_accuracy`); 1 if any is more than ``tolerance`` points off."""
    from zoo.evaluate import verify_accuracy

    rows = verify_accuracy(_data_dirs(pairs), tolerance=tolerance)
    for r in rows:
        measured = f"{r['measured']:.2f} %" if r["measured"] is not None else "-"
        print(f"{r['status']:<7}  {r['key']}  stored {r['stored']:.2f} %  measured {measured}  "
              f"{r['detail']}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("OK", "FAIL", "SKIPPED")}
    print("accuracy: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts["FAIL"] else 0


def verify_deep(results) -> int:
    """``dmr-zoo verify --deep``, after the hash check: build each entry whose file is present
    and hashes OK as published, load the file and check the entry's fingerprint. One line per
    key (``OK``, ``BAD`` or ``SKIP`` with the reason), then a summary; 1 if any is BAD."""
    from zoo import weights
    from zoo.fingerprint import compare
    from zoo.registry import build_published

    entries = weights.load_manifest()
    present = {}
    for r in results:
        if r.status == "OK":
            present.setdefault(r.key, r.path)
    hash_bad = {r.key for r in results if r.status == "BAD"}
    counts = {"OK": 0, "BAD": 0, "SKIP": 0}
    for key in sorted(entries):
        entry = entries[key]
        if not entry.fingerprint:
            status, detail = "SKIP", "no fingerprint in the manifest"
        elif key not in present:
            why = "its file hashes BAD" if key in hash_bad else "no local copy (dmr-zoo fetch)"
            status, detail = "SKIP", why
        else:
            try:
                res = compare(build_published(entry, present[key]), entry.fingerprint, entry)
            except Exception as err:  # a file that does not load is as bad as a drifted one
                status, detail = "BAD", f"could not check: {type(err).__name__}: {err}"
            else:
                status = "OK" if res["ok"] else "BAD"
                detail = (f"largest difference {res['difference']:.2g} in {res['output']}, "
                          f"tolerance {res['tolerance']:.2g}")
                if not res["ok"]:
                    detail += (f"; top-{res['top']} classes changed for {res['changed']} of "
                               f"{res['count']} images")
        counts[status] += 1
        print(f"{status:<7}  {key}  fingerprint  {detail}")
    print(f"{len(entries)} fingerprint(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts["BAD"] else 0


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _package_versions(backend: str | None) -> dict:
    """Versions of the packages that compute the network, in this environment."""
    import dmr_keras
    from dmr_keras.training import package_versions

    extra = (backend,) if backend in ("jax", "torch") else ()
    return {**package_versions(("keras", "tensorflow", "numpy") + extra),
            "dmr-keras": dmr_keras.__version__}


def _cross_check_run(run: Path, fingerprint: dict, entry) -> None:
    """The zoo builds the network the run trained: the run's own ``model.keras`` (its saved
    architecture: layer graph, BatchNorm epsilons, ...) must reproduce the fingerprint taken on
    the zoo's build. Skipped without ``model.keras`` or for a mixed-precision model."""
    import keras

    from zoo.fingerprint import compare

    path = run / "model.keras"
    if not path.is_file():
        return
    try:
        trained = keras.saving.load_model(path, compile=False)
    except Exception as err:  # an unloadable model.keras does not block publishing
        warnings.warn(f"Could not load {path} to cross-check the fingerprint: {err}",
                      stacklevel=3)
        return
    if any(getattr(layer, "compute_dtype", "float32") != "float32" for layer in trained.layers):
        return  # mixed precision: its float16 outputs are not comparable at float32 tolerance
    res = compare(trained, fingerprint, entry)
    if not res["ok"]:
        raise ValueError(
            f"The network the zoo builds for {entry.model} does not compute what {path} (the "
            f"trained network) computes with the same weights: largest difference "
            f"{res['difference']:.3g} in {res['output']} on the fingerprint's reference inputs, "
            f"tolerance {res['tolerance']:.3g}. The builder has drifted since the run; nothing "
            "was published.")


def publish(run_dir, tag: str, *, manifest=None, dest=None, origin=None,
            license: str = "MIT", data_sha256: str | None = None,
            train_time_s: float | None = None):
    """Turn a finished ``dmr-train`` run into a weights manifest entry (and copy its weights).

    Reads ``RUN_DIR/metrics.json`` and ``RUN_DIR/model.weights.h5``; the entry records the
    sha256, the test metrics, the data's input shape and preprocessing and the command, plus:

    - ``fingerprint``: the network built as published (the variant, the weights' class count,
      the data's input shape, float32) with these weights, on the reference inputs
      (:func:`zoo.fingerprint.compute_fingerprint`). When the run left a ``model.keras`` (the
      trained network as saved by ``dmr-train``), it must give the same fingerprint, or
      ``ValueError`` and nothing is published: the builder has drifted since the run.
    - ``provenance``: ``versions`` (dmr-keras, keras, tensorflow, numpy, python, and jax or
      torch when that was the backend) of the environment that publishes, normally the one
      that trained (a ``versions`` object in ``metrics.json`` is used instead when present,
      ``versions_from`` says which); the run's ``backend``, ``wall_time_s``, ``epochs`` and
      ``resumed_from_epoch``; ``train_time_s``: the run's summed epoch times and how many
      epochs they cover (``epochs_timed``), or ``train_time_s`` when given (a run whose first
      epochs ran under a dmr-train that did not time them: the sum from its log), with
      ``train_time_from`` saying which; and ``data_sha256`` when given (64 hex digits, the
      digest of the training data, e.g. ``dmr_keras.data.content_sha256``).
    """
    from dmr_keras.training import head_classes_in_weights_file
    from zoo import weights as W
    from zoo.fingerprint import compute_fingerprint
    from zoo.registry import build_published, get_variant

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
    if data_sha256 is None:  # dmr-train records the hash of data read from a directory
        data_sha256 = (metrics.get("data") or {}).get("sha256")
    if data_sha256 is not None:
        data_sha256 = str(data_sha256).strip().lower()
        if not _SHA256_RE.fullmatch(data_sha256):
            raise ValueError(f"`data_sha256` must be 64 hex digits. Received: {data_sha256!r}")
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
    fingerprint = None
    if len(entry.input_shape) == 3:
        fingerprint = compute_fingerprint(build_published(entry, weights_path), entry)
        _cross_check_run(run, fingerprint, entry)
    else:
        warnings.warn(f"{run}/metrics.json records no image shape: {entry.key} is published "
                      "without a fingerprint", stacklevel=2)
    provenance = {
        "versions": metrics.get("versions") or _package_versions(metrics.get("backend")),
        "versions_from": "run" if metrics.get("versions") else "publish",
        "backend": metrics.get("backend"),
        "wall_time_s": metrics.get("wall_time_s"),
        "epochs": metrics["epochs"],
        "resumed_from_epoch": metrics.get("resumed_from_epoch"),
        "train_time_s": metrics.get("train_time_s"),
        "epochs_timed": metrics.get("epochs_timed"),
        "train_time_from": "run",
    }
    if train_time_s is not None:
        if not (isinstance(train_time_s, (int, float)) and train_time_s > 0):
            raise ValueError(f"`train_time_s` must be a positive number of seconds. Received: "
                             f"{train_time_s!r}")
        provenance.update(train_time_s=round(float(train_time_s), 1),
                          epochs_timed=metrics["epochs"], train_time_from="given")
    if data_sha256 is not None:
        provenance["data_sha256"] = data_sha256
    entry = dataclasses.replace(entry, fingerprint=fingerprint, provenance=provenance)
    return W.add_entry(entry, manifest or W.MANIFEST_PATH, weights_file=weights_path,
                       dest_dir=dest or W.SHIPPED_DIR)


def cmd_publish(args) -> int:
    entry = publish(args.run_dir, args.tag, manifest=args.manifest, dest=args.dest,
                    origin=args.origin, license=args.license, data_sha256=args.data_sha256,
                    train_time_s=args.train_time_s)
    fp = entry.fingerprint
    print(f"published {entry.key}: {entry.file_name} sha256 {entry.sha256} "
          f"test_accuracy {entry.metrics['test_accuracy']:.4f}"
          + (f" fingerprint top-1 {[row[0] for row in fp['indices']]} on {fp['count']} "
             f"reference inputs" if fp else ""))
    return 0


def cmd_export(args) -> int:
    if args.format == "onnx":  # before any model is built or weights fetched
        from zoo.export import require_onnx_packages

        require_onnx_packages()
    import numpy as np

    from dmr_keras.digits import load_digits_images
    from zoo.export import export_model, run_exported
    from zoo.preprocessing import model_preprocessing
    from zoo.registry import create_model

    model = create_model(args.name)  # with weights by tag: takes 0-255 pixels
    path = export_model(model, args.output, args.format)
    shape = model.input_shape[1:]
    x = load_digits_images()[0][:4]
    if tuple(shape) != x.shape[1:]:
        x = np.random.default_rng(0).random((4, *[s or 32 for s in shape])).astype("float32")
    if model_preprocessing(model) is not None:
        x = x * np.float32(255)  # [0, 1] -> the 0-255 pixels the model takes
    want = np.asarray(model(x, training=False))
    got = run_exported(path, args.format, x)
    print(f"exported {args.name} to {path} ({args.format}); max abs difference from Keras on "
          f"4 images: {float(np.max(np.abs(got - want))):.2e}")
    return 0


def cmd_preset(args) -> int:
    from zoo.hub import check_preset, save_preset  # ImportError naming the extra without it

    path = save_preset(args.key, args.directory, overwrite=args.overwrite)
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    diff = check_preset(path, args.key)
    print(f"wrote the keras-hub preset of {args.key} to {path} ({', '.join(files)}); loaded "
          "back with keras_hub.models.ImageClassifier.from_preset, max abs difference from "
          f"zoo.create_model on 4 images: {diff:.2e}. Load it after `import zoo.hub`.")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="dmr-zoo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="table of registered models")
    s.add_argument("pattern", nargs="?", default="*")
    s.set_defaults(fn=cmd_list)
    s = sub.add_parser("info", help="model card (JSON)")
    s.add_argument("name")
    s.add_argument("--paths", action="store_true",
                   help="add a 'paths' section: number of paths from input to output, their "
                        "lengths in blocks and convolutions, the critical path (builds the "
                        "model)")
    s.set_defaults(fn=cmd_info)
    s = sub.add_parser("fetch", help="resolve and check a weights file")
    s.add_argument("key", help="NAME.TAG, e.g. dmrnet_8_tiny.digits")
    s.set_defaults(fn=cmd_fetch)
    s = sub.add_parser("verify", help="re-hash shipped and cached weights: OK/MISSING/BAD")
    s.add_argument("--deep", action="store_true",
                   help="also load each present entry and check its fingerprint (OK/BAD/SKIP)")
    s.add_argument("--accuracy", action="store_true",
                   help="also re-measure each entry's test accuracy where its data is here "
                        "(FAIL beyond --tolerance points)")
    s.add_argument("--data-dir", action="append", metavar="DATASET=PATH",
                   help="where a dataset is, for --accuracy (repeatable), e.g. "
                        "cifar10=../shared/data/cifar10-jpeg")
    s.add_argument("--tolerance", type=float, default=0.3,
                   help="--accuracy: allowed difference in percentage points")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("publish", help="turn a dmr-train run into a manifest entry")
    s.add_argument("run_dir")
    s.add_argument("--tag", required=True, help="e.g. cifar10")
    s.add_argument("--manifest", default=None, help="manifest JSON (default: the package's)")
    s.add_argument("--dest", default=None, help="where the weights file goes (default: package)")
    s.add_argument("--origin", default=None, help="download URL, once uploaded")
    s.add_argument("--license", default="MIT")
    s.add_argument("--data-sha256", default=None,
                   help="sha256 of the training data, recorded in the entry's provenance")
    s.add_argument("--train-time-s", type=float, default=None,
                   help="training time of all epochs in seconds, when the run did not time "
                        "every epoch itself (e.g. summed from its log)")
    s.set_defaults(fn=cmd_publish)
    s = sub.add_parser("export", help="SavedModel / ONNX / TFLite, checked against Keras")
    s.add_argument("name", help="NAME or NAME.TAG")
    s.add_argument("--format", required=True, choices=["saved_model", "onnx", "tflite"])
    s.add_argument("--output", required=True)
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("preset", help="a keras-hub preset of registered weights (hub extra)")
    s.add_argument("key", help="NAME.TAG, e.g. dmrnet_20.cifar10")
    s.add_argument("directory", help="where the preset goes (created; must be empty)")
    s.add_argument("--overwrite", action="store_true",
                   help="write into a directory that is not empty (replaces the preset files)")
    s.set_defaults(fn=cmd_preset)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("publish", "export", "preset") or (
            args.command == "verify" and (args.deep or args.accuracy)) or (
            args.command == "info" and args.paths):
        from dmr_keras.startup import start_backend

        start_backend()  # list, info, fetch and a plain verify never import Keras
    try:
        return args.fn(args)
    except (ValueError, ImportError) as err:  # ImportError: a missing extra, named in one line
        print(f"dmr-zoo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
