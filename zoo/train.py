"""`dmr-train`: train any registered model on any supported dataset, resumable after a kill.

    dmr-train --model dmrnet_20 --dataset digits --epochs 15 --output runs/digits

The same as a Python function: ``zoo.train.train(model="dmrnet_20", dataset="digits", ...)``.

Everything is checked before any data is read or any model built. Every epoch ends with a
checkpoint (``OUTPUT/checkpoints``); running the same command again after a kill resumes from
the newest one and stops at the requested number of epochs. In ``OUTPUT`` at the end:
``model.keras``, ``model.weights.h5``, ``metrics.json``, ``curves.png`` and TensorBoard logs in
``logs/`` (scalars and the run's hyperparameters). Every file is written atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULTS = dict(
    model="dmrnet_20", dataset="digits", epochs=15, batch_size=64, lr=0.1, weight_decay=1e-4,
    schedule="paper", strategy="auto", mixed_precision=False, seed=0, output=None,
    init_weights=None, freeze_backbone=False, data_dir=None, validation_split=0.1,
    verbose=1, cpu_devices=None, cpu_threads="auto",
)


def _check_number(name, value, minimum, integer=False, strict=False):
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and (value > minimum if strict else value >= minimum)
    if not ok:
        kind = "an integer" if integer else "a number"
        rel = ">" if strict else ">="
        raise ValueError(f"`{name}` must be {kind} {rel} {minimum}. Received: {name}={value!r}")


def train(
    model: str = DEFAULTS["model"],
    dataset: str = DEFAULTS["dataset"],
    *,
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    weight_decay: float = DEFAULTS["weight_decay"],
    schedule: str = DEFAULTS["schedule"],
    strategy: str = DEFAULTS["strategy"],
    mixed_precision: bool = False,
    seed: int = 0,
    output: str | None = None,
    init_weights: str | None = None,
    freeze_backbone: bool = False,
    data_dir: str | None = None,
    validation_split: float = 0.1,
    verbose: int = 1,
    cpu_devices: int | None = None,
    cpu_threads: str = DEFAULTS["cpu_threads"],
) -> dict:
    """Train ``model`` (a registered name) on ``dataset``; returns the run's metrics dict.

    Args mirror the ``dmr-train`` flags; see ``dmr-train --help``.
    """
    import keras

    from dmr_keras import data as data_lib
    from dmr_keras import distribute, performance, training
    from dmr_keras.atomic import atomic_path, write_json
    from zoo.registry import create_model, get_variant

    # ---- everything checked before any work -------------------------------------------------
    variant = get_variant(model)
    threads = performance.resolve_cpu_threads(
        cpu_threads, num_streams=variant.config.get("num_branches", 1), has_gpu=_has_gpu())
    dataset = data_lib.check_dataset(dataset)
    _check_number("epochs", epochs, 1, integer=True)
    _check_number("batch_size", batch_size, 1, integer=True)
    _check_number("lr", lr, 0, strict=True)
    training.kernel_weight_decay(weight_decay)
    if schedule not in training.SCHEDULES:
        raise ValueError(f"Unknown `schedule`: {schedule!r}. Valid values: "
                         f"{', '.join(training.SCHEDULES)}")
    distribute.check_strategy_name(strategy)
    if init_weights is not None and not Path(init_weights).exists():
        from zoo.weights import load_manifest

        if init_weights not in load_manifest():
            raise ValueError(
                f"`init_weights` file not found, and not a registered weights key "
                f"(dmr-zoo list): {init_weights!r}")
    if freeze_backbone and init_weights is None:
        raise ValueError("`freeze_backbone` needs `init_weights`: a frozen random backbone "
                         "learns nothing.")
    output = Path(output or f"runs/{model}-{dataset.replace(':', '_').replace('/', '_')}")

    # Threads, devices and the strategy first: thread pools and collective ops (multi-worker)
    # must be configured before TensorFlow's context starts, which seeding would do.
    # "auto" in a process whose TensorFlow already runs (a notebook, a test) keeps its pools.
    if not performance.configure_cpu_threads(threads, strict=cpu_threads != "auto"):
        threads = "unchanged"
    if cpu_devices:
        distribute.configure_cpu_devices(cpu_devices)
    plan = distribute.make_plan(strategy, batch_size)
    keras.utils.set_random_seed(seed)  # the same on every worker: identical shuffles to shard
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16" if _has_gpu() else "mixed_bfloat16")

    try:
        train_ds, eval_ds, info = data_lib.load(
            dataset, batch_size=batch_size, seed=seed, data_dir=data_dir,
            validation_split=validation_split,
        )
        steps = info.train_examples // batch_size
        if steps < 1:
            raise ValueError(f"The batch size {batch_size} is larger than the training set "
                             f"({info.train_examples} examples).")
        ckpt_dir = output / "checkpoints"
        resume = training.latest_checkpoint(ckpt_dir)
        if resume and resume["epoch"] >= epochs:
            print(f"Run already has {resume['epoch']} epochs in {ckpt_dir}; finishing.")
        hparams = dict(model=model, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, schedule=schedule, strategy=plan.name,
                       replicas=plan.num_replicas, mixed_precision=mixed_precision, seed=seed,
                       init_weights=init_weights or "", freeze_backbone=freeze_backbone,
                       cpu_threads=threads)

        with plan.scope():
            if resume:
                net = keras.saving.load_model(resume["path"])
                print(f"Resuming from epoch {resume['epoch']} ({resume['path']}).")
            else:
                net = _build(model, info, weight_decay, init_weights, freeze_backbone,
                             create_model, training)
                sched = training.learning_rate_schedule(
                    schedule, lr, epochs, steps, imagenet=dataset == "imagenet2012")
                net.compile(optimizer=training.make_optimizer(sched),
                            loss=keras.losses.SparseCategoricalCrossentropy(),
                            metrics=["accuracy"])
        initial_epoch = resume["epoch"] if resume else 0
        checkpoint = training.EpochCheckpoint(
            ckpt_dir, history=resume["history"] if resume else None,
            enabled=_is_chief(plan))
        log_dir = output / "logs"
        if _is_chief(plan) and keras.backend.backend() == "tensorflow":
            training.write_hparams(log_dir / "hparams", hparams)

        print(f"Training {model} on {dataset}: {info.train_examples} images, {info.num_classes} "
              f"classes, {epochs} epochs of {steps} steps, batch {batch_size}, {plan.description}")
        checkpoint.set_model(net)
        start = time.perf_counter()
        if initial_epoch < epochs:
            if plan.name == "multiworker":
                from dmr_keras.multiworker import fit_distributed

                fit_distributed(
                    net, optimizer=net.optimizer, loss=net.loss, train_dataset=train_ds,
                    eval_dataset=eval_ds, epochs=epochs, strategy=plan.strategy,
                    initial_epoch=initial_epoch, global_batch_size=batch_size,
                    on_epoch_end=checkpoint.on_epoch_end,
                    verbose=verbose,
                )
            else:
                callbacks = [checkpoint]
                if keras.backend.backend() == "tensorflow":
                    callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
                net.fit(train_ds, validation_data=eval_ds, epochs=epochs,
                        initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose)
        wall = time.perf_counter() - start

        if plan.name == "multiworker":  # Keras's evaluate fails under MWMS like fit does
            from dmr_keras.multiworker import evaluate_distributed

            result = evaluate_distributed(net, loss=net.loss, dataset=eval_ds,
                                          strategy=plan.strategy)
            test_loss, test_acc = result["loss"], result["accuracy"]
        else:
            test_loss, test_acc = net.evaluate(eval_ds, verbose=0)
        history = checkpoint.history
        metrics = dict(
            model=model, dataset=dataset, epochs=epochs, resumed_from_epoch=initial_epoch,
            test_accuracy=float(test_acc), test_loss=float(test_loss),
            wall_time_s=round(wall, 2),
            train_images_per_s=round((epochs - initial_epoch) * steps * batch_size / wall, 1)
            if wall > 0 and epochs > initial_epoch else None,
            trainable_params=int(sum(math.prod(w.shape) for w in net.trainable_weights)),
            history=history, hparams=hparams, command=training.command_line(),
            data=dict(num_classes=info.num_classes, image_shape=list(info.image_shape),
                      mean=list(info.mean), std=list(info.std),
                      class_names=list(info.class_names) if info.class_names else None),
            backend=keras.backend.backend(),
        )
        if _is_chief(plan):
            with atomic_path(output / "model.keras") as tmp:
                net.save(tmp)
            with atomic_path(output / "model.weights.h5") as tmp:
                net.save_weights(tmp)
            write_json(output / "metrics.json", metrics)
            training.plot_history(history, output / "curves.png",
                                  title=f"{model} on {dataset}")
        print(f"test accuracy {test_acc:.4f}  test loss {test_loss:.4f}  wall time {wall:.1f} s  "
              f"-> {output}")
        return metrics
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _init_source(init_weights: str, model: str):
    """(variant, weights file, head classes) for ``--init-weights``: a file or a zoo key."""
    from zoo.registry import get_variant, resolve_weights, split_name
    from zoo.weights import load_manifest

    if Path(init_weights).exists():
        source_model, weights = model, init_weights
    elif init_weights in load_manifest():
        source_model, weights = split_name(init_weights)
    else:
        raise ValueError(
            f"`init_weights` must be a .weights.h5 / .keras file or a registered weights key "
            f"(dmr-zoo list; e.g. dmrnet_8_tiny.digits). Received: {init_weights!r}"
        )
    path, classes, _ = resolve_weights(source_model, weights)
    return get_variant(source_model), path, classes


def _build(name, info, weight_decay, init_weights, freeze, create_model, training):
    from zoo.registry import load_pretrained

    reg = training.kernel_weight_decay(weight_decay)
    net = create_model(name, classes=info.num_classes, input_shape=info.image_shape,
                       kernel_regularizer=reg)
    if init_weights:
        variant, path, classes = _init_source(init_weights, name)
        copied = load_pretrained(net, variant, path, classes, skip_head=True)
        print(f"Initialised {len(copied)} layers from {init_weights}; new head for "
              f"{info.num_classes} classes.")
        if freeze:
            training.freeze_backbone(net)
    return net


def _has_gpu() -> bool:
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def _is_chief(plan) -> bool:
    if plan.name != "multiworker":
        return True
    from dmr_keras.multiworker import is_chief

    return is_chief(plan.strategy)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmr-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from dmr_keras.performance import CPU_THREADS

    d = DEFAULTS
    p.add_argument("--model", default=d["model"], help="registered model name (dmr-zoo list)")
    p.add_argument("--dataset", default=d["dataset"],
                   help="cifar10 | cifar100 | svhn | imagenet2012 | digits | folder:PATH")
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="global batch size")
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="on conv/dense kernels")
    p.add_argument("--schedule", default=d["schedule"], choices=["paper", "cosine"])
    p.add_argument("--strategy", default=d["strategy"],
                   choices=["auto", "none", "mirrored", "multiworker"])
    p.add_argument("--mixed-precision", action="store_true",
                   help="mixed_float16 on GPU, mixed_bfloat16 otherwise")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--output", default=None, help="run directory (default runs/MODEL-DATASET)")
    p.add_argument("--init-weights", default=None,
                   help=".keras / .weights.h5 file or a zoo weights key "
                        "(e.g. dmrnet_8_tiny.digits)")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the new head (needs --init-weights)")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (ImageNet: manual files)")
    p.add_argument("--validation-split", type=float, default=d["validation_split"],
                   help="folder datasets: fraction held out per class")
    p.add_argument("--verbose", type=int, default=d["verbose"], help="0 silent, 1 bar, 2 lines")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into N logical devices (for --strategy mirrored on CPU)")
    p.add_argument("--cpu-threads", default=d["cpu_threads"],
                   choices=CPU_THREADS,
                   help="TensorFlow CPU threads: 'inter' runs parallel branches on separate cores "
                        "(auto: 'inter' for multi-branch models without a GPU; see "
                        "docs/benchmarks.md)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = vars(args)
    try:
        train(kwargs.pop("model"), kwargs.pop("dataset"), **kwargs)
    except ValueError as err:
        print(f"dmr-train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
