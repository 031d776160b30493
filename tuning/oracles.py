"""keras-tuner oracles and tuners that never propose a configuration over the search's budgets.

The budgets (``max_params``, ``max_macs``) live on the hypermodel
(:class:`tuning.hypermodel.DMRHyperModel`) and are checked with closed-form counts
(:mod:`tuning.budget`), so a rejected configuration is never built. :func:`make_tuner` puts an
oracle and a tuner together; the state files they write are atomic.
"""

from __future__ import annotations

from pathlib import Path

import keras_tuner

from dmr_keras.atomic import write_json
from tuning.cli import TUNERS
from tuning.hypermodel import OBJECTIVE_NAME, DMRHyperModel, architecture, architecture_key

OBJECTIVE = OBJECTIVE_NAME
# Draws of over-budget configurations an oracle rejects in a row before it ends the search.
_MAX_REJECTIONS = 1000
# Each trial's per-epoch checkpoints (weights and optimizer state): trial_ID/epochs/.
TRIAL_CHECKPOINTS = "epochs"
_RUNNING = keras_tuner.engine.trial.TrialStatus.RUNNING
_COMPLETED = keras_tuner.engine.trial.TrialStatus.COMPLETED
_FAILED = keras_tuner.engine.trial.TrialStatus.FAILED


# ---- oracles that skip over-budget configurations ------------------------------------------


class _BudgetOracleMixin:
    """Makes an oracle propose only configurations within ``budget_model``'s ``max_params`` and
    ``max_macs`` (closed-form counts: nothing is built to check them).

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
        # architecture key -> {n, width, branches, mapping, params, macs, proposals}
        self.skipped = {}
        super().__init__(*args, **kwargs)

    def _within_budget(self, values) -> bool:
        model = self.budget_model
        excess = [] if model is None else model.budget_excess(values)
        if not excess:
            return True
        arch = architecture(values)
        key = architecture_key(arch)
        record = self.skipped.get(key)
        if record is None:
            record = self.skipped[key] = {**arch, "params": model.params_of(values),
                                          "macs": model.macs_of(values), "proposals": 0}
            if self.verbose:
                print(f"Skipped {key}: {'; '.join(excess)} (not built, not trained).")
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
    """Random search that skips configurations over the hypermodel's budgets."""


class BudgetHyperbandOracle(_BudgetOracleMixin, keras_tuner.oracles.HyperbandOracle):
    """Hyperband whose new (random) configurations stay within the budgets."""


class BudgetBayesianOptimizationOracle(_BudgetOracleMixin,
                                       keras_tuner.oracles.BayesianOptimizationOracle):
    """Bayesian optimisation that skips configurations over the budgets."""

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

    def run_trial(self, trial, *args, **kwargs):
        # Epoch checkpoints in the trial's directory (DMRHyperModel.fit saves and resumes
        # them): a trial run again after a kill continues after its last epoch, and a
        # Hyperband continuation starts from its parent's last epoch and optimizer state.
        # One execution per trial only: several would share (and resume from) one directory.
        if isinstance(self.hypermodel, DMRHyperModel) and self.executions_per_trial == 1:
            parent = trial.hyperparameters.values.get("tuner/trial_id")
            kwargs["checkpoints"] = {
                "directory": Path(self.get_trial_dir(trial.trial_id)) / TRIAL_CHECKPOINTS,
                "parent": (Path(self.get_trial_dir(parent)) / TRIAL_CHECKPOINTS
                           if parent else None)}
        return super().run_trial(trial, *args, **kwargs)

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
