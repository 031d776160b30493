"""`dmr-zoo` and the shipped pretrained weights, measured through the public API."""

import json

import numpy as np
import pytest

import zoo
from zoo import cli
from zoo.applications import preprocess_input

KEY = "dmrnet_8_tiny.digits"


def test_shipped_weights_reach_their_card_accuracy():
    from dmr_keras.data import digits_split
    from dmr_keras.digits import load_digits_images

    card = zoo.model_info("dmrnet_8_tiny")["weights"]["digits"]
    images, labels = load_digits_images()
    _, test_idx = digits_split()
    assert len(test_idx) == 360
    model = zoo.create_model(KEY)
    x = preprocess_input(images[test_idx] * 255.0, weights=KEY)
    pred = np.argmax(np.asarray(model.predict(x, batch_size=120, verbose=0)), axis=1)
    accuracy = float(np.mean(pred == labels[test_idx]))
    assert accuracy >= 0.97
    assert abs(accuracy - card["metrics"]["test_accuracy"]) <= 1 / 360 + 1e-9
    assert card["dataset"] == "digits" and "dmr-train" in card["command"]


def test_no_manifest_entry_points_to_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DMR_KERAS_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DMR_KERAS_MIRROR", raising=False)
    from zoo import weights

    manifest = weights.load_manifest()
    assert manifest, "the package ships at least one set of weights"
    for key, entry in manifest.items():
        zoo.get_variant(entry.model)
        path = weights.resolve(entry, download=False)  # shipped in the package, hash checked
        assert weights.sha256_file(path) == entry.sha256, key


def test_cli_list_info_fetch_verify(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DMR_KERAS_HOME", str(tmp_path))
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in zoo.list_models():
        assert name in out
    assert "digits" in out and "params" in out.splitlines()[0]
    assert cli.main(["info", "dmrnet_56"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 1_710_426 and info["paper"]["errors"]["cifar10"] == 4.94
    assert cli.main(["fetch", KEY]) == 0
    assert capsys.readouterr().out.strip().endswith("dmrnet_8_tiny.digits.weights.h5")
    assert cli.main(["verify"]) == 0
    assert cli.main(["info", "dmrnet56"]) == 2
    assert "Did you mean: dmrnet_56" in capsys.readouterr().err


def test_publish_errors(tmp_path):
    with pytest.raises(ValueError, match="metrics.json is missing"):
        cli.publish(tmp_path, "cifar10")
