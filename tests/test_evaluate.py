"""`dmr-eval` / `zoo.evaluate`: every kind of model argument, results files, and
`verify_accuracy`, checked against independent computations."""

import csv
import json
import re
import shutil

import numpy as np
import pytest

import zoo
from zoo import evaluate as ev
from zoo import weights as zoo_weights
from zoo.applications import preprocess_input

KEY = "dmrnet_8_tiny.digits"


def _reference(model, n):
    """top-1, top-5 (percent) and cross-entropy of ``model`` on the first ``n`` digits test
    images, computed here from the raw images (not through dmr_keras.data)."""
    from dmr_keras.data import digits_split
    from dmr_keras.digits import load_digits_images

    images, labels = load_digits_images()
    _, test_idx = digits_split()
    idx = test_idx[:n]
    x = preprocess_input(images[idx] * 255.0, weights=KEY)
    p = np.asarray(model.predict(x, batch_size=64, verbose=0), "float64")
    y = labels[idx]
    top5 = np.argsort(-p, axis=1)[:, :5]
    return (100 * np.mean(top5[:, 0] == y), 100 * np.mean((top5 == y[:, None]).any(1)),
            float(np.mean(-np.log(np.clip(p[np.arange(n), y], 1e-7, 1)))))


def test_eval_of_shipped_weights_reproduces_the_manifest_and_a_subset():
    entry = zoo_weights.load_manifest()[KEY]
    full = ev.evaluate(KEY)
    assert full["images"] == 360 and full["dataset"] == "digits" and full["split"] == "test"
    assert full["top1"] == pytest.approx(100 * entry.metrics["test_accuracy"], abs=1e-3)
    assert full["params"] == zoo.get_variant("dmrnet_8_tiny").params
    subset = ev.evaluate(KEY, limit=100, batch_size=32)  # batches of 32 cut at 100
    top1, top5, loss = _reference(zoo.create_model(KEY, include_preprocessing=False), 100)
    assert subset["images"] == 100
    assert subset["top1"] == pytest.approx(top1, abs=1e-3)
    assert subset["top5"] == pytest.approx(top5, abs=1e-3)
    assert subset["loss"] == pytest.approx(loss, rel=1e-4)


def test_cli_results_files_and_model_list(tmp_path, capsys):
    models = tmp_path / "models.txt"
    models.write_text(f"# the shipped weights\n{KEY}   # twice\n\n{KEY}\n")
    out_csv, out_json = tmp_path / "r.csv", tmp_path / "r.json"
    assert ev.main(["--model-list", str(models), "--limit", "50", "--results-file",
                    str(out_csv)]) == 0
    assert ev.main([KEY, "--limit", "50", "--results-file", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 3 and tuple(rows[0]) == ev.RESULT_FIELDS
    assert len({r["top1"] for r in rows}) == 1 and rows[0]["images"] == "50"
    printed = capsys.readouterr().out
    assert f"{KEY}  digits/test  top-1 {float(rows[0]['top1']):.2f} %" in printed
    assert ev.main([KEY, "--limit", "20", "--results-file", str(out_json)]) == 0
    assert ev.main([KEY, "--limit", "20", "--results-file", str(out_json)]) == 0
    assert [r["images"] for r in json.loads(out_json.read_text())] == [20, 20]
    # Bad requests: exit 2 with the reason, and the results files are untouched.
    before = out_csv.read_text()
    for argv, message in [
        ([], "at least one model"),
        ([KEY, "--results-file", str(tmp_path / "r.txt")], ".csv or .json"),
        ([KEY, "--split", "val"], "no validation split"),
        (["dmrnet_8_tiny"], "without weights"),
        (["no/such/file.keras"], "not found"),
        ([KEY, "--dataset", "cifar100", "--data-dir", str(tmp_path / "none")], "not found"),
        (["--model-list", str(tmp_path / "missing.txt")], "missing.txt"),
    ]:
        assert ev.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert out_csv.read_text() == before


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from zoo.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    metrics = train("dmrnet_8_tiny", "digits", epochs=1, batch_size=64, output=str(out),
                    verbose=0, warmup_epochs=0)
    return out, metrics


def test_run_directory_keras_file_and_weights_file(digits_run, tmp_path, capsys):
    out, metrics = digits_run
    from_run = ev.evaluate(str(out))
    assert from_run["top1"] == pytest.approx(100 * metrics["test_accuracy"], abs=1e-3)
    from_keras = ev.evaluate(str(out / "model.keras"), "digits")
    assert from_keras["top1"] == from_run["top1"] and from_keras["loss"] == from_run["loss"]
    with pytest.raises(ValueError, match="--arch"):
        ev.evaluate(str(out / "model.weights.h5"), "digits")
    from_h5 = ev.evaluate(str(out / "model.weights.h5"), "digits", arch="dmrnet_8_tiny")
    assert from_h5["top1"] == from_run["top1"]
    with pytest.raises(ValueError, match="--dataset"):
        ev.evaluate(str(out / "model.keras"))  # a bare .keras does not say its dataset
    # An unfinished run: its newest checkpoint.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(out, unfinished)
    (unfinished / "metrics.json").unlink()
    (unfinished / "model.keras").unlink()
    partial = ev.evaluate(str(unfinished))
    assert partial["model"].endswith("@epoch1") and partial["images"] == 360
    # A model with another class count than the dataset.
    with pytest.raises(ValueError, match="3 classes"):
        ev.evaluate(str(out / "model.keras"), f"folder:{_three_class_folder(tmp_path)}")


def _three_class_folder(root):
    import tensorflow as tf

    folder = root / "three"
    for split in ("train", "test"):
        for c in range(3):
            (folder / split / f"c{c}").mkdir(parents=True)
            for i in range(2):
                img = np.full((32, 32, 3), 40 * c + i, np.uint8)
                (folder / split / f"c{c}" / f"{i}.png").write_bytes(tf.io.encode_png(img).numpy())
    return folder


def test_verify_accuracy_ok_fail_and_skipped(tmp_path, monkeypatch):
    from zoo import weights

    record = weights.load_manifest()[KEY].to_json()
    extra = {"format": 1, "weights": {
        "dmrnet_8_tiny.worse": {**record, "tag": "worse",
                                "metrics": {**record["metrics"], "test_accuracy": 0.95}},
        "dmrnet_8_tiny.cifarish": {**record, "tag": "cifarish", "dataset": "cifar10"},
    }}
    (tmp_path / "m.json").write_text(json.dumps(extra))
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(tmp_path / "m.json"))
    monkeypatch.setenv("DMR_KERAS_HOME", str(tmp_path / "cache"))
    # Both extra entries name the shipped file (same bytes): resolved from the package.
    rows = {r["key"]: r for r in ev.verify_accuracy(
        keys={KEY, "dmrnet_8_tiny.worse", "dmrnet_8_tiny.cifarish"})}
    assert rows[KEY]["status"] == "OK" and rows[KEY]["measured"] == rows[KEY]["stored"]
    assert rows["dmrnet_8_tiny.worse"]["status"] == "FAIL"
    # the shipped entry is measured at its stored accuracy, so "worse" is off by the difference
    gap = 100 * (record["metrics"]["test_accuracy"] - 0.95)
    assert rows["dmrnet_8_tiny.worse"]["detail"].startswith(f"{gap:+.2f} points")
    assert rows["dmrnet_8_tiny.cifarish"]["status"] == "SKIPPED"
    assert "--data-dir cifar10=PATH" in rows["dmrnet_8_tiny.cifarish"]["detail"]


def test_cli_verify_accuracy(tmp_path, monkeypatch, capsys):
    from zoo import cli, weights

    monkeypatch.setenv("DMR_KERAS_HOME", str(tmp_path / "cache"))
    assert cli.main(["verify", "--accuracy"]) == 0
    out = capsys.readouterr().out
    stored = f"{100 * weights.load_manifest()[KEY].metrics['test_accuracy']:.2f} %"
    assert re.search(rf"^OK +{re.escape(KEY)}  stored {stored}  measured {stored}", out, re.M)
    record = weights.load_manifest()[KEY].to_json()
    worse = {**record, "tag": "worse", "metrics": {**record["metrics"], "test_accuracy": 0.97}}
    (tmp_path / "m.json").write_text(json.dumps(
        {"format": 1, "weights": {"dmrnet_8_tiny.worse": worse}}))
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(tmp_path / "m.json"))
    assert cli.main(["verify", "--accuracy", "--tolerance", "2"]) == 0  # 1.33 points off
    assert cli.main(["verify", "--accuracy"]) == 1
    assert "FAIL     dmrnet_8_tiny.worse" in capsys.readouterr().out
    assert cli.main(["verify", "--accuracy", "--data-dir", "cifar10"]) == 2
    assert "DATASET=PATH" in capsys.readouterr().err
