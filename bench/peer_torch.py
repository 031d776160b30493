"""This package's models against the same networks written in plain PyTorch, side by side.

Contenders (``--contenders``; each runs in its own worker process, started one after another
so warm-ups do not overlap):

- ``keras-tf``: Keras 3 on TensorFlow with TensorFlow's own oneDNN default (on for Intel CPUs
  with AVX-512, off elsewhere); ``keras-tf-onednn`` / ``keras-tf-no-onednn`` force
  ``TF_ENABLE_ONEDNN_OPTS`` to 1 / 0; ``keras-tf-keras-bn`` is ``keras-tf-onednn`` with Keras'
  own BatchNorm ops instead of the package's fused training kernel (the path before it,
  ``dmr_keras.layers.BatchNormalization``); ``keras-tf-xla`` compiles the steps with XLA. A suffix
  ``@intra``, ``@inter`` or ``@single`` picks a TensorFlow thread setting (``bench/common.py``).
- ``keras-jax``, ``keras-torch``: Keras 3 on JAX and on PyTorch (``KERAS_BACKEND``).
- ``torch-eager``, ``torch-compile``: the networks of ``bench/torch_models.py`` in PyTorch,
  channels-last memory format (``-nchw``: contiguous), eager and ``torch.compile(dynamic=False)``.

Every Keras model is the zoo's, with logits and ``SparseCategoricalCrossentropy(from_logits=True)``
and the package's SGD (Nesterov momentum 0.9); PyTorch gets ``cross_entropy`` and
``SGD(momentum=0.9, nesterov=True)``: one training step is forward, backward and update on a
batch; one inference step is a forward pass in inference mode. Before timing, a check process
copies each Keras model's weights (random BN statistics) into the PyTorch network and compares
logits in inference mode; the run stops if they differ.

Timing is interleaved: the workers warm up (trace or compile every model, batch and mode; each
figure's step count is sized from the warm-up to ``--min-time`` seconds), then every repeat
asks each worker in turn (rotated each repeat) for one timed figure while the others wait idle.
Figures are medians over repeats; ratios are medians of per-repeat ratios, seconds apart.

    python bench/peer_torch.py --json bench/results/peer_torch/peer_torch.json   # full table
    python bench/peer_torch.py --models dmrnet_8_tiny,resnet_38 --width 0.25 --size 16 \\
        --batches 8 --repeats 1 --min-time 0 --contenders keras-tf,torch-eager  # smoke run
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import time

# The bench folder goes last on the path, not first: its profile.py would shadow the standard
# library's (torch._dynamo imports cProfile, which imports profile).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]
import common  # noqa: E402

SCRIPT = os.path.abspath(__file__)
MODES = ("training", "inference")
_KERAS_BN = "DMR_BENCH_KERAS_BN"  # a worker with it set trains with Keras' BatchNorm ops
KERAS = {  # name: (backend, environment, compile options)
    "keras-tf": ("tensorflow", {}, {}),
    "keras-tf-onednn": ("tensorflow", {"TF_ENABLE_ONEDNN_OPTS": "1"}, {}),
    "keras-tf-no-onednn": ("tensorflow", {"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "keras-tf-keras-bn": ("tensorflow", {"TF_ENABLE_ONEDNN_OPTS": "1", _KERAS_BN: "1"}, {}),
    "keras-tf-xla": ("tensorflow", {}, {"jit_compile": True}),
    "keras-jax": ("jax", {}, {}),
    "keras-torch": ("torch", {}, {}),
}
TORCH = ("torch-eager", "torch-compile", "torch-eager-nchw", "torch-compile-nchw")
_RESULT = "@@"  # prefix of a worker's protocol lines on stdout (libraries print there too)


def torch_models():
    """bench/torch_models.py (loaded by file name, as the bench scripts are not a package)."""
    return importlib.import_module("torch_models")


def split_contender(name: str) -> tuple[str, str]:
    """``"keras-tf-onednn@intra"`` -> ``("keras-tf-onednn", "intra")``."""
    base, _, threads = name.partition("@")
    if base not in KERAS and base not in TORCH:
        raise ValueError(f"Unknown contender {base!r}; valid: {', '.join([*KERAS, *TORCH])}")
    if threads and (KERAS.get(base, ("",))[0] != "tensorflow" or threads not in common.THREADS):
        raise ValueError(f"A thread setting ({', '.join(common.THREADS)}) applies to the "
                         f"keras-tf contenders only. Received: {name!r}")
    return base, threads or "default"


def available_contenders() -> list[str]:
    have = {m: importlib.util.find_spec(m) is not None for m in ("tensorflow", "jax", "torch")}
    names = [n for n in ("keras-tf", "keras-tf-onednn", "keras-tf-no-onednn") if have["tensorflow"]]
    names += [n for n, b in (("keras-jax", "jax"), ("keras-torch", "torch")) if have[b]]
    return names + (["torch-eager", "torch-compile"] if have["torch"] else [])


def _data(batch, size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, size, size, 3)).astype("float32"),
            rng.integers(0, 10, batch).astype("int64"))


# ----------------------------------------------------------------------------- workers


def _keras_steps(spec):
    """{model: {mode: step(x, y)}} for a Keras contender; the data in the backend's format."""
    import keras

    import zoo
    from dmr_keras import training

    base, threads = split_contender(spec["contender"])
    if keras.backend.backend() == "tensorflow":
        common.apply_tf_threads(threads)
    if os.environ.get(_KERAS_BN) == "1":  # this worker process only
        from dmr_keras.layers import BatchNormalization

        BatchNormalization.fused = False
    steps, params = {}, {}
    for name in spec["models"]:
        model = zoo.create_model(name, classes=10, input_shape=(spec["size"],) * 2 + (3,),
                                 classifier_activation=None, **spec["overrides"])
        model.compile(optimizer=training.make_optimizer(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      **KERAS[base][2])
        params[name] = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
        steps[name] = {"training": model.train_on_batch,  # both return numpy: synchronous
                       "inference": lambda x, y, m=model: m.predict_on_batch(x)}
    return steps, params, lambda b: _data(b, spec["size"])


def _torch_steps(spec):
    import torch
    import torch.nn.functional as F

    tm = torch_models()
    fmt = torch.contiguous_format if spec["contender"].endswith("-nchw") else torch.channels_last
    compiled = spec["contender"].startswith("torch-compile")
    steps, params = {}, {}
    for name, cfg in spec["configs"].items():
        net = tm.CifarNet(**cfg).to(memory_format=fmt)
        params[name] = tm.count_parameters(net)
        fn = torch.compile(net, dynamic=False) if compiled else net
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)

        def train(x, y, net=net, fn=fn, opt=opt):
            net.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(fn(x), y).backward()
            opt.step()

        def infer(x, y, net=net, fn=fn):
            net.eval()
            with torch.inference_mode():
                fn(x)

        steps[name] = {"training": train, "inference": infer}

    def data(b):
        x, y = _data(b, spec["size"])
        x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(memory_format=fmt)
        return x, torch.from_numpy(y)

    return steps, params, data


def bench_worker(spec):
    """Build and warm up every model, report READY, then time figures the parent asks for."""
    t0 = time.perf_counter()
    kind = "torch" if spec["contender"] in TORCH else "keras"
    steps, params, make_data = (_torch_steps if kind == "torch" else _keras_steps)(spec)
    data = {b: make_data(b) for b in spec["batches"]}
    counts, warm = {}, {}
    for name in spec["models"]:
        for b in spec["batches"]:
            for mode in spec["modes"]:
                t = time.perf_counter()
                steps[name][mode](*data[b])  # trace / compile
                steps[name][mode](*data[b])
                warm[f"{name}/{b}/{mode}"] = time.perf_counter() - t
                t = time.perf_counter()
                steps[name][mode](*data[b])
                dt = time.perf_counter() - t
                counts[f"{name}/{b}/{mode}"] = max(1, math.ceil(spec["min_time"] / max(dt, 1e-9)))
    info = {"params": params, "setup_s": time.perf_counter() - t0, "warmup_s": warm}
    if kind == "keras":
        import keras

        info["backend"] = keras.backend.backend()
    print(_RESULT + json.dumps(info), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        if job is None:
            break
        key = f"{job['model']}/{job['batch']}/{job['mode']}"
        step, x = steps[job["model"]][job["mode"]], data[job["batch"]]
        t = time.perf_counter()
        for _ in range(counts[key]):
            step(*x)
        dt = time.perf_counter() - t
        print(_RESULT + json.dumps({"images_per_s": counts[key] * job["batch"] / dt}), flush=True)


def check_worker(spec):
    """Max |logit difference| of each Keras model and its PyTorch copy (inference mode)."""
    import keras
    import numpy as np
    import torch

    import zoo

    tm = torch_models()
    out = []
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, spec["size"], spec["size"], 3)).astype("float32")
    for name, cfg in spec["configs"].items():
        model = zoo.create_model(name, classes=10, input_shape=(spec["size"],) * 2 + (3,),
                                 classifier_activation=None, **spec["overrides"])
        # Random BN statistics (a train-mode trace would not match); the last BN of each
        # branch scaled down, so that 50 residual blocks keep logits of order 1-100.
        last_bn = {}
        for w in model.weights:
            head, _, bn = w.path.rpartition("/")[0].rpartition("/")
            if "/branch" in w.path and bn.startswith("bn"):
                last_bn[head] = max(last_bn.get(head, ""), bn)
        for w in model.weights:
            leaf, shape = w.path.rsplit("/", 1)[-1], tuple(w.shape)
            head, _, bn = w.path.rpartition("/")[0].rpartition("/")
            if leaf == "gamma" and last_bn.get(head) == bn:
                w.assign(rng.uniform(0.1, 0.3, shape).astype("float32"))
            elif leaf in ("gamma", "moving_variance"):
                w.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            elif leaf in ("beta", "moving_mean"):
                w.assign(rng.normal(0.0, 0.3, shape).astype("float32"))
        net = tm.CifarNet(**cfg).eval()
        tm.copy_keras_model(net, model)
        want = keras.ops.convert_to_numpy(model(x, training=False))
        with torch.inference_mode():
            got = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        out.append({"model": name, "max_abs_diff": float(np.abs(got - want).max()),
                    "max_abs_logit": float(np.abs(want).max()),
                    "keras_params": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
                    "torch_params": tm.count_parameters(net)})
    common.emit({"check": out})


# ----------------------------------------------------------------------------- parent


class Worker:
    """A contender's process: started, warmed up, then driven one figure at a time."""

    def __init__(self, contender, spec):
        base, _ = split_contender(contender)
        backend, extra, _ = KERAS.get(base, ("torch", {}, {}))
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", **extra,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(common.ROOT),
                                                            os.environ.get("PYTHONPATH")])))
        self.name = contender
        job = json.dumps(dict(spec, contender=contender))
        self.proc = subprocess.Popen(
            [sys.executable, SCRIPT, "--worker", "bench", job],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self._read()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(_RESULT):
                return json.loads(line[len(_RESULT):])
        raise RuntimeError(f"Worker {self.name} exited ({self.proc.wait()}); see its stderr above")

    def measure(self, model, batch, mode):
        self.proc.stdin.write(json.dumps({"model": model, "batch": batch, "mode": mode}) + "\n")
        return self._read()["images_per_s"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("null\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def model_configs(models, overrides) -> dict:
    """The CifarNet arguments of each zoo name (CIFAR form only)."""
    import zoo

    out = {}
    for name in models:
        cfg = dict(zoo.get_variant(name).config, **overrides)
        if cfg.get("form", "cifar") != "cifar":
            raise ValueError(f"{name!r} is not a CIFAR-form model; torch_models has only that")
        out[name] = dict(depth=cfg["depth"], width=cfg.get("width", 1),
                         num_branches=cfg.get("num_branches") or (
                             1 if cfg.get("mapping") == "resnet" else 2),
                         mapping=cfg.get("mapping", "merge_and_run"),
                         block_type=cfg.get("block_type") or "basic")
    return out


def measure(args) -> dict:
    overrides = {"width": args.width} if args.width else {}
    configs = model_configs(args.models, overrides)
    spec = {"models": args.models, "configs": configs, "overrides": overrides,
            "batches": args.batches, "modes": args.modes, "size": args.size,
            "min_time": args.min_time}
    check = []
    if args.check:
        print("# checking PyTorch against Keras (weights copied) ...", file=sys.stderr, flush=True)
        check = common.run_worker(SCRIPT, ["--worker", "check", json.dumps(spec)],
                                  "tensorflow")["check"]
        bad = [c for c in check if c["max_abs_diff"] > 1e-4 * max(1.0, c["max_abs_logit"])
               or c["keras_params"] != c["torch_params"]]
        if bad:
            raise SystemExit(f"The PyTorch networks do not equal the Keras models: {bad}")
    workers, samples = {}, []
    try:
        for c in args.contenders:  # one at a time: warm-ups (and torch.compile) do not overlap
            print(f"# warming up {c} ...", file=sys.stderr, flush=True)
            workers[c] = Worker(c, spec)
        for r in range(args.repeats):
            order = args.contenders[r % len(args.contenders):] + args.contenders[
                : r % len(args.contenders)]
            for b in args.batches:
                for name in args.models:
                    for mode in args.modes:
                        for c in order:
                            samples.append({"contender": c, "model": name, "batch": b,
                                            "mode": mode, "repeat": r,
                                            "images_per_s": workers[c].measure(name, b, mode)})
    finally:
        for w in workers.values():
            w.close()
    return {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "from_json")},
            "machine": common.machine(), "check": check, "samples": samples,
            "workers": {c: w.info for c, w in workers.items()}}


def _figures(samples, contender, model, batch, mode):
    return {s["repeat"]: s["images_per_s"] for s in samples if s["contender"] == contender
            and s["model"] == model and s["batch"] == batch and s["mode"] == mode}


def _ratio(a: dict, b: dict):
    ratios = [a[r] / b[r] for r in a if r in b]
    return f"{common.median_spread(ratios)[0]:.2f}" if ratios else "-"


def report(result) -> str:
    args, samples = result["args"], result["samples"]
    cs, ref = args["contenders"], args["reference"]
    mach = result["machine"]
    out = [f"machine: {mach['cpu']}, {mach['cores']} cores; " + ", ".join(
        f"{k} {v}" for k, v in mach.items() if k not in ("cpu", "cores")),
        f"size {args['size']}x{args['size']}, float32, repeats {args['repeats']}, >= "
        f"{args['min_time']:g} s per figure, interleaved; images/s (median over repeats)"]
    if result["check"]:
        out += ["", "### PyTorch network = Keras model (weights copied, inference mode)", ""]
        out.append(common.table(
            ["model", "params (Keras)", "params (PyTorch)", "max |logit diff|", "max |logit|"],
            [[c["model"], c["keras_params"], c["torch_params"], f"{c['max_abs_diff']:.1e}",
              c["max_abs_logit"]] for c in result["check"]]))
    keys = [(m, b, mode) for b in args["batches"] for m in args["models"] for mode in args["modes"]]
    rows = []
    for m, b, mode in keys:
        rows.append([m, b, mode] + [common.median_spread(
            _figures(samples, c, m, b, mode).values())[0] for c in cs])
    out += ["", "### images/s", "", common.table(["model", "batch", "mode"] + cs, rows,
                                                 "lrl" + "r" * len(cs))]
    if ref in cs:
        rows = [[m, b, mode] + [_ratio(_figures(samples, c, m, b, mode),
                                       _figures(samples, ref, m, b, mode)) for c in cs]
                for m, b, mode in keys]
        out += ["", f"### x {ref} (median of per-repeat ratios)", "",
                common.table(["model", "batch", "mode"] + cs, rows, "lrl" + "r" * len(cs))]
    if len(args["models"]) > 1:
        a, b_ = args["models"][:2]
        rows = [[c, b, mode, _ratio(_figures(samples, c, a, b, mode),
                                    _figures(samples, c, b_, b, mode))]
                for c in cs for b in args["batches"] for mode in args["modes"]]
        out += ["", f"### {a} / {b_} images/s, per contender", "",
                common.table(["contender", "batch", "mode", "ratio"], rows, "lrlr")]
    if result["workers"]:
        rows = [[c, w["setup_s"], max(w["warmup_s"].values())]
                for c, w in result["workers"].items()]
        out += ["", "### warm-up (build + first steps; torch.compile compiles here)", "",
                common.table(["contender", "setup s", "slowest first figure s"], rows)]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="dmrnet_56,resnet_110",
                   help="comma-separated CIFAR-form zoo names; the first two are also compared")
    p.add_argument("--width", type=float, default=None, help="override every model's width")
    p.add_argument("--batches", default="32,128")
    p.add_argument("--modes", default="training,inference")
    p.add_argument("--contenders", default=None,
                   help="comma-separated; default: " + ", ".join(available_contenders()))
    p.add_argument("--reference", default="torch-compile", help="the ratios' denominator")
    p.add_argument("--size", type=int, default=32, help="input height and width")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds behind each figure")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the weights-copied equality check")
    p.add_argument("--json", default=None, help="also write the raw measurements here")
    p.add_argument("--from-json", default=None, help="print the tables of an earlier --json")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, spec = args.worker
        return (bench_worker if kind == "bench" else check_worker)(json.loads(spec))
    if args.from_json:
        with open(args.from_json) as f:
            print(report(json.load(f)))
        return None
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.modes = [m for m in args.modes.split(",") if m]
    args.contenders = (args.contenders.split(",") if args.contenders
                       else available_contenders())
    for c in args.contenders:
        try:
            split_contender(c)
        except ValueError as e:
            p.error(str(e))
    if any(m not in MODES for m in args.modes):
        p.error(f"--modes: each of {', '.join(MODES)}. Received: {args.modes}")
    if args.repeats < 1 or any(b < 1 for b in args.batches):
        p.error("--repeats and every batch size must be >= 1")
    result = measure(args)
    if args.json:  # the measurements first: nothing is lost if a table fails to print
        from dmr_keras.atomic import write_json

        write_json(args.json, result)
    print(report(result))


if __name__ == "__main__":
    main()
