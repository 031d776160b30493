"""`dmr-tune`: a keras-tuner search over DMRNet architectures and training settings, resumable.

    dmr-tune --tuner random --dataset digits --max-trials 10 --epochs 3 --max-params 200000

The same as a Python function: ``tuning.search.tune(dataset="digits", tuner="random", ...)``.

Every argument is checked before any data is read or any model built. Each trial builds one
configuration of :class:`tuning.DMRHyperModel` (blocks per stage n, width w, branches K, mapping,
learning rate, weight decay, batch size), trains it for ``epochs`` epochs under the chosen
distribution strategy and scores it by validation accuracy. Configurations over ``max_params``
are skipped by the oracle: never built, never trained, never counted as failures, and listed as
``skipped`` on the leaderboard. In ``DIRECTORY/PROJECT`` at the end: ``leaderboard.csv``,
``leaderboard.json``, ``best.keras`` and its manifest ``best.json``, TensorBoard logs (``logs/``,
one run per trial, with the HParams dashboard) and keras-tuner's state. Running the same command
again after a kill continues the search: finished trials are not repeated.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import keras_tuner  # noqa: E402

from dmr_keras import checks  # noqa: E402
from dmr_keras.atomic import atomic_path, write_json, write_text  # noqa: E402
from tuning.cli import DEFAULT_SPACE, STRATEGIES, TUNERS  # noqa: E402,F401  (the CLI's choices)
from tuning.hypermodel import (  # noqa: E402
    HP_NAMES,
    DMRHyperModel,
    architecture,
    architecture_key,
)

OBJECTIVE = "val_accuracy"
MANIFEST_FORMAT = "dmr-keras-tuning-best/1"
LEADERBOARD_COLUMNS = ("rank", "trial_id", "status", "n", "width", "branches", "mapping", "lr",
                       "weight_decay", "batch_size", "params", "val_accuracy", "time_s", "note")
# Settings that must match for `overwrite=False` to continue an existing project.
_RESUME_KEYS = ("dataset", "tuner", "epochs", "seed", "max_params", "max_train_examples",
                "validation_split") + tuple(DEFAULT_SPACE)
# Draws of over-budget configurations an oracle rejects in a row before it ends the search.
_MAX_REJECTIONS = 1000
_RUNNING = keras_tuner.engine.trial.TrialStatus.RUNNING
_COMPLETED = keras_tuner.engine.trial.TrialStatus.COMPLETED
_FAILED = keras_tuner.engine.trial.TrialStatus.FAILED


# ---- oracles that skip over-budget configurations ------------------------------------------


class _BudgetOracleMixin:
    """Makes an oracle propose only configurations within ``budget_model.max_params``.

    Every new configuration of the random, Bayesian (initial points) and Hyperband oracles comes
    from ``_random_values``; here a draw over budget is rejected and drawn again, so it never
    becomes a trial: it is not built, trained, or counted as failed or towards ``max_trials``.
    The Bayesian oracle's model-based proposals are checked in its ``populate_space`` and fall
    back to an in-budget random draw. Each rejected architecture is recorded in ``skipped``
    (saved in ``oracle.json``, so a resumed search keeps it) and reported on the leaderboard.

    State files (``oracle.json``, ``trial_*/trial.json``) are written atomically, so a kill
    never leaves a half-written one for the resumed search to read.
    """

    def __init__(self, *args, **kwargs):
        self.budget_model = None  # a DMRHyperModel, set by make_tuner
        self.skipped = {}  # architecture key -> {n, width, branches, mapping, params, proposals}
        super().__init__(*args, **kwargs)

    def _within_budget(self, values) -> bool:
        model = self.budget_model
        if model is None or model.max_params is None or model.params_of(values) <= \
                model.max_params:
            return True
        arch = architecture(values)
        key = architecture_key(arch)
        record = self.skipped.get(key)
        if record is None:
            record = self.skipped[key] = {**arch, "params": model.params_of(values),
                                          "proposals": 0}
            if self.verbose:
                print(f"Skipped {key}: {record['params']:,} parameters > max_params "
                      f"{model.max_params:,} (not built, not trained).")
        record["proposals"] += 1
        return False

    def _random_values(self):
        for _ in range(_MAX_REJECTIONS):
            values = super()._random_values()
            if values is None or self._within_budget(values):
                return values
        return None  # only over-budget configurations are left: the search space is exhausted

    def reload(self):
        super().reload()
        # A kill can land between a trial's final trial.json and the oracle's own state file:
        # a trial whose file says it finished is never run again, and a trial whose file
        # exists but that the oracle's state never recorded as started is run (again).
        finished = (_COMPLETED, _FAILED)
        self._retry_queue = [t for t in self._retry_queue
                             if t in self.trials and self.trials[t].status not in finished]
        for trial_id in sorted(self.trials):
            status = self.trials[trial_id].status
            if status in finished and trial_id not in self.end_order:
                self.end_order.append(trial_id)
            elif status not in finished and trial_id not in self._retry_queue:
                self._retry_queue.append(trial_id)

    def get_state(self):
        state = super().get_state()
        state["dmr_skipped"] = self.skipped
        return state

    def set_state(self, state):
        super().set_state(state)
        self.skipped = dict(state.get("dmr_skipped", {}))

    def save(self):
        write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        write_json(Path(self._get_trial_dir(trial.trial_id)) / "trial.json", trial.get_state())


class BudgetRandomSearchOracle(_BudgetOracleMixin, keras_tuner.oracles.RandomSearchOracle):
    """Random search that skips configurations over the hypermodel's ``max_params``."""


class BudgetHyperbandOracle(_BudgetOracleMixin, keras_tuner.oracles.HyperbandOracle):
    """Hyperband whose new (random) configurations stay within ``max_params``."""


class BudgetBayesianOptimizationOracle(_BudgetOracleMixin,
                                       keras_tuner.oracles.BayesianOptimizationOracle):
    """Bayesian optimisation that skips configurations over ``max_params``."""

    def populate_space(self, trial_id):
        response = super().populate_space(trial_id)
        values = response.get("values")
        if response["status"] == _RUNNING and values and not self._within_budget(values):
            return self._random_populate_space()  # budget-filtered random draw
        return response


class _DMRTunerMixin:
    def _populate_initial_space(self):
        # DMRHyperModel declares its whole space (conditional entries included), so the models
        # keras-tuner would build here to discover conditional hyperparameters are not needed.
        if not isinstance(self.hypermodel, DMRHyperModel):
            return super()._populate_initial_space()
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def on_search_begin(self):
        super().on_search_begin()
        self.save()  # the tuner file marks the project as resumable before any trial runs

    def save(self):
        if not self._is_worker():
            self.oracle.save()
        write_json(self._get_tuner_fname(), self.get_state())


class DMRTuner(_DMRTunerMixin, keras_tuner.Tuner):
    """keras-tuner's ``Tuner`` with atomic state files (random and Bayesian searches)."""


class DMRHyperband(_DMRTunerMixin, keras_tuner.Hyperband):
    """keras-tuner's ``Hyperband`` tuner on a given (budget) oracle."""

    def __init__(self, oracle, hypermodel, **kwargs):
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)


def check_tuner(name) -> str:
    if name not in TUNERS:
        raise ValueError(f"Unknown `tuner`: {name!r}. Valid values: {', '.join(TUNERS)}")
    return name


def make_tuner(name: str, hypermodel: DMRHyperModel, *, max_trials: int = 3, epochs: int = 1,
               seed: int = 0, directory="tuning_runs", project: str = "dmr",
               overwrite: bool = False, distribution_strategy=None,
               num_initial_points: int | None = None, hyperband_factor: int = 3,
               max_consecutive_failed_trials: int = 3):
    """A keras-tuner tuner for ``hypermodel`` whose oracle skips over-budget configurations.

    ``name``: ``random``, ``bayesian`` or ``hyperband``. The objective is ``val_accuracy``.
    Hyperband uses ``epochs`` as ``max_epochs`` and runs brackets until ``max_trials`` trials
    exist. ``distribution_strategy`` (a ``tf.distribute`` strategy) runs every trial under it.
    ``overwrite=False`` continues a search found in ``directory/project``.
    """
    check_tuner(name)
    common = dict(objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
                  seed=int(seed) + 1,  # keras-tuner replaces seed 0 by a random one
                  max_consecutive_failed_trials=max_consecutive_failed_trials)
    if name == "random":
        oracle = BudgetRandomSearchOracle(max_trials=max_trials, **common)
    elif name == "bayesian":
        oracle = BudgetBayesianOptimizationOracle(
            max_trials=max_trials, num_initial_points=num_initial_points, **common)
    else:
        oracle = BudgetHyperbandOracle(max_epochs=epochs, factor=hyperband_factor,
                                       hyperband_iterations=None, **common)
        oracle.max_trials = max_trials  # brackets repeat until max_trials trials exist
    oracle.budget_model = hypermodel
    cls = DMRHyperband if name == "hyperband" else DMRTuner
    return cls(oracle=oracle, hypermodel=hypermodel, directory=str(directory),
               project_name=project, overwrite=overwrite,
               distribution_strategy=distribution_strategy)


# ---- leaderboard and best model -----------------------------------------------------------


def _metric(trial, name):
    if trial.metrics.exists(name):
        value = trial.metrics.get_last_value(name)
        return None if value is None else float(value)
    return None


def leaderboard(tuner) -> list:
    """One row per trial and per skipped architecture, best validation accuracy first.

    Statuses: ``completed``, ``failed`` (keras-tuner's FAILED or INVALID), ``running`` (a trial
    that was interrupted and not yet re-run) and ``skipped`` (over ``max_params``; ``note`` says
    how often the oracle drew and rejected it).
    """
    model = tuner.hypermodel
    trials = []
    for trial in tuner.oracle.trials.values():
        values = trial.hyperparameters.values
        arch = architecture(values)
        status = {"COMPLETED": "completed", "FAILED": "failed", "INVALID": "failed"}.get(
            trial.status, str(trial.status).lower())
        params = _metric(trial, "params")
        note = ""
        if status == "failed" and trial.message:
            lines = [ln for ln in str(trial.message).strip().splitlines() if ln.strip()]
            note = lines[-1][:200] if lines else ""
        elif "tuner/trial_id" in values:
            note = (f"hyperband round {values.get('tuner/round')}, continues trial "
                    f"{values['tuner/trial_id']}")
        trials.append({
            "rank": None, "trial_id": trial.trial_id, "status": status, **arch,
            "lr": values.get("lr"), "weight_decay": values.get("weight_decay"),
            "batch_size": values.get("batch_size"),
            "params": int(params) if params is not None else model.params_of(values),
            "val_accuracy": float(trial.score) if status == "completed" and trial.score is not None
            else None,
            "time_s": _metric(trial, "time_s"), "note": note,
        })
    done = sorted((r for r in trials if r["val_accuracy"] is not None),
                  key=lambda r: (-r["val_accuracy"], r["trial_id"]))
    for i, row in enumerate(done, start=1):
        row["rank"] = i
    others = sorted((r for r in trials if r["val_accuracy"] is None),
                    key=lambda r: r["trial_id"])
    skipped = []
    if model.max_params is not None:
        drawn = getattr(tuner.oracle, "skipped", {})
        for arch in sorted(model.architectures(), key=lambda a: (a["params"], architecture_key(a))):
            if arch["params"] <= model.max_params:
                continue
            proposals = drawn.get(architecture_key(arch), {}).get("proposals", 0)
            skipped.append({
                "rank": None, "trial_id": None, "status": "skipped",
                **{k: arch[k] for k in ("n", "width", "branches", "mapping")},
                "lr": None, "weight_decay": None, "batch_size": None, "params": arch["params"],
                "val_accuracy": None, "time_s": None,
                "note": f"{arch['params']:,} params > max_params {model.max_params:,}; "
                        f"not built or trained (oracle rejected {proposals} draw(s))",
            })
    return done + others + skipped


def format_leaderboard(rows) -> str:
    headers = ("#", "trial", "n", "w", "K", "mapping", "lr", "wd", "batch", "params",
               "val acc", "time s", "status")

    def cell(value, fmt="{}"):
        return "-" if value is None else fmt.format(value)

    table = [headers]
    for r in rows:
        table.append((cell(r["rank"]), cell(r["trial_id"]), cell(r["n"]), cell(r["width"], "{:g}"),
                      cell(r["branches"]), r["mapping"], cell(r["lr"], "{:g}"),
                      cell(r["weight_decay"], "{:g}"), cell(r["batch_size"]),
                      cell(r["params"], "{:,}"), cell(r["val_accuracy"], "{:.4f}"),
                      cell(r["time_s"], "{:.1f}"), r["status"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
    lines = ["  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _leaderboard_csv(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LEADERBOARD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r[k] is None else r[k] for k in LEADERBOARD_COLUMNS})
    return buf.getvalue()


def export_best(tuner, rows, project_dir, extra=None) -> dict | None:
    """Save the best completed trial's model (its best epoch) as ``best.keras`` and the
    manifest ``best.json`` beside it; return the manifest (None without a completed trial)."""

    best = next((r for r in rows if r["status"] == "completed"), None)
    if best is None:
        return None
    project_dir = Path(project_dir)
    trial = tuner.oracle.get_trial(best["trial_id"])
    values = {k: v for k, v in trial.hyperparameters.values.items() if k in HP_NAMES}
    model = tuner.hypermodel.build(trial.hyperparameters.copy())  # outside any strategy scope
    if model.optimizer is not None:
        model.optimizer.build(model.trainable_variables)  # the checkpoint holds its state too
    model.load_weights(tuner._get_checkpoint_fname(trial.trial_id))  # the best epoch's weights
    with atomic_path(project_dir / "best.keras") as tmp:
        model.save(tmp)
    manifest = {
        "format": MANIFEST_FORMAT,
        "model_path": "best.keras",
        "trial_id": trial.trial_id,
        "hyperparameters": values,
        "build_kwargs": tuner.hypermodel.build_kwargs(values),
        "val_accuracy": best["val_accuracy"],
        "params": best["params"],
        **(extra or {}),
    }
    write_json(project_dir / "best.json", manifest)
    return manifest


def load_best(path):
    """The best model of a search: ``path`` is a ``best.json`` manifest or the project folder
    holding it. The manifest's ``model_path`` is relative to the manifest's folder."""
    import keras

    import dmr_keras  # noqa: F401  (registers the layers for deserialization)

    path = Path(path)
    manifest_path = path / "best.json" if path.is_dir() else path
    if not manifest_path.is_file():
        raise ValueError(f"No tuning manifest at {manifest_path} (expected best.json from "
                         "dmr-tune).")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{manifest_path} is not a dmr-tune manifest (format "
                         f"{manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}).")
    return keras.saving.load_model(manifest_path.parent / manifest["model_path"])


# ---- the search ---------------------------------------------------------------------------


def _dataset_classes(spec, data_lib) -> int:
    """Class count of a checked dataset spec, without loading it."""
    known = {"digits": 10, "cifar10": 10, "cifar100": 100, "svhn": 10, "imagenet2012": 1000}
    if spec in known:
        return known[spec]
    return len(data_lib._scan_folder(spec[len(data_lib.FOLDER_PREFIX):])[0])


def _check_resume(project_dir: Path, config: dict, overwrite: bool) -> None:
    path = project_dir / "search.json"
    if overwrite or not path.is_file():
        return
    diff = checks.differing_settings(json.loads(path.read_text()), config, _RESUME_KEYS,
                                     now="here")
    if diff:
        raise ValueError(f"{project_dir} holds a search with other settings ({'; '.join(diff)}). "
                         "Run the same command to continue it, pass overwrite=True "
                         "(--overwrite) to start again, or choose another project.")


def _write_hparams_config(log_dir: Path, hypermodel: DMRHyperModel) -> None:
    """The experiment's hyperparameter domains and metrics for the HParams dashboard (each trial
    writes its own values through keras-tuner's hparams callback)."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    if log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*")):
        return
    domains = {"n": hypermodel.depths_n, "width": hypermodel.widths,
               "branches": hypermodel.branches, "mapping": hypermodel.mappings,
               "lr": hypermodel.lrs, "weight_decay": hypermodel.weight_decays,
               "batch_size": hypermodel.batch_sizes}
    hparams = [hp_api.HParam(k, hp_api.Discrete(list(v))) for k, v in domains.items()]
    metrics = [hp_api.Metric("epoch_accuracy", group="validation", display_name="val accuracy"),
               hp_api.Metric("epoch_loss", group="validation", display_name="val loss"),
               hp_api.Metric("epoch_accuracy", group="train", display_name="train accuracy"),
               hp_api.Metric("epoch_loss", group="train", display_name="train loss")]
    log_dir.mkdir(parents=True, exist_ok=True)
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp_api.hparams_config(hparams=hparams, metrics=metrics)


def tune(
    dataset: str = "digits",
    *,
    tuner: str = "random",
    max_trials: int = 3,
    epochs: int = 1,
    strategy: str = "none",
    directory: str = "tuning_runs",
    project: str = "dmr",
    max_params: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    depths_n=DEFAULT_SPACE["depths_n"],
    widths=DEFAULT_SPACE["widths"],
    branches=DEFAULT_SPACE["branches"],
    mappings=DEFAULT_SPACE["mappings"],
    lrs=DEFAULT_SPACE["lrs"],
    weight_decays=DEFAULT_SPACE["weight_decays"],
    batch_sizes=DEFAULT_SPACE["batch_sizes"],
    max_train_examples: int | None = None,
    data_dir: str | None = None,
    validation_split: float = 0.1,
    cpu_devices: int | None = None,
    verbose: int = 1,
    deterministic: bool | None = None,
) -> dict:
    """Search ``DMRHyperModel``'s space on ``dataset``; returns the search's summary.

    Args mirror the ``dmr-tune`` flags. ``max_train_examples`` caps the training images per
    epoch (the first ``max_train_examples // batch_size`` batches of each shuffled epoch), for
    quick searches. ``overwrite=False`` continues a search found in ``directory/project`` (it
    must have the same dataset, space, epochs, seed and budget; ``max_trials`` may grow).
    Global state: ``seed`` seeds Python, NumPy and the backend and ``deterministic`` (None: on
    without a GPU) sets TensorFlow's op determinism for the search only
    (:func:`dmr_keras.training.run_settings`).

    Returns:
        ``{"project_dir", "leaderboard" (rows, best first), "best" (the best.json manifest, or
        None), "completed", "failed", "skipped", "wall_time_s", "strategy", "replicas"}``.
    """

    from dmr_keras import data as data_lib
    from dmr_keras import distribute

    # ---- everything checked before any work ---------------------------------------------
    check_tuner(tuner)
    dataset = data_lib.check_dataset(dataset)
    checks.integer("max_trials", max_trials, 1)
    checks.integer("epochs", epochs, 1)
    checks.integer("seed", seed, 0)
    checks.integer("max_train_examples", max_train_examples, 1, allow_none=True)
    checks.integer("cpu_devices", cpu_devices, 1, allow_none=True)
    if strategy not in STRATEGIES:
        hint = (" (multi-worker training is not supported by keras-tuner's per-trial "
                "strategies)" if strategy == "multiworker" else "")
        raise ValueError(f"Unknown `strategy`: {strategy!r}{hint}. Valid values: "
                         f"{', '.join(STRATEGIES)}")
    hypermodel = DMRHyperModel(
        depths_n=depths_n, widths=widths, branches=branches, mappings=mappings, lrs=lrs,
        weight_decays=weight_decays, batch_sizes=batch_sizes, max_params=max_params,
        classes=_dataset_classes(dataset, data_lib), epochs=epochs, seed=seed)
    project_dir = Path(directory) / project
    config = dict(dataset=dataset, tuner=tuner, epochs=epochs, seed=seed, max_params=max_params,
                  max_train_examples=max_train_examples, validation_split=validation_split,
                  depths_n=list(hypermodel.depths_n), widths=list(hypermodel.widths),
                  branches=list(hypermodel.branches), mappings=list(hypermodel.mappings),
                  lrs=list(hypermodel.lrs), weight_decays=list(hypermodel.weight_decays),
                  batch_sizes=list(hypermodel.batch_sizes))
    _check_resume(project_dir, config, overwrite)

    # Devices and the strategy before seeding (which starts TensorFlow's context).
    if cpu_devices:
        distribute.configure_cpu_devices(cpu_devices)
    plan = distribute.make_plan(strategy, min(hypermodel.batch_sizes))
    uneven = [b for b in hypermodel.batch_sizes if b % plan.num_replicas]
    if uneven:
        raise ValueError(f"Batch size(s) {uneven} do not divide over {plan.num_replicas} "
                         f"replicas ({plan.description}): use multiples of {plan.num_replicas}.")
    from dmr_keras.training import run_settings

    with run_settings(seed, deterministic):
        return _search(dataset, tuner, hypermodel, plan, project_dir, config, data_lib,
                       max_trials=max_trials, epochs=epochs, seed=seed, directory=directory,
                       project=project, overwrite=overwrite, data_dir=data_dir,
                       validation_split=validation_split,
                       max_train_examples=max_train_examples, verbose=verbose)


def _search(dataset, tuner, hypermodel, plan, project_dir, config, data_lib, *, max_trials,
            epochs, seed, directory, project, overwrite, data_dir, validation_split,
            max_train_examples, verbose):
    import keras

    _, _, info = data_lib.load(dataset, batch_size=min(hypermodel.batch_sizes), seed=seed,
                               data_dir=data_dir, validation_split=validation_split)
    train_examples = min(info.train_examples, max_train_examples or info.train_examples)
    too_big = [b for b in hypermodel.batch_sizes if b > train_examples]
    if too_big:
        raise ValueError(f"Batch size(s) {too_big} exceed the {train_examples} training "
                         "examples per epoch: no full batch to train on.")
    hypermodel.input_shape = tuple(info.image_shape)
    hypermodel.train_examples = train_examples

    def data_fn(batch_size):
        train_ds, eval_ds, _ = data_lib.load(dataset, batch_size=batch_size, seed=seed,
                                             data_dir=data_dir,
                                             validation_split=validation_split)
        if max_train_examples:
            train_ds = train_ds.take(train_examples // batch_size)
        return train_ds, eval_ds

    search_tuner = make_tuner(tuner, hypermodel, max_trials=max_trials, epochs=epochs,
                              seed=seed, directory=directory, project=project,
                              overwrite=overwrite, distribution_strategy=plan.strategy)
    search_tuner.oracle.verbose = verbose
    write_json(project_dir / "search.json", config)
    callbacks = []
    if keras.backend.backend() == "tensorflow":
        _write_hparams_config(project_dir / "logs", hypermodel)
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(project_dir / "logs"),
                                                     write_graph=False))
    print(f"Tuning on {dataset}: {tuner} search, up to {max_trials} trials of {epochs} "
          f"epoch(s), {len(hypermodel.architectures())} architectures"
          + (f", max_params {hypermodel.max_params:,}" if hypermodel.max_params else "")
          + f", {plan.description} -> {project_dir}")
    start = time.perf_counter()
    search_tuner.search(data_fn, epochs=epochs, callbacks=callbacks, verbose=min(verbose, 2))
    wall = time.perf_counter() - start

    rows = leaderboard(search_tuner)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "skipped")}
    table = format_leaderboard(rows)
    write_text(project_dir / "leaderboard.csv", _leaderboard_csv(rows))
    write_json(project_dir / "leaderboard.json",
               {"objective": OBJECTIVE, "max_params": hypermodel.max_params,
                "max_trials": max_trials, "rows": rows})
    best = export_best(search_tuner, rows, project_dir,
                       extra=dict(dataset=dataset, mean=list(info.mean), std=list(info.std),
                                  input_shape=list(info.image_shape),
                                  classes=info.num_classes, tuner=tuner, epochs=epochs))
    print(table)
    ran = len(search_tuner.oracle.trials)
    print(f"{counts['completed']} completed, {counts['failed']} failed"
          + (f", {counts['skipped']} architecture(s) skipped (over max_params)"
             if hypermodel.max_params is not None else "")
          + f"; search time {wall:.1f} s"
          + (f"; the space had no more untried configurations after {ran} of {max_trials} "
             "trials" if ran < max_trials else ""))
    if best:
        print(f"best: trial {best['trial_id']} val_accuracy {best['val_accuracy']:.4f} "
              f"-> {project_dir / 'best.keras'}")
    return {"project_dir": str(project_dir), "leaderboard": rows, "best": best,
            **counts, "wall_time_s": round(wall, 2), "strategy": plan.name,
            "replicas": plan.num_replicas}


# ---- command line: tuning/cli.py (keras-free, so that --help answers at once) ----------------

from tuning.cli import build_parser, main  # noqa: E402,F401

if __name__ == "__main__":
    raise SystemExit(main())
