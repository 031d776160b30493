"""`DMRHyperModel`: a keras-tuner search space over CIFAR-form DMRNet / DILNet / ResNet models.

Hyperparameters (keras-tuner names), each a ``Choice`` over a constructor argument's list:

- ``n`` (``depths_n``): blocks per stage, depth 6n+2; ``width`` (``widths``): multiplier w,
  stages of 16w, 32w, 64w channels; ``branches`` (``branches``): K;
- ``mapping`` (``mappings``, default ``("merge_and_run",)``: off). With ``"resnet"`` in the
  list, ``branches`` lives in a conditional scope that is inactive for ResNet, which has K = 1;
- ``lr`` (``lrs``), ``weight_decay`` (``weight_decays``): SGD with Nesterov momentum 0.9 and
  weight decay on kernels (the package's training recipe);
- ``batch_size`` (``batch_sizes``): picked by :meth:`DMRHyperModel.fit`, which batches the data
  itself (see there for the accepted inputs).

Parameter and MAC counts (:func:`tuning.budget.count_params`, :func:`tuning.budget.count_macs`)
are closed forms, so the budgets (``max_params``, ``max_macs``) are checked before anything is
built. They are enforced by the oracle (``tuning.oracles.make_tuner``): over-budget
configurations are never proposed, so never built, trained or counted as failures.
"""

from __future__ import annotations

import math
import time
import warnings

import keras
import keras_tuner
import numpy as np

from dmr_keras.layers import MAPPINGS
from dmr_keras.models import build_model, model_depth
from tuning.budget import BASE as _BASE
from tuning.budget import count_macs, count_params

OBJECTIVE_NAME = "val_accuracy"  # the objective every tuner of tuning.oracles maximises
HP_NAMES = ("n", "width", "branches", "mapping", "lr", "weight_decay", "batch_size")
_PREFIX = {"merge_and_run": "dmrnet", "identity": "dilnet", "resnet": "resnet"}


def _as_tuple(name, values):
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"`{name}` must be a list of values to search. "
                         f"Received: {name}={values!r}")
    values = tuple(values)
    if not values:
        raise ValueError(f"`{name}` is empty: the search space needs at least one value for "
                         f"each hyperparameter. Received: {name}={values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"`{name}` has repeated values. Received: {name}={values!r}")
    return values


def _ints(name, values, minimum=1):
    values = _as_tuple(name, values)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"`{name}` must hold integers >= {minimum}. Received: {name}="
                             f"{values!r} (bad value {v!r})")
    return tuple(int(v) for v in values)


def _floats(name, values, minimum, strict):
    values = _as_tuple(name, values)
    for v in values:
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        ok = ok and math.isfinite(v) and (v > minimum if strict else v >= minimum)
        if not ok:
            rel = ">" if strict else ">="
            raise ValueError(f"`{name}` must hold numbers {rel} {minimum}. Received: {name}="
                             f"{values!r} (bad value {v!r})")
    floats = tuple(float(v) for v in values)
    if len(set(floats)) != len(floats):
        raise ValueError(f"`{name}` has repeated values. Received: {name}={values!r}")
    return floats


def _check_widths(values):
    widths = _floats("widths", values, 0, strict=True)
    for w in widths:
        channels = [c * w for c in _BASE]
        if any(abs(c - round(c)) > 1e-9 for c in channels):
            raise ValueError(f"`widths` value {w!r} gives non-integer channel counts {channels}: "
                             "pick widths for which 16w, 32w and 64w are integers (e.g. 0.25, "
                             "0.5, 1, 2).")
    return widths


def architecture(values) -> dict:
    """The architecture part of a trial's hyperparameter values: ``n, width, branches,
    mapping`` (``branches`` is 1 for ResNet, whose ``branches`` value is inactive).

    One branch is a ResNet whatever the mapping (merge-and-run's mean of one stream, and
    identity, are its skip: the same network, layer for layer), so K = 1 is labelled
    ``resnet``: on the leaderboard, in ``best.json`` and in the model's name, and a search
    never trains that network twice under two labels."""
    mapping = values.get("mapping", "merge_and_run")
    k = 1 if mapping == "resnet" else int(values.get("branches", 2))
    if k == 1:
        mapping = "resnet"
    return {"n": int(values["n"]), "width": float(values["width"]), "branches": k,
            "mapping": mapping}


def architecture_key(arch) -> str:
    return f"n={arch['n']},w={arch['width']:g},K={arch['branches']},{arch['mapping']}"


class DMRHyperModel(keras_tuner.HyperModel):
    """The DMRNet search space: blocks per stage, width, branches, mapping, lr, weight decay and
    batch size (CIFAR form, basic blocks, depth 6n+2).

    Args:
        depths_n: blocks per stage n to try (depth 6n+2).
        widths: width multipliers w (stages 16w, 32w, 64w).
        branches: branch counts K.
        mappings: skip mappings to try, from ``merge_and_run``, ``identity``, ``resnet``.
            Default ``("merge_and_run",)``: DMRNet only. ``resnet`` always has K = 1.
        lrs: SGD learning rates (Nesterov momentum 0.9).
        weight_decays: weight decay on convolution and dense kernels (0 for none).
        batch_sizes: global batch sizes, applied by :meth:`fit`.
        max_params: optional budget of trainable parameters. Only checked here (a ValueError if
            no model of the space fits the budgets); the oracles of
            :func:`tuning.oracles.make_tuner` skip over-budget configurations.
        max_macs: optional budget of multiply-accumulates per image at ``input_shape`` (which
            must then have a fixed height and width), checked like ``max_params``.
        classes, input_shape: the classifier's outputs and the input image shape.
        epochs, train_examples: when both are given, the learning rate follows a cosine decay
            to 0 over ``epochs * (train_examples // batch_size)`` steps; else it is constant.
        seed: when set, ``keras.utils.set_random_seed(seed)`` before each model is built, so a
            configuration starts from the same weights whenever (and however often) it runs.

    Raises:
        ValueError: an empty or invalid choice list (naming it), or budgets that no model of the
            space fits (naming the smallest model and its cost).
    """

    def __init__(self, *, depths_n=(1, 2, 3), widths=(0.5, 1), branches=(1, 2, 3),
                 mappings=("merge_and_run",), lrs=(0.1, 0.05), weight_decays=(1e-4, 5e-4),
                 batch_sizes=(64, 128), max_params=None, classes=10, input_shape=(32, 32, 3),
                 epochs=None, train_examples=None, seed=None, name="dmrnet", max_macs=None):
        super().__init__(name=name)
        self.depths_n = _ints("depths_n", depths_n)
        self.widths = _check_widths(widths)
        self.branches = _ints("branches", branches)
        self.mappings = _as_tuple("mappings", mappings)
        for m in self.mappings:
            if m not in MAPPINGS:
                raise ValueError(f"Unknown mapping {m!r} in `mappings`. Valid values: "
                                 f"{', '.join(MAPPINGS)}")
        self.lrs = _floats("lrs", lrs, 0, strict=True)
        self.weight_decays = _floats("weight_decays", weight_decays, 0, strict=False)
        self.batch_sizes = _ints("batch_sizes", batch_sizes)
        if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 1:
            raise ValueError(f"`classes` must be an integer >= 1. Received: {classes!r}")
        self.classes = int(classes)
        self.input_shape = tuple(input_shape)
        self.epochs = epochs
        self.train_examples = train_examples
        self.seed = seed
        self.max_params = _budget("max_params", max_params)
        self.max_macs = _budget("max_macs", max_macs)
        if self.max_macs is not None and None in self.input_shape[:2]:
            raise ValueError(f"`max_macs` needs a fixed image size: `input_shape` is "
                             f"{self.input_shape!r}.")
        if self.max_params is not None or self.max_macs is not None:
            self._check_budgets()

    def _check_budgets(self):
        archs = self.architectures()
        for name, budget, unit in (("params", self.max_params, "parameters"),
                                   ("macs", self.max_macs, "MACs")):
            smallest = min(archs, key=lambda a: a[name] or 0)
            if budget is not None and smallest[name] > budget:
                raise ValueError(
                    f"`max_{name}`={budget:,} is below the smallest model of the search space, "
                    f"{architecture_key(smallest)} with {smallest[name]:,} {unit}: no "
                    f"configuration fits. Use max_{name} >= {smallest[name]} or smaller "
                    "depths_n / widths / branches.")
        if all(self.over_budget(a) for a in archs):
            raise ValueError(f"No configuration of the search space is within both "
                             f"max_params={self.max_params:,} and max_macs={self.max_macs:,}: "
                             "raise one of them or search smaller depths_n / widths / branches.")

    # ---- the space ------------------------------------------------------------------------

    def declare_hyperparameters(self, hp):
        self._declare(hp)

    def _declare(self, hp):
        """Register every hyperparameter (conditional ones included); return the values."""
        v = {"n": hp.Choice("n", list(self.depths_n)),
             "width": hp.Choice("width", list(self.widths)),
             "mapping": hp.Choice("mapping", list(self.mappings))}
        non_resnet = [m for m in self.mappings if m != "resnet"]
        if non_resnet and len(non_resnet) < len(self.mappings):
            with hp.conditional_scope("mapping", non_resnet):
                v["branches"] = hp.Choice("branches", list(self.branches))
        elif non_resnet:
            v["branches"] = hp.Choice("branches", list(self.branches))
        v["lr"] = hp.Choice("lr", list(self.lrs))
        v["weight_decay"] = hp.Choice("weight_decay", list(self.weight_decays))
        v["batch_size"] = hp.Choice("batch_size", list(self.batch_sizes))
        return v

    def architectures(self) -> list:
        """Every distinct architecture of the space with its parameter and MAC counts (MACs
        None without a fixed image size)."""
        seen, out = set(), []
        for m in self.mappings:
            for n in self.depths_n:
                for w in self.widths:
                    for k in (1,) if m == "resnet" else self.branches:
                        arch = architecture({"n": n, "width": w, "branches": k,
                                             "mapping": m})
                        key = architecture_key(arch)
                        if key not in seen:
                            seen.add(key)
                            out.append({**arch, "params": self.params_of(arch),
                                        "macs": self.macs_of(arch)})
        return out

    def params_of(self, values) -> int:
        """Trainable parameters of the model that ``values`` (hyperparameter values or an
        architecture dict) builds; analytic, nothing is built."""
        a = architecture(values)
        return count_params(a["n"], a["width"], a["branches"], a["mapping"], self.classes,
                            self.input_shape[-1])

    def macs_of(self, values) -> int | None:
        """Multiply-accumulates per image of that model at ``input_shape`` (closed form); None
        when the image size is not fixed."""
        if None in self.input_shape[:2]:
            return None
        a = architecture(values)
        return count_macs(a["n"], a["width"], a["branches"], a["mapping"], self.classes,
                          self.input_shape)

    def budget_excess(self, values) -> list:
        """What ``values`` exceeds, e.g. ``["39,346 params > max_params 30,000"]``; empty
        within budget. Closed forms only: nothing is built."""
        out = []
        if self.max_params is not None and self.params_of(values) > self.max_params:
            out.append(f"{self.params_of(values):,} params > max_params {self.max_params:,}")
        if self.max_macs is not None and self.macs_of(values) > self.max_macs:
            out.append(f"{self.macs_of(values):,} MACs > max_macs {self.max_macs:,}")
        return out

    def over_budget(self, values) -> bool:
        return bool(self.budget_excess(values))

    def build_kwargs(self, values) -> dict:
        """``dmr_keras.build_model`` keyword arguments for ``values`` (JSON-friendly)."""
        a = architecture(values)
        n = a["n"]
        return {"blocks": [n, n, n], "width": a["width"], "num_branches": a["branches"],
                "mapping": a["mapping"], "classes": self.classes,
                "input_shape": list(self.input_shape),
                "name": f"{_PREFIX[a['mapping']]}_{model_depth((n, n, n), 'basic')}"
                        f"_w{a['width']:g}_k{a['branches']}".replace(".", "p")}

    # ---- keras-tuner hooks ----------------------------------------------------------------

    def build(self, hp):
        from dmr_keras import training

        v = self._declare(hp)
        values = {k: x for k, x in v.items() if x is not None}
        if self.seed is not None:
            keras.utils.set_random_seed(int(self.seed))
        kwargs = self.build_kwargs(values)
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
        model = build_model(**kwargs,
                            kernel_regularizer=training.kernel_weight_decay(v["weight_decay"]))
        lr = v["lr"]
        if self.epochs and self.train_examples:
            steps = max(1, int(self.train_examples) // int(v["batch_size"]))
            lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=int(self.epochs) * steps)
        model.compile(optimizer=training.make_optimizer(lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        # Built now, so that loading a checkpoint (keras-tuner's Hyperband continuation, a
        # resumed trial) restores the optimizer's momentum and step counter with the weights:
        # an unbuilt optimizer skips them, and the schedule would restart at its peak.
        model.optimizer.build(model.trainable_variables)
        return model

    def fit(self, hp, model, x=None, y=None, *, validation_data=None, checkpoints=None,
            **kwargs):
        """Train ``model`` with the trial's batch size; return the best epoch's metrics.

        The data is batched here, so it must come unbatched or as a factory:

        - a callable ``x(batch_size) -> (train_dataset, validation_dataset)`` returning batched
          ``tf.data`` datasets; if the callable has ``epoch_keyed = True`` it is called as
          ``x(batch_size, epochs=E, initial_epoch=I)`` and returns ``(train, validation,
          steps_per_epoch)``, the train dataset holding epochs ``I..E-1`` back to back, each a
          function of (seed, epoch) only (``tuning.search.tune`` passes one around
          ``dmr_keras.data.load(..., epochs=, initial_epoch=)``), so a resumed or continued
          trial trains on exactly the batches of an uninterrupted one;
        - NumPy arrays ``x``, ``y`` (``validation_data=(x_val, y_val)``);
        - an unbatched ``tf.data.Dataset`` of ``(image, label)`` pairs (and an unbatched
          validation dataset), batched here (training batches drop the remainder); shuffle it
          beforehand (``ds.shuffle(n)``), as for any dataset given to ``model.fit``.

        ``checkpoints`` (passed by the tuners of :func:`tuning.oracles.make_tuner`):
        ``{"directory": trial's epoch checkpoints, "parent": the directory of the trial this
        one continues (Hyperband) or None}``. The model's weights and optimizer state are saved
        there after every epoch (atomically); a trial run again after a kill continues after
        its last saved epoch, and a Hyperband continuation starts from its parent's last epoch
        with the parent's optimizer state and step counter, so the learning-rate schedule
        continues where the parent stopped.

        Returns a dict: the metrics of the epoch with the best ``val_accuracy`` (the epoch whose
        weights keras-tuner checkpoints; over all attempts of a resumed trial), ``params`` (the
        built model's trainable count), ``macs`` (closed form, None without a fixed image size),
        ``time_s`` (the wall time of training, over all attempts), ``replicas`` (of the strategy
        it ran under) and ``initial_epoch`` (where this attempt started).
        """
        from dmr_keras import training

        batch_size = int(hp.get("batch_size"))
        params = int(sum(math.prod(w.shape) for w in model.trainable_weights))
        excess = self.budget_excess({k: v for k, v in hp.values.items() if k in HP_NAMES})
        if excess:
            # Only reachable with an oracle that does not apply the budgets (a stock keras-tuner
            # tuner): the oracles of tuning.oracles.make_tuner never propose such a config.
            raise keras_tuner.errors.FailedTrialError(
                f"{'; '.join(excess)}; use tuning.make_tuner so that over-budget configurations "
                "are skipped, not run.")
        fit_kwargs = dict(kwargs)
        epochs = int(fit_kwargs.get("epochs", 1))
        initial_epoch = int(fit_kwargs.get("initial_epoch", 0))
        history, epoch_times = {}, {}
        if checkpoints is not None:
            own = training.latest_checkpoint(checkpoints["directory"])
            if own is not None:  # this trial ran before and was killed: continue it
                initial_epoch = min(int(own["epoch"]), epochs)
                history, epoch_times = own.get("history", {}), own.get("epoch_times_s", {})
                model.load_weights(own["path"])
            elif checkpoints.get("parent") and initial_epoch:
                _load_parent(model, checkpoints["parent"], initial_epoch)
            fit_kwargs["initial_epoch"] = initial_epoch
        if getattr(x, "epoch_keyed", False) and not _is_dataset(x):
            train, val, steps = x(batch_size, epochs=epochs, initial_epoch=initial_epoch)
            if validation_data is None:
                validation_data = val
            args = (train,)
            fit_kwargs["steps_per_epoch"] = int(steps)
        elif callable(x) and not _is_dataset(x):
            train, val = x(batch_size)
            if validation_data is None:
                validation_data = val
            args = (train,)
        elif _is_dataset(x):
            _check_unbatched(x, "x")
            args = (x.batch(batch_size, drop_remainder=True),)
            if _is_dataset(validation_data):
                _check_unbatched(validation_data, "validation_data")
                validation_data = validation_data.batch(batch_size)
        elif x is not None:
            args = (x, y)
            fit_kwargs["batch_size"] = batch_size
        else:
            raise ValueError("DMRHyperModel.fit needs data: a factory `fn(batch_size) -> "
                             "(train, validation)`, NumPy arrays x, y, or an unbatched "
                             "tf.data.Dataset.")
        if validation_data is None:
            raise ValueError("DMRHyperModel.fit needs validation data: the objective is "
                             "val_accuracy.")
        if _is_dataset(args[0]):
            fit_kwargs.setdefault("shuffle", False)  # datasets come shuffled (or not) as given
        saver = None
        if checkpoints is not None:
            callbacks = list(fit_kwargs.get("callbacks") or [])
            _continue_best_epoch(callbacks, history)
            saver = training.EpochCheckpoint(checkpoints["directory"], history=history, keep=1,
                                             epoch_times=epoch_times, weights_only=True)
            fit_kwargs["callbacks"] = callbacks + [saver]
        start = time.perf_counter()
        if initial_epoch < epochs:
            fit_history = model.fit(*args, validation_data=validation_data, **fit_kwargs).history
        else:  # killed after its last epoch was saved, before the oracle heard of it
            fit_history = {}
        elapsed = time.perf_counter() - start
        hist = saver.history if saver is not None else fit_history
        if not hist.get("val_accuracy"):
            raise keras_tuner.errors.FailedTrialError("Training produced no val_accuracy.")
        best = int(np.argmax(hist["val_accuracy"]))  # first best, as keras-tuner checkpoints
        metrics = {k: float(v[best]) for k, v in hist.items() if len(v) > best}
        strategy = getattr(model, "distribute_strategy", None)
        macs = self.macs_of({k: v for k, v in hp.values.items() if k in HP_NAMES})
        if macs is not None:
            metrics["macs"] = macs
        if saver is not None:
            elapsed = sum(saver.epoch_times.values())
        metrics.update(params=params, time_s=round(elapsed, 3), initial_epoch=initial_epoch,
                       replicas=int(getattr(strategy, "num_replicas_in_sync", 1)))
        return metrics


def _load_parent(model, directory, initial_epoch):
    """Load the last epoch (weights and optimizer state) of the trial a Hyperband trial
    continues, when it is the epoch the continuation starts from. Otherwise (a project from
    before per-epoch checkpoints, a deleted or damaged directory) warn: the trial then goes on
    from what keras-tuner loaded, the parent's best epoch."""
    from dmr_keras import training

    try:
        parent = training.latest_checkpoint(directory)
    except ValueError as err:
        parent, reason = None, str(err)
    else:
        reason = f"{directory} holds no epoch checkpoint"
    if parent is not None and int(parent["epoch"]) == initial_epoch:
        model.load_weights(parent["path"])
        return
    if parent is not None:
        reason = f"its last saved epoch is {parent['epoch']}, not {initial_epoch}"
    warnings.warn(f"Hyperband continuation from epoch {initial_epoch}: {reason}. It continues "
                  "from the parent's best-epoch weights (keras-tuner's checkpoint) instead.",
                  UserWarning, stacklevel=3)


def _continue_best_epoch(callbacks, history):
    """Tell keras-tuner's best-epoch checkpoint callback (``SaveBestEpoch``: the callback with
    ``objective`` and ``best_value``) the best objective of a resumed trial's earlier epochs,
    so that its first resumed epoch does not replace a better saved one."""
    values = history.get(OBJECTIVE_NAME) or []
    if not values:
        return
    for callback in callbacks:
        if hasattr(callback, "best_value") and hasattr(callback, "objective"):
            callback.best_value = max(float(callback.best_value), max(values))


def _budget(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be None or an integer >= 1. Received: {name}={value!r}")
    return int(value)


def _is_dataset(obj) -> bool:
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, tf.data.Dataset)


def _check_unbatched(ds, name):
    spec = ds.element_spec
    image = spec[0] if isinstance(spec, (tuple, list)) else spec
    if image.shape.rank != 3:
        raise ValueError(f"`{name}` must be an unbatched dataset of (image (H, W, C), label) "
                         f"pairs: DMRHyperModel.fit batches it with the trial's batch size. Its "
                         f"images have shape {image.shape}; call .unbatch() first.")
