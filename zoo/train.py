"""`dmr-train`: train any registered model on any supported dataset, resumable after a kill.

    dmr-train --model dmrnet_20 --dataset digits --epochs 15 --output runs/digits

The same as a Python function: ``zoo.train.train(model="dmrnet_20", dataset="digits", ...)``.

Everything is checked before any data is read or any model built. Every epoch ends with a
checkpoint (``OUTPUT/checkpoints``); running the same command again after a kill resumes from
the newest one and ends with the weights the uninterrupted run would have had (each epoch's
order and augmentation come from ``(seed, epoch)``; on the CPU ops are deterministic). The
settings that define a run are kept in ``OUTPUT/run.json``: running into that directory with
different ones is an error naming them, unless ``--overwrite``; running a finished run again
changes nothing. In ``OUTPUT`` at the end: ``model.keras``, ``model.weights.h5``,
``metrics.json``, ``curves.png`` and TensorBoard logs in ``logs/`` (scalars and the run's
hyperparameters). Every file is written atomically.

The paper's recipe is the default (SGD Nesterov, L2 weight decay, pad-crop-flip). A current
recipe is opt-in, flag by flag, each recorded in ``run.json`` and ``metrics.json``:
``--optimizer adamw`` (decoupled weight decay instead of the L2 term), ``--ema`` (the saved and
evaluated weights are the moving average), ``--mixup`` / ``--cutmix`` (soft labels, train
batches only), ``--randaugment``, ``--label-smoothing``, ``--warmup-epochs``,
``--jit-compile`` and ``--image-size`` (a folder's images resized to N x N, or ``keep`` their
own size; the CIFAR-form models are fully convolutional). Accuracy and, with more than 5
classes, top-5 are logged every epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
import warnings
from pathlib import Path

DEFAULTS = dict(
    model="dmrnet_20", dataset="digits", epochs=15, batch_size=64, lr=None, weight_decay=None,
    weight_decay_scope="all", schedule="paper", warmup_epochs=3.0, label_smoothing=0.0,
    zero_init_last_bn=False, precise_bn=True, strategy="auto", mixed_precision=False, seed=0,
    output=None,
    init_weights=None, freeze_backbone=False, data_dir=None, validation_split=0.1,
    verbose=1, cpu_devices=None, cpu_threads="auto", deterministic=None, overwrite=False,
    skip_corrupt=False, image_size=None, optimizer="sgd", mixup=0.0, cutmix=0.0,
    randaugment=0.0, ema=0.0, jit_compile=None, val_fraction=0.0, fused_batchnorm=True,
)
# lr and weight_decay None: the optimizer's. SGD's are the paper's (its weight decay is an L2
# term, MXNet's wd); AdamW's are DeiT's / timm's (decoupled decay, scaled by the rate).
OPTIMIZER_DEFAULTS = {"sgd": dict(lr=0.1, weight_decay=1e-4),
                      "adamw": dict(lr=1e-3, weight_decay=0.05)}
# What a bare flag means: Keras' MixUp alpha and CutMix's Beta(1, 1) (the CutMix paper's),
# timm's rand-m9, and an average over about the last 1,000 steps.
FLAG_CONSTS = dict(mixup=0.2, cutmix=1.0, randaugment=9.0, ema=0.999)
WEIGHT_DECAY_SCOPES = ("all", "kernels")
# precise_bn: off, on the training images without augmentation (True: the default, and what a
# run.json from before "augmented" existed means), or on the training pipeline's batches as
# trained (pycls and detectron2 compute precise BN on their training loader).
PRECISE_BN = (False, True, "plain", "augmented")  # "plain" is True
RUN_FILE = "run.json"
# The settings that define what a run computes. Re-running into a directory with other values
# for any of them is refused (unless overwrite): a resumed run must be the same run.
RUN_KEYS = ("model", "dataset", "epochs", "batch_size", "lr", "weight_decay",
            "weight_decay_scope", "schedule", "warmup_epochs", "label_smoothing",
            "zero_init_last_bn", "precise_bn",
            "seed", "mixed_precision", "init_weights", "freeze_backbone", "validation_split",
            "skip_corrupt", "image_size", "optimizer", "mixup", "cutmix", "randaugment", "ema",
            "jit_compile", "val_fraction")
# The RUN_KEYS that act only after the last epoch, on the final weights: a run may resume with
# another value, and a finished run given another value is finished again from its last
# checkpoint (model and metrics replaced). Its epochs are the same either way.
FINISH_KEYS = ("precise_bn",)
# The value of a RUN_KEY added later, for a run.json written before it: what those runs did.
_BEFORE_THE_KEY = dict(label_smoothing=0.0, skip_corrupt=False, optimizer="sgd", mixup=0.0,
                       cutmix=0.0, randaugment=0.0, ema=0.0, jit_compile=None,
                       val_fraction=0.0)
# What dmr-train writes into its output directory (and --overwrite removes).
_OUTPUTS = ("checkpoints", "logs", "model.keras", "model.weights.h5", "metrics.json",
            "curves.png", RUN_FILE)


def _precise_bn(value):
    """The run key's value of ``precise_bn``: False, True (``"plain"``) or ``"augmented"``."""
    from dmr_keras import checks

    checks.choice("precise_bn", value, PRECISE_BN)
    return "augmented" if value == "augmented" else bool(value)


def _check_arguments(run: dict, strategy: str, freeze_backbone: bool) -> str:
    """Every cheap check, before any data is read or model built; returns the dataset spec."""
    from dmr_keras import checks, distribute, training
    from dmr_keras import data as data_lib
    from zoo.registry import get_variant

    get_variant(run["model"])
    dataset = data_lib.check_dataset(run["dataset"])
    checks.integer("epochs", run["epochs"], 1)
    checks.integer("batch_size", run["batch_size"], 1)
    checks.number("lr", run["lr"], 0, strict=True)
    checks.number("weight_decay", run["weight_decay"], 0)
    checks.choice("weight_decay_scope", run["weight_decay_scope"], WEIGHT_DECAY_SCOPES)
    checks.choice("schedule", run["schedule"], training.SCHEDULES)
    checks.number("warmup_epochs", run["warmup_epochs"], 0)
    checks.number("label_smoothing", run["label_smoothing"], 0)
    if run["label_smoothing"] >= 1:
        raise ValueError("`label_smoothing` must be in [0, 1). "
                         f"Received: label_smoothing={run['label_smoothing']!r}")
    checks.choice("optimizer", run["optimizer"], training.OPTIMIZERS)
    training.check_ema(run["ema"])
    data_lib.check_recipe(run["randaugment"], run["mixup"], run["cutmix"])
    checks.choice("jit_compile", run["jit_compile"], (True, False), allow_none=True)
    data_lib.check_holdout_fraction(run["val_fraction"], name="val_fraction")
    distribute.check_strategy_name(strategy)
    init_weights = run["init_weights"]
    if init_weights is not None and not Path(init_weights).exists():
        from zoo.weights import load_manifest

        if init_weights not in load_manifest():
            raise ValueError(
                f"`init_weights` file not found, and not a registered weights key "
                f"(dmr-zoo list): {init_weights!r}")
    if freeze_backbone and init_weights is None:
        raise ValueError("`freeze_backbone` needs `init_weights`: a frozen random backbone "
                         "learns nothing.")
    return dataset


# ---- the run directory -----------------------------------------------------------------------

def _prepare_output(output: Path, run: dict, overwrite: bool) -> dict | None:
    """Check ``output`` against ``run``; returns the stored metrics of a finished identical run
    (nothing to do), else None. Refuses another run's directory unless ``overwrite``."""
    run_file = output / RUN_FILE
    ours = [name for name in _OUTPUTS if (output / name).exists()]
    if overwrite:
        for name in ours:  # tolerant: every worker of a multi-worker run gets here
            path = output / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return None
    if not ours:
        return None
    if not run_file.exists():
        raise ValueError(
            f"{output} holds a run without {RUN_FILE} (made by an older dmr-train, or by hand): "
            f"{', '.join(ours)}. Its settings cannot be checked, so it cannot be resumed "
            "safely: pass --overwrite (overwrite=True) to start again there, or another "
            "--output.")
    from dmr_keras.checks import differing_settings

    stored = json.loads(run_file.read_text())
    for key, value in _BEFORE_THE_KEY.items():  # runs from before an option trained without it
        stored.setdefault(key, value)
    if "dataset" in stored:  # and at the dataset's own size
        stored.setdefault("image_size", _image_size_of(stored["dataset"], None))
    differ = differing_settings(stored, run, [k for k in RUN_KEYS if k not in FINISH_KEYS])
    if differ:
        raise ValueError(
            f"{output} holds another run ({'; '.join(differ)}). Resuming needs the same "
            "settings: run "
            "with the stored ones, choose another --output, or pass --overwrite "
            "(overwrite=True) to discard that run.")
    metrics_file = output / "metrics.json"
    if not metrics_file.exists():
        return None
    metrics = json.loads(metrics_file.read_text())
    finished_as = {**stored, **metrics.get("hparams", {})}  # what the metrics were measured with
    refinish = differing_settings(finished_as, run, FINISH_KEYS)
    if refinish:
        print(f"{output} holds a finished run; finishing it again from its last checkpoint "
              f"({'; '.join(refinish)}).")
        return None
    return metrics


def _image_size_of(dataset: str, image_size):
    """The input side a run trains at, as run.json records it: ``image_size``, else the
    dataset's (224 for imagenet2012, 32 otherwise); ``"keep"`` stays (a folder's own size)."""
    from dmr_keras import data as data_lib

    image_size = data_lib.check_image_size(dataset, image_size)
    if image_size is None:
        return data_lib.IMAGENET_IMAGE_SIZE if dataset == "imagenet2012" else 32
    return list(image_size) if isinstance(image_size, tuple) else image_size  # as JSON has it


def _model_for(model: str | None, init_weights: str | None) -> str:
    """The model to train: ``model``, else the one a zoo key in ``init_weights`` names, else
    the default. A zoo key for another model than ``model`` is an error naming both."""
    key_model = None
    if init_weights is not None and not Path(init_weights).exists():
        from zoo.registry import split_name
        from zoo.weights import load_manifest

        if init_weights in load_manifest():
            key_model = split_name(init_weights)[0]
    if model is None:
        return key_model or DEFAULTS["model"]
    if key_model is not None and key_model != model:
        raise ValueError(
            f"--init-weights {init_weights} holds {key_model} weights, which do not fit "
            f"--model {model} (another architecture). Leave out --model (a zoo key implies its "
            f"model) or pass --model {key_model}.")
    return model


def train(
    model: str | None = None,
    dataset: str = DEFAULTS["dataset"],
    *,
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float | None = DEFAULTS["lr"],
    weight_decay: float | None = DEFAULTS["weight_decay"],
    weight_decay_scope: str = DEFAULTS["weight_decay_scope"],
    schedule: str = DEFAULTS["schedule"],
    warmup_epochs: float = DEFAULTS["warmup_epochs"],
    label_smoothing: float = DEFAULTS["label_smoothing"],
    zero_init_last_bn: bool = DEFAULTS["zero_init_last_bn"],
    precise_bn: bool = DEFAULTS["precise_bn"],
    strategy: str = DEFAULTS["strategy"],
    mixed_precision: bool = False,
    seed: int | None = 0,
    output: str | None = None,
    init_weights: str | None = None,
    freeze_backbone: bool = False,
    data_dir: str | None = None,
    validation_split: float = 0.1,
    verbose: int = 1,
    cpu_devices: int | None = None,
    cpu_threads: str | None = None,
    deterministic: bool | None = None,
    overwrite: bool = False,
    skip_corrupt: bool = DEFAULTS["skip_corrupt"],
    image_size: int | str | None = DEFAULTS["image_size"],
    optimizer: str = DEFAULTS["optimizer"],
    mixup: float = DEFAULTS["mixup"],
    cutmix: float = DEFAULTS["cutmix"],
    randaugment: float = DEFAULTS["randaugment"],
    ema: float = DEFAULTS["ema"],
    jit_compile: bool | None = DEFAULTS["jit_compile"],
    val_fraction: float = DEFAULTS["val_fraction"],
    fused_batchnorm: bool = DEFAULTS["fused_batchnorm"],
) -> dict:
    """Train ``model`` (a registered name) on ``dataset``; returns the run's metrics dict.

    Args mirror the ``dmr-train`` flags (``dmr-train --help``). ``model`` None: the model of
    the zoo key in ``init_weights`` (``"dmrnet_8_tiny.digits"``), else dmrnet_20. Global state
    is changed only where an argument asks for it: ``seed`` (not None) seeds Python, NumPy and
    the backend (``keras.utils.set_random_seed``) so that the initial weights are reproducible;
    ``deterministic`` (None: on when there is no GPU) turns TensorFlow's op determinism on
    for the run and back off after it; ``mixed_precision`` sets the dtype policy for the run;
    ``cpu_threads`` / ``cpu_devices`` (None: leave alone) size TensorFlow's CPU thread pools
    and logical devices, which only a process whose TensorFlow has not started yet can do.

    The current recipe (each off by default; see the module docstring): ``optimizer``
    ``"sgd"`` or ``"adamw"`` (``lr`` / ``weight_decay`` None: the optimizer's defaults,
    ``OPTIMIZER_DEFAULTS``); ``ema`` the momentum of the weights' moving average (0: none);
    ``mixup`` / ``cutmix`` Beta alphas (0: none); ``randaugment`` a magnitude in (0, 10] (0:
    none); ``jit_compile`` passed to ``compile`` (None: Keras' ``"auto"``); ``image_size`` an
    integer, ``"keep"`` or None (the dataset's size).

    ``val_fraction`` (0: off) holds that part of each class of the training split out of
    training (fixed, :func:`dmr_keras.data.holdout_split`): the epoch lines' ``val_*`` and
    ``metrics.json``'s ``val_accuracy`` / ``val_loss`` are measured on it, for choosing
    settings, and the test split is measured once, after the last epoch (``test_accuracy``).
    Off, the epoch lines report the test split (never used to select anything).

    ``fused_batchnorm`` (default on): the model's BatchNormalization layers run on
    TensorFlow's fused kernel (:class:`dmr_keras.layers.BatchNormalization`; same weights and
    results to float32 rounding, faster); off, with Keras' own ops. Set for the run, restored
    after; not a run key (a run may resume with the other).
    """

    from dmr_keras import checks, distribute, performance

    model = _model_for(model, init_weights)
    checks.choice("optimizer", optimizer, tuple(OPTIMIZER_DEFAULTS))  # it sets the defaults
    run = dict(model=model, dataset=dataset, epochs=epochs, batch_size=batch_size,
               lr=OPTIMIZER_DEFAULTS[optimizer]["lr"] if lr is None else lr,
               weight_decay=(OPTIMIZER_DEFAULTS[optimizer]["weight_decay"]
                             if weight_decay is None else weight_decay),
               weight_decay_scope=weight_decay_scope,
               schedule=schedule, warmup_epochs=warmup_epochs,
               label_smoothing=label_smoothing,
               zero_init_last_bn=bool(zero_init_last_bn),
               precise_bn=_precise_bn(precise_bn),
               seed=seed, mixed_precision=bool(mixed_precision), init_weights=init_weights,
               freeze_backbone=bool(freeze_backbone), validation_split=validation_split,
               skip_corrupt=bool(skip_corrupt), image_size=image_size, optimizer=optimizer,
               mixup=mixup, cutmix=cutmix, randaugment=randaugment, ema=ema,
               jit_compile=jit_compile, val_fraction=val_fraction)
    run["dataset"] = dataset = _check_arguments(run, strategy, freeze_backbone)
    run["image_size"] = _image_size_of(dataset, image_size)
    output = Path(output or f"runs/{model}-{dataset.replace(':', '_').replace('/', '_')}")
    if not run["dataset"].startswith("folder:"):
        run["validation_split"] = None  # only folders are split; do not tie a run to it
    finished = _prepare_output(output, run, overwrite)
    if finished is not None:
        print(f"{output} already holds this finished run (test accuracy "
              f"{finished['test_accuracy']:.4f}); nothing to do.")
        return finished

    has_gpu = _has_gpu()
    threads = None
    if cpu_threads is not None:
        from zoo.registry import get_variant

        threads = performance.resolve_cpu_threads(
            cpu_threads, num_streams=get_variant(model).config.get("num_branches", 1),
            has_gpu=has_gpu)
        if not performance.configure_cpu_threads(threads, strict=cpu_threads != "auto"):
            threads = "unchanged"
    if cpu_devices:
        distribute.configure_cpu_devices(cpu_devices)
    plan = distribute.make_plan(strategy, batch_size)
    from dmr_keras.training import run_settings

    with run_settings(seed, deterministic, mixed_precision, has_gpu), plan.scope(), \
            performance.fused_batchnorm(fused_batchnorm):
        return _train_run(run, output, plan, data_dir=data_dir, verbose=verbose,
                          threads=threads)


def _fused_batchnorm_used(model) -> bool:
    import keras

    from dmr_keras.layers import BatchNormalization
    from dmr_keras.training import _batchnorm_layers

    return keras.backend.backend() == "tensorflow" and BatchNormalization.fused and any(
        isinstance(layer, BatchNormalization) for layer in _batchnorm_layers(model))


def _train_run(run, output, plan, *, data_dir, verbose, threads):
    import keras

    from dmr_keras import data as data_lib
    from dmr_keras import performance, training
    from dmr_keras.atomic import atomic_path, write_json

    chief = _is_chief(plan)
    output.mkdir(parents=True, exist_ok=True)
    if chief and (not (output / RUN_FILE).exists()
                  or json.loads((output / RUN_FILE).read_text()) != run):
        write_json(output / RUN_FILE, run)  # new, or another FINISH_KEYS value
    ckpt_dir = output / "checkpoints"
    resume = training.latest_checkpoint(ckpt_dir)
    local_epoch = resume["epoch"] if resume else 0
    if plan.name == "multiworker":
        from dmr_keras.multiworker import agree_on_initial_epoch

        local_epoch = agree_on_initial_epoch(plan.strategy, local_epoch)
    initial_epoch = min(local_epoch, run["epochs"])
    seed = run["seed"] if run["seed"] is not None else 0
    train_ds, eval_ds, info = data_lib.load(
        run["dataset"], batch_size=run["batch_size"], seed=seed, data_dir=data_dir,
        validation_split=run["validation_split"] or 0.1, epochs=run["epochs"],
        initial_epoch=initial_epoch, skip_corrupt=run["skip_corrupt"],
        image_size=run["image_size"], randaugment=run["randaugment"], mixup=run["mixup"],
        cutmix=run["cutmix"], holdout_fraction=run["val_fraction"])
    steps = info.train_examples // run["batch_size"]
    if steps < 1:
        raise ValueError(f"The batch size {run['batch_size']} is larger than the training set "
                         f"({info.train_examples} examples).")
    val_ds = _soft_labels(eval_ds, info.num_classes) if _mixing(run) else eval_ds
    _warn_short_ema(run, steps)
    if resume:
        net = keras.saving.load_model(resume["path"])
        print(f"Resuming from epoch {resume['epoch']} ({resume['path']}).")
    else:
        net = _build(run, info, steps)
    checkpoint = training.EpochCheckpoint.continuing(ckpt_dir, resume, enabled=chief)
    checkpoint.set_model(net)
    log_dir = output / "logs"
    hparams = {**run, "strategy": plan.name, "replicas": plan.num_replicas,
               "cpu_threads": threads or "unchanged", "init_weights": run["init_weights"] or ""}
    if chief and keras.backend.backend() == "tensorflow" and not resume:
        training.write_hparams(log_dir / "hparams", hparams)

    print(f"Training {run['model']} on {run['dataset']}: {info.train_examples} images, "
          f"{info.num_classes} classes, {run['epochs']} epochs of {steps} steps, batch "
          f"{run['batch_size']}, {plan.description}")
    extras = [f"{k} {run[k]}" for k in ("label_smoothing", "mixup", "cutmix", "randaugment",
                                          "ema", "jit_compile") if run[k]]
    print(f"Recipe: {run['optimizer']}, lr {run['lr']}, weight decay {run['weight_decay']} "
          f"({'decoupled' if run['optimizer'] == 'adamw' else 'L2'}), input "
          f"{info.image_shape[0]}x{info.image_shape[1]}" + "".join(f", {e}" for e in extras))
    if run["val_fraction"]:
        print(f"val_* in the epoch lines is measured on {info.eval_examples} images held out of "
              f"the training split (val_fraction {run['val_fraction']:g}); the test split is "
              "measured once, after the last epoch.")
    else:
        print(f"val_* in the epoch lines is measured on the {info.eval_split} split "
              f"({info.eval_examples} images): reported, never used to select an epoch or "
              "setting.")
    start = time.perf_counter()
    if initial_epoch < run["epochs"]:
        _fit(net, plan, train_ds, val_ds, run["epochs"], initial_epoch, steps, checkpoint,
             log_dir, run["batch_size"], verbose)
    else:
        print(f"The checkpoints already hold {initial_epoch} epochs; finishing the run.")
    wall = time.perf_counter() - start
    if run["ema"]:
        # The model takes the moving average of its weights: what is measured, saved and
        # published from here on. fit() did it already; a run whose checkpoints held every
        # epoch did not run fit, so it is done here (twice is the same).
        net.optimizer.finalize_variable_values(net.trainable_weights)
        print(f"The model's weights are now their moving average (--ema {run['ema']}).")

    if run["precise_bn"]:
        augmented = run["precise_bn"] == "augmented"  # else the images without augmentation
        with warnings.catch_warnings():  # the first load already named the skipped files
            warnings.filterwarnings("ignore", message="skip_corrupt:")
            batches, _, _ = data_lib.load(
                run["dataset"], batch_size=run["batch_size"], seed=seed, data_dir=data_dir,
                augment=augmented, epochs=1, validation_split=run["validation_split"] or 0.1,
                skip_corrupt=run["skip_corrupt"], image_size=run["image_size"],
                randaugment=run["randaugment"], mixup=run["mixup"], cutmix=run["cutmix"],
                holdout_fraction=run["val_fraction"])  # the images it trained on
        training.precise_batchnorm(net, batches, max_batches=max(1, min(steps, 100)))
    held_out = None
    if run["val_fraction"]:  # the held-out part, then the test split: once, now
        val_loss, val_acc, _ = _evaluate(net, plan, eval_ds, val_ds)
        held_out = dict(val_accuracy=float(val_acc), val_loss=float(val_loss),
                        val_examples=info.eval_examples, train_examples=info.train_examples)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="skip_corrupt:")
            _, eval_ds, info = data_lib.load(
                run["dataset"], batch_size=run["batch_size"], seed=seed, data_dir=data_dir,
                augment=False, epochs=1, validation_split=run["validation_split"] or 0.1,
                skip_corrupt=run["skip_corrupt"], image_size=run["image_size"])
        val_ds = _soft_labels(eval_ds, info.num_classes) if _mixing(run) else eval_ds
    test_loss, test_acc, test_top5 = _evaluate(net, plan, eval_ds, val_ds)
    trained = run["epochs"] - initial_epoch
    data_record = dict(num_classes=info.num_classes, image_shape=list(info.image_shape),
                       mean=list(info.mean), std=list(info.std),
                       class_names=list(info.class_names) if info.class_names else None,
                       source=info.source, eval_split=info.eval_split,
                       skipped=list(info.skipped))
    if info.source in ("folder", "cifar-python") and chief:
        root = data_dir if data_dir and not run["dataset"].startswith("folder:") else \
            run["dataset"][len("folder:"):]
        data_record["sha256"] = data_lib.content_sha256(root)
    times = checkpoint.epoch_times
    metrics = dict(
        model=run["model"], dataset=run["dataset"], epochs=run["epochs"],
        resumed_from_epoch=initial_epoch, test_accuracy=float(test_acc),
        test_loss=float(test_loss),
        # Top-5 as a fraction, for more than 5 classes (None: fewer, or a multi-worker run).
        test_top5=float(test_top5) if test_top5 is not None else None,
        wall_time_s=round(wall, 2),
        # Summed over every attempt of a resumed run; epochs_timed < epochs when some epochs
        # ran under a dmr-train that did not time them.
        train_time_s=round(sum(times.values()), 1), epochs_timed=len(times),
        eval_split=info.eval_split,
        # With val_fraction: the held-out part of the training split (val_*, its size and
        # the images trained on); None without.
        held_out=held_out,
        train_images_per_s=round(trained * steps * run["batch_size"] / wall, 1)
        if wall > 0 and trained else None,
        trainable_params=int(sum(math.prod(w.shape) for w in net.trainable_weights)),
        history=checkpoint.history, hparams=hparams, command=training.command_line(),
        data=data_record,
        versions=training.package_versions(("dmr-keras", "keras", "tensorflow", "numpy")),
        backend=keras.backend.backend(),
        # TensorFlow's oneDNN kernels on/off in this (last) attempt; None on other backends.
        onednn=performance.onednn_enabled() if keras.backend.backend() == "tensorflow" else None,
        # Whether BatchNormalization trained with TensorFlow's fused kernel in this attempt.
        fused_batchnorm=_fused_batchnorm_used(net),
    )
    # Every worker saves (a collective operation under a multi-worker strategy); only the
    # chief keeps its files.
    with (atomic_path(output / "model.keras") if chief else training.scratch_path(".keras")
          ) as tmp:
        net.save(tmp)
    with (atomic_path(output / "model.weights.h5") if chief
          else training.scratch_path(".weights.h5")) as tmp:
        net.save_weights(tmp)
    if chief:
        training.plot_history(checkpoint.history, output / "curves.png",
                              title=f"{run['model']} on {run['dataset']}")
        write_json(output / "metrics.json", metrics)  # last: its presence means "finished"
    print(f"{info.eval_split} accuracy {test_acc:.4f}  {info.eval_split} loss {test_loss:.4f}  "
          f"({info.eval_examples} {info.eval_split} images)  wall time {wall:.1f} s  -> {output}")
    return metrics


def _fit(net, plan, train_ds, eval_ds, epochs, initial_epoch, steps, checkpoint, log_dir,
         batch_size, verbose):
    import keras

    if plan.name == "multiworker":
        from dmr_keras.multiworker import fit_distributed

        fit_distributed(
            net, optimizer=net.optimizer, loss=net.loss, train_dataset=train_ds,
            eval_dataset=eval_ds, epochs=epochs, strategy=plan.strategy,
            initial_epoch=initial_epoch, global_batch_size=batch_size,
            steps_per_epoch=steps, on_epoch_end=checkpoint.on_epoch_end, verbose=min(verbose, 2))
        return
    callbacks = [checkpoint]
    if keras.backend.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
    net.fit(train_ds, validation_data=eval_ds, epochs=epochs, initial_epoch=initial_epoch,
            steps_per_epoch=steps, callbacks=callbacks, verbose=min(verbose, 2),
            shuffle=False)  # the dataset is shuffled per (seed, epoch) itself


def _evaluate(net, plan, eval_ds, val_ds):
    """``(loss, accuracy, top-5 or None)`` on the eval set: the plain cross-entropy (no
    weight-decay term, no label smoothing, unlike the compiled loss), top-1 and (more than 5
    classes) top-5 as fractions. ``val_ds``: the eval set with the labels of the compiled loss
    (one-hot under MixUp / CutMix)."""
    if plan.name == "multiworker":  # Keras's evaluate fails under MWMS like fit does
        from dmr_keras.multiworker import evaluate_distributed

        result = evaluate_distributed(net, loss=net.loss, dataset=val_ds,
                                      strategy=plan.strategy)
        return result["loss"], result["accuracy"], None
    from zoo.evaluate import measure

    result = measure(net, eval_ds)
    top5 = result["top5"] / 100.0 if int(net.output_shape[-1]) > 5 else None
    return result["loss"], result["top1"] / 100.0, top5


def _mixing(run) -> bool:
    return bool(run["mixup"] or run["cutmix"])


def _soft_labels(dataset, num_classes):
    """``dataset`` with one-hot float32 labels: the eval set as the compiled loss and metrics
    of a MixUp / CutMix run take it (zoo.evaluate.measure keeps the integer labels)."""
    import tensorflow as tf

    return dataset.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), num_classes)),
                       num_parallel_calls=tf.data.AUTOTUNE)


def _warn_short_ema(run, steps):
    """A warning when the run is too short for its EMA momentum: the initial weights (Keras'
    average starts from them) still weigh over 1 % in the final average."""
    if not run["ema"]:
        return
    total = run["epochs"] * steps
    left = run["ema"] ** max(total - 1, 0)
    if left > 0.01:
        warnings.warn(
            f"--ema {run['ema']} averages about {1 / (1 - run['ema']):.0f} steps, but the run "
            f"has {total}: the initial weights still weigh {left:.0%} in the final average. "
            f"Use a smaller momentum (under {0.01 ** (1 / max(total - 1, 1)):.4f}) or more "
            "epochs.", UserWarning, stacklevel=3)


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
    path, classes, entry = resolve_weights(source_model, weights)
    return get_variant(source_model), path, classes, entry


def _build(run, info, steps):
    """The model, compiled with the recipe: the optimizer (SGD Nesterov with L2 weight decay in
    the model, or AdamW with decoupled decay and none in the model), the schedule, the loss
    (soft labels under MixUp / CutMix), accuracy and top-5."""

    from dmr_keras import training
    from zoo.registry import create_model, load_pretrained

    adamw = run["optimizer"] == "adamw"
    reg = None if adamw else training.kernel_weight_decay(run["weight_decay"])
    net = create_model(run["model"], classes=info.num_classes, input_shape=info.image_shape,
                       kernel_regularizer=reg,
                       bias_regularizer=reg if run["weight_decay_scope"] == "all" else None,
                       zero_init_last_bn=run["zero_init_last_bn"])
    if run["init_weights"]:
        variant, path, classes, entry = _init_source(run["init_weights"], run["model"])
        copied = load_pretrained(net, variant, path, classes, skip_head=True, entry=entry)
        print(f"Initialised {len(copied)} layers from {run['init_weights']}; new head for "
              f"{info.num_classes} classes.")
        if run["freeze_backbone"]:
            training.freeze_backbone(net)
    sched = training.learning_rate_schedule(
        run["schedule"], run["lr"], run["epochs"], steps,
        imagenet=run["dataset"] == "imagenet2012", warmup_epochs=run["warmup_epochs"])
    optimizer = training.make_optimizer(
        sched, run["optimizer"], weight_decay=run["weight_decay"] if adamw else 0.0,
        weight_decay_scope=run["weight_decay_scope"], ema=run["ema"])
    soft = _mixing(run)
    jit = {} if run["jit_compile"] is None else {"jit_compile": bool(run["jit_compile"])}
    net.compile(optimizer=optimizer, loss=training.make_loss(run["label_smoothing"], soft),
                metrics=training.make_metrics(info.num_classes, soft), **jit)
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
    from dmr_keras.performance import CPU_THREADS, ONEDNN

    d = DEFAULTS
    p.add_argument("--model", default=None,
                   help=f"registered model name (dmr-zoo list); default: the model of a zoo key "
                        f"in --init-weights, else {d['model']}")
    p.add_argument("--dataset", default=d["dataset"],
                   help="cifar10 | cifar100 | svhn | imagenet2012 | digits | folder:PATH")
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="global batch size")
    p.add_argument("--lr", type=float, default=d["lr"],
                   help="base learning rate; None: 0.1 with sgd, 0.001 with adamw")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="sgd: as MXNet's wd, an L2 term whose gradient is wd * w; adamw: "
                        "decoupled, w -= lr * wd * w each step, no L2 term. None: 1e-4 with "
                        "sgd, 0.05 with adamw")
    p.add_argument("--optimizer", default=d["optimizer"], choices=list(OPTIMIZER_DEFAULTS),
                   help="sgd: Nesterov momentum 0.9 (the paper's); adamw: AdamW")
    p.add_argument("--weight-decay-scope", default=d["weight_decay_scope"],
                   choices=WEIGHT_DECAY_SCOPES,
                   help="'all': every parameter, as the reference code; 'kernels': conv and "
                        "dense kernels only")
    p.add_argument("--schedule", default=d["schedule"], choices=["paper", "cosine"])
    p.add_argument("--warmup-epochs", type=float, default=d["warmup_epochs"],
                   help="linear learning-rate warm-up from lr/10 over this many epochs, ending "
                        "before the first decay (0: none, as the reference code)")
    p.add_argument("--label-smoothing", type=float, default=d["label_smoothing"],
                   help="label smoothing of the cross-entropy target (0: none, as the paper)")
    c = FLAG_CONSTS
    p.add_argument("--mixup", type=float, nargs="?", const=c["mixup"], default=d["mixup"],
                   metavar="ALPHA",
                   help=f"MixUp on the train batches, weights ~ Beta(ALPHA, ALPHA); bare: "
                        f"{c['mixup']} (0: none). Labels become soft")
    p.add_argument("--cutmix", type=float, nargs="?", const=c["cutmix"], default=d["cutmix"],
                   metavar="ALPHA",
                   help=f"CutMix on the train batches, kept area ~ Beta(ALPHA, ALPHA); bare: "
                        f"{c['cutmix']} (0: none). With --mixup, one of the two per batch")
    p.add_argument("--randaugment", type=float, nargs="?", const=c["randaugment"],
                   default=d["randaugment"], metavar="M",
                   help=f"RandAugment, 2 operations per train image at magnitude M of 10; "
                        f"bare: {c['randaugment']:g} (0: none)")
    p.add_argument("--ema", type=float, nargs="?", const=c["ema"], default=d["ema"],
                   metavar="MOMENTUM",
                   help=f"keep a moving average of the weights (bare: {c['ema']}; 0: none); "
                        "the final model (saved, evaluated) holds the average, val_* per epoch "
                        "the raw weights")
    p.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                   default=d["jit_compile"],
                   help="XLA-compile the train step; None: Keras' 'auto' (XLA on a GPU, "
                        "off under op determinism, the CPU default)")
    p.add_argument("--image-size", type=_image_size_arg, default=d["image_size"],
                   metavar="N|keep",
                   help="input side: folder images resized to N x N, or 'keep' their own "
                        "(common) size; imagenet2012: N; the 32x32 datasets: 32. None: the "
                        "dataset's (folders 32, imagenet2012 224)")
    p.add_argument("--zero-init-last-bn", action=argparse.BooleanOptionalAction,
                   default=d["zero_init_last_bn"],
                   help="start each residual branch's last BN scale at 0 (blocks start as "
                        "their skip mapping)")
    p.add_argument("--precise-bn", nargs="?", const="plain", default=d["precise_bn"],
                   choices=["plain", "augmented"], metavar="plain|augmented",
                   help="before evaluating, recompute BN statistics with the final weights over "
                        "up to 100 training batches: 'plain' (the default, also the bare flag) "
                        "without augmentation, 'augmented' as trained (pycls / detectron2)")
    p.add_argument("--no-precise-bn", dest="precise_bn", action="store_false",
                   help="evaluate with the moving averages training ended with")
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
    p.add_argument("--data-dir", default=None,
                   help="cifar10/cifar100: a folder with train/<class>/ + test/<class>/ images, "
                        "the official python files or a TFDS data dir; other TFDS datasets: "
                        "the TFDS data_dir (ImageNet: manual files)")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="folder datasets (and CIFAR train/ + test/ folders): leave out "
                        "unreadable or corrupt image files, listed in a warning and in "
                        "metrics.json (data.skipped), instead of stopping")
    p.add_argument("--validation-split", type=float, default=d["validation_split"],
                   help="folder datasets without train/test folders: fraction of each class "
                        "held out as their test split")
    p.add_argument("--val-fraction", type=float, default=d["val_fraction"],
                   help="for model selection: fraction of each class of the training split "
                        "held out (fixed) and reported as val_* every epoch; the test split is "
                        "then measured once, after the last epoch (0: off, val_* is the test "
                        "split)")
    p.add_argument("--verbose", type=int, default=d["verbose"],
                   help="0 silent, 1 bar, 2 lines, 3 lines and TensorFlow's own start-up logs")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="TensorFlow op determinism (default: on without a GPU)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a run with other settings in --output and start again")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into N logical devices (for --strategy mirrored on CPU)")
    p.add_argument("--cpu-threads", default=d["cpu_threads"],
                   choices=CPU_THREADS,
                   help="TensorFlow CPU threads: 'inter' runs parallel branches on separate cores "
                        "(auto: 'inter' for multi-branch models without a GPU; see "
                        "docs/benchmarks.md)")
    p.add_argument("--fused-batchnorm", action=argparse.BooleanOptionalAction,
                   default=d["fused_batchnorm"],
                   help="BatchNormalization on TensorFlow's fused kernel (same weights, "
                        "results to float32 rounding; bench/fused_batchnorm.py)")
    p.add_argument("--onednn", default="auto", choices=ONEDNN,
                   help="TensorFlow's oneDNN CPU kernels (auto: on, unless TF_ENABLE_ONEDNN_OPTS "
                        "is set; on trains dmrnet_56 1.6-2.1x faster than off, "
                        "docs/benchmarks.md)")
    return p


def _image_size_arg(text: str):
    if text.strip().lower() == "keep":
        return "keep"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or 'keep', got {text!r}") from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = vars(args)
    from dmr_keras.startup import run_command, start_backend

    status = run_command("dmr-train", start_backend, verbose=kwargs["verbose"] >= 3,
                         onednn=kwargs.pop("onednn"))
    if status:
        return status
    return run_command("dmr-train", train, kwargs.pop("model"), kwargs.pop("dataset"), **kwargs)


if __name__ == "__main__":
    raise SystemExit(main())
