"""Tuning trials that resume (issue 13, item 3): a trial killed mid-epoch continues after its
last saved epoch, and a Hyperband continuation starts from its parent's last epoch with the
parent's optimizer state, so both end exactly where an uninterrupted run of the same
configuration ends (weights, optimizer slots and step counter compared, not counted)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import keras_tuner
import numpy as np
import pytest
from conftest import sigkill_when

from tuning import tune
from tuning.hypermodel import _continue_best_epoch

ROOT = Path(__file__).resolve().parents[1]
ONE = dict(depths_n=(1,), widths=(0.5,), branches=(2,), lrs=(0.05,), weight_decays=(1e-4,),
           batch_sizes=(32,))


def _weights(path) -> dict:
    """Every array of a ``.weights.h5`` file (model and optimizer), by its path in the file."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_same_state(a, b):
    a, b = _weights(a), _weights(b)
    assert set(a) == set(b) and any(k.startswith("optimizer/") for k in a)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


def _trial(project, trial_id):
    return json.loads((project / f"trial_{trial_id}" / "trial.json").read_text())


def _metric(state, name):
    return state["metrics"]["metrics"][name]["observations"][-1]["value"][0]


def _reference(tmp_path, epochs, max_train_examples, seed, space=ONE):
    """The uninterrupted run: one trial of the one configuration, ``epochs`` epochs."""
    tune("digits", tuner="random", epochs=epochs, max_trials=1, directory=tmp_path / "ref",
         project="p", max_train_examples=max_train_examples, seed=seed, verbose=0, **space)
    return tmp_path / "ref" / "p" / "trial_0" / "epochs" / f"epoch-{epochs:04d}.weights.h5"


def test_hyperband_continuation_is_the_uninterrupted_run(tmp_path):
    space = dict(ONE, lrs=(0.1, 0.05), branches=(1, 2))
    tune("digits", tuner="hyperband", epochs=3, max_trials=4, directory=tmp_path / "hb",
         project="p", max_train_examples=160, seed=1, verbose=0, **space)
    project = tmp_path / "hb" / "p"
    trials = [json.loads(p.read_text()) for p in project.glob("trial_*/trial.json")]
    continued = [t for t in trials if "tuner/trial_id" in t["hyperparameters"]["values"]]
    assert continued, "the search made no Hyperband continuation"
    child = continued[0]
    values = child["hyperparameters"]["values"]
    assert child["status"] == "COMPLETED" and values["tuner/initial_epoch"] == 1
    assert _metric(child, "initial_epoch") == 1
    last = project / f"trial_{child['trial_id']}" / "epochs" / "epoch-0003.weights.h5"
    steps = 160 // 32
    assert int(_weights(last)["optimizer/vars/0"]) == 3 * steps  # the step counter went on
    # The same configuration trained for 3 epochs in one go: same weights and optimizer state
    # (keras-tuner alone reloads the best epoch's weights without the optimizer's state, so
    # momentum and the cosine schedule restart, and this comparison fails).
    config = dict(ONE, lrs=(values["lr"],), branches=(values["branches"],))
    _assert_same_state(last, _reference(tmp_path, 3, 160, seed=1, space=config))


def _cli(directory, epochs):
    return [sys.executable, "-c", "from tuning.search import main; raise SystemExit(main())",
            "--dataset", "digits", "--max-trials", "1", "--epochs", str(epochs),
            "--directory", str(directory), "--project", "p", "--depths-n", "1", "--widths",
            "0.5", "--branches", "2", "--lrs", "0.05", "--weight-decays", "1e-4",
            "--batch-sizes", "32", "--max-train-examples", "320", "--seed", "3",
            "--verbose", "2"]


def test_trial_killed_mid_epoch_continues_from_its_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    state = tmp_path / "p" / "trial_0" / "epochs" / "checkpoint.json"
    log = tmp_path / "first.log"
    # Killed as soon as an epoch is saved (written atomically: complete when it exists),
    # mid-trial with more epochs to go.
    killed_at, rc = sigkill_when(_cli(tmp_path, 4), env, log, lambda: state.exists() and
                                 json.loads(state.read_text())["epoch"])
    assert killed_at, "no epoch was saved:\n" + log.read_text()[-3000:]
    assert 1 <= killed_at < 4 and rc == -signal.SIGKILL
    assert _trial(tmp_path / "p", 0)["status"] == "RUNNING"

    again = subprocess.run(_cli(tmp_path, 4), env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trial = _trial(tmp_path / "p", 0)
    assert trial["status"] == "COMPLETED"
    assert _metric(trial, "initial_epoch") == killed_at  # continued, not restarted
    assert f"Epoch {killed_at}/4" not in again.stdout
    assert f"Epoch {killed_at + 1}/4" in again.stdout
    history = json.loads(state.read_text())["history"]
    assert len(history["val_accuracy"]) == 4  # the killed attempt's epochs are kept
    # Ends where the uninterrupted trial ends, optimizer state included.
    _assert_same_state(tmp_path / "p" / "trial_0" / "epochs" / "epoch-0004.weights.h5",
                       _reference(tmp_path, 4, 320, seed=3))


def test_resumed_trial_keeps_its_best_epoch():
    """keras-tuner's best-epoch checkpoint (a private class, ``SaveBestEpoch``) is found by its
    ``objective`` and ``best_value`` and told the best of the earlier epochs, so a resumed
    trial's first epoch cannot overwrite a better checkpoint. Fails loudly if keras-tuner
    renames either attribute."""
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

    saver = SaveBestEpoch(keras_tuner.Objective("val_accuracy", "max"), "unused.weights.h5")
    other = keras.callbacks.History()
    _continue_best_epoch([other, saver], {"val_accuracy": [0.3, 0.7, 0.5]})
    assert saver.best_value == pytest.approx(0.7)
    saved = []
    saver._save_model = lambda: saved.append(True)
    saver.on_epoch_end(3, {"val_accuracy": 0.6})  # worse than epoch 2: not saved
    saver.on_epoch_end(4, {"val_accuracy": 0.8})
    assert saved == [True] and saver.best_value == pytest.approx(0.8)
