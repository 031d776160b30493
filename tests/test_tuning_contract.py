"""The keras-tuner internals `tuning/` relies on, each checked where keras-tuner defines and
calls it, so that a keras-tuner release that renames or stops calling one fails here, by name,
instead of silently turning off a budget check, an atomic write or a resume (issue 13, item 6).

setup.py pins keras-tuner to the minor version tested (>= 1.4.8, < 1.5); this file is what to
run first when moving the pin. The behaviour built on these members is tested elsewhere
(tests/test_tuning.py, tests/test_tuning_resume.py); here only the contract.
"""

import inspect
import re

import keras_tuner
import pytest
from keras_tuner.src.engine import base_tuner, oracle, tuner, tuner_utils
from keras_tuner.src.tuners import bayesian, hyperband, randomsearch

import tuning.oracles
import tuning.results

# (owner class, member, its parameters after self, who in keras-tuner calls it, why we use it)
METHODS = [
    (oracle.Oracle, "_random_values", [],
     [randomsearch.RandomSearchOracle.populate_space, hyperband.HyperbandOracle._random_trial,
      bayesian.BayesianOptimizationOracle._random_populate_space],
     "every new random configuration: the budget oracles reject over-budget draws here"),
    (bayesian.BayesianOptimizationOracle, "_random_populate_space", [],
     [bayesian.BayesianOptimizationOracle.populate_space],
     "the Bayesian oracle's fallback to an in-budget random draw"),
    (oracle.Oracle, "_save_trial", ["trial"],
     [oracle.Oracle.create_trial, oracle.Oracle.update_trial, oracle.Oracle.end_trial],
     "trial.json written atomically"),
    (oracle.Oracle, "_get_oracle_fname", [], [oracle.Oracle.save, oracle.Oracle.reload],
     "oracle.json written atomically"),
    (oracle.Oracle, "_get_trial_dir", ["trial_id"], [oracle.Oracle._save_trial],
     "where trial.json lives"),
    (base_tuner.BaseTuner, "_populate_initial_space", [], [base_tuner.BaseTuner.__init__],
     "DMRHyperModel declares its space without building models"),
    (base_tuner.BaseTuner, "_is_worker", [], [base_tuner.BaseTuner.save],
     "workers of a distributed search do not write the oracle's state"),
    (base_tuner.BaseTuner, "_get_tuner_fname", [], [base_tuner.BaseTuner.__init__],
     "the tuner file that marks a project as resumable"),
    (tuner.Tuner, "_get_checkpoint_fname", ["trial_id"], [tuner.Tuner.run_trial],
     "the best epoch's weights, exported as best.keras"),
]


def _source(fn):
    """The source of ``fn``, through keras-tuner's ``@synchronized`` (which does not set
    ``__wrapped__``: the wrapped function is in its closure)."""
    while fn.__closure__ and fn.__name__ == "wrapped_func":
        fn = next(c.cell_contents for c in fn.__closure__
                  if inspect.isfunction(c.cell_contents)
                  and c.cell_contents.__name__ != "backward_compatible_end_trial")
    return inspect.getsource(fn)


@pytest.mark.parametrize("owner, name, params, callers, why", METHODS,
                         ids=[m[1] for m in METHODS])
def test_private_method_exists_and_is_still_called(owner, name, params, callers, why):
    member = getattr(owner, name, None)
    assert callable(member), f"keras-tuner no longer has {owner.__name__}.{name} ({why})"
    got = list(inspect.signature(member).parameters)[1:]
    assert got == params, f"{owner.__name__}.{name} now takes {got}, tuning/ passes {params}"
    for caller in callers:
        assert re.search(rf"\b{name}\(", _source(caller)), (
            f"keras-tuner's {caller.__qualname__} no longer calls {name} ({why})")


def test_private_oracle_state_is_where_reload_puts_it():
    """``_retry_queue`` (trials to run again) and ``end_order`` are the oracle state that
    ``_BudgetOracleMixin.reload`` repairs after a kill."""
    init = _source(oracle.Oracle.__init__)
    assert "self._retry_queue = []" in init and "self.end_order = []" in init
    assert "self._retry_queue.pop()" in _source(oracle.Oracle.create_trial)
    state = _source(oracle.Oracle.set_state)
    assert 'self._retry_queue = state["retry_queue"]' in state
    assert 'self.end_order = state["end_order"]' in state


def test_best_epoch_checkpoint_callback_contract():
    """``DMRHyperModel.fit`` finds keras-tuner's ``SaveBestEpoch`` by its ``objective`` and
    ``best_value`` (see tests/test_tuning_resume.py for the behaviour)."""
    saver = tuner_utils.SaveBestEpoch(keras_tuner.Objective("val_accuracy", "max"), "x.h5")
    assert saver.best_value == float("-inf") and saver.objective.name == "val_accuracy"
    assert "self.best_value" in _source(tuner_utils.SaveBestEpoch.on_epoch_end)
    assert "SaveBestEpoch(" in _source(tuner.Tuner.run_trial)


def test_hyperband_continuation_keys():
    """The hyperparameters Hyperband sets on a trial that continues another: the resume code
    reads ``tuner/trial_id`` and keras-tuner turns ``tuner/epochs`` and ``tuner/initial_epoch``
    into fit's ``epochs`` and ``initial_epoch``."""
    space = _source(hyperband.HyperbandOracle.populate_space)
    for key in ("tuner/trial_id", "tuner/epochs", "tuner/initial_epoch"):
        assert f'"{key}"' in space, key
    run = _source(hyperband.Hyperband.run_trial)
    assert 'fit_kwargs["initial_epoch"] = hp.values["tuner/initial_epoch"]' in run


def test_our_modules_use_no_other_private_keras_tuner_member():
    """Every ``_name`` of keras-tuner that tuning/ touches is in the table above (or is one of
    ours): a new use needs a contract test."""
    known = {m[1] for m in METHODS} | {"_retry_queue"}
    ours = {"_within_budget", "_declare", "_check_budgets", "_RUNNING", "_COMPLETED",
            "_FAILED", "_MAX_REJECTIONS", "_BudgetOracleMixin", "_DMRTunerMixin"}
    for module in (tuning.oracles, tuning.results):
        used = set(re.findall(r"(?:self|super\(\)|tuner|oracle)\.(_[a-z]\w*)",
                              inspect.getsource(module)))
        unknown = used - known - ours
        assert not unknown, f"{module.__name__} uses keras-tuner internals {unknown} untested"


def test_keras_tuner_is_the_pinned_minor_version():
    major, minor = (int(x) for x in keras_tuner.__version__.split(".")[:2])
    assert (major, minor) == (1, 4), (
        f"keras-tuner {keras_tuner.__version__} is outside the pin in setup.py; run this file "
        "and the tuning tests against it before moving the pin")


def test_behaviours_resume_and_distribution_rely_on():
    """What the resume and chief/worker code takes from keras-tuner without calling a member:
    a restarted worker gets its own running trial back; a reloaded oracle queues the trials
    that were running; Hyperband loads the parent's weights while building, before ``fit``
    (where ``DMRHyperModel.fit`` replaces them by the parent's last epoch and optimizer)."""
    create = _source(oracle.Oracle.create_trial)
    assert "if tuner_id in self.ongoing_trials:" in create
    assert "return self.ongoing_trials[tuner_id]" in create
    assert "self._retry_queue.append(trial.trial_id)" in _source(oracle.Oracle.reload)
    build = _source(hyperband.Hyperband._build_hypermodel)
    assert '"tuner/trial_id" in hp.values' in build and "model.load_weights(" in build
    assert "self._try_build(hp)" in _source(tuner.Tuner._build_and_fit_model)
    assert "self.hypermodel.fit(hp, model" in _source(tuner.Tuner._build_and_fit_model)
