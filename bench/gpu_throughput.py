"""Training and inference images/s of the paper's equal-budget CIFAR models on one accelerator,
Keras 3 on JAX, jit-compiled, with MFU against the chip's peak. No TensorFlow.

    KERAS_BACKEND=jax python bench/gpu_throughput.py --json OUT/throughput.json \\
        --markdown OUT/throughput.md                        # dmrnet_56, dilnet_56, resnet_110

Each model is built once (``zoo.registry.create_model``, 10 classes, 32x32x3) under the dtype
policy (default ``mixed_bfloat16``). The timed steps are one ``jax.jit`` function each, the
model's own stateless pieces: training = ``model.stateless_call(training=True)``, the sparse
cross-entropy, ``jax.value_and_grad`` and ``optimizer.stateless_apply`` of the recipe's SGD
(Nesterov 0.9), with the state donated; inference = ``stateless_call(training=False)``. The
batch (random float32 images, random labels) stays on the device, so the figures are the
model's compute rate, without the input pipeline (``bench/gpu_train.py`` reports the end-to-end
rate). Per model, batch and mode: the first call (trace + compile) is timed apart, then
``--repeats`` runs of as many steps as fill ``--min-time`` seconds, each ended by
``block_until_ready``; the figure is the median run's images/s.

FLOPs per image: ``2 x dmr_keras.flops.count_macs`` (convolutions and the classifier; batch norm,
additions and ReLU are not counted), x3 for a training step (forward, input gradients, weight
gradients). MFU = achieved FLOP/s / ``--peak-tflops`` (default 989: the H100/H200 SXM dense
bf16 tensor-core peak, no sparsity). ``--matmul N`` also times an N x N x N bf16 matmul in the
same process: the practical peak the models are compared with as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TRAIN_FLOP_FACTOR = 3
MODES = ("training", "inference")


def _matmul_tflops(n: int, dtype: str = "bfloat16", reps: int = 10) -> float:
    import jax

    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (n, n), dtype=dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype=dtype)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    f(a, b).block_until_ready()
    start = time.perf_counter()
    for _ in range(reps):
        out = f(a, b)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


class _Bench:
    """One model's jitted training and inference steps on device-resident state."""

    def __init__(self, name: str, size: int):
        import jax
        import keras

        from dmr_keras import training
        from dmr_keras.flops import count_macs
        from zoo.registry import create_model

        self.jax = jax
        model = create_model(name, classes=10, input_shape=(size, size, 3))
        self.macs = count_macs(model)
        self.params = int(model.count_params())
        optimizer = training.make_optimizer(0.1)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy()
        self.size = size

        def train_step(tv, ntv, ov, x, y):
            def compute(tv):
                y_pred, ntv2 = model.stateless_call(tv, ntv, x, training=True)
                return loss_fn(y, y_pred), ntv2

            (loss, ntv2), grads = jax.value_and_grad(compute, has_aux=True)(tv)
            tv2, ov2 = optimizer.stateless_apply(ov, grads, tv)
            return tv2, ntv2, ov2, loss

        def infer_step(tv, ntv, x):
            return model.stateless_call(tv, ntv, x, training=False)[0]

        self.train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))
        self.infer_step = jax.jit(infer_step)
        self.state = ([v.value for v in model.trainable_variables],
                      [v.value for v in model.non_trainable_variables],
                      [v.value for v in optimizer.variables])

    def _data(self, batch):
        import numpy as np

        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, self.size, self.size, 3)).astype("float32")
        y = rng.integers(0, 10, batch).astype("int32")
        return self.jax.device_put(x), self.jax.device_put(y)

    def _run(self, mode, x, y, steps):
        if mode == "training":
            tv, ntv, ov = self.state
            loss = None
            for _ in range(steps):
                tv, ntv, ov, loss = self.train_step(tv, ntv, ov, x, y)
            self.state = (tv, ntv, ov)
            self.jax.block_until_ready((tv, loss))
        else:
            tv, ntv, _ = self.state
            out = None
            for _ in range(steps):
                out = self.infer_step(tv, ntv, x)
            out.block_until_ready()

    def measure(self, mode, batch, min_time, repeats) -> dict:
        x, y = self._data(batch)
        start = time.perf_counter()
        self._run(mode, x, y, 1)  # trace + compile + one step
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        self._run(mode, x, y, 2)
        per_step = max((time.perf_counter() - start) / 2, 1e-6)
        steps = max(3, int(min_time / per_step))
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            self._run(mode, x, y, steps)
            rates.append(steps * batch / (time.perf_counter() - start))
        flops = 2 * self.macs * (TRAIN_FLOP_FACTOR if mode == "training" else 1)
        ips = statistics.median(rates)
        return {"images_per_s": round(ips, 1), "min": round(min(rates), 1),
                "max": round(max(rates), 1), "steps_timed": steps, "repeats": repeats,
                "step_ms": round(1000 * batch / ips, 3), "compile_s": round(compile_s, 2),
                "flops_per_image": flops, "tflops": round(ips * flops / 1e12, 3)}


def _device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    info = {"platform": dev.platform, "kind": getattr(dev, "device_kind", str(dev))}
    try:
        stats = dev.memory_stats() or {}
        info["memory_bytes"] = stats.get("bytes_limit")
    except Exception:  # noqa: BLE001 - not every backend has it
        pass
    return info


def _versions() -> dict:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in ("keras", "jax", "jaxlib", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def run(args) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("gpu_throughput.py needs KERAS_BACKEND=jax")
    if args.dtype_policy:
        keras.config.set_dtype_policy(args.dtype_policy)
    start = time.perf_counter()
    result = {"device": _device_info(), "versions": _versions(), "date": time.strftime("%Y-%m-%d"),
              "dtype_policy": args.dtype_policy or "float32", "peak_tflops": args.peak_tflops,
              "peak_source": args.peak_source, "size": args.size, "min_time_s": args.min_time,
              "tensorflow_imported": sys.modules.get("tensorflow") is not None,
              "rows": [], "skipped": []}
    print(f"device: {result['device']}  policy: {result['dtype_policy']}  keras "
          f"{keras.__version__}", flush=True)
    if args.matmul:
        result["matmul_tflops"] = round(_matmul_tflops(args.matmul), 3)
        result["matmul_n"] = args.matmul
        print(f"bf16 matmul {args.matmul}^3: {result['matmul_tflops']} TFLOP/s", flush=True)
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    last_model_s = 0.0
    for name in models:
        elapsed = time.perf_counter() - start
        if args.time_budget_s and elapsed + last_model_s > args.time_budget_s:
            result["skipped"].append(name)
            print(f"{name}: skipped (--time-budget-s {args.time_budget_s:g}: {elapsed:.0f} s "
                  f"spent, the last model took {last_model_s:.0f} s)", flush=True)
            continue
        t0 = time.perf_counter()
        bench = _Bench(name, args.size)
        build_s = time.perf_counter() - t0
        for mode in modes:
            for batch in batches:
                row = {"model": name, "mode": mode, "batch": batch, "params": bench.params,
                       "build_s": round(build_s, 2)}
                try:
                    row.update(bench.measure(mode, batch, args.min_time, args.repeats))
                except Exception as err:  # noqa: BLE001 - an OOM etc. is recorded, not fatal
                    row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                if args.peak_tflops and "tflops" in row:
                    row["mfu"] = round(row["tflops"] / args.peak_tflops, 5)
                if result.get("matmul_tflops") and "tflops" in row:
                    row["share_of_matmul"] = round(row["tflops"] / result["matmul_tflops"], 5)
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
        del bench
        last_model_s = time.perf_counter() - t0
        _ratios(result, args.reference)
        result["total_s"] = round(time.perf_counter() - start, 1)
        save(args, result)  # after every model: a run killed later keeps what it measured
    _ratios(result, args.reference)
    result["total_s"] = round(time.perf_counter() - start, 1)
    return result


def save(args, result) -> None:
    from dmr_keras.atomic import write_json, write_text

    if args.json:
        write_json(args.json, result)
    if args.markdown:
        write_text(args.markdown, markdown(result, args.reference))


def _ratios(result, reference):
    ref = {(r["mode"], r["batch"]): r.get("images_per_s") for r in result["rows"]
           if r["model"] == reference}
    for r in result["rows"]:
        base = ref.get((r["mode"], r["batch"]))
        if base and r.get("images_per_s"):
            r[f"ratio_to_{reference}"] = round(r["images_per_s"] / base, 3)


def markdown(result, reference) -> str:
    dev = result["device"]
    peak = result.get("peak_tflops")
    repeats = result["rows"][0].get("repeats", "-") if result["rows"] else "-"
    lines = [
        f"Device: {dev.get('kind')} ({dev.get('platform')}); {result['date']}; keras "
        f"{result['versions'].get('keras')}, jax {result['versions'].get('jax')}; dtype policy "
        f"{result['dtype_policy']}; jit-compiled steps on device-resident random batches "
        f"(32x32x3, 10 classes); median of {repeats} runs of >= {result['min_time_s']} s.",
        f"MFU: achieved FLOP/s (2 x MACs per image, x3 for training) / {peak} TFLOP/s "
        f"({result.get('peak_source')})." if peak else "MFU: no peak given.",
    ]
    if result.get("matmul_tflops"):
        lines.append(f"A {result['matmul_n']}^3 bf16 matmul in the same process: "
                     f"{result['matmul_tflops']} TFLOP/s.")
    lines += ["", f"| model | mode | batch | images/s | ratio to {reference} | step ms | "
                  "GFLOP/image | TFLOP/s | MFU | compile s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['mode']} | {r['batch']} | error: {r['error']} "
                         "| | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.2f} %" if "mfu" in r else "-"
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['batch']} | {r['images_per_s']:,.0f} | "
            f"{r.get(f'ratio_to_{reference}', '-')} | {r['step_ms']} | "
            f"{r['flops_per_image'] / 1e9:.3f} | {r['tflops']} | {mfu} | {r['compile_s']} |")
    if result.get("skipped"):
        lines.append(f"\nSkipped (time budget): {', '.join(result['skipped'])}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="dmrnet_56,dilnet_56,resnet_110")
    p.add_argument("--reference", default="resnet_110")
    p.add_argument("--batches", default="128,512")
    p.add_argument("--modes", default="training,inference")
    p.add_argument("--dtype-policy", default="mixed_bfloat16",
                   help="Keras dtype policy ('' for float32)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the chip's dense peak for the dtype (MFU's denominator)")
    p.add_argument("--peak-source", default="H100/H200 SXM dense bf16 tensor-core peak, "
                                            "no sparsity (NVIDIA datasheet)")
    p.add_argument("--matmul", type=int, default=0,
                   help="also time an N x N x N bf16 matmul (0: no)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="skip the models not started within this many seconds")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    result = run(args)
    print(markdown(result, args.reference))
    save(args, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
