"""Train a zoo model on CIFAR-10 with Keras 3 on JAX and a NumPy input pipeline: no TensorFlow.

    python bench/gpu_train.py --model dmrnet_56 --data-dir ../shared/data/cifar10-jpeg \\
        --epochs 40 --batch-size 128 --lr 0.1 --weight-decay 5e-4 --schedule cosine \\
        --warmup-epochs 2 --label-smoothing 0.1 --mixed-precision bf16 --output runs/x

For a machine with JAX (a GPU) and no TensorFlow, where ``dmr-train`` (tf.data) cannot run. The
recipe is ``dmr-train``'s, from the same functions: the model from ``zoo.registry.create_model``
with ``training.kernel_weight_decay`` on kernels (and biases: ``--weight-decay-scope all``),
``training.learning_rate_schedule`` (``paper`` or ``cosine``, with the linear ``Warmup``),
``training.make_optimizer`` (SGD, Nesterov 0.9), ``training.make_loss(label_smoothing)``, and
after training the precise-BN pass (``training.precise_batchnorm``, up to 100 unaugmented
batches) unless ``--no-precise-bn``. The data: ``dmr_keras.numpy_data`` (the tf.data pipeline's
normalisation, pad-4 crop and flip, each epoch a function of ``(seed, epoch)``), from a
``train/`` + ``test/`` folder or a pack file (``python -m dmr_keras.numpy_data pack``).

Every epoch ends with a checkpoint (``training.EpochCheckpoint``: the whole model, optimizer and
step counter, written atomically; ``--checkpoint-dir``, default ``OUTPUT/checkpoints``); running
the same command again resumes from the newest one and trains the batches the uninterrupted run
would have. ``--time-budget-s`` stops cleanly after the last epoch that leaves time for the
final evaluation within the budget (counted from the script's start); the run's files then say
``"completed": false`` and the same command continues it.

At the end, in ``--output``: ``model.weights.h5`` and ``model.keras`` (the trained weights in a
float32 model), ``metrics.json`` (what ``dmr-zoo publish`` reads: model, dataset, test accuracy
and loss, epochs, data constants and class names; plus wall time, images/s, the device, the
versions and the command) and ``train.log`` (this script's output). The test accuracy is
measured once, at the end, on the test split, in float32 (JAX's matmul precision forced to
float32, whatever the training precision), as ``dmr-eval`` measures it: top-1 and the plain
cross-entropy (no weight decay, no label smoothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout, installed or not
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
BACKENDS = ("jax",)
SCHEDULES = ("paper", "cosine")
WEIGHT_DECAY_SCOPES = ("all", "kernels")
# What defines a run: resuming into a checkpoint directory with other values is refused.
RUN_KEYS = ("model", "data_dir", "epochs", "batch_size", "lr", "weight_decay",
            "weight_decay_scope", "schedule", "warmup_epochs", "label_smoothing",
            "zero_init_last_bn", "precise_bn", "seed", "mixed_precision", "max_train_examples",
            "max_test_examples", "backend")
RUN_FILE = "run.json"
OUTPUTS = ("model.weights.h5", "model.keras", "metrics.json")  # train.log is appended to


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_train.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backend", default="jax", choices=BACKENDS,
                   help="Keras backend (KERAS_BACKEND is set before keras is imported)")
    p.add_argument("--model", default="dmrnet_56", help="registered model name (dmr-zoo list)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA),
                   help="CIFAR-10 train/<class>/ + test/<class>/ folder, or a pack .npz")
    p.add_argument("--cache", default=None,
                   help="a .npz file for the decoded uint8 arrays (read when it matches the "
                        "source, else written atomically)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4,
                   help="as MXNet's wd: an L2 term whose gradient is wd * w")
    p.add_argument("--weight-decay-scope", default="all", choices=WEIGHT_DECAY_SCOPES)
    p.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--zero-init-last-bn", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--precise-bn", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--mixed-precision", default="none", choices=["none", "bf16"],
                   help="bf16: Keras's mixed_bfloat16 policy for training")
    p.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True,
                   help="jit-compile the train and eval steps (XLA)")
    p.add_argument("--steps-per-execution", type=int, default=1,
                   help="batches per call of the compiled step (fewer callback round trips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="where the weights, metrics and log go")
    p.add_argument("--checkpoint-dir", default=None,
                   help="default OUTPUT/checkpoints (keep it out of a size-limited OUTPUT)")
    p.add_argument("--max-train-examples", type=int, default=None,
                   help="a fixed subset of the train split (toy runs)")
    p.add_argument("--max-test-examples", type=int, default=None,
                   help="a fixed subset of the test split (toy runs)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="stop after the last epoch that leaves --reserve-s for the end, "
                        "counted from the start of this script")
    p.add_argument("--reserve-s", type=float, default=30.0,
                   help="time kept for the final precise-BN pass, evaluation and saving")
    p.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop cleanly once this epoch is checkpointed (tests: a kill at an "
                        "epoch boundary)")
    p.add_argument("--validate", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the test split after every epoch (history only)")
    p.add_argument("--eval-batch-size", type=int, default=500,
                   help="batch of the per-epoch validation and the final evaluation")
    p.add_argument("--data-workers", type=int, default=4,
                   help="threads building train batches ahead (0: in the training thread)")
    p.add_argument("--decode-threads", type=int, default=None)
    p.add_argument("--verbose", type=int, default=2, help="0 silent, 1 bar, 2 a line an epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="discard another run's checkpoints and outputs there and start again")
    return p


def _check(args) -> None:
    def positive(name, value, allow_zero=False):
        if value is None:
            return
        if isinstance(value, float) and not math.isfinite(value) or (
                value < 0 or (value == 0 and not allow_zero)):
            raise ValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}. "
                             f"Received: {value!r}")

    for name in ("epochs", "batch_size", "eval_batch_size", "lr", "steps_per_execution",
                 "max_train_examples", "max_test_examples", "time_budget_s", "stop_after_epoch"):
        positive(name, getattr(args, name))
    for name in ("weight_decay", "warmup_epochs", "label_smoothing", "seed", "reserve_s",
                 "data_workers"):
        positive(name, getattr(args, name), allow_zero=True)
    if args.label_smoothing >= 1:
        raise ValueError(f"`label_smoothing` must be in [0, 1). Received: {args.label_smoothing}")
    if not os.path.exists(args.data_dir):
        raise ValueError(f"CIFAR-10 data not found: {args.data_dir} (a train/ + test/ folder or "
                         "a pack .npz)")


# ---- the log ------------------------------------------------------------------------------------


class _Tee:
    def __init__(self, stream, log):
        self._stream, self._log = stream, log

    def write(self, text):
        self._stream.write(text)
        self._log.write(text)
        self._log.flush()
        return len(text)

    def flush(self):
        self._stream.flush()
        self._log.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _tee(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err


# ---- the run ------------------------------------------------------------------------------------


def _select_backend(backend: str) -> None:
    """KERAS_BACKEND before keras is imported; refuse a process whose keras runs another."""
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != backend:
            raise ValueError(f"keras is already imported with the {current} backend in this "
                             f"process; run gpu_train.py in a new process for {backend}.")
    os.environ["KERAS_BACKEND"] = backend


def _prepare(run: dict, output: Path, ckpt_dir: Path, overwrite: bool):
    """Check the run directory; returns the metrics of a finished identical run, else None."""
    run_file = ckpt_dir / RUN_FILE
    if overwrite:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for name in OUTPUTS:
            (output / name).unlink(missing_ok=True)
        return None
    if run_file.exists():
        stored = json.loads(run_file.read_text())
        differ = [f"{k}: {stored.get(k)!r} there, {run[k]!r} now" for k in RUN_KEYS
                  if stored.get(k) != run[k]]
        if differ:
            raise ValueError(f"{ckpt_dir} holds another run ({'; '.join(differ)}). Resume with "
                             "the same settings, choose another --output / --checkpoint-dir, "
                             "or pass --overwrite.")
    elif ckpt_dir.exists() and any(ckpt_dir.glob("epoch-*.keras")):
        raise ValueError(f"{ckpt_dir} holds checkpoints without {RUN_FILE}: pass --overwrite "
                         "to start again there, or choose another --checkpoint-dir.")
    metrics_file = output / "metrics.json"
    if metrics_file.exists() and run_file.exists():
        metrics = json.loads(metrics_file.read_text())
        if metrics.get("completed") and metrics.get("run") == run:
            return metrics
    return None


def _device() -> dict:
    import jax

    dev = jax.devices()[0]
    return {"platform": dev.platform, "kind": getattr(dev, "device_kind", str(dev)),
            "count": jax.device_count()}


def evaluate(net, x, y, batch_size: int) -> dict:
    """Top-1 / top-5 (fractions) and the mean plain cross-entropy of ``net`` on uint8 images,
    as ``zoo.evaluate.measure`` computes them."""
    import numpy as np

    from dmr_keras import numpy_data

    correct1 = correct5 = 0
    loss_sum = 0.0
    for xb, yb in numpy_data.eval_batches(x, y, batch_size):
        probs = np.asarray(net.predict_on_batch(xb), dtype="float64")
        top = np.argsort(-probs, axis=-1)[:, :5]
        correct1 += int((top[:, 0] == yb).sum())
        correct5 += int((top == yb[:, None]).any(-1).sum())
        loss_sum += float(-np.log(np.clip(probs[np.arange(len(yb)), yb], 1e-7, 1.0)).sum())
    n = max(len(y), 1)
    return {"top1": correct1 / n, "top5": correct5 / n, "loss": loss_sum / n, "images": len(y)}


def train(args, argv) -> dict:
    t_start = time.perf_counter()
    _select_backend(args.backend)
    import keras

    from dmr_keras import numpy_data, training
    from dmr_keras.atomic import atomic_path, write_json
    from zoo.fingerprint import full_float32
    from zoo.registry import create_model, get_variant

    get_variant(args.model)
    output = Path(args.output)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else output / "checkpoints"
    run = {k: getattr(args, k) for k in RUN_KEYS}
    run["data_dir"] = os.path.abspath(args.data_dir)
    finished = _prepare(run, output, ckpt_dir, args.overwrite)
    if finished is not None:
        print(f"{output} already holds this finished run (test accuracy "
              f"{finished['test_accuracy']:.4f}); nothing to do.")
        return finished
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if not (ckpt_dir / RUN_FILE).exists():
        write_json(ckpt_dir / RUN_FILE, run)

    device = _device()
    print(f"gpu_train: keras {keras.__version__} on {keras.backend.backend()}, device "
          f"{device['kind']} ({device['platform']}), tensorflow imported: "
          f"{sys.modules.get('tensorflow') is not None}")
    t0 = time.perf_counter()
    data = numpy_data.load_cifar10(args.data_dir, cache=args.cache,
                                   max_train=args.max_train_examples,
                                   max_test=args.max_test_examples,
                                   threads=args.decode_threads)
    load_s = time.perf_counter() - t0
    print(f"data: {len(data.y_train)} train / {len(data.y_test)} test images from "
          f"{data.source} {args.data_dir} in {load_s:.1f} s ({data.decoder['test']['decoder']})")
    batches = numpy_data.TrainBatches(data.x_train, data.y_train, batch_size=args.batch_size,
                                      seed=args.seed)
    steps = batches.steps_per_epoch

    resume = training.latest_checkpoint(ckpt_dir)
    initial_epoch = min(resume["epoch"], args.epochs) if resume else 0
    policy = "mixed_bfloat16" if args.mixed_precision == "bf16" else "float32"
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(args.seed)
    if resume:
        net = keras.saving.load_model(resume["path"])
        net.jit_compile = bool(args.jit)
        net.steps_per_execution = args.steps_per_execution
        print(f"Resuming from epoch {resume['epoch']} ({resume['path']}).")
    else:
        reg = training.kernel_weight_decay(args.weight_decay)
        net = create_model(args.model, classes=len(data.class_names),
                           input_shape=data.x_train.shape[1:], kernel_regularizer=reg,
                           bias_regularizer=reg if args.weight_decay_scope == "all" else None,
                           zero_init_last_bn=args.zero_init_last_bn)
        sched = training.learning_rate_schedule(args.schedule, args.lr, args.epochs, steps,
                                                warmup_epochs=args.warmup_epochs)
        net.compile(optimizer=training.make_optimizer(sched),
                    loss=training.make_loss(args.label_smoothing), metrics=["accuracy"],
                    jit_compile=bool(args.jit), steps_per_execution=args.steps_per_execution)
    checkpoint = training.EpochCheckpoint.continuing(ckpt_dir, resume)

    stop = {"reason": None}

    class Stopper(keras.callbacks.Callback):
        """After the checkpoint: stop at --stop-after-epoch, or when the next epoch and the
        final evaluation would not fit in --time-budget-s."""

        def on_epoch_begin(self, epoch, logs=None):
            self._began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            done = epoch + 1
            if done >= args.epochs:
                return
            if args.stop_after_epoch is not None and done >= args.stop_after_epoch:
                stop["reason"] = f"--stop-after-epoch {args.stop_after_epoch}"
            elif args.time_budget_s is not None:
                elapsed = time.perf_counter() - t_start
                last = time.perf_counter() - self._began
                if elapsed + 1.1 * last + args.reserve_s > args.time_budget_s:
                    stop["reason"] = (f"--time-budget-s {args.time_budget_s:g}: {elapsed:.0f} s "
                                      f"used, an epoch takes {last:.1f} s")
            if stop["reason"]:
                print(f"Stopping after epoch {done} of {args.epochs} ({stop['reason']}).")
                self.model.stop_training = True

    print(f"Training {args.model} on CIFAR-10: {len(data.y_train)} images, "
          f"{args.epochs} epochs of {steps} steps, batch {args.batch_size}, {policy}, "
          f"jit {bool(args.jit)}, from epoch {initial_epoch}")
    fit_s = 0.0
    if initial_epoch < args.epochs:
        stream = batches.iterate(initial_epoch, args.epochs, workers=args.data_workers)
        validation = None
        if args.validate:
            validation = (numpy_data.normalise(data.x_test), data.y_test)
        t0 = time.perf_counter()
        try:
            net.fit(stream, epochs=args.epochs, initial_epoch=initial_epoch,
                    steps_per_epoch=steps, validation_data=validation,
                    validation_batch_size=args.eval_batch_size, callbacks=[checkpoint, Stopper()],
                    verbose=args.verbose, shuffle=False)
        finally:
            stream.close()
        fit_s = time.perf_counter() - t0
    state = training.latest_checkpoint(ckpt_dir)
    done = state["epoch"] if state else initial_epoch
    trained_now = done - initial_epoch

    # The end: the trained weights in a float32 model, precise BN, the test split in float32.
    t0 = time.perf_counter()
    keras.config.set_dtype_policy("float32")
    final = create_model(args.model, classes=len(data.class_names),
                         input_shape=data.x_train.shape[1:])
    final.set_weights(net.get_weights())
    final.jit_compile = bool(args.jit)
    with full_float32():
        used_bn = 0
        if args.precise_bn:
            plain = numpy_data.TrainBatches(data.x_train, data.y_train,
                                            batch_size=args.batch_size, seed=args.seed,
                                            augment=False)
            used_bn = training.precise_batchnorm(final, plain.epoch(0),
                                                 max_batches=max(1, min(steps, 100)))
        result = evaluate(final, data.x_test, data.y_test, args.eval_batch_size)
    end_s = time.perf_counter() - t0
    with atomic_path(output / "model.weights.h5") as tmp:
        final.save_weights(tmp)
    with atomic_path(output / "model.keras") as tmp:
        final.save(tmp)

    times = checkpoint.epoch_times
    now_times = [times[str(e)] for e in range(initial_epoch + 1, done + 1) if str(e) in times]
    steady = now_times[1:] or now_times
    images_per_epoch = steps * args.batch_size
    wall = time.perf_counter() - t_start
    data_record = dict(
        num_classes=len(data.class_names), image_shape=list(data.x_train.shape[1:]),
        mean=list(data.mean), std=list(data.std), class_names=list(data.class_names),
        source=data.source, eval_split="test", sha256=data.sha256, decoder=data.decoder,
        train_examples=int(len(data.y_train)), test_examples=int(len(data.y_test)),
        full_split_sizes=list(data.full_sizes),
        subset=(len(data.y_train), len(data.y_test)) != tuple(data.full_sizes))
    metrics = dict(
        model=args.model, dataset="cifar10", epochs=done, epochs_planned=args.epochs,
        completed=done >= args.epochs, stopped=stop["reason"], resumed_from_epoch=initial_epoch,
        test_accuracy=result["top1"], test_top5=result["top5"], test_loss=result["loss"],
        test_images=result["images"], eval_precision="float32 (jax matmul precision float32)",
        precise_bn_batches=used_bn, wall_time_s=round(wall, 2), data_load_s=round(load_s, 2),
        fit_time_s=round(fit_s, 2), final_eval_s=round(end_s, 2),
        train_time_s=round(sum(times.values()), 2), epochs_timed=len(times),
        epoch_times_s=times, eval_split="test",
        train_images_per_s=round(trained_now * images_per_epoch / fit_s, 1) if fit_s else None,
        train_images_per_s_steady=round(images_per_epoch / statistics.median(steady), 1)
        if steady else None,
        trainable_params=int(sum(math.prod(w.shape) for w in final.trainable_weights)),
        history=checkpoint.history, run=run,
        hparams={k: v for k, v in run.items() if k != "data_dir"},
        command="python bench/gpu_train.py " + shlex.join(argv),
        data=data_record, versions=training.package_versions(
            ("dmr-keras", "keras", "jax", "jaxlib", "numpy", "pillow", "h5py")),
        backend=keras.backend.backend(),
        device=device, mixed_precision=args.mixed_precision, jit=bool(args.jit),
        steps_per_execution=args.steps_per_execution,
        tensorflow_imported=sys.modules.get("tensorflow") is not None,
        date=time.strftime("%Y-%m-%d"),
    )
    write_json(output / "metrics.json", metrics)  # last: its presence means "finished"
    print(f"test accuracy {result['top1']:.4f}  test loss {result['loss']:.4f}  epochs {done}/"
          f"{args.epochs}  wall {wall:.1f} s  train images/s {metrics['train_images_per_s']} "
          f"(steady {metrics['train_images_per_s_steady']})  -> {output}")
    return metrics


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        _check(args)
        with _tee(Path(args.output) / "train.log"):
            train(args, argv)
    except ValueError as err:
        print(f"gpu_train.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
