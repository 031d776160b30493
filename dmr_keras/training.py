"""The paper's training recipe and the pieces of a run that survives a kill.

- :func:`learning_rate_schedule`: ``paper`` (x0.1 at 1/2, 3/4 and 7/8 of training, the
  reference CIFAR recipe; every 30 epochs for ImageNet) or ``cosine``.
- :func:`make_optimizer`: SGD, Nesterov momentum 0.9 (the paper's), or :class:`AdamW`
  (decoupled weight decay); either with an exponential moving average of the weights.
- :func:`kernel_weight_decay`: weight decay on convolution and dense kernels only, as an L2 loss
  ``(wd / 2) * ||w||^2`` whose gradient is ``wd * w``: what MXNet's ``wd`` does (SGD only).
- :func:`make_loss`, :func:`make_metrics`: cross-entropy (integer or soft labels, label
  smoothing), accuracy and top-5.
- :class:`EpochCheckpoint`: after every epoch, the whole model (weights, optimizer state, step)
  as ``.keras`` plus a small JSON state, each written atomically; :func:`latest_checkpoint`
  finds the newest complete one.
- :func:`transfer_weights`: copy weights by stable layer name (for fine-tuning with a new head).
- :func:`write_hparams`, :func:`plot_history`: TensorBoard hyperparameters and a curves PNG.

Uses Keras only (any backend) except :func:`write_hparams` (TensorBoard's summary API).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import keras

from dmr_keras import checks
from dmr_keras.atomic import atomic_path, write_json

SCHEDULES = ("paper", "cosine")
OPTIMIZERS = ("sgd", "adamw")
CHECKPOINT_STATE = "checkpoint.json"


@keras.saving.register_keras_serializable(package="dmr_keras")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """A linear learning-rate warm-up in front of another schedule.

    For ``step < warmup_steps`` the rate rises linearly from ``start_factor * after(0)`` to
    ``after(0)``; from then on it is ``after(step)`` (the wrapped schedule is not shifted, so its
    boundaries stay where the paper puts them). He et al. (2016) warmed ResNet-110 up at a tenth
    of the rate for about one epoch; Goyal et al. (2017) made the rise linear.
    """

    def __init__(self, after, warmup_steps: int, start_factor: float = 0.1):
        self.after = after
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        target = ops.cast(self.after(0), "float32")
        frac = ops.minimum(step / max(self.warmup_steps, 1), 1.0)
        warm = target * (self.start_factor + (1.0 - self.start_factor) * frac)
        return ops.where(step < self.warmup_steps, warm, ops.cast(self.after(step), "float32"))

    def get_config(self):
        return {
            "after": keras.optimizers.schedules.serialize(self.after),
            "warmup_steps": self.warmup_steps,
            "start_factor": self.start_factor,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["after"] = keras.optimizers.schedules.deserialize(config["after"])
        return cls(**config)


def learning_rate_schedule(
    name: str, base_lr: float, epochs: int, steps_per_epoch: int, imagenet: bool = False,
    warmup_epochs: float = 0,
):
    """A per-step learning-rate schedule.

    ``paper``: the reference code's steps, x0.1 at 1/2, 3/4 and 7/8 of the run (CIFAR, SVHN,
    digits, folders), or x0.1 every 30 epochs for ImageNet. ``cosine``: cosine decay to 0.
    ``warmup_epochs`` > 0 puts a linear warm-up from a tenth of ``base_lr`` in front
    (:class:`Warmup`); it ends at least one step before the first decay.
    """
    if name not in SCHEDULES:
        raise ValueError(f"Unknown `schedule`: {name!r}. Valid values: {', '.join(SCHEDULES)}")
    checks.number("warmup_epochs", warmup_epochs, 0)
    total = max(1, epochs * steps_per_epoch)
    if name == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(base_lr, decay_steps=total)
    else:
        if imagenet:
            boundaries = [e * steps_per_epoch for e in range(30, epochs, 30)]
        else:
            boundaries = sorted({max(1, int(total * f)) for f in (0.5, 0.75, 0.875)})
        if not boundaries:
            boundaries = [total]
            values = [base_lr, base_lr]
        else:
            values = [base_lr * 0.1**i for i in range(len(boundaries) + 1)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if warmup_steps > 0:
        if name == "paper":
            warmup_steps = min(warmup_steps, max(schedule.boundaries[0] - 1, 1))
        schedule = Warmup(schedule, warmup_steps)
    return schedule


@keras.saving.register_keras_serializable(package="dmr_keras")
class SparseCrossentropy(keras.losses.Loss):
    """Cross-entropy with integer labels and label smoothing (Szegedy et al., 2016): the target
    is ``(1 - label_smoothing) * one_hot + label_smoothing / classes``. Keras'
    ``SparseCategoricalCrossentropy`` has no smoothing and ``CategoricalCrossentropy`` needs
    one-hot labels; this takes the pipelines' int64 labels as they are."""

    def __init__(self, label_smoothing: float = 0.0, from_logits: bool = False,
                 name: str = "sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        checks.number("label_smoothing", label_smoothing, 0)
        if label_smoothing >= 1:
            raise ValueError("`label_smoothing` must be in [0, 1). "
                             f"Received: label_smoothing={label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        ops = keras.ops
        labels = ops.cast(ops.reshape(y_true, [-1]), "int32")
        target = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            target, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing,
                "from_logits": self.from_logits}


def make_loss(label_smoothing: float = 0.0, soft_labels: bool = False) -> keras.losses.Loss:
    """The training loss on softmax outputs: Keras' sparse cross-entropy, or
    :class:`SparseCrossentropy` when ``label_smoothing`` > 0. ``soft_labels`` (the one-hot or
    mixed labels of MixUp / CutMix): Keras' ``CategoricalCrossentropy`` with the smoothing
    (the target is ``(1 - label_smoothing) * labels + label_smoothing / classes``)."""
    if soft_labels:
        checks.number("label_smoothing", label_smoothing, 0)
        return keras.losses.CategoricalCrossentropy(label_smoothing=float(label_smoothing))
    if label_smoothing:
        return SparseCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy()


def make_metrics(num_classes: int, soft_labels: bool = False) -> list:
    """``accuracy`` (top-1) and, with more than 5 classes, ``top5``; for integer labels, or for
    one-hot / mixed ``soft_labels`` (then measured against each label's largest entry)."""
    if soft_labels:
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        top5 = keras.metrics.TopKCategoricalAccuracy
    else:
        metrics = ["accuracy"]
        top5 = keras.metrics.SparseTopKCategoricalAccuracy
    if num_classes > 5:
        metrics.append(top5(k=5, name="top5"))
    return metrics


# Trainable variables that are not convolution or dense kernels (bias, BN gamma and beta):
# what weight_decay_scope="kernels" leaves out of AdamW's decay. Matched (re.search) against
# the name of the backend variable: "kernel" here, "kernel:0" or "kernel/replica_1:0" in
# TensorFlow, whose optimizer passes its tf.Variable.
_NOT_A_KERNEL = r"^(?!.*kernel(?:[:/][^/]*)*$)"


@keras.saving.register_keras_serializable(package="dmr_keras")
class AdamW(keras.optimizers.AdamW):
    """Keras' ``AdamW`` (decoupled weight decay, Loshchilov & Hutter, 2019: each step
    ``w -= lr * weight_decay * w`` besides the Adam update, as PyTorch's AdamW), with the
    decay's scope saved in its config: ``kernels_only=True`` decays convolution and dense
    kernels only (``exclude_from_weight_decay`` alone is lost when a model is saved and cannot
    be set again on a loaded, built optimizer)."""

    def __init__(self, *args, kernels_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.kernels_only = bool(kernels_only)
        if self.kernels_only:
            self.exclude_from_weight_decay(var_names=[_NOT_A_KERNEL])

    def get_config(self):
        return {**super().get_config(), "kernels_only": self.kernels_only}


def make_optimizer(schedule, name: str = "sgd", *, weight_decay: float = 0.0,
                   weight_decay_scope: str = "all", ema: float = 0.0
                   ) -> keras.optimizers.Optimizer:
    """The optimizer of a run, on the learning-rate ``schedule`` (or a number).

    ``sgd``: SGD with Nesterov momentum 0.9 (the reference recipe); its weight decay is the
    models' L2 regulariser (:func:`kernel_weight_decay`), so ``weight_decay`` must be 0 here.
    ``adamw``: :class:`AdamW` with decoupled ``weight_decay`` (scaled by the learning rate, as
    in PyTorch) on every trainable variable (``weight_decay_scope="all"``) or on kernels only
    (``"kernels"``); the model then carries no L2 term. ``ema`` > 0: the optimizer also keeps
    an exponential moving average of the trainable weights with that momentum (Keras'
    ``use_ema``; the average is part of the optimizer's saved state), which
    ``optimizer.finalize_variable_values`` (and the end of ``fit``) copies into the model.
    """
    checks.choice("optimizer", name, OPTIMIZERS)
    checks.number("weight_decay", weight_decay, 0)
    check_ema(ema)
    averaging = dict(use_ema=True, ema_momentum=float(ema)) if ema else {}
    if name == "sgd":
        if weight_decay:
            raise ValueError("SGD's weight decay is the models' L2 regulariser "
                             "(kernel_weight_decay); pass weight_decay=0 to make_optimizer. "
                             f"Received: weight_decay={weight_decay!r}")
        return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True,
                                    **averaging)
    return AdamW(learning_rate=schedule, weight_decay=float(weight_decay),
                 kernels_only=weight_decay_scope == "kernels", **averaging)


def ema_weights(optimizer) -> list | None:
    """The moving averages an ``ema`` optimizer keeps, as arrays in the order of the model's
    ``trainable_weights`` (None without EMA, or before the optimizer's first step). A
    ``LossScaleOptimizer`` (mixed_float16) is looked through."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    averages = getattr(inner, "_model_variables_moving_average", None)
    if not getattr(inner, "use_ema", False) or not averages:
        return None
    return [keras.ops.convert_to_numpy(v) for v in averages]


def check_ema(ema) -> float:
    """``ema``: 0 (no average) or a momentum in (0, 1)."""
    checks.number("ema", ema, 0)
    if ema >= 1:
        raise ValueError("`ema` is the momentum of the weights' moving average, in (0, 1) "
                         f"(e.g. 0.999), or 0 for none. Received: ema={ema!r}")
    return float(ema)


def kernel_weight_decay(weight_decay: float):
    """An L2 regulariser equal to MXNet-style weight decay ``wd`` on kernels (None for 0)."""
    checks.number("weight_decay", weight_decay, 0)
    return keras.regularizers.L2(weight_decay / 2) if weight_decay > 0 else None


# ---- the global settings of one run ---------------------------------------------------------

@contextlib.contextmanager
def run_settings(seed: int | None = None, deterministic: bool | None = None,
                 mixed_precision: bool = False, has_gpu: bool = False):
    """Global settings for the duration of one run, restored after it where they can be.

    - ``seed`` (not None): ``keras.utils.set_random_seed(seed)`` (Python, NumPy, backend), so
      the initial weights are reproducible. Random generators cannot be un-seeded; pass None to
      leave them alone.
    - ``deterministic``: TensorFlow op determinism on (True) or off (False) for the run, then
      back as it was; None means on without a GPU (CPU kernels are deterministic at little
      cost), left alone with one.
    - ``mixed_precision``: ``mixed_float16`` on a GPU, else ``mixed_bfloat16``, then the previous
      policy again.

    Library functions call this only with what their caller asked for; the CLI entry points
    pass their flags.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    restore = None
    if keras.backend.backend() == "tensorflow":
        from tensorflow.python.framework import config as tf_config

        want = (not has_gpu) if deterministic is None else bool(deterministic)
        was = tf_config.is_op_determinism_enabled()
        if want != was:
            (tf_config.enable_op_determinism if want else tf_config.disable_op_determinism)()
            restore = was
    previous_policy = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy("mixed_float16" if has_gpu else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if restore is not None:
            from tensorflow.python.framework import config as tf_config

            (tf_config.enable_op_determinism if restore else tf_config.disable_op_determinism)()


# ---- batch-norm statistics ------------------------------------------------------------------

def _batchnorm_layers(layer):
    found = []
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(sub, keras.layers.BatchNormalization):
            found.append(sub)
    return found


def precise_batchnorm(model: keras.Model, batches, max_batches: int = 100) -> int:
    """Replace every BatchNorm's moving statistics by their average over ``batches``.

    "Precise BN" (Wu & Johnson, 2021; timm, detectron2): the moving averages a run ends with
    weight its last steps most, taken while the weights still moved; evaluation is better served
    by the equal-weight average of the batch statistics of the final weights. ``batches`` yields
    images (or ``(images, labels)``), typically the training set without augmentation. Each
    layer's momentum is set to ``i / (i + 1)`` for the i-th batch, so the moving value becomes
    the running mean, then restored. Weights other than the moving statistics are unchanged.
    Returns the number of batches used.
    """
    bns = _batchnorm_layers(model)
    if not bns:
        return 0
    saved = [bn.momentum for bn in bns]
    used = 0
    try:
        for batch in batches:
            if used >= max_batches:
                break
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            for bn in bns:
                bn.momentum = used / (used + 1)
            model(images, training=True)
            used += 1
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
    return used


# ---- checkpoints ----------------------------------------------------------------------------

def latest_checkpoint(directory) -> dict | None:
    """The newest complete checkpoint's state (``epoch``, ``path``, ``history``), or None."""
    state_path = Path(directory) / CHECKPOINT_STATE
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as err:  # written atomically, so this is outside damage
        raise ValueError(
            f"Checkpoint state {state_path} is unreadable ({err}). Delete {directory} to start "
            "the run from scratch."
        ) from err
    path = Path(directory) / state["file"]
    if not path.exists():
        raise ValueError(
            f"Checkpoint state {state_path} names {path}, which is missing. Delete {directory} "
            "to start the run from scratch."
        )
    return {**state, "path": str(path)}


@contextlib.contextmanager
def scratch_path(suffix: str):
    """A temporary file path, removed afterwards: where a non-chief worker of a multi-worker
    run saves (every worker must take part in a save, since reading distributed variables
    runs collective ops; only the chief's copy is kept)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dmr-worker-") as tmp:
        yield Path(tmp) / f"discard{suffix}"


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the full model after every epoch, atomically, and record it in ``checkpoint.json``.

    The ``.keras`` file holds weights, optimizer variables and the step counter, so a resumed
    run continues the learning-rate schedule where it stopped. The state file is replaced only
    after the model file is complete; older checkpoints beyond ``keep`` are removed after that.
    ``history`` carries the per-epoch logs of earlier (killed) attempts. With
    ``enabled=False`` (a non-chief worker) the model is still saved, to a scratch file that is
    removed, because a save under a multi-worker strategy is a collective operation.
    ``weights_only=True`` saves ``epoch-NNNN.weights.h5`` (``model.save_weights``: the weights
    and, once the optimizer is built, its variables and step counter) instead, for a model that
    is rebuilt from code before it is resumed (a tuning trial).
    """

    def __init__(self, directory, history: dict | None = None, keep: int = 2, enabled=True,
                 epoch_times: dict | None = None, weights_only: bool = False):
        super().__init__()
        self.weights_only = bool(weights_only)
        self.suffix = ".weights.h5" if self.weights_only else ".keras"
        self.directory = Path(directory)
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.keep = keep
        self.enabled = enabled
        # {"epoch number": wall seconds} over every attempt (a killed attempt's unfinished
        # epoch is not counted); the run's CPU/GPU time is the sum.
        self.epoch_times = dict(epoch_times or {})
        self._started = None

    @classmethod
    def continuing(cls, directory, state: dict | None, **kwargs) -> EpochCheckpoint:
        """An ``EpochCheckpoint`` that carries on from ``state`` (what
        :func:`latest_checkpoint` returned for ``directory``, or None for a fresh run): its
        history and epoch times go on from the saved ones."""
        state = state or {}
        return cls(directory, history=state.get("history"),
                   epoch_times=state.get("epoch_times_s"), **kwargs)

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self._started is not None:
            self.epoch_times[str(epoch + 1)] = round(time.perf_counter() - self._started, 3)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        save = self.model.save_weights if self.weights_only else self.model.save
        if not self.enabled:
            with scratch_path(self.suffix) as tmp:
                save(tmp)
            return
        name = f"epoch-{epoch + 1:04d}{self.suffix}"
        with atomic_path(self.directory / name) as tmp:
            save(tmp)
        write_json(self.directory / CHECKPOINT_STATE,
                   {"epoch": epoch + 1, "file": name, "history": self.history,
                    "epoch_times_s": self.epoch_times})
        for old in sorted(self.directory.glob(f"epoch-*{self.suffix}"))[: -self.keep]:
            old.unlink()


# ---- fine-tuning ----------------------------------------------------------------------------

def transfer_weights(source: keras.Model, target: keras.Model, skip=("predictions",)) -> list:
    """Copy weights from ``source`` to ``target`` layer by layer, matched by stable name.

    Layers named in ``skip`` (the classifier) and layers without weights are left alone.
    Raises ``ValueError`` if a same-named layer has other shapes or nothing matches.
    """
    copied = []
    for layer in target.layers:
        if layer.name in skip or not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            continue
        src_shapes = [tuple(w.shape) for w in src.weights]
        dst_shapes = [tuple(w.shape) for w in layer.weights]
        if src_shapes != dst_shapes:
            origin = (f"'{source.name}'" if source.name != target.name
                      else "the same model name built with other arguments")
            raise ValueError(
                f"Cannot load weights into layer '{layer.name}' of '{target.name}': it expects "
                f"shapes {_shapes_text(dst_shapes)}, the source has {_shapes_text(src_shapes)}. "
                f"The weights come from another architecture ({origin})."
            )
        layer.set_weights(src.get_weights())
        copied.append(layer.name)
    if not copied:
        raise ValueError(
            f"No layer of '{target.name}' matches a layer of '{source.name}' by name: the "
            "weights come from another architecture."
        )
    return copied


def _shapes_text(shapes, limit: int = 4) -> str:
    """``[(3, 3, 3, 16), (16,)]``, cut after ``limit`` shapes (a block has dozens)."""
    more = f", ... {len(shapes) - limit} more" if len(shapes) > limit else ""
    return "[" + ", ".join(str(s) for s in shapes[:limit]) + more + "]"


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FILE_KINDS = {
    "weights": ("a readable Keras weights file (.weights.h5, HDF5)",
                "download or copy it again, or save it anew with model.save_weights(PATH)"),
    "keras": ("a readable Keras model file (.keras, a zip archive)",
              "download or copy it again, or save it anew with model.save(PATH)"),
}


def describe_unreadable_file(path, kind: str = "weights", detail: str = "") -> str:
    """One line saying why ``path`` is not a readable ``kind`` file (``"weights"``:
    ``.weights.h5``; ``"keras"``: ``.keras``) and the fix: truncated (read from h5py's error
    text ``detail``), empty, a Git LFS pointer, an error page, text, the other format, ..."""
    import re

    path = Path(path)
    label, fix = _FILE_KINDS[kind]
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        return f"{path} cannot be read: {err.strerror or err}."
    truncated = re.search(r"\beof = (\d+).*stored_eof = (\d+)", detail)
    if size == 0:
        what = "it is empty (0 bytes)"
    elif truncated:
        what = (f"it is truncated ({int(truncated[1]):,} of {int(truncated[2]):,} bytes: an "
                "interrupted download or copy?)")
    elif head.startswith(b"version https://git-lfs"):
        what, fix = "it is a Git LFS pointer, not the file itself", "run `git lfs pull`"
    elif head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
        what = "it is an HTML / XML / JSON page (an error page saved by a failed download?)"
    elif kind == "weights" and head.startswith(b"PK\x03\x04"):
        what = "it is a zip archive (a whole .keras model?), not HDF5"
        fix = "if it is a saved model, name it NAME.keras"
    elif kind == "keras" and head.startswith(_HDF5_SIGNATURE):
        what = "it is an HDF5 file (weights?), not a zip archive"
        fix = "if it holds weights, name it NAME.weights.h5"
    elif kind == "keras" and head.startswith(b"PK"):
        what = f"it is a truncated or damaged zip archive ({size:,} bytes)"
    elif head.startswith(_HDF5_SIGNATURE):
        what = f"it is a damaged HDF5 file ({detail.split('(', 1)[-1].rstrip(')') or 'unreadable'})"
    elif _is_text(head):
        start = head.decode("utf-8").strip().splitlines()[0][:30]
        what = f"it is a text file, starting {start!r}"
    else:
        what = "no HDF5 signature" if kind == "weights" else "it is not a zip archive"
    return f"{path} is not {label}: {what}. Fix: {fix}."


def _is_text(head: bytes) -> bool:
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(decoded.strip()) and all(c.isprintable() or c.isspace() for c in decoded)


@contextlib.contextmanager
def open_weights_h5(path):
    """The ``h5py.File`` of a Keras 3 ``.weights.h5``, read-only. A file h5py cannot open
    (truncated, empty, not HDF5) or without a ``layers`` group raises ``ValueError``: one line
    naming the file, what is wrong and the fix (:func:`describe_unreadable_file`)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:  # h5py: "Unable to synchronously open file (truncated file: ...)"
        raise ValueError(describe_unreadable_file(path, "weights", str(err))) from None
    with f:
        if not isinstance(f.get("layers"), h5py.Group):
            raise ValueError(
                f"{path} is an HDF5 file but not Keras 3 weights of a model: it has no "
                "'layers' group (a Keras 2 / tf.keras .h5?). Fix: load it where it was made "
                "and save it again under Keras 3 with model.save_weights('NAME.weights.h5')."
            )
        yield f


def head_classes_in_weights_file(path) -> int:
    """The class count of the classifier stored in a Keras 3 ``.weights.h5`` file;
    ``ValueError`` (one line) for an unreadable file or one without exactly one classifier."""
    import h5py

    with open_weights_h5(path) as f:
        kernels = []
        f["layers"].visititems(
            lambda name, obj: kernels.append(obj.shape)
            if isinstance(obj, h5py.Dataset) and name.startswith("dense") and len(obj.shape) == 2
            else None
        )
    if len(kernels) != 1:
        raise ValueError(
            f"{path} is not the weights of a whole classifier: expected one dense classifier "
            f"(the 'predictions' head), found {len(kernels)}. Fix: use weights saved from a "
            "model built with its head (include_top=True)."
        )
    return int(kernels[0][1])


def freeze_backbone(model: keras.Model, head=("predictions",)) -> None:
    """Make every layer but the head non-trainable. Frozen BatchNorm runs in inference mode
    (Keras uses the moving statistics for a BatchNormalization layer with trainable=False)."""
    for layer in model.layers:
        layer.trainable = layer.name in head


# ---- reporting ------------------------------------------------------------------------------

def write_hparams(log_dir, hparams: dict, metrics=("epoch_accuracy", "epoch_loss")) -> None:
    """Record the run's hyperparameters for TensorBoard's HParams dashboard."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
             for k, v in hparams.items()}
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp.hparams_config(hparams=[hp.HParam(k) for k in clean],
                          metrics=[hp.Metric(m, group="validation") for m in metrics])
        hp.hparams(clean)


def plot_history(history: dict, path, title: str = "") -> None:
    """Loss and accuracy curves (train and validation) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                epochs = range(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def package_versions(distributions) -> dict:
    """``{"python": version, dist: version or None, ...}`` for the installed ``distributions``:
    what a run or a published weights file records of the environment that made it."""
    import platform
    from importlib import metadata

    found = {"python": platform.python_version()}
    for dist in distributions:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def command_line() -> str:
    import shlex
    import sys

    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.argv[0])] + sys.argv[1:])
