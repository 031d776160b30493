"""Training and inference images/s of equal-budget models, side by side, on each backend.

For every backend (one process each, and on TensorFlow one process per CPU thread setting) the
script builds all the models, warms each up, then interleaves them: every repeat times each
model at each batch size in a rotated order, so drift on a noisy machine hits all of them alike.
Each figure is the median over repeats with its min-max spread; each ratio is the median of the
per-repeat ratios to the reference model, measured seconds apart in the same process.

Also printed: FLOPs per image (``dmr_keras.flops``, the counter the model cards use; training
counts 3x the forward pass), the achieved FLOP/s, that as a share of a dense matmul's FLOP/s
measured in the same process (the machine's practical peak) or of ``--peak-tflops``, and the peak
memory (one extra process per model and batch running only that model: the peak resident set on
CPU, framework included, or ``peak_bytes_in_use`` on an accelerator).

    python bench/throughput.py                                   # the full CPU table
    python bench/throughput.py --backends jax --batches 256 --dtype-policy mixed_bfloat16 \\
        --threads default --peak-tflops 989                      # one H100/H200 (dense bf16)
    python bench/throughput.py --models dmrnet_8_tiny,resnet_8_tiny --batches 4 --size 8 \\
        --repeats 2 --min-time 0 --no-memory                     # smoke run (the test suite)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SCRIPT = os.path.abspath(__file__)
MODES = ("inference", "training")
TRAIN_FLOP_FACTOR = 3  # forward + backward (input and weight gradients) ~ 3 forward passes


# ----------------------------------------------------------------------------- workers


def _setup(spec):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    if keras.backend.backend() == "tensorflow":
        common.apply_tf_threads(spec["threads"])
    if spec.get("dtype_policy"):
        keras.config.set_dtype_policy(spec["dtype_policy"])
    return keras


def _build(keras, name, size):
    import zoo
    from dmr_keras import training

    model = zoo.create_model(name, classes=10, input_shape=(size, size, 3))
    model.compile(optimizer=training.make_optimizer(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    return model


def _data(batch, size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, size, size, 3)).astype("float32"),
            rng.integers(0, 10, batch))


def _step(model, mode, x, y):
    if mode == "inference":
        model.predict_on_batch(x)  # returns numpy: synchronous on every backend
    else:
        model.train_on_batch(x, y)  # returns numpy logs: synchronous


def _matmul_gflops(keras, n=2048, reps=5):
    """FLOP/s of an n x n matmul in the compute dtype: the practical peak of this process."""
    from keras import ops

    dtype = keras.config.dtype_policy().compute_dtype
    a = ops.ones((n, n), dtype=dtype)
    b = ops.ones((n, n), dtype=dtype)
    ops.convert_to_numpy(ops.matmul(a, b)[0, 0])
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        ops.convert_to_numpy(ops.matmul(a, b)[0, 0])
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def speed_worker(spec):
    keras = _setup(spec)
    from dmr_keras.flops import count_flops

    models = {name: _build(keras, name, spec["size"]) for name in spec["models"]}
    info = {name: {"flops": count_flops(m), "params": m.count_params()}
            for name, m in models.items()}
    data = {b: _data(b, spec["size"]) for b in spec["batches"]}
    steps = {}
    for b in spec["batches"]:  # warm up (trace/compile), then size each timing to min_time
        for mode in spec["modes"]:
            per_step = []
            for m in models.values():
                _step(m, mode, *data[b])
                t = time.perf_counter()
                _step(m, mode, *data[b])
                per_step.append(time.perf_counter() - t)
            steps[(b, mode)] = max(1, math.ceil(spec["min_time"] / max(min(per_step), 1e-9)))
    samples = []
    names = list(models)
    for r in range(spec["repeats"]):
        order = names[r % len(names):] + names[: r % len(names)]
        for b in spec["batches"]:
            for name in order:
                for mode in spec["modes"]:
                    n = steps[(b, mode)]
                    t = time.perf_counter()
                    for _ in range(n):
                        _step(models[name], mode, *data[b])
                    dt = time.perf_counter() - t
                    samples.append({"model": name, "batch": b, "mode": mode, "repeat": r,
                                    "images_per_s": n * b / dt})
    common.emit({"backend": keras.backend.backend(), "threads": spec["threads"],
                 "dtype_policy": keras.config.dtype_policy().name,
                 "matmul_gflops": _matmul_gflops(keras), "models": info, "samples": samples})


def _peak_bytes(keras):
    """(kind, bytes): accelerator peak where the backend reports one, else peak RSS."""
    if keras.backend.backend() == "jax":
        import jax

        dev = jax.local_devices()[0]
        stats = dev.memory_stats() if dev.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return "device", stats["peak_bytes_in_use"]
    import resource

    return "rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_worker(spec):
    """Peak memory of a process running inference, then training, of one model at one batch.

    Absolute figures (the framework's own footprint included, ``baseline`` = the peak before
    the first step), so compare models at the same batch size and backend. Inference runs
    first because peaks only grow.
    """
    keras = _setup(spec)
    model = _build(keras, spec["model"], spec["size"])
    x, y = _data(spec["batch"], spec["size"])
    kind, baseline = _peak_bytes(keras)
    out = {"kind": kind, "baseline": baseline}
    for mode in spec["modes"]:
        for _ in range(2):
            _step(model, mode, x, y)
        out[mode] = _peak_bytes(keras)[1]
    common.emit(out)


# ----------------------------------------------------------------------------- parent


def _available_backends():
    import importlib.util

    return [b for b in ("tensorflow", "jax") if importlib.util.find_spec(b) is not None]


def measure(args):
    runs, memory = [], {}
    base = {"models": args.models, "batches": args.batches, "modes": args.modes,
            "size": args.size, "dtype_policy": args.dtype_policy}
    for backend in args.backends:
        for threads in (args.threads if backend == "tensorflow" else ["default"]):
            spec = dict(base, threads=threads, repeats=args.repeats, min_time=args.min_time)
            print(f"# measuring backend={backend} threads={threads} ...", file=sys.stderr,
                  flush=True)
            runs.append(common.run_worker(SCRIPT, ["--worker", "speed", json.dumps(spec)],
                                          backend))
        if args.memory:
            for name in args.models:
                for b in args.batches:
                    spec = dict(base, model=name, batch=b, threads=args.threads[0])
                    memory[(backend, name, b)] = common.run_worker(
                        SCRIPT, ["--worker", "memory", json.dumps(spec)], backend)
    return runs, memory


def _ratio_to(samples, model, ref, batch, mode):
    by = {}
    for s in samples:
        if s["batch"] == batch and s["mode"] == mode and s["model"] in (model, ref):
            by.setdefault(s["repeat"], {})[s["model"]] = s["images_per_s"]
    ratios = [v[model] / v[ref] for v in by.values() if model in v and ref in v]
    return common.median_spread(ratios) if ratios else None


def memory_kind(memory):
    return next(iter(memory.values()))["kind"] if memory else None


def report(args, runs, memory, mach=None):
    out = []
    mach = mach or common.machine()
    out.append(f"machine: {mach['cpu']}, {mach['cores']} cores; " + ", ".join(
        f"{k} {v}" for k, v in mach.items() if k not in ("cpu", "cores")))
    out.append(f"size {args.size}x{args.size}, dtype policy {args.dtype_policy or 'float32'}, "
               f"repeats {args.repeats}, >= {args.min_time:g} s per figure, reference "
               f"{args.reference}")
    summary = {}  # (backend, threads, model, batch, mode) -> median img/s
    # The practical peak of a backend: its fastest dense matmul over all thread settings (a
    # one-thread-per-op process measures a one-core matmul).
    matmul = {}
    for run in runs:
        matmul[run["backend"]] = max(matmul.get(run["backend"], 0), run["matmul_gflops"])
    for run in runs:
        label = f"{run['backend']}" + (f", threads={run['threads']}"
                                       if run["backend"] == "tensorflow" else "")
        peak = (args.peak_tflops * 1e3) if args.peak_tflops else matmul[run["backend"]]
        peak_name = "peak" if args.peak_tflops else "matmul"
        out.append("")
        ref_text = (f"peak {args.peak_tflops:g} TFLOP/s" if args.peak_tflops
                    else f"dense matmul {peak:.0f} GFLOP/s")
        out.append(f"### {label} ({run['dtype_policy']}; {ref_text})")
        out.append("")
        headers = ["model", "batch", "mode", "img/s", "min", "max", f"x {args.reference}",
                   "MFLOP/img", "GFLOP/s", f"% of {peak_name}"]
        if memory:
            headers.append("peak MiB" if memory_kind(memory) == "device" else "peak RSS MiB")
        rows = []
        for b in args.batches:
            for mode in args.modes:
                for name in args.models:
                    ips = [s["images_per_s"] for s in run["samples"]
                           if s["model"] == name and s["batch"] == b and s["mode"] == mode]
                    med, lo, hi = common.median_spread(ips)
                    summary[(run["backend"], run["threads"], name, b, mode)] = med
                    r = _ratio_to(run["samples"], name, args.reference, b, mode)
                    gflop = run["models"][name]["flops"] / 1e9 * (
                        TRAIN_FLOP_FACTOR if mode == "training" else 1)
                    row = [name, b, mode, med, lo, hi, f"{r[0]:.2f}" if r else "-",
                           gflop * 1e3, med * gflop, 100 * med * gflop / peak]
                    if memory:
                        mem = memory.get((run["backend"], name, b), {})
                        row.append(mem[mode] / 2**20 if mode in mem else "-")
                    rows.append(row)
        out.append(common.table(headers, rows, "lrl" + "r" * (len(headers) - 3)))

    # Targets: the first model against the reference, same threads and each at its best.
    model = args.models[0]
    if args.reference in args.models and model != args.reference:
        out.append("")
        out.append(f"### {model} / {args.reference} images/s (median over repeats; 'each at "
                   "its best': each model under its fastest thread setting)")
        out.append("")
        rows = []
        cores = mach["cores"]
        bound_col = any(r["threads"] == "single" for r in runs)
        for backend in dict.fromkeys(r["backend"] for r in runs):
            threads = [r["threads"] for r in runs if r["backend"] == backend]
            for b in args.batches:
                for mode in args.modes:
                    row = [backend, b, mode]
                    for t in args.threads:
                        if t in threads:
                            row.append(summary[(backend, t, model, b, mode)]
                                       / summary[(backend, t, args.reference, b, mode)])
                        else:
                            row.append("-")
                    # single is the bound's input, not a contender (unless it is all there is)
                    timed = [t for t in threads if t != "single"] or threads
                    best_m = max(timed, key=lambda t: summary[(backend, t, model, b, mode)])
                    best_r = max(timed,
                                 key=lambda t: summary[(backend, t, args.reference, b, mode)])
                    ref_best = summary[(backend, best_r, args.reference, b, mode)]
                    row += [summary[(backend, best_m, model, b, mode)] / ref_best,
                            f"{best_m} / {best_r}"]
                    if "single" in threads:
                        # No schedule on `cores` cores beats cores x the one-core rate of the
                        # same work: the most any equal-FLOP model could gain on this CPU.
                        one_core = summary[(backend, "single", args.reference, b, mode)]
                        row.append(cores * one_core / ref_best)
                    elif bound_col:
                        row.append("-")
                    rows.append(row)
        out.append(common.table(
            ["backend", "batch", "mode"] + [f"threads={t}" for t in args.threads]
            + ["each at its best", "best threads"]
            + ([f"bound ({cores} x one-core / best)"] if bound_col else []), rows,
            "lrl" + "r" * (len(args.threads) + 1) + "l" + ("r" if bound_col else "")))
    return "\n".join(out)


def plot(args, runs, path):
    """Images/s against batch size: each model at its fastest thread setting, per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, len(args.modes), figsize=(5.2 * len(args.modes), 3.6),
                             squeeze=False)
    backends = list(dict.fromkeys(r["backend"] for r in runs))
    for ax, mode in zip(axes[0], args.modes):
        for bi, backend in enumerate(backends):
            for mi, name in enumerate(args.models):
                best = []
                for b in args.batches:
                    meds = [common.median_spread(
                        s["images_per_s"] for s in r["samples"]
                        if s["model"] == name and s["batch"] == b and s["mode"] == mode)[0]
                        for r in runs if r["backend"] == backend and r["threads"] != "single"]
                    best.append(max(meds))
                ax.plot(args.batches, best, marker="o", color=f"C{mi}",
                        linestyle=("-", "--", ":")[bi % 3], label=f"{name} ({backend})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.batches, [str(b) for b in args.batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s")
        ax.set_title(f"{mode} (each model at its fastest thread setting)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    common.save_png(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="dmrnet_56,resnet_110,dilnet_56",
                   help="comma-separated zoo names; the first is compared with --reference")
    p.add_argument("--reference", default="resnet_110")
    p.add_argument("--batches", default="32,128,256")
    p.add_argument("--modes", default="inference,training")
    p.add_argument("--backends", default=None,
                   help="comma-separated; default: every installed one of tensorflow, jax")
    p.add_argument("--threads", default="default,intra,inter",
                   help="TensorFlow CPU thread settings to compare: " + ", ".join(common.THREADS))
    p.add_argument("--size", type=int, default=32, help="input height and width")
    p.add_argument("--dtype-policy", default=None, help="e.g. mixed_bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=1.5,
                   help="seconds of work behind each figure (steps are sized from the warm-up)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak TFLOP/s for the utilisation column (else a measured "
                        "dense matmul is the reference)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--json", default=None, help="also write the raw measurements here")
    p.add_argument("--plot", default=None, help="also draw images/s against batch size (PNG)")
    p.add_argument("--from-json", default=None,
                   help="print the tables of an earlier --json file instead of measuring")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, spec = args.worker
        return (speed_worker if kind == "speed" else memory_worker)(json.loads(spec))
    plot_path = args.plot
    if args.from_json:  # one file, or several (e.g. a later --threads single run) merged
        files = [json.loads(open(f).read()) for f in args.from_json.split(",")]
        saved = files[0]
        runs = [r for f in files for r in f["runs"]]
        threads = list(dict.fromkeys(r["threads"] for r in runs if r["backend"] == "tensorflow"))
        args = argparse.Namespace(**dict(saved["args"], threads=threads or ["default"],
                                         peak_tflops=args.peak_tflops
                                         or saved["args"].get("peak_tflops")))
        memory = {(m["backend"], m["model"], m["batch"]): m for f in files for m in f["memory"]}
        print(report(args, runs, memory, saved["machine"]))
        if plot_path:
            plot(args, runs, plot_path)
        return None

    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.modes = [m for m in args.modes.split(",") if m]
    args.threads = [t for t in args.threads.split(",") if t]
    args.backends = (args.backends.split(",") if args.backends else _available_backends())
    for t in args.threads:
        common.thread_counts(t)  # validates
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}; valid: {', '.join(MODES)}")
    if args.repeats < 1 or any(b < 1 for b in args.batches):
        p.error("--repeats and every batch size must be >= 1")
    import zoo

    for name in args.models + [args.reference]:
        zoo.get_variant(name.split(".")[0])  # unknown names fail here, with close matches
    runs, memory = measure(args)
    if args.json:  # the measurements first: nothing is lost if a table fails to print
        from dmr_keras.atomic import write_json

        write_json(args.json, {"args": {k: v for k, v in vars(args).items() if k != "worker"},
                               "machine": common.machine(), "runs": runs,
                               "memory": [{"backend": k[0], "model": k[1], "batch": k[2], **v}
                                          for k, v in memory.items()]})
    print(report(args, runs, memory))
    if args.plot:
        plot(args, runs, args.plot)


if __name__ == "__main__":
    main()
