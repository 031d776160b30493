"""bench/finetune_study.py's machinery on a tiny setting: the dataset it builds, one real
``dmr-train --init-weights`` run (1 epoch, 2 images per class, 3 test images per class), the
results JSON it writes, the resume that skips finished runs, and the table."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))


def _load():
    spec = importlib.util.spec_from_file_location("bench_finetune_study",
                                                  BENCH / "finetune_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _load()


def test_render_is_the_package_digits_conversion():
    from sklearn.datasets import load_digits

    from dmr_keras.digits import digits_to_images

    flat = load_digits().data[:20]
    got = study.render_digits(flat)
    assert got.dtype == np.uint8 and got.shape == (20, 32, 32, 3)
    np.testing.assert_allclose(got, digits_to_images(flat, max_value=255.0), atol=0.5)


def test_split_is_nested_disjoint_and_fixed():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    a = study.split_indices(labels, [10, 50])
    assert a == study.split_indices(labels, [10, 50])  # fixed: no dependence on global state
    train10, train50 = set(a["train"][10]), set(a["train"][50])
    val, test = set(a["val"]), set(a["test"])
    assert len(train10) == 100 and len(train50) == 500 and len(val) == 50
    assert train10 <= train50
    assert not (train50 & val) and not (train50 & test) and not (val & test)
    assert len(train50 | val | test) == len(labels) == 1797
    for c in range(10):  # balanced per class
        assert sum(labels[i] == c for i in a["train"][10]) == 10
        assert sum(labels[i] == c for i in a["train"][50]) == 50


def test_table_pairs_seeds():
    runs = {}
    for arm, accs in (("scratch", [80.0, 82.0]), ("finetune", [90.0, 91.0])):
        for seed, acc in enumerate(accs):
            runs[study.run_key(10, arm, seed)] = dict(
                size=10, arm=arm, seed=seed, test_top1=acc, test_images=1247, run_wall_s=60.0,
                train_time_s=40.0)
    results = {"config": study.config_of(_args()), "runs": runs}
    table = study.format_table(results)
    row = next(line for line in table.splitlines() if "| finetune" in line)
    assert "+10.00 / +9.00" in row and "+9.50 ± 0.71" in row and "90.50 ± 0.71" in row


def _args(**kw):
    import argparse

    base = dict(model="dmrnet_20", init_weights="dmrnet_20.cifar10_e40", epochs=30, batch_size=32,
                limit=None)
    return argparse.Namespace(**{**base, **kw})


def test_smoke_run_writes_json_and_resume_skips(tmp_path, monkeypatch, capsys):
    argv = ["--work", str(tmp_path / "work"), "--output", str(tmp_path / "out"),
            "--model", "dmrnet_8_tiny", "--init-weights", "dmrnet_8_tiny.digits",
            "--sizes", "2", "--seeds", "0", "--arms", "finetune", "--epochs", "1",
            "--batch-size", "10", "--limit", "3"]
    assert study.main(argv) == 0
    folder = tmp_path / "work" / "data" / "digits-2pc"
    assert sorted(p.name for p in folder.iterdir()) == ["split.json", "test", "train", "val"]
    assert len(list((folder / "train").glob("*/*.png"))) == 20
    assert len(list((folder / "test").glob("*/*.png"))) == 30

    path = tmp_path / "out" / study.RESULTS_FILE
    results = json.loads(path.read_text())
    assert results["config"]["recipe"]["epochs"] == 1
    assert results["config"]["init_weights"] == "dmrnet_8_tiny.digits"
    run = results["runs"]["2pc-finetune-s0"]
    assert run["arm"] == "finetune" and run["size"] == 2 and run["seed"] == 0
    assert run["test_images"] == 30 and 0.0 <= run["test_top1"] <= 100.0
    assert run["train_images"] == 20 and run["run_wall_s"] > 0
    assert "--init-weights dmrnet_8_tiny.digits" in run["command"]
    assert (tmp_path / "out" / study.TABLE_FILE).read_text().count("| 2 ") == 1

    # Running again trains nothing: the finished run is skipped, the JSON is unchanged.
    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study, "run_training", no_training)
    before = path.read_text()
    capsys.readouterr()
    assert study.main(argv) == 0
    assert "1 of 1 runs already in" in capsys.readouterr().out
    assert path.read_text() == before

    # Other settings into the same results file are refused, not mixed in.
    with pytest.raises(SystemExit, match="other settings"):
        study.main([*argv[:-6], "--epochs", "2", "--batch-size", "10", "--limit", "3"])
