"""Where the time goes: an op-level profile of a training or inference step on TensorFlow.

For each model and CPU thread setting (one process each, since TensorFlow fixes its thread pools
at start), the script times ``--steps`` steps under ``tf.profiler`` and reads the trace
(XPlane) back: the time of every executed op, grouped by kind (convolution forward, its two
gradients, batch norm and its gradient, element-wise, optimizer updates, the rest), and two
measures of parallelism:

- **ops at once**: summed op time / time during which at least one op ran, i.e. how many ops
  the executor ran concurrently on average (1.0 = strictly one after another);
- **CPU busy**: process CPU time / (wall time x cores), i.e. how much of the machine worked.

A model with K independent branches can only beat a sequential model of the same FLOPs on a
CPU by running branches at once on cores that would otherwise idle; these two columns show
whether that happens and how much idle there was to fill.

    python bench/profile.py [--models dmrnet_56,resnet_110] [--batch 128] [--mode training]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SCRIPT = os.path.abspath(__file__)

# Keras 3 computes batch norm from element-wise ops and reductions (no FusedBatchNorm op), so
# batch norm, ReLU and the merge all land in the element-wise group.
CATEGORIES = (
    ("conv forward", ("Conv2D", "_FusedConv2D", "_MklConv2D", "_MklNativeConv2D",
                      "_MklFusedConv2D", "_MklNativeFusedConv2D")),
    ("conv input grad", ("Conv2DBackpropInput", "_MklConv2DBackpropInput",
                         "_MklNativeConv2DBackpropInput")),
    ("conv weight grad", ("Conv2DBackpropFilter", "_MklConv2DBackpropFilter",
                          "_MklNativeConv2DBackpropFilter",
                          "_MklNativeConv2DBackpropFilterWithBias")),
    ("element-wise + reductions", (
        "Relu", "ReluGrad", "AddV2", "AddN", "Mul", "Sub", "RealDiv", "Rsqrt", "RsqrtGrad",
        "SquaredDifference", "Mean", "Sum", "Tile", "Square", "Neg", "Maximum", "BroadcastTo",
        "Reshape", "_MklAddV2", "_MklAdd", "_MklRelu", "_MklReluGrad", "_MklNativeAddV2",
        "FusedBatchNormV3", "FusedBatchNormGradV3", "_MklNativeFusedBatchNormV3",
        "_MklNativeFusedBatchNormGradV3", "_MklFusedBatchNormV3", "_MklFusedBatchNormGradV3")),
    ("variables + optimizer", (
        "ResourceApplyKerasMomentum", "ResourceApplyMomentum", "AssignVariableOp",
        "AssignSubVariableOp", "AssignAddVariableOp", "ReadVariableOp",
        "ResourceApplyGradientDescent")),
)
_CONTAINERS = ("Process", "Run", "StartRegion", "StopRegion", "Record")


def _category(op_type: str) -> str:
    for name, types in CATEGORIES:
        if op_type in types:
            return name
    return "other"


def _union_length(intervals) -> int:
    total, end = 0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def parse_xspace(path):
    """``({op_type: total ps}, sum of op ps, union ps)`` of the executed TF ops in a trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    by_type, intervals = {}, []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if line.name == "python":  # the caller: function-call events enclosing the ops
                continue
            for ev in line.events:
                name = plane.event_metadata[ev.metadata_id].name
                if ":" not in name:
                    continue
                op_type = name.rsplit(":", 1)[1]
                if not op_type or op_type in _CONTAINERS or op_type.startswith((" ", "__")):
                    continue
                start = line.timestamp_ns * 1000 + ev.offset_ps
                by_type[op_type] = by_type.get(op_type, 0) + ev.duration_ps
                intervals.append((start, start + ev.duration_ps))
    return by_type, sum(e - s for s, e in intervals), _union_length(intervals)


def worker(spec):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    common.apply_tf_threads(spec["threads"])
    import zoo
    from dmr_keras import training
    from dmr_keras.flops import count_flops

    model = zoo.create_model(spec["model"], classes=10,
                             input_shape=(spec["size"], spec["size"], 3))
    model.compile(optimizer=training.make_optimizer(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((spec["batch"], spec["size"], spec["size"], 3)).astype("float32")
    y = rng.integers(0, 10, spec["batch"])

    def step():
        if spec["mode"] == "training":
            model.train_on_batch(x, y)
        else:
            model.predict_on_batch(x)

    for _ in range(2):
        step()
    # Untraced timing first (the profiler itself costs time), then a traced run for the ops.
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        t = time.perf_counter()
        for _ in range(spec["steps"]):
            step()
        traced_wall = time.perf_counter() - t
        tf.profiler.experimental.stop()
        files = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
        by_type, op_sum, op_union = parse_xspace(files[-1])
    n = spec["steps"]
    common.emit({"model": spec["model"], "threads": spec["threads"], "mode": spec["mode"],
                 "batch": spec["batch"], "step_ms": 1e3 * wall / n,
                 "traced_step_ms": 1e3 * traced_wall / n, "cpu_busy": cpu / (wall * os.cpu_count()),
                 "ops_at_once": op_sum / op_union if op_union else 0.0,
                 "op_ms": {k: v / 1e9 / n for k, v in by_type.items()},
                 "flops": count_flops(model)})


def report(results):
    out = []
    cats = [c for c, _ in CATEGORIES] + ["other"]
    rows = []
    for r in results:
        per_cat = dict.fromkeys(cats, 0.0)
        for op_type, ms in r["op_ms"].items():
            per_cat[_category(op_type)] += ms
        total = sum(per_cat.values())
        rows.append([r["model"], r["threads"], r["step_ms"], r["batch"] / r["step_ms"] * 1e3,
                     f"{100 * r['cpu_busy']:.0f}%", f"{r['ops_at_once']:.2f}", total]
                    + [f"{100 * per_cat[c] / total:.0f}%" if total else "-" for c in cats])
    out.append(common.table(["model", "threads", "step ms", "img/s", "CPU busy", "ops at once",
                             "op ms (sum)"] + cats, rows, "ll" + "r" * (5 + len(cats))))
    top = {}
    for r in results:
        for op_type, ms in sorted(r["op_ms"].items(), key=lambda kv: -kv[1])[:6]:
            top.setdefault(op_type, {})[(r["model"], r["threads"])] = ms
    keys = [(r["model"], r["threads"]) for r in results]
    out.append("")
    out.append("op ms per step by op type (the six largest of each run):")
    out.append("")
    out.append(common.table(["op"] + [f"{m} {t}" for m, t in keys],
                            [[op] + [by.get(k, 0.0) for k in keys] for op, by in top.items()]))
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="dmrnet_56,resnet_110")
    p.add_argument("--threads", default="default,intra,inter")
    p.add_argument("--mode", default="training", choices=("training", "inference"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    threads = [t for t in args.threads.split(",") if t]
    for t in threads:
        common.thread_counts(t)
    results = []
    for t in threads:
        for name in [m for m in args.models.split(",") if m]:
            spec = {"model": name, "threads": t, "mode": args.mode, "batch": args.batch,
                    "size": args.size, "steps": args.steps}
            results.append(common.run_worker(SCRIPT, ["--worker", json.dumps(spec)],
                                             "tensorflow"))
    m = common.machine()
    print(f"{args.mode} steps, batch {args.batch}, {args.size}x{args.size}, tensorflow "
          f"{m.get('tensorflow')}, {m['cpu']} ({m['cores']} cores)")
    print(report(results))
    if args.json:
        from dmr_keras.atomic import write_json

        write_json(args.json, {"args": vars(args), "machine": m, "results": results})


if __name__ == "__main__":
    main()
