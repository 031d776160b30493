"""`dmr-train --val-fraction`: model selection without the test split (issue 13, item 1). The
epoch lines and `val_accuracy` come from images held out of the training split, the test split
is measured once at the end, and both numbers equal an independent evaluation of the saved
model on those images."""

import json

import keras
import numpy as np
import pytest

from dmr_keras import data
from zoo.train import main, train

TINY = dict(model="dmrnet_8_tiny", dataset="digits", batch_size=32, precise_bn=False, seed=2)


def _accuracy(model, dataset):
    correct = total = 0
    for x, y in dataset:
        pred = np.argmax(model.predict(x, verbose=0), axis=-1)
        correct += int(np.sum(pred == np.asarray(y)))
        total += len(pred)
    return correct / total, total


def test_val_fraction_scores_held_out_training_images_and_tests_once(tmp_path, capsys):
    out = tmp_path / "run"
    metrics = train(**TINY, epochs=2, output=str(out), val_fraction=0.2, verbose=0)
    printed = capsys.readouterr().out
    assert "held out of the training split (val_fraction 0.2)" in printed
    held = metrics["held_out"]
    _, _, full = data.load("digits", batch_size=32)
    _, val_ds, val_info = data.load("digits", batch_size=32, holdout_fraction=0.2)
    assert held["train_examples"] == val_info.train_examples
    assert held["train_examples"] + held["val_examples"] == full.train_examples
    assert held["val_examples"] == val_info.eval_examples and val_info.eval_split == "val"
    assert metrics["eval_split"] == "test" and len(metrics["history"]["val_accuracy"]) == 2

    model = keras.saving.load_model(out / "model.keras")
    val_acc, n_val = _accuracy(model, val_ds)
    _, test_ds, test_info = data.load("digits", batch_size=32)
    test_acc, n_test = _accuracy(model, test_ds)
    assert n_val == held["val_examples"] and n_test == test_info.eval_examples == 360
    assert held["val_accuracy"] == pytest.approx(val_acc, abs=1e-6)
    assert metrics["test_accuracy"] == pytest.approx(test_acc, abs=1e-6)
    assert json.loads((out / "run.json").read_text())["val_fraction"] == 0.2

    # Another val_fraction is another run: resuming into the directory is refused.
    with pytest.raises(ValueError, match="val_fraction"):
        train(**TINY, epochs=2, output=str(out), val_fraction=0.1, verbose=0)


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.2", True])
def test_bad_val_fraction_is_one_line_before_any_work(bad, tmp_path):
    with pytest.raises(ValueError, match=r"`val_fraction` must be 0 \(off\) or a number"):
        train(**TINY, epochs=1, output=str(tmp_path / "r"), val_fraction=bad)
    assert not (tmp_path / "r").exists()


def test_cli_flag(tmp_path, capsys):
    assert main(["--model", "dmrnet_8_tiny", "--dataset", "digits", "--epochs", "1",
                 "--batch-size", "32", "--val-fraction", "1.5",
                 "--output", str(tmp_path / "r")]) != 0
    assert "val_fraction=1.5" in capsys.readouterr().err
