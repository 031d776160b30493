"""dmr_keras.multiworker: the custom distributed step on 2 worker processes, on 2 logical CPUs,
and the TF_CONFIG checks. The training runs in subprocesses (tests/multiworker_worker.py):
TF_CONFIG and logical devices must be set before TensorFlow starts. Also: a loss-scaled step
with inf on one replica is skipped on all, workers agree on the resume epoch, and a two-worker
run killed after a checkpoint and restarted ends where an uninterrupted run does."""

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


def _run_all(commands, log_dir, timeout=TIMEOUT_S, name="proc", until=None):
    """Start every (args, env) at once and wait; kill (SIGKILL) any still running at the end.

    Waits until all are done, the time is up, one fails (its peers would wait for it), or
    ``until(return codes so far)`` is true. Returns [(returncode or None if killed, output)].
    """
    procs, killed = [], set()
    logs = [log_dir / f"{name}{i}.log" for i in range(len(commands))]
    with contextlib.ExitStack() as files:
        try:
            for (args, env), path in zip(commands, logs):
                log = files.enter_context(open(path, "wb"))
                procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], env=env,
                                              stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                codes = [p.poll() for p in procs]
                if None not in codes or any(c not in (None, 0) for c in codes):
                    break
                if until is not None and until(codes):
                    break
                time.sleep(0.2)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    killed.add(proc.pid)
                    proc.kill()
                    proc.wait(timeout=30)
    return [(None if p.pid in killed else p.returncode, path.read_text(errors="replace")[-4000:])
            for p, path in zip(procs, logs)]


def _cluster_commands(args, ports):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [(list(args), _env({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            for i in range(len(ports))]


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

@pytest.fixture(scope="module")
def multiworker_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiworker")
    results = _run_all(_cluster_commands(["multiworker", str(out)], _free_ports(2)), out)
    for i, (rc, log) in enumerate(results):
        assert rc == 0, f"worker {i} failed or hung (rc={rc}):\n{log}"
    return out


def test_two_workers_train_to_identical_weights(multiworker_run, mirrored_run):
    tmp_path = multiworker_run
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


def test_fit_distributed_starts_every_worker_from_the_chiefs_weights(multiworker_run):
    # Worker 1 set other starting weights for B (as if it loaded another checkpoint); B still
    # ends equal to the one-device run from worker 0's weights (checked above), because
    # fit_distributed broadcast the chief's variables first.
    start = [_weights(multiworker_run / f"b_start_{i}.npz") for i in range(2)]
    assert not any(np.allclose(a, b) for a, b in zip(*start))
    final = [_weights(multiworker_run / f"b_{i}.npz") for i in range(2)]
    for a, b in zip(*final):
        np.testing.assert_array_equal(a, b)


def _check_loss_scale_skip(result, out, suffixes, reference):
    """Model C under a LossScaleOptimizer: the global batch with inf in the second replica's
    half only is skipped by every replica; the next, finite, one is applied by every one."""
    init = _weights(out / f"c_init_{suffixes[0]}.npz")
    for suffix in suffixes:
        for a, b in zip(init, _weights(out / f"c_skip_{suffix}.npz")):
            np.testing.assert_array_equal(a, b)  # the inf step changed nothing, anywhere
    scales, counters, iterations = [], [], []
    for r in result:
        assert not math.isfinite(r["loss_bad"])
        scales += r["after_skip"]["scale"]
        counters += r["after_skip"]["step_counter"]
        iterations += r["after_skip"]["iterations"]
    assert len(scales) == 2  # one value per replica
    assert scales == [512.0, 512.0]  # halved from 1024, on every replica
    assert counters == [0.0, 0.0] and iterations == [0.0, 0.0]
    for r in result:  # then the finite step: applied, the scale kept, on every replica
        assert r["after_good"]["scale"] == [512.0] * len(r["after_good"]["scale"])
        assert r["after_good"]["iterations"] == [1.0] * len(r["after_good"]["iterations"])
    want = _weights(reference)
    for suffix in suffixes:
        got = _weights(out / f"c_final_{suffix}.npz")
        assert all(np.isfinite(w).all() for w in got)
        for a, b in zip(got, want):  # = plain SGD on the finite batch alone
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_loss_scale_skip_agreed_by_two_workers(multiworker_run, mirrored_run):
    result = [json.loads((multiworker_run / f"history_{i}.json").read_text())["c"]
              for i in range(2)]
    _check_loss_scale_skip(result, multiworker_run, ["0", "1"],
                           mirrored_run / "c_reference.npz")


def test_loss_scale_skip_agreed_by_two_local_replicas(mirrored_run):
    # Keras alone would take the first replica's (finite) verdict and apply the inf gradients.
    result = [json.loads((mirrored_run / "history_mirrored.json").read_text())["c"]]
    _check_loss_scale_skip(result, mirrored_run, ["mirrored"], mirrored_run / "c_reference.npz")


def test_workers_agree_on_the_initial_epoch(multiworker_run):
    probes = [json.loads((multiworker_run / f"history_{i}.json").read_text())["agreement"]
              for i in range(2)]
    assert [p["agreed"] for p in probes] == [2, 2]
    # Worker 0 saw epoch 3, worker 1 epoch 4: both raise the same error, naming both.
    errors = [p["mismatch_error"] for p in probes]
    assert errors[0] is not None and errors[0] == errors[1]
    assert "worker 0 (chief): epoch 3" in errors[0] and "worker 1: epoch 4" in errors[0]
    assert "shared by all workers" in errors[0] and "identical local copy" in errors[0]


# ---- kill and restart -----------------------------------------------------------------------

RESUME_EPOCHS = 3
PAUSE_AFTER = 1  # 0-based: the first attempt is killed after its second epoch's checkpoint


def test_killed_two_worker_run_resumes_to_the_uninterrupted_result(tmp_path):
    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"
    ref.mkdir()
    run.mkdir()
    # At the same time (two clusters of two workers): an uninterrupted run, and the first
    # attempt of the other, whose workers checkpoint epoch 2 and pause; SIGKILL them there.
    reference = _cluster_commands(["resume", str(ref), str(RESUME_EPOCHS), "-1"],
                                  _free_ports(2))
    commands = _cluster_commands(["resume", str(run), str(RESUME_EPOCHS), str(PAUSE_AFTER)],
                                 _free_ports(2))
    paused = [run / f"paused_{i}" for i in range(2)]
    results = _run_all(reference + commands, tmp_path, name="first",
                       until=lambda codes: codes[:2] == [0, 0]
                       and all(p.exists() for p in paused))
    for i, (rc, log) in enumerate(results[:2]):
        assert rc == 0, f"uninterrupted worker {i} failed or hung (rc={rc}):\n{log}"
    for i, (rc, log) in enumerate(results[2:]):
        assert rc is None, f"worker {i} was not running when killed (rc={rc}):\n{log}"
    assert all(p.exists() for p in paused)
    assert not any(run.glob("final_*.npz"))
    for i in range(2):
        state = json.loads((run / f"ckpt_{i}" / "checkpoint.json").read_text())
        assert state["epoch"] == PAUSE_AFTER + 1

    # Restart with the same command: resumes from epoch 2 and finishes.
    second = _run_all(commands, run, name="second")
    for i, (rc, log) in enumerate(second):
        assert rc == 0, f"restarted worker {i} failed or hung (rc={rc}):\n{log}"
    resumed = [json.loads((run / f"resume_{i}.json").read_text()) for i in range(2)]
    assert [r["initial_epoch"] for r in resumed] == [PAUSE_AFTER + 1] * 2
    uninterrupted = json.loads((ref / "resume_0.json").read_text())
    assert uninterrupted["initial_epoch"] == 0
    for r in resumed:  # the logs of the killed attempt are carried on
        assert len(r["history"]["loss"]) == RESUME_EPOCHS
        np.testing.assert_allclose(r["history"]["loss"], uninterrupted["history"]["loss"],
                                   rtol=1e-5)

    for name in ("final", "final_optimizer"):
        want = _weights(ref / f"{name}_0.npz")
        ends = [_weights(run / f"{name}_{i}.npz") for i in range(2)]
        assert len(ends[0]) == len(ends[1]) == len(want)
        for a, b in zip(*ends):  # the two workers: identical
            np.testing.assert_array_equal(a, b)
        for a, b in zip(ends[0], want):  # = the uninterrupted run, to float tolerance
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(want, _weights(ref / f"{name}_1.npz")):
            np.testing.assert_array_equal(a, b)


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


@needs_tf
def test_fit_distributed_builds_each_epochs_dataset_from_a_callable():
    import tensorflow as tf

    from dmr_keras.multiworker import fit_distributed

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    asked = []

    def data(epoch):
        asked.append(epoch)
        x, y = np.zeros((4, 4), "float32"), np.zeros((4,), "int64")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)

    history = fit_distributed(
        model, optimizer=keras.optimizers.SGD(0.1), train_dataset=data, epochs=4,
        initial_epoch=1, strategy=None, global_batch_size=4, verbose=0,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert asked == [1, 2, 3] and len(history["loss"]) == 3


@needs_tf
def test_resume_helpers_on_one_process():
    import tensorflow as tf

    from dmr_keras.multiworker import agree_on_initial_epoch, broadcast_from_chief

    strategy = tf.distribute.get_strategy()
    assert agree_on_initial_epoch(strategy, 0) == 0
    assert agree_on_initial_epoch(None, 7) == 7
    for bad in (-1, 1.0, True, None):
        with pytest.raises(ValueError, match="local_epoch"):
            agree_on_initial_epoch(strategy, bad)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    before = model.get_weights()
    broadcast_from_chief(strategy, model.variables)  # one replica: nothing to do
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@needs_tf
def test_dmr_train_two_workers_killed_and_restarted(tmp_path):
    """`dmr-train --strategy multiworker` end to end: both workers killed after the first
    checkpoint, the same command restarted, both resume at that epoch and finish alike."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "zoo.train", "--model", "dmrnet_8_tiny", "--epochs", "2",
            "--strategy", "multiworker", "--output", str(out), "--verbose", "2", "--seed", "3"]
    state = out / "checkpoints" / "checkpoint.json"

    def attempt(name, stop_after_checkpoint):
        cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
        procs, logs = [], [tmp_path / f"{name}{i}.log" for i in range(2)]
        for i, log in enumerate(logs):
            env = _env({"cluster": cluster, "task": {"type": "worker", "index": i}})
            with open(log, "wb") as f:
                procs.append(subprocess.Popen(args, env=env, stdout=f,
                                              stderr=subprocess.STDOUT, cwd=ROOT))
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                if stop_after_checkpoint and state.exists():
                    break
                time.sleep(0.1)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(timeout=30)
        return [p.returncode for p in procs], [log.read_text(errors="replace") for log in logs]

    codes, logs = attempt("first", stop_after_checkpoint=True)
    assert state.exists(), "\n".join(logs)
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at == 1 and not (out / "metrics.json").exists()
    codes, logs = attempt("again", stop_after_checkpoint=False)
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    for log in logs:
        assert f"Resuming from epoch {killed_at}" in log
    finals = [[line for line in log.splitlines() if line.startswith("test accuracy")][0]
              for log in logs]
    assert finals[0].split("wall")[0] == finals[1].split("wall")[0]  # same accuracy and loss
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == killed_at and len(metrics["history"]["loss"]) == 2
