"""`dmr-tune` on keras-tuner's chief/worker mode: a chief and two workers on 127.0.0.1 finish one
search together, only the chief writes the search's outputs, and a worker killed mid-trial and
restarted with the same KERASTUNER_TUNER_ID runs its trial again; the settings' checks."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuning import distributed

ROOT = Path(__file__).resolve().parents[1]
# Only the chief writes these (trial.json: the chief's oracle); relative to the project.
CHIEF_OUTPUTS = ("search.json", "oracle.json", "leaderboard.csv", "leaderboard.json",
                 "pareto.csv", "pareto.png", "best.keras", "best.json")
# Each process records the files it writes (os.replace targets: every state file and output is
# written atomically; direct write-mode opens) through an audit hook, then runs dmr-tune.
_RUN = """
import os, sys
_log = open(os.environ["DMR_TEST_WRITES"], "a", buffering=1)
def _hook(event, args):
    if event == "os.rename":
        _log.write(os.fsdecode(args[1]) + "\\n")
    elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and args[2] & (
            os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        _log.write(os.fsdecode(args[0]) + "\\n")
sys.addaudithook(_hook)
from tuning.search import main
raise SystemExit(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(directory, max_trials, epochs, code=_RUN):
    # Six configurations of one small architecture (n=1, w=0.5, K=1), 10 batches an epoch.
    return [sys.executable, "-c", code, "--tuner", "random", "--dataset", "digits",
            "--max-trials", str(max_trials), "--epochs", str(epochs),
            "--directory", str(directory), "--project", "p", "--depths-n", "1",
            "--widths", "0.5", "--branches", "1", "--lrs", "0.1", "0.05", "0.02",
            "--weight-decays", "1e-4", "5e-4", "--batch-sizes", "32",
            "--max-train-examples", "320", "--seed", "1", "--verbose", "2"]


class Cluster:
    """The processes of one search: started with their logs and write records in ``root``,
    all killed at the end whatever happens."""

    def __init__(self, root: Path, max_trials: int, epochs: int):
        self.root, self.port = root, _free_port()
        self.cmd = _cli(root, max_trials, epochs)
        self.project = root / "p"
        self.procs = []

    def start(self, tuner_id: str, tag: str | None = None) -> subprocess.Popen:
        tag = tag or tuner_id
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
                   TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
                   KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP="127.0.0.1",
                   KERASTUNER_ORACLE_PORT=str(self.port),
                   DMR_TEST_WRITES=str(self.root / f"{tag}.writes"))
        with open(self.root / f"{tag}.log", "wb") as log:
            proc = subprocess.Popen(self.cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log(self, tag: str) -> str:
        path = self.root / f"{tag}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def writes(self, tag: str) -> set:
        """Paths ``tag`` wrote, relative to the project (others left out)."""
        path = self.root / f"{tag}.writes"
        lines = path.read_text().splitlines() if path.exists() else []
        project = os.path.realpath(self.project)
        out = set()
        for line in lines:
            full = os.path.realpath(line)
            if full.startswith(project + os.sep):
                out.add(os.path.relpath(full, project))
        return out

    def tails(self) -> str:
        return "".join(f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-2500:]}"
                       for p in sorted(self.root.glob("*.log")))

    def wait(self, proc, deadline: float) -> int:
        try:
            return proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pytest.fail("a process did not finish in time:" + self.tails())

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture
def cluster_factory(tmp_path):
    clusters = []

    def make(max_trials, epochs):
        clusters.append(Cluster(tmp_path, max_trials, epochs))
        return clusters[-1]

    yield make
    for cluster in clusters:
        cluster.close()


def _trials(project):
    out = {}
    for path in project.glob("trial_*/trial.json"):  # written atomically: always complete
        state = json.loads(path.read_text())
        out[state["trial_id"]] = state
    return out


def _ran(log: str, tuner_id: str) -> list:
    """The trial ids a worker's closing line says it ran."""
    match = re.search(rf"^Worker {tuner_id} finished: ran trial\(s\) (.*?) \(", log, re.M)
    assert match, f"no closing line of worker {tuner_id}:\n{log[-2500:]}"
    return [] if match.group(1) == "none" else match.group(1).split(", ")


def _test_accuracy(project) -> float:
    """best.keras evaluated here, independently, on the digits test split."""
    import keras
    import numpy as np

    from dmr_keras.data import digits_split
    from dmr_keras.digits import load_digits_images

    manifest = json.loads((project / "best.json").read_text())
    model = keras.saving.load_model(project / "best.keras")
    images, labels = load_digits_images()
    _, test_idx = digits_split()
    x = (images[test_idx] - np.array(manifest["mean"], "float32")) / np.array(
        manifest["std"], "float32")
    probs = keras.ops.convert_to_numpy(model.predict(x, batch_size=120, verbose=0))
    return float(np.mean(probs.argmax(axis=1) == labels[test_idx]))


# ---- one search, a chief and two workers -----------------------------------------------------


def test_chief_and_two_workers_finish_a_search(cluster_factory):
    trials_wanted = 4
    c = cluster_factory(max_trials=trials_wanted, epochs=1)
    # The workers first: both wait for the chief's oracle, so each gets a trial at once.
    workers = {w: c.start(w) for w in ("tuner1", "tuner2")}
    deadline = time.time() + 400
    while not all(f"; worker '{w}' of the oracle at" in c.log(w) for w in workers):
        assert time.time() < deadline and all(p.poll() is None for p in workers.values()), \
            c.tails()
        time.sleep(0.2)
    time.sleep(1)  # into search(): blocked on the oracle that is not up yet
    chief = c.start("chief")
    assert c.wait(chief, deadline) == 0, c.tails()
    for proc in workers.values():
        assert c.wait(proc, deadline) == 0, c.tails()

    trials = _trials(c.project)
    assert len(trials) == trials_wanted
    assert {t["status"] for t in trials.values()} == {"COMPLETED"}, c.tails()
    ran = {w: _ran(c.log(w), w) for w in workers}
    assert all(ran.values()), ran  # both workers trained trials, each its own
    assert sorted(ran["tuner1"] + ran["tuner2"]) == sorted(trials), ran
    assert "; chief 'chief': serves the oracle on 127.0.0.1:" in c.log("chief")
    assert "; worker 'tuner1' of the oracle at 127.0.0.1:" in c.log("tuner1")

    # Only the chief wrote the search's outputs and state; each worker its own tuner file and
    # the checkpoints of its trials (the recording sees the writes: the chief's are there).
    chief_writes = c.writes("chief")
    assert set(CHIEF_OUTPUTS) <= chief_writes, chief_writes
    assert {f"trial_{t}/trial.json" for t in trials} <= chief_writes
    for w in workers:
        writes = c.writes(w)
        assert f"{w}.json" in writes, writes
        assert not writes & set(CHIEF_OUTPUTS), writes
        assert not [p for p in writes if p.endswith("trial.json")], writes
        assert {p.split(os.sep)[0] for p in writes if p.startswith("trial_")} <= \
            {f"trial_{t}" for t in ran[w]}, writes
    assert "best: trial" in c.log("chief")
    for w in workers:
        assert "best: trial" not in c.log(w)

    rows = json.loads((c.project / "leaderboard.json").read_text())["rows"]
    assert sorted(r["trial_id"] for r in rows if r["status"] == "completed") == sorted(trials)
    best = json.loads((c.project / "best.json").read_text())
    assert best["trial_id"] == rows[0]["trial_id"]
    assert best["test_accuracy"] == pytest.approx(_test_accuracy(c.project), abs=1e-6)
    assert not list(c.project.rglob(".*.tmp*"))


# ---- a worker killed mid-trial ---------------------------------------------------------------


def test_worker_killed_mid_trial_is_restarted_and_runs_its_trial_again(cluster_factory):
    trials_wanted, epochs = 3, 3
    c = cluster_factory(max_trials=trials_wanted, epochs=epochs)
    chief = c.start("chief")
    workers = {w: c.start(w) for w in ("tuner1", "tuner2")}
    deadline = time.time() + 400

    # Kill the first worker seen in a trial whose first epoch is saved (more epochs to go).
    victim = trial_id = None
    while victim is None and time.time() < deadline:
        for w in workers:
            starts = list(re.finditer(rf"^Worker {w}: trial (\S+) started$", c.log(w), re.M))
            match = starts[-1] if starts else None
            saved = (c.project / f"trial_{match.group(1)}" / "epochs" / "checkpoint.json"
                     if match else None)
            if saved is not None and saved.exists():  # an epoch saved, more to go
                state = _trials(c.project).get(match.group(1))
                if state and state["status"] == "RUNNING":
                    victim, trial_id = w, match.group(1)
                    workers[w].send_signal(signal.SIGKILL)
                    break
        assert chief.poll() is None, c.tails()
        time.sleep(0.1)
    assert victim, "no worker was seen training before the deadline:" + c.tails()
    assert workers[victim].wait(timeout=30) == -signal.SIGKILL
    killed_log = c.log(victim)
    assert f"Worker {victim}: trial {trial_id} completed" not in killed_log
    # The chief's oracle still holds the trial as the victim's.
    oracle = json.loads((c.project / "oracle.json").read_text())
    assert oracle["ongoing_trials"].get(victim) == trial_id, oracle["ongoing_trials"]
    # The epochs the killed attempt saved (0 when killed in its first epoch).
    saved = c.project / f"trial_{trial_id}" / "epochs" / "checkpoint.json"
    saved_epochs = json.loads(saved.read_text())["epoch"]
    assert 1 <= saved_epochs < epochs  # killed mid-trial, after an epoch was saved

    restarted = c.start(victim, tag=f"{victim}-restarted")
    other = next(w for w in workers if w != victim)
    assert c.wait(chief, deadline) == 0, c.tails()
    assert c.wait(workers[other], deadline) == 0, c.tails()
    assert c.wait(restarted, deadline) == 0, c.tails()

    again = c.log(f"{victim}-restarted")
    assert re.search(rf"^Worker {victim}: trial {trial_id} started$", again, re.M), again[-2500:]
    assert _ran(again, victim)[0] == trial_id  # its trial first: the oracle gave it back
    trials = _trials(c.project)
    assert len(trials) == trials_wanted
    assert {t["status"] for t in trials.values()} == {"COMPLETED"}, c.tails()
    assert trial_id not in _ran(c.log(other), other)
    # The restarted worker continued the trial after its saved epochs, not from epoch 0.
    metrics = trials[trial_id]["metrics"]["metrics"]
    assert metrics["initial_epoch"]["observations"][-1]["value"][0] == saved_epochs
    assert (c.project / "best.json").is_file() and (c.project / "leaderboard.json").is_file()
    assert not list(c.project.rglob(".*.tmp*"))


def test_each_process_removes_only_its_own_stale_temp_files(tmp_path):
    """A process starting (or restarting) in a running distributed search must not delete
    another process's temporary file in the middle of its write."""
    from tuning.search import _chief_files, _remove_stale_temp_files

    names = {"chief": [".oracle.json.a1.tmp.json", ".search.json.b2.tmp.json",
                       ".chief.json.c3.tmp.json", "trial_0/.trial.json.d4.tmp.json",
                       ".best.keras.e5.tmp.keras", ".leaderboard.csv.f6.tmp.csv"],
             "tuner1": [".tuner1.json.g7.tmp.json"],
             "others": [".tuner2.json.h8.tmp.json", "trial_0/epochs/.epoch-0001.weights.h5.i9"
                        ".tmp.weights.h5", "trial_1/.checkpoint.weights.h5.j0.tmp.weights.h5"]}
    for name in sum(names.values(), []):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("partial")

    def left():
        return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob(".*.tmp*")}

    _remove_stale_temp_files(tmp_path, ("tuner1.json",))  # a worker: its own tuner file only
    assert left() == set(names["chief"] + names["others"])
    _remove_stale_temp_files(tmp_path, _chief_files("chief"))  # the chief: its own files
    assert left() == set(names["others"])
    _remove_stale_temp_files(tmp_path)  # a single process: everything
    assert left() == set()


# ---- the settings, checked before any work (no TensorFlow) -----------------------------------


def _env(**values):
    return {f"KERASTUNER_{k}": v for k, v in values.items()}


@pytest.mark.parametrize("env, role, tuner_id", [
    ({}, "single", "tuner0"),
    (_env(TUNER_ID="mine"), "single", "mine"),
    (_env(TUNER_ID="chief", ORACLE_IP="10.0.0.1", ORACLE_PORT="8000"), "chief", "chief"),
    (_env(TUNER_ID="tuner1", ORACLE_IP="10.0.0.1", ORACLE_PORT="8000"), "worker", "tuner1"),
])
def test_settings_roles(env, role, tuner_id):
    s = distributed.settings(env)
    assert (s.role, s.tuner_id) == (role, tuner_id)
    if role != "single":
        assert (s.ip, s.port, s.address) == ("10.0.0.1", 8000, "10.0.0.1:8000")


@pytest.mark.parametrize("env, message", [
    (_env(TUNER_ID="chief", ORACLE_IP="10.0.0.1"),
     "KERASTUNER_ORACLE_IP=10.0.0.1 is set but KERASTUNER_ORACLE_PORT is not"),
    (_env(TUNER_ID="chief", ORACLE_PORT="8000"),
     "KERASTUNER_ORACLE_PORT=8000 is set but KERASTUNER_ORACLE_IP is not"),
    (_env(TUNER_ID="t1", ORACLE_IP="10.0.0.1", ORACLE_PORT="80x"),
     "KERASTUNER_ORACLE_PORT must be an integer port from 1 to 65535 (the same on every "
     "machine). Received: '80x'"),
    (_env(TUNER_ID="t1", ORACLE_IP="10.0.0.1", ORACLE_PORT="70000"), "Received: '70000'"),
    (_env(TUNER_ID="t1", ORACLE_IP="10.0.0.1", ORACLE_PORT="0"), "Received: '0'"),
    (_env(ORACLE_IP="10.0.0.1", ORACLE_PORT="8000"),
     "KERASTUNER_ORACLE_IP=10.0.0.1 is set but KERASTUNER_TUNER_ID is not"),
    (_env(TUNER_ID="chief"), "makes this process the chief, but KERASTUNER_ORACLE_IP"),
    (_env(TUNER_ID="a/b"), "KERASTUNER_TUNER_ID='a/b' is not a valid tuner id"),
    (_env(TUNER_ID=""), "KERASTUNER_TUNER_ID is set but empty"),
    (_env(TUNER_ID="t1", ORACLE_IP="10.0.0.1 ", ORACLE_PORT="8000"), "holds spaces"),
])
def test_settings_errors_are_one_line(env, message):
    with pytest.raises(ValueError) as err:
        distributed.settings(env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_chief_address_is_checked_before_any_work(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = distributed.Settings("chief", "chief", "127.0.0.1", port)
        with pytest.raises(ValueError, match=f"KERASTUNER_ORACLE_PORT={port} is in use"):
            distributed.check_chief_address(busy)
        distributed.check_chief_address(  # a worker: nothing to serve
            distributed.Settings("worker", "tuner1", "127.0.0.1", port))
    distributed.check_chief_address(busy)  # free again
    # Through dmr-tune: one line, exit status 2, nothing written.
    env = dict(os.environ, PYTHONPATH=str(ROOT), KERASTUNER_TUNER_ID="chief",
               KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT="nope")
    cli = _cli(tmp_path, 4, 1, code="from tuning.search import main; raise SystemExit(main())")
    proc = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "dmr-tune: error: KERASTUNER_ORACLE_PORT must be an integer port from 1 to 65535 (the "
        "same on every machine). Received: 'nope'")
    assert not (tmp_path / "p").exists()


def test_distributed_settings_import_no_tensorflow():
    # With the console scripts' deferred imports (dmr_cli.py), as `dmr-tune --help` runs.
    code = ("import sys, tuning.distributed; "
            "assert not {'tensorflow', 'keras', 'keras_tuner'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(
        os.environ, PYTHONPATH=str(ROOT), DMR_KERAS_DEFER_IMPORTS="1"), timeout=120)


def test_worker_with_other_settings_stops_before_its_first_trial(tmp_path):
    """A worker checks its settings against the chief's search.json when it is given its first
    trial (the chief writes search.json before it serves): another --epochs is refused, by
    name, before any training."""
    from types import SimpleNamespace

    from tuning.search import _RESUME_KEYS, _report_worker_trials

    chief = dict.fromkeys(_RESUME_KEYS, None)
    chief.update(dataset="digits", tuner="random", epochs=2, seed=0)
    (tmp_path / "search.json").write_text(json.dumps(chief))
    began = []
    tuner = SimpleNamespace(on_trial_begin=began.append, on_trial_end=lambda trial: None)
    trial = SimpleNamespace(trial_id="0", status="RUNNING")
    _report_worker_trials(tuner, "tuner1", tmp_path, dict(chief, epochs=3))
    with pytest.raises(ValueError, match=r"worker's settings differ.*epochs"):
        tuner.on_trial_begin(trial)
    assert began == []  # the trial was not started
    same = SimpleNamespace(on_trial_begin=began.append, on_trial_end=lambda trial: None)
    _report_worker_trials(same, "tuner1", tmp_path, dict(chief))
    same.on_trial_begin(trial)
    assert began == [trial]
