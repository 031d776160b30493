"""tuning.results: the Pareto front; honest selection (val held out of train, test once)."""

import csv
import json

import keras
import numpy as np
import pytest

from dmr_keras import data
from dmr_keras.data import digits_split
from dmr_keras.digits import load_digits_images
from tuning import pareto_front, tune
from tuning.results import PARETO_COLUMNS, pareto_rows, write_pareto

# ---- the Pareto front on a hand-made leaderboard ----------------------------------------


def _row(trial_id, params, macs, acc, status="completed"):
    return dict(trial_id=trial_id, status=status, n=1, width=0.5, branches=2,
                mapping="merge_and_run", lr=0.1, weight_decay=1e-4, batch_size=32,
                params=params, macs=macs, val_accuracy=acc)


HAND_MADE = [
    _row("a", 100, 900, 0.50),
    _row("b", 200, 800, 0.70),
    _row("c", 200, 850, 0.60),   # dominated by b on both costs (same params, less accurate)
    _row("d", 300, 300, 0.70),   # dominated by b on params (costlier, same accuracy), not MACs
    _row("e", 400, 1000, 0.90),
    _row("f", 400, 1000, 0.90),  # equal to e: both kept
    _row("g", 500, 2000, 0.85),  # dominated by e
    _row("h", 50, 10, None, status="failed"),     # no accuracy: never on the front
    _row("i", 10, 10, None, status="skipped"),
]


def test_pareto_front_on_a_hand_made_leaderboard():
    assert [r["trial_id"] for r in pareto_front(HAND_MADE, "params")] == ["a", "b", "e", "f"]
    assert [r["trial_id"] for r in pareto_front(HAND_MADE, "macs")] == ["d", "e", "f"]
    flags = {r["trial_id"]: (r["params_front"], r["macs_front"]) for r in pareto_rows(HAND_MADE)}
    assert flags == {"a": (True, False), "b": (True, False), "d": (False, True),
                     "e": (True, True), "f": (True, True)}
    with pytest.raises(ValueError, match="Unknown `cost`: 'flops'"):
        pareto_front(HAND_MADE, "flops")


def test_write_pareto_files(tmp_path):
    front = write_pareto(HAND_MADE, tmp_path)
    with open(tmp_path / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(PARETO_COLUMNS)
    assert [r["trial_id"] for r in rows] == [r["trial_id"] for r in front] == \
        ["a", "b", "d", "e", "f"]
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- honest selection: one real search ---------------------------------------------------


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    result = tune("digits", max_trials=2, epochs=1, seed=0, directory=str(root), project="p",
                  depths_n=(1,), widths=(0.5,), branches=(1,), lrs=(0.1, 0.05),
                  weight_decays=(1e-4,), batch_sizes=(32,), max_train_examples=320,
                  val_fraction=0.1, verbose=0)
    return dict(result, project=root / "p")


def _accuracy(model, images, labels, manifest):
    x = (images - np.array(manifest["mean"], "float32")) / np.array(manifest["std"], "float32")
    probs = keras.ops.convert_to_numpy(model.predict(x, batch_size=128, verbose=0))
    return float(np.mean(probs.argmax(axis=1) == labels))


def _raw_indices(dataset, images):
    """Indices into ``images`` of the (normalised) images of ``dataset``; digits has no two
    identical images, so each maps to exactly one."""
    flat = images.reshape(len(images), -1)
    out, labels = [], []
    for x, y in dataset.unbatch().as_numpy_iterator():
        dist = np.abs(flat - x.reshape(1, -1)).max(axis=1)
        (match,) = np.flatnonzero(dist < 1e-5)
        out.append(int(match))
        labels.append(int(y))
    return np.array(out), np.array(labels)


def test_best_test_accuracy_equals_an_independent_evaluation_on_the_test_split(search):
    project = search["project"]
    manifest = json.loads((project / "best.json").read_text())
    assert manifest["splits"] == {"train_examples": 1292, "val_examples": 145,
                                  "test_examples": 360, "val_fraction": 0.1,
                                  "test_split": "test"}
    images, labels = load_digits_images()
    _, test_idx = digits_split()
    model = keras.saving.load_model(project / "best.keras")
    test_accuracy = _accuracy(model, images[test_idx], labels[test_idx], manifest)
    assert manifest["test_accuracy"] == pytest.approx(test_accuracy, abs=1e-6)
    rows = json.loads((project / "leaderboard.json").read_text())["rows"]
    assert rows[0]["trial_id"] == manifest["trial_id"]
    assert rows[0]["test_accuracy"] == pytest.approx(test_accuracy, abs=1e-6)
    # Only the best model touched the test split.
    assert [r["test_accuracy"] is not None for r in rows] == [True] + [False] * (len(rows) - 1)
    with open(project / "leaderboard.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["test_accuracy"]) == pytest.approx(test_accuracy)


def test_val_accuracy_comes_from_training_images_held_out_per_class(search):
    project = search["project"]
    manifest = json.loads((project / "best.json").read_text())
    images, labels = load_digits_images()
    train_idx, test_idx = digits_split()
    train_ds, val_ds, info = data.load("digits", batch_size=64, holdout_fraction=0.1,
                                       augment=False)
    std, mean = np.array(info.std, "float32"), np.array(info.mean, "float32")
    val = val_ds.map(lambda x, y: (x * std + mean, y))
    val_idx, val_labels = _raw_indices(val, images)
    np.testing.assert_array_equal(val_labels, labels[val_idx])
    assert set(val_idx) <= set(train_idx) and not set(val_idx) & set(test_idx)
    assert len(set(val_idx)) == len(val_idx) == info.eval_examples == 145
    # Per class: round(0.1 * n) of the class's training images, the rest trained on.
    train_labels = labels[train_idx]
    for c in range(10):
        n = int(np.sum(train_labels == c))
        assert int(np.sum(val_labels == c)) == round(0.1 * n), c
    trained = sum(int(y.shape[0]) for _, y in train_ds)  # drop_remainder: whole batches
    assert info.train_examples == 1437 - 145 and trained == (1437 - 145) // 64 * 64
    # The reported val_accuracy is the best model's accuracy on exactly these images.
    model = keras.saving.load_model(project / "best.keras")
    assert manifest["val_accuracy"] == pytest.approx(
        _accuracy(model, images[val_idx], labels[val_idx], manifest), abs=1e-6)


def test_search_writes_the_pareto_front(search):
    project = search["project"]
    with open(project / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["trial_id"] for r in rows} == {r["trial_id"] for r in search["pareto"]}
    assert (project / "pareto.png").is_file()
