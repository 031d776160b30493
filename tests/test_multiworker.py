"""dmr_keras.multiworker: the custom distributed step on 2 worker processes, on 2 logical CPUs,
and the TF_CONFIG checks. The training runs in subprocesses (tests/multiworker_worker.py):
TF_CONFIG and logical devices must be set before TensorFlow starts."""

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import keras
import numpy as np
import pytest

from dmr_keras.multiworker import is_chief, parse_tf_config, strategy_from_tf_config

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multiworker_worker.py"
TIMEOUT_S = 180  # a hung worker is killed after this (a healthy run takes ~20-40 s)

needs_tf = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                              reason="tf.distribute needs the TensorFlow backend")


# ---- subprocess helpers ---------------------------------------------------------------------

def _env(tf_config=None):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run_all(commands, log_dir, timeout=TIMEOUT_S):
    """Start every (args, env) at once and wait; kill any still running at the end.

    Returns [(returncode or None if killed, output)].
    """
    procs, killed = [], set()
    with contextlib.ExitStack() as logs:
        try:
            for i, (args, env) in enumerate(commands):
                log = logs.enter_context(open(log_dir / f"proc{i}.log", "wb"))
                procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], env=env,
                                              stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + timeout
            # Until all are done, the time is up, or one fails (its peers would wait for it).
            while time.monotonic() < deadline:
                codes = [p.poll() for p in procs]
                if None not in codes or any(c not in (None, 0) for c in codes):
                    break
                time.sleep(0.2)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    killed.add(proc.pid)
                    proc.kill()
                    proc.wait(timeout=30)
    return [(None if p.pid in killed else p.returncode,
             (log_dir / f"proc{i}.log").read_text(errors="replace")[-4000:])
            for i, p in enumerate(procs)]


def _weights(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


# ---- single machine: MirroredStrategy over 2 logical CPUs ----------------------------------

@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    [(rc, log)] = _run_all([(["mirrored", str(out)], _env())], out)
    assert rc == 0, f"mirrored run failed or hung (rc={rc}):\n{log}"
    return out


def test_mirrored_strategy_on_two_cpus_trains_one_epoch(mirrored_run):
    result = json.loads((mirrored_run / "history_mirrored.json").read_text())
    assert result["replicas"] == 2 and result["chief"] is True
    history = result["a"]
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 1 and math.isfinite(v[0]) for v in history.values()), history
    assert 0 <= history["accuracy"][0] <= 1
    _check_evaluation(result["evaluation"])


def _check_evaluation(evaluation):
    # evaluate_distributed over all examples (partial last batch included) equals a direct call
    # of the model on one device.
    got, want = evaluation["distributed"], evaluation["direct"]
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_gradient_is_the_global_batch_mean(mirrored_run):
    # No BatchNorm: one epoch on 2 replicas (each on half of every global batch) must give the
    # same weights as one device on the whole batch: gradients summed over replicas of
    # per-replica sums / global batch = the mean over the global batch.
    mirrored = _weights(mirrored_run / "b_mirrored.npz")
    single = _weights(mirrored_run / "b_default.npz")
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, atol=1e-5)
    result = json.loads((mirrored_run / "history_mirrored.json").read_text())
    assert result["b_mirrored"]["loss"][0] == pytest.approx(result["b_default"]["loss"][0],
                                                            rel=1e-5)


# ---- two worker processes: MultiWorkerMirroredStrategy --------------------------------------

def test_two_workers_train_to_identical_weights(tmp_path, mirrored_run):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    commands = [(["multiworker", str(tmp_path)],
                 _env({"cluster": cluster, "task": {"type": "worker", "index": i}}))
                for i in range(2)]
    results = _run_all(commands, tmp_path)
    for i, (rc, log) in enumerate(results):
        assert rc == 0, f"worker {i} failed or hung (rc={rc}):\n{log}"

    for name in ("a_init", "a", "b", "history"):
        for i in range(2):
            ext = "json" if name == "history" else "npz"
            assert (tmp_path / f"{name}_{i}.{ext}").exists(), f"{name}_{i}.{ext} missing"
    init = [_weights(tmp_path / f"a_init_{i}.npz") for i in range(2)]
    final = [_weights(tmp_path / f"a_{i}.npz") for i in range(2)]
    # The workers build the model with different seeds: worker 0's initial values are broadcast.
    for a, b in zip(*init):
        np.testing.assert_array_equal(a, b)
    # Same weights at the end, BatchNorm moving statistics included.
    assert len(final[0]) == len(final[1]) == len(init[0])
    for a, b in zip(*final):
        np.testing.assert_allclose(a, b, atol=1e-6)
    changed = [not np.array_equal(a, b) for a, b in zip(init[0], final[0])]
    assert sum(changed) > len(changed) // 2, "training did not change the weights"

    histories = [json.loads((tmp_path / f"history_{i}.json").read_text()) for i in range(2)]
    assert [h["chief"] for h in histories] == [True, False]
    assert all(h["replicas"] == 2 for h in histories)
    assert histories[0]["a"] == histories[1]["a"]  # metrics reduced over both workers
    assert histories[0]["evaluation"] == histories[1]["evaluation"]
    _check_evaluation(histories[0]["evaluation"])
    loss = histories[0]["a"]["loss"]
    assert len(loss) == 2 and all(math.isfinite(v) for v in loss)
    assert loss[1] < loss[0], loss
    assert all(math.isfinite(v) for v in histories[0]["a"]["val_loss"])
    assert histories[0]["epochs_seen"] == [
        [e, ["accuracy", "loss", "val_accuracy", "val_loss"]] for e in range(2)]

    # No BatchNorm: each worker got its own half of every global batch (auto-sharding by DATA),
    # and the all-reduced update equals one device's on the whole batch.
    single = _weights(mirrored_run / "b_default.npz")
    for i in range(2):
        for a, b in zip(_weights(tmp_path / f"b_{i}.npz"), single):
            np.testing.assert_allclose(a, b, atol=1e-5)


# ---- TF_CONFIG and chief --------------------------------------------------------------------

@pytest.fixture
def no_strategy(monkeypatch):
    """Make creating a MultiWorkerMirroredStrategy fail loudly: the check must come first."""
    tf = pytest.importorskip("tensorflow")

    def forbidden(*args, **kwargs):
        raise AssertionError("a strategy was created before TF_CONFIG was checked")

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", forbidden)


def test_strategy_from_tf_config_needs_tf_config(monkeypatch, no_strategy):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG") as err:
        strategy_from_tf_config()
    assert "not set" in str(err.value) and '"cluster"' in str(err.value)


@pytest.mark.parametrize("raw, why", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', '"cluster"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', '"task"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "outside"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}',
     "not an integer"),
    ('{"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker", "index": 0}}',
     "host:port"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "not a job"),
])
def test_strategy_from_tf_config_rejects_malformed(monkeypatch, no_strategy, raw, why):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ValueError, match="TF_CONFIG") as err:
        strategy_from_tf_config()
    assert why in str(err.value)
    assert "must be a JSON object like" in str(err.value)


def test_parse_tf_config_accepts_a_cluster():
    raw = '{"cluster": {"worker": ["h1:1", "h2:2"]}, "task": {"type": "worker", "index": 1}}'
    assert parse_tf_config(raw)["task"]["index"] == 1


def _fake_strategy(jobs, task_type, task_id):
    tf = pytest.importorskip("tensorflow")
    spec = tf.train.ClusterSpec({job: [f"h{i}:1" for i in range(n)] for job, n in jobs.items()})
    resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                     cluster_spec=lambda: spec)
    return types.SimpleNamespace(cluster_resolver=resolver)


@needs_tf
def test_is_chief():
    import tensorflow as tf

    assert is_chief(None) and is_chief(tf.distribute.get_strategy())
    assert is_chief(_fake_strategy({"worker": 2}, "worker", 0))
    assert not is_chief(_fake_strategy({"worker": 2}, "worker", 1))
    assert is_chief(_fake_strategy({"chief": 1, "worker": 2}, "chief", 0))
    assert not is_chief(_fake_strategy({"chief": 1, "worker": 2}, "worker", 0))


# ---- argument checks (in process, default strategy) -----------------------------------------

@needs_tf
def test_fit_distributed_checks_its_arguments():
    import tensorflow as tf

    from dmr_keras.multiworker import fit_distributed

    strategy = tf.distribute.get_strategy()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    opt = keras.optimizers.SGD(0.1)
    x, y = np.zeros((4, 4), "float32"), np.zeros((4,), "int64")  # one batch
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True)
    kw = {"optimizer": opt, "train_dataset": ds, "epochs": 1, "strategy": strategy,
          "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "verbose": 0}
    with pytest.raises(ValueError, match="batched by 4, not by the global batch size 8"):
        fit_distributed(model, global_batch_size=8, **kw)
    with pytest.raises(ValueError, match="global_batch_size"):
        fit_distributed(model, global_batch_size=0, **kw)
    with pytest.raises(ValueError, match="initial_epoch <= epochs"):
        fit_distributed(model, global_batch_size=4, **{**kw, "epochs": 1}, initial_epoch=2)
    with pytest.raises(ValueError, match=r"\(images, labels\)"):
        fit_distributed(model, global_batch_size=4,
                        **{**kw, "train_dataset": ds.map(lambda a, b: a)})
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="Build the model"):
        fit_distributed(unbuilt, global_batch_size=4, **kw)
    history = fit_distributed(model, global_batch_size=4, **kw)
    assert set(history) == {"loss", "accuracy"} and len(history["loss"]) == 1
    # zero inputs and biases: uniform softmax on the only step
    assert history["loss"][0] == pytest.approx(math.log(3), rel=1e-5)
