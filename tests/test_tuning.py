"""`tuning` / `dmr-tune`: the search space and its analytic parameter counts, oracles that skip
over-budget configurations (never built, trained or failed), a real search killed with SIGKILL and
resumed, its leaderboard, TensorBoard logs and exported best model, and bad input."""

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest
from conftest import sigkill_when

import tuning
from dmr_keras import build_model
from tuning import DMRHyperModel, count_params, make_tuner, tune
from tuning.search import main

ROOT = Path(__file__).resolve().parents[1]
K1, K2 = count_params(1, 0.5, 1), count_params(1, 0.5, 2)  # 19,954 and 39,346 parameters
BUDGET = 30_000  # between the K = 1 and K = 2 models of the tiny space
TINY = dict(depths_n=(1,), widths=(0.5,), branches=(1, 2), lrs=(0.1, 0.05),
            weight_decays=(1e-4,), batch_sizes=(32,))
MAX_TRIALS = 2
SEED = 1  # with this seed the random oracle draws (and rejects) K = 2 configurations


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def _cli(directory):
    return [sys.executable, "-c", "from tuning.search import main; raise SystemExit(main())",
            "--dataset", "digits", "--max-trials", str(MAX_TRIALS), "--epochs", "1",
            "--directory", str(directory), "--project", "p", "--depths-n", "1", "--widths", "0.5",
            "--branches", "1", "2", "--lrs", "0.1", "0.05", "--weight-decays", "1e-4",
            "--batch-sizes", "32", "--max-params", str(BUDGET), "--max-train-examples", "320",
            "--seed", str(SEED), "--verbose", "2"]


def _trials(project):
    out = {}
    for path in project.glob("trial_*/trial.json"):  # written atomically: always complete
        state = json.loads(path.read_text())
        out[state["trial_id"]] = (state, path)
    return out


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """`dmr-tune` in a subprocess, SIGKILLed once a trial has finished, then run again."""
    root = tmp_path_factory.mktemp("tune")
    project = root / "p"
    log = root / "first.log"
    finished, killed_rc = sigkill_when(
        _cli(root), _env(), log, lambda: {tid: path for tid, (state, path) in
                                          _trials(project).items()
                                          if state["status"] == "COMPLETED"}, poll=0.05)
    assert finished, "no trial finished before the deadline:\n" + log.read_text()[-3000:]
    before = {tid: (path.stat().st_mtime_ns, path.read_text()) for tid, path in finished.items()}
    leaderboard_after_kill = (project / "leaderboard.json").exists()
    again = subprocess.run(_cli(root), env=_env(), capture_output=True, text=True, timeout=600)
    return dict(project=project, killed_rc=killed_rc, finished=before, again=again,
                leaderboard_after_kill=leaderboard_after_kill)


def _rows(project):
    return json.loads((project / "leaderboard.json").read_text())["rows"]


# ---- resume, leaderboard, budget, best model, logs (one real search) -----------------------


def test_resume_after_sigkill_repeats_no_finished_trial(search):
    project, again = search["project"], search["again"]
    assert search["killed_rc"] == -signal.SIGKILL
    assert not search["leaderboard_after_kill"]  # killed mid-search
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Reloading Tuner from" in again.stdout
    finished = search["finished"]
    assert 1 <= len(finished) < MAX_TRIALS
    trials = _trials(project)
    for tid, (mtime, text) in finished.items():  # finished trials untouched by the second run
        path = trials[tid][1]
        assert path.stat().st_mtime_ns == mtime and path.read_text() == text, tid
    # The second process ran only the trials that had not finished.
    assert again.stdout.count("Search: Running Trial") == MAX_TRIALS - len(finished)
    assert sorted(s["status"] for s, _ in trials.values()) == ["COMPLETED"] * MAX_TRIALS
    completed = [r for r in _rows(project) if r["status"] == "completed"]
    assert len(completed) == MAX_TRIALS
    assert set(finished) <= {r["trial_id"] for r in completed}
    assert not list(project.rglob("*.tmp*"))


def test_leaderboard_files_and_table(search):
    project, again = search["project"], search["again"]
    rows = _rows(project)
    with open(project / "leaderboard.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0]) == list(tuning.search.LEADERBOARD_COLUMNS)
    assert [r["status"] for r in csv_rows] == [r["status"] for r in rows]
    assert [r["trial_id"] or None for r in csv_rows] == [r["trial_id"] for r in rows]
    done = [r for r in rows if r["status"] == "completed"]
    assert [r["rank"] for r in done] == [1, 2]
    accs = [r["val_accuracy"] for r in done]
    assert accs == sorted(accs, reverse=True) and all(0 <= a <= 1 for a in accs)
    for r in done:
        assert (r["n"], r["width"], r["branches"], r["mapping"]) == (1, 0.5, 1, "resnet")
        assert r["params"] == K1 and r["time_s"] > 0 and r["batch_size"] == 32
        assert float(next(c for c in csv_rows if c["trial_id"] == r["trial_id"])["val_accuracy"]) \
            == pytest.approx(r["val_accuracy"])
    assert sorted(r["lr"] for r in done) == [0.05, 0.1]  # two distinct configurations
    table = again.stdout[again.stdout.index("#  trial"):]
    for word in ("mapping", "params", "val acc", "time s", "status", "completed", "skipped",
                 f"{K1:,}", f"{K2:,}"):
        assert word in table, word


def test_budget_skips_over_budget_configs_without_failing(search):
    project = search["project"]
    for state, path in _trials(project).values():  # nothing over budget became a trial
        values = state["hyperparameters"]["values"]
        assert values["branches"] == 1 and state["status"] == "COMPLETED", path
    assert len(list(project.glob("trial_*"))) == MAX_TRIALS
    rows = _rows(project)
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 1
    (row,) = skipped
    assert (row["branches"], row["params"], row["trial_id"], row["val_accuracy"]) == \
        (2, K2, None, None)
    assert "failed" not in {r["status"] for r in rows}
    # The oracle drew K = 2 configurations and rejected them; that is recorded, not failed.
    oracle = json.loads((project / "oracle.json").read_text())
    drawn = oracle["dmr_skipped"]["n=1,w=0.5,K=2,merge_and_run"]
    assert drawn["params"] == K2 and drawn["proposals"] >= 1
    assert f"rejected {drawn['proposals']} draw(s)" in row["note"]
    assert "skipped (over max_params)" in search["again"].stdout


def test_best_model_loads_and_predicts_digits(search):
    from dmr_keras.data import digits_split
    from dmr_keras.digits import load_digits_images

    project = search["project"]
    manifest = json.loads((project / "best.json").read_text())
    best_row = _rows(project)[0]
    assert manifest["format"] == tuning.MANIFEST_FORMAT and manifest["model_path"] == "best.keras"
    assert manifest["trial_id"] == best_row["trial_id"]
    assert manifest["val_accuracy"] == pytest.approx(best_row["val_accuracy"])
    assert manifest["params"] == K1
    assert set(manifest["hyperparameters"]) == {"n", "width", "branches", "mapping", "lr",
                                                "weight_decay", "batch_size"}
    rebuilt = build_model(**manifest["build_kwargs"])
    assert sum(math.prod(w.shape) for w in rebuilt.trainable_weights) == manifest["params"]

    model = keras.saving.load_model(project / "best.keras")
    # Its weights are those keras-tuner checkpointed for the best trial (best epoch).
    rebuilt.load_weights(project / f"trial_{manifest['trial_id']}" / "checkpoint.weights.h5",
                         skip_mismatch=True)  # the optimizer's state: not built here
    for a, b in zip(model.weights, rebuilt.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b), err_msg=a.path)
    images, labels = load_digits_images()
    _, test_idx = digits_split()
    x = (images[test_idx] - np.array(manifest["mean"], "float32")) / np.array(
        manifest["std"], "float32")
    probs = keras.ops.convert_to_numpy(model.predict(x, batch_size=120, verbose=0))
    assert probs.shape == (360, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    # The one evaluation on the test split, by the best model (selection used held-out
    # training images: tests/test_tuning_results.py).
    accuracy = float(np.mean(probs.argmax(axis=1) == labels[test_idx]))
    assert accuracy == pytest.approx(manifest["test_accuracy"], abs=1e-6)
    assert manifest["splits"]["val_examples"] == 145 and manifest["splits"]["test_examples"] == 360
    loaded = tuning.load_best(project)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x[:8], training=False)), probs[:8], atol=1e-5)
    # Loadable through the zoo like any registered model.
    import zoo

    from_zoo = zoo.create_model(str(project / "best.json"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(from_zoo(x[:8], training=False)), probs[:8], atol=1e-5)


def test_tensorboard_logs_per_trial_with_hparams(search):
    import tensorflow as tf

    def plugins(directory):
        names = set()
        for path in directory.glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    names.add((value.tag, value.metadata.plugin_data.plugin_name))
        return names

    logs = search["project"] / "logs"
    assert any(p == "hparams" for _, p in plugins(logs))  # the experiment's domains and metrics
    for trial_id in _trials(search["project"]):
        run = logs / trial_id / "execution0"
        assert any(p == "hparams" for _, p in plugins(run)), trial_id  # this trial's values
        assert list((run / "train").glob("events.out.tfevents.*"))
        assert list((run / "validation").glob("events.out.tfevents.*"))


# ---- the search space, the parameter budget and the oracles (nothing trained) --------------


@pytest.mark.parametrize("n, width, k, mapping", [
    (1, 0.5, 2, "merge_and_run"), (2, 1.0, 3, "merge_and_run"), (1, 1.0, 3, "identity"),
    (2, 0.25, 1, "resnet"), (3, 0.5, 1, "merge_and_run"),
])
def test_count_params_matches_built_models(n, width, k, mapping):
    model = build_model(blocks=(n, n, n), width=width, num_branches=k, mapping=mapping,
                        classes=7)
    built = sum(math.prod(w.shape) for w in model.trainable_weights)
    assert count_params(n, width, k, mapping, classes=7) == built


def test_resnet_has_one_branch_in_the_space():
    hm = DMRHyperModel(depths_n=(1,), widths=(0.5,), branches=(2, 3),
                       mappings=("merge_and_run", "resnet"))
    archs = {(a["mapping"], a["branches"]) for a in hm.architectures()}
    assert archs == {("merge_and_run", 2), ("merge_and_run", 3), ("resnet", 1)}
    assert hm.params_of({"n": 1, "width": 0.5, "mapping": "resnet"}) == count_params(1, 0.5, 1)


@pytest.mark.parametrize("name", tuning.TUNERS)
def test_oracles_never_propose_over_budget_configs(name, tmp_path, monkeypatch):
    space = dict(depths_n=(1, 2), widths=(0.5, 1), branches=(1, 2, 3),
                 mappings=("merge_and_run", "resnet"), lrs=(0.1,), weight_decays=(1e-4,),
                 batch_sizes=(32,))
    budget = count_params(1, 1.0, 1)
    hm = DMRHyperModel(**space, max_params=budget)
    over = [a for a in hm.architectures() if a["params"] > budget]
    assert over and len(over) < len(hm.architectures())
    # What keras-tuner's own Bayesian model proposes, before the budget check.
    proposed = []
    base = keras_tuner.oracles.BayesianOptimizationOracle.populate_space

    def record(self, trial_id):
        response = base(self, trial_id)
        proposed.append(response.get("values"))
        return response

    monkeypatch.setattr(keras_tuner.oracles.BayesianOptimizationOracle, "populate_space", record)
    tuner = make_tuner(name, hm, max_trials=4, epochs=3, seed=4, directory=tmp_path,
                       project=name, num_initial_points=2)
    oracle = tuner.oracle
    oracle.verbose = 0
    if name == "bayesian":
        oracle.gpr.n_restarts_optimizer = 0  # a cheaper fit of the same Gaussian process
    rng = random.Random(0)
    trials = []
    while True:  # drive the oracle with made-up scores: no model is built or trained
        trial = oracle.create_trial("tuner0")
        if trial.status == "STOPPED":
            break
        values = trial.hyperparameters.values
        assert not hm.over_budget(values), values
        if values["mapping"] == "resnet":
            assert "branches" not in values  # inactive: ResNet has one branch
        oracle.update_trial(trial.trial_id, {"val_accuracy": rng.random()})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
        trials.append(trial.trial_id)
    assert len(trials) == 4
    if name == "bayesian":  # the model-based proposals went over budget and were replaced
        assert any(hm.over_budget(v) for v in proposed[2:])
    if name == "hyperband":  # successive halving continued an in-budget trial
        assert "tuner/trial_id" in oracle.trials[trials[-1]].hyperparameters.values
    assert oracle.skipped and all(s["params"] > budget and s["proposals"] >= 1
                                  for s in oracle.skipped.values())
    rows = tuning.leaderboard(tuner)
    assert sorted(r["trial_id"] for r in rows if r["status"] == "completed") == sorted(trials)
    assert len([r for r in rows if r["status"] == "skipped"]) == len(over)
    assert not [r for r in rows if r["status"] == "failed"]


def test_reload_never_reruns_a_finished_trial(tmp_path):
    """Kills between a trial's trial.json and the oracle's own state file, both ways."""
    hm = DMRHyperModel(**TINY, max_params=BUDGET)

    def oracle_of_new_tuner():
        tuner = make_tuner("random", hm, max_trials=3, directory=tmp_path, project="p", seed=1)
        tuner.oracle.verbose = 0
        return tuner

    tuner = oracle_of_new_tuner()
    tuner.on_search_begin()  # writes tuner0.json: from here on the project is resumed
    oracle = tuner.oracle
    finished = oracle.create_trial("tuner0")
    oracle.update_trial(finished.trial_id, {"val_accuracy": 0.5})
    finished.status = "COMPLETED"
    oracle.score_trial(finished)
    oracle._save_trial(finished)  # killed here: oracle.json still lists the trial as running
    resumed = oracle_of_new_tuner().oracle
    assert resumed.trials[finished.trial_id].status == "COMPLETED"
    state_file = Path(resumed._get_oracle_fname())
    state = state_file.read_text()
    ghost = resumed.create_trial("tuner0")
    assert ghost.trial_id != finished.trial_id  # not run again
    state_file.write_text(state)  # killed after the new trial's file, before the oracle's
    again = oracle_of_new_tuner().oracle
    assert again.create_trial("tuner0").trial_id == ghost.trial_id  # started, so run again
    assert again.trials[finished.trial_id].status == "COMPLETED"


@pytest.mark.slow
def test_hyperband_under_mirrored_strategy_on_two_cpu_devices(tmp_path):
    cmd = _cli(tmp_path)
    cmd[cmd.index("--max-params"):cmd.index("--max-params") + 2] = []
    proc = subprocess.run(cmd + ["--tuner", "hyperband", "--strategy", "mirrored",
                                 "--cpu-devices", "2"],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MirroredStrategy over 2 device(s)" in proc.stdout
    trials = _trials(tmp_path / "p")
    assert len(trials) == MAX_TRIALS
    for state, path in trials.values():
        assert state["status"] == "COMPLETED"
        assert keras_tuner.engine.trial.Trial.load(str(path)).metrics.get_last_value(
            "replicas") == 2  # each trial ran under the strategy
        assert state["hyperparameters"]["values"]["tuner/epochs"] == 1
    model = tuning.load_best(tmp_path / "p")
    assert model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape == (2, 10)


# ---- bad input: one ValueError naming the value, before any work ---------------------------


@pytest.mark.parametrize("arg", ["depths_n", "widths", "branches", "mappings", "lrs",
                                 "weight_decays", "batch_sizes"])
def test_empty_search_space_is_an_error(arg, tmp_path):
    with pytest.raises(ValueError, match=f"`{arg}` is empty"):
        tune(**dict(TINY, **{arg: ()}), directory=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_params=K1 - 1), f"below the smallest model of the search space, "
                              f"n=1,w=0.5,K=1,resnet with {K1:,} parameters"),
    (dict(tuner="grid"), "Unknown `tuner`: 'grid'"),
    (dict(dataset="mnist"), "Unknown dataset 'mnist'"),
    (dict(strategy="multiworker"), "Unknown `strategy`: 'multiworker'"),
    (dict(max_trials=0), "`max_trials` must be an integer >= 1"),
    (dict(mappings=("merge_and_run", "dense")), "Unknown mapping 'dense'"),
    (dict(widths=(0.3,)), "`widths` value 0.3"),
    (dict(batch_sizes=(32, 4096)), "Batch size(s) [4096] exceed"),
])
def test_bad_input_fails_before_training(kwargs, message, tmp_path):
    args = dict(TINY, directory=str(tmp_path / "x"), verbose=0)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        tune(**args)
    assert message in str(err.value)
    assert not (tmp_path / "x").exists()


def test_resuming_with_another_space_is_an_error(tmp_path):
    project = tmp_path / "runs" / "p"
    project.mkdir(parents=True)
    (project / "search.json").write_text(json.dumps(dict(
        dataset="digits", tuner="random", epochs=1, seed=0, max_params=None,
        max_train_examples=None, validation_split=0.1, depths_n=[1, 2], widths=[0.5],
        branches=[1, 2], mappings=["merge_and_run"], lrs=[0.1, 0.05], weight_decays=[1e-4],
        batch_sizes=[32])))
    with pytest.raises(ValueError, match=r"other settings \(depths_n: \[1, 2\] there, \[1\] here"):
        tune(**TINY, directory=str(tmp_path / "runs"), project="p")


def test_fit_needs_unbatched_data():
    import tensorflow as tf

    hm = DMRHyperModel(**TINY)
    hp = tuning.search.keras_tuner.HyperParameters()
    hm.declare_hyperparameters(hp)
    batched = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 32, 32, 3), "float32"), np.zeros(4, "int64"))).batch(2)
    with pytest.raises(ValueError, match="must be an unbatched dataset"):
        hm.fit(hp, keras.Sequential([keras.Input((32, 32, 3))]), batched, validation_data=batched)


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["--tuner", "random", "--max-params", "10", "--depths-n", "1", "--widths", "0.5",
                 "--directory", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmr-tune: error:") and "below the smallest model" in err
    with pytest.raises(SystemExit):
        main(["--tuner", "grid"])
    assert "invalid choice: 'grid'" in capsys.readouterr().err


def test_one_branch_is_labelled_resnet_and_is_the_same_network():
    # merge-and-run (or identity) with K = 1 builds a ResNet layer for layer: labelled so.
    hm = DMRHyperModel(depths_n=(1,), widths=(0.5,), branches=(1, 2),
                       mappings=("merge_and_run", "identity"))
    archs = {(a["mapping"], a["branches"]) for a in hm.architectures()}
    assert archs == {("resnet", 1), ("merge_and_run", 2), ("identity", 2)}
    kwargs = hm.build_kwargs({"n": 1, "width": 0.5, "branches": 1, "mapping": "merge_and_run"})
    assert kwargs["mapping"] == "resnet" and kwargs["name"].startswith("resnet_")
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    nets = [build_model(blocks=(1, 1, 1), width=0.5, num_branches=1, mapping=m)
            for m in ("merge_and_run", "resnet")]
    nets[1].set_weights(nets[0].get_weights())
    np.testing.assert_allclose(np.asarray(nets[0](x)), np.asarray(nets[1](x)), atol=1e-6)
