"""`dmr-tune`: a keras-tuner search over DMRNet architectures and training settings, resumable.

    dmr-tune --tuner random --dataset digits --max-trials 10 --epochs 3 --max-params 200000

The same as a Python function: ``tuning.search.tune(dataset="digits", tuner="random", ...)``.

The orchestration: data, tuner, search, outputs. Every argument is checked before any data is
read or any model built. Each trial builds one configuration of :class:`tuning.DMRHyperModel`
(blocks per stage n, width w, branches K, mapping, learning rate, weight decay, batch size),
trains it for ``epochs`` epochs under the chosen distribution strategy and scores it by its
accuracy on a fixed, per-class held-out part of the training split (``val_fraction``, see
``dmr_keras.data.load(..., holdout_fraction=...)``). The test split is touched once, at the end,
by the best model (``test_accuracy``). Configurations over ``max_params`` or ``max_macs``
(closed-form counts, :mod:`tuning.budget`) are skipped by the oracle: never built, never
trained, never counted as failures, and listed as ``skipped`` on the leaderboard. In
``DIRECTORY/PROJECT`` at the end: ``leaderboard.csv``, ``leaderboard.json``, ``pareto.csv`` and
``pareto.png`` (:mod:`tuning.results`), ``best.keras`` and its manifest ``best.json``,
TensorBoard logs (``logs/``, one run per trial, with the HParams dashboard) and keras-tuner's
state. Running the same command again after a kill continues the search: finished trials are
not repeated, and the interrupted trial continues after its last saved epoch (each trial saves
its weights and optimizer state every epoch in ``trial_ID/epochs/``; see
:meth:`tuning.hypermodel.DMRHyperModel.fit`). With keras-tuner's ``KERASTUNER_*`` variables
the same command runs one search over several machines (:mod:`tuning.distributed`): the chief
serves the oracle and writes the outputs, the workers train the trials.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras_tuner  # noqa: F401  (tuning.search.keras_tuner, as before the split)

from dmr_keras import checks
from dmr_keras.atomic import write_json, write_text
from tuning import distributed
from tuning.cli import DEFAULT_SPACE, STRATEGIES, TUNERS  # noqa: F401  (the CLI's choices)
from tuning.hypermodel import DMRHyperModel
from tuning.oracles import (  # noqa: F401  (re-exported: the names before the split)
    OBJECTIVE,
    BudgetBayesianOptimizationOracle,
    BudgetHyperbandOracle,
    BudgetRandomSearchOracle,
    DMRHyperband,
    DMRTuner,
    check_tuner,
    make_tuner,
)
from tuning.results import (  # noqa: F401  (re-exported: the names before the split)
    LEADERBOARD_COLUMNS,
    MANIFEST_FORMAT,
    _leaderboard_csv,
    export_best,
    format_leaderboard,
    leaderboard,
    load_best,
    write_pareto,
)

# Settings that must match for `overwrite=False` to continue an existing project (a search
# from before `val_fraction` was scored on the test split: it does not continue).
_RESUME_KEYS = ("dataset", "tuner", "epochs", "seed", "max_params", "max_train_examples",
                "validation_split") + tuple(DEFAULT_SPACE) + ("max_macs", "val_fraction")


# ---- the search ---------------------------------------------------------------------------


def _dataset_classes(spec, data_lib) -> int:
    """Class count of a checked dataset spec, without loading it."""
    known = {"digits": 10, "cifar10": 10, "cifar100": 100, "svhn": 10, "imagenet2012": 1000}
    if spec in known:
        return known[spec]
    return len(data_lib._scan_folder(spec[len(data_lib.FOLDER_PREFIX):])[0])


def _dataset_image_shape(spec, data_lib) -> tuple:
    """The image shape a checked dataset spec loads with (``tune`` uses each dataset's default
    size), without loading it: MAC budgets are checked before any data is read."""
    if spec == "imagenet2012":
        return (data_lib.IMAGENET_IMAGE_SIZE, data_lib.IMAGENET_IMAGE_SIZE, 3)
    if spec.startswith(data_lib.FOLDER_PREFIX):
        return (data_lib.DEFAULT_FOLDER_IMAGE_SIZE, data_lib.DEFAULT_FOLDER_IMAGE_SIZE, 3)
    return (32, 32, 3)


def _remove_stale_temp_files(project_dir: Path, targets=None) -> None:
    """Remove what a kill mid-write left behind: the temporary files of
    :func:`dmr_keras.atomic.atomic_path` (``.NAME.XXXX.tmp*``), whose targets are intact.

    ``targets`` (names relative to ``project_dir``, globs allowed: ``trial_*/trial.json``): only
    the temporary files of these, for a distributed search, whose other processes may be
    writing their own files at this moment.
    """
    if project_dir.is_dir():
        paths = project_dir.rglob(".*.tmp*") if targets is None else (
            path for target in targets
            for path in project_dir.glob(str(Path(target).parent / f".{Path(target).name}.*.tmp*")))
        for path in paths:
            if path.is_file():
                path.unlink(missing_ok=True)


def _chief_files(tuner_id: str) -> tuple:
    """The files only the chief of a distributed search writes (relative to its project)."""
    return ("search.json", "oracle.json", f"{tuner_id}.json", "trial_*/trial.json",
            "leaderboard.csv", "leaderboard.json", "pareto.csv", "pareto.png", "best.keras",
            "best.json")


def _report_worker_trials(search_tuner, tuner_id: str, project_dir=None,
                          config=None) -> list:
    """On a worker: print each trial it starts and ends, and return the list it fills with
    ``(trial id, status)`` of the trials it ran (the chief's oracle does not record which
    process ran a trial). Before its first trial (the chief is serving, so it has written
    ``search.json``) the worker's settings are checked against the chief's: a worker started
    with another dataset, space, epochs, seed or budget stops with the difference named,
    instead of training trials the chief would score as its own."""
    ran = []
    begin, end = search_tuner.on_trial_begin, search_tuner.on_trial_end

    def on_trial_begin(trial):
        if config is not None and not ran and not getattr(on_trial_begin, "checked", False):
            _check_resume(Path(project_dir), config, overwrite=False, whose="the chief's")
            on_trial_begin.checked = True
        print(f"Worker {tuner_id}: trial {trial.trial_id} started", flush=True)
        begin(trial)

    def on_trial_end(trial):
        end(trial)
        ran.append((trial.trial_id, str(trial.status)))
        print(f"Worker {tuner_id}: trial {trial.trial_id} {str(trial.status).lower()}",
              flush=True)

    search_tuner.on_trial_begin, search_tuner.on_trial_end = on_trial_begin, on_trial_end
    return ran


def _check_resume(project_dir: Path, config: dict, overwrite: bool, whose: str = "") -> None:
    path = project_dir / "search.json"
    if overwrite or not path.is_file():
        return
    diff = checks.differing_settings(json.loads(path.read_text()), config, _RESUME_KEYS,
                                     now="here")
    if diff and whose:  # a worker of a distributed search
        raise ValueError(f"This worker's settings differ from {whose} search in {project_dir} "
                         f"({'; '.join(diff)}). Start every worker with the chief's command "
                         "(the same dmr-tune flags on every machine) and the same "
                         "KERASTUNER_TUNER_ID to take its trial back.")
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
    max_macs: int | None = None,
    val_fraction: float = 0.1,
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

    Args mirror the ``dmr-tune`` flags. ``val_fraction`` of each class of the training split is
    held out (fixed, independent of ``seed``) to score the trials; ``validation_split`` is the
    held-out test part of a ``folder:`` without a train/test layout, as for ``dmr-train``.
    ``max_params`` / ``max_macs`` (MACs per image at the dataset's image size) bound the
    configurations proposed. ``max_train_examples`` caps the training images per
    epoch (the first ``max_train_examples // batch_size`` batches of each shuffled epoch), for
    quick searches. ``overwrite=False`` continues a search found in ``directory/project`` (it
    must have the same dataset, space, epochs, seed and budget; ``max_trials`` may grow).
    Global state: ``seed`` seeds Python, NumPy and the backend and ``deterministic`` (None: on
    without a GPU) sets TensorFlow's op determinism for the search only
    (:func:`dmr_keras.training.run_settings`).

    Returns:
        ``{"project_dir", "leaderboard" (rows, best first), "pareto" (the pareto.csv rows),
        "best" (the best.json manifest, or None), "completed", "failed", "skipped",
        "wall_time_s", "strategy", "replicas", "role", "tuner_id"}``. ``role`` is ``single``,
        or, in keras-tuner's distributed mode (``KERASTUNER_TUNER_ID``,
        ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``; :mod:`tuning.distributed`),
        ``chief`` (serves the oracle until the search ends, then writes everything as a single
        process does) or ``worker``, which trains trials and writes none of the search's
        outputs; a worker returns ``{"project_dir", "role", "tuner_id", "trials" (the ids it
        ran), "completed", "failed", "wall_time_s", "strategy", "replicas"}``.
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
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or \
            not 0 < val_fraction < 1:
        raise ValueError("`val_fraction` must be a number strictly between 0 and 1 (the part of "
                         f"each class held out to score trials). Received: {val_fraction!r}")
    if strategy not in STRATEGIES:
        hint = (" (multi-worker training is not supported by keras-tuner's per-trial "
                "strategies)" if strategy == "multiworker" else "")
        raise ValueError(f"Unknown `strategy`: {strategy!r}{hint}. Valid values: "
                         f"{', '.join(STRATEGIES)}")
    dist = distributed.settings()  # KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP / _PORT
    distributed.check_chief_address(dist)
    hypermodel = DMRHyperModel(
        depths_n=depths_n, widths=widths, branches=branches, mappings=mappings, lrs=lrs,
        weight_decays=weight_decays, batch_sizes=batch_sizes, max_params=max_params,
        max_macs=max_macs, classes=_dataset_classes(dataset, data_lib),
        input_shape=_dataset_image_shape(dataset, data_lib), epochs=epochs, seed=seed)
    project_dir = Path(directory) / project
    config = dict(dataset=dataset, tuner=tuner, epochs=epochs, seed=seed, max_params=max_params,
                  max_train_examples=max_train_examples, validation_split=validation_split,
                  depths_n=list(hypermodel.depths_n), widths=list(hypermodel.widths),
                  branches=list(hypermodel.branches), mappings=list(hypermodel.mappings),
                  lrs=list(hypermodel.lrs), weight_decays=list(hypermodel.weight_decays),
                  batch_sizes=list(hypermodel.batch_sizes), max_macs=max_macs,
                  val_fraction=float(val_fraction))
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
                       validation_split=validation_split, val_fraction=float(val_fraction),
                       max_train_examples=max_train_examples, verbose=verbose, dist=dist)


def _search(dataset, tuner, hypermodel, plan, project_dir, config, data_lib, *, max_trials,
            epochs, seed, directory, project, overwrite, data_dir, validation_split,
            val_fraction, max_train_examples, verbose, dist):
    import keras

    def load(batch_size, holdout, **epoch_keys):
        return data_lib.load(dataset, batch_size=batch_size, seed=seed, data_dir=data_dir,
                             validation_split=validation_split, holdout_fraction=holdout,
                             **epoch_keys)

    # Trials see the training split only: its held-out part scores them.
    _, _, info = load(min(hypermodel.batch_sizes), val_fraction)
    train_examples = min(info.train_examples, max_train_examples or info.train_examples)
    too_big = [b for b in hypermodel.batch_sizes if b > train_examples]
    if too_big:
        raise ValueError(f"Batch size(s) {too_big} exceed the {train_examples} training "
                         "examples per epoch: no full batch to train on.")
    hypermodel.input_shape = tuple(info.image_shape)
    hypermodel.train_examples = train_examples

    def data_fn(batch_size, *, epochs, initial_epoch=0):
        # Epochs initial_epoch..epochs-1, each a function of (seed, epoch) only: a trial resumed
        # after a kill, or continued by Hyperband, trains on the batches of an uninterrupted run.
        # --max-train-examples: the first train_examples images of each epoch's shuffled order
        capped = train_examples < info.train_examples
        train_ds, eval_ds, _ = load(batch_size, val_fraction, epochs=epochs,
                                    initial_epoch=initial_epoch,
                                    epoch_examples=train_examples if capped else None)
        return train_ds, eval_ds, train_examples // batch_size

    data_fn.epoch_keyed = True  # DMRHyperModel.fit passes epochs and initial_epoch

    worker = dist.role == "worker"
    # Distributed, each process removes its own leftovers only: the others may be mid-write.
    _remove_stale_temp_files(project_dir, {"single": None, "chief": _chief_files(dist.tuner_id),
                                           "worker": (f"{dist.tuner_id}.json",)}[dist.role])
    search_tuner = make_tuner(tuner, hypermodel, max_trials=max_trials, epochs=epochs,
                              seed=seed, directory=directory, project=project,
                              overwrite=overwrite and not worker,  # the chief's to clear
                              distribution_strategy=plan.strategy)
    search_tuner.oracle.verbose = verbose
    if not worker:
        write_json(project_dir / "search.json", config)
    callbacks = []
    if keras.backend.backend() == "tensorflow":
        if not worker:
            _write_hparams_config(project_dir / "logs", hypermodel)
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(project_dir / "logs"),
                                                     write_graph=False))
    print(f"Tuning on {dataset}: {tuner} search, up to {max_trials} trials of {epochs} "
          f"epoch(s), {len(hypermodel.architectures())} architectures"
          + (f", max_params {hypermodel.max_params:,}" if hypermodel.max_params else "")
          + (f", max_macs {hypermodel.max_macs:,}" if hypermodel.max_macs else "")
          + f"; scored on {info.eval_examples} images held out of the training split "
          f"(val_fraction {val_fraction:g}), trained on {info.train_examples}"
          + f", {plan.description} -> {project_dir}" + dist.describe())
    ran = (_report_worker_trials(search_tuner, dist.tuner_id, project_dir, config) if worker
           else None)
    start = time.perf_counter()
    # A chief serves the oracle here until every trial has ended and every worker has been
    # told to stop; a worker waits for the chief (up to an hour) and runs trials it is given.
    search_tuner.search(data_fn, epochs=epochs, callbacks=callbacks, verbose=min(verbose, 2))
    wall = time.perf_counter() - start
    if worker:  # the chief writes the leaderboard, the best model and search.json
        done = sum(status == "COMPLETED" for _, status in ran)
        counts = {"completed": done, "failed": len(ran) - done}
        ids = [tid for tid, _ in ran]
        print(f"Worker {dist.tuner_id} finished: ran trial(s) {', '.join(ids) or 'none'} "
              f"({counts['completed']} completed); search time {wall:.1f} s. The chief writes "
              f"the leaderboard and best model -> {project_dir}")
        return {"project_dir": str(project_dir), "role": dist.role, "tuner_id": dist.tuner_id,
                "trials": ids, **counts, "wall_time_s": round(wall, 2),
                "strategy": plan.name, "replicas": plan.num_replicas}
    if dist.role == "chief":  # no trial is running now: remove what killed workers left
        for trial_dir in project_dir.glob("trial_*"):
            _remove_stale_temp_files(trial_dir)

    rows = leaderboard(search_tuner)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "skipped")}
    # The test split, touched once: by the best model.
    _, test_ds, test_info = load(max(hypermodel.batch_sizes), 0.0)
    splits = {"train_examples": info.train_examples, "val_examples": info.eval_examples,
              "test_examples": test_info.eval_examples, "val_fraction": val_fraction,
              "test_split": test_info.eval_split}
    best = export_best(search_tuner, rows, project_dir, test_data=test_ds,
                       extra=dict(dataset=dataset, mean=list(info.mean), std=list(info.std),
                                  input_shape=list(info.image_shape),
                                  classes=info.num_classes, tuner=tuner, epochs=epochs,
                                  splits=splits))
    table = format_leaderboard(rows)
    write_text(project_dir / "leaderboard.csv", _leaderboard_csv(rows))
    write_json(project_dir / "leaderboard.json",
               {"objective": OBJECTIVE, "max_params": hypermodel.max_params,
                "max_macs": hypermodel.max_macs, "max_trials": max_trials, "splits": splits,
                "rows": rows})
    front = write_pareto(rows, project_dir)
    print(table)
    ran = len(search_tuner.oracle.trials)
    budgets = [name for name, value in (("max_params", hypermodel.max_params),
                                        ("max_macs", hypermodel.max_macs)) if value is not None]
    print(f"{counts['completed']} completed, {counts['failed']} failed"
          + (f", {counts['skipped']} architecture(s) skipped (over {' / '.join(budgets)})"
             if budgets else "")
          + f"; search time {wall:.1f} s"
          + (f"; the space had no more untried configurations after {ran} of {max_trials} "
             "trials" if ran < max_trials else ""))
    if best:
        print(f"best: trial {best['trial_id']} val_accuracy {best['val_accuracy']:.4f} "
              f"({info.eval_examples} held-out training images), test_accuracy "
              f"{best['test_accuracy']:.4f} ({test_info.eval_examples} {test_info.eval_split} "
              f"images) -> {project_dir / 'best.keras'}")
    print(f"Pareto front: {len(front)} trial(s) -> {project_dir / 'pareto.csv'}, "
          f"{project_dir / 'pareto.png'}")
    return {"project_dir": str(project_dir), "leaderboard": rows, "pareto": front, "best": best,
            **counts, "wall_time_s": round(wall, 2), "strategy": plan.name,
            "replicas": plan.num_replicas, "role": dist.role, "tuner_id": dist.tuner_id}


# ---- command line: tuning/cli.py (keras-free, so that --help answers at once) ----------------

from tuning.cli import build_parser, main  # noqa: E402,F401

if __name__ == "__main__":
    raise SystemExit(main())
