"""`dmr-zoo` and the shipped pretrained weights, measured through the public API."""

import json
import re

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
    model = zoo.create_model(KEY)  # with weights by tag: takes 0-255 pixels
    x = images[test_idx] * 255.0
    pred = np.argmax(np.asarray(model.predict(x, batch_size=120, verbose=0)), axis=1)
    bare = zoo.create_model(KEY, include_preprocessing=False)
    np.testing.assert_array_equal(pred, np.argmax(np.asarray(bare.predict(
        preprocess_input(x, weights=KEY), batch_size=120, verbose=0)), axis=1))
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


def _verify_lines(out):
    """``{key: {(status, where), ...}}`` from the per-file lines of ``dmr-zoo verify``."""
    lines = {}
    for line in out.splitlines()[:-1]:
        status, key, where = re.split(r"\s{2,}", line)[:3]
        lines.setdefault(key, set()).add((status, where))
    return lines


def test_cli_verify_reports_each_key_and_fails_on_bad(capsys, tmp_path, monkeypatch):
    import hashlib

    from zoo import weights

    monkeypatch.setenv("DMR_KERAS_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DMR_KERAS_MIRROR", raising=False)
    shipped = weights.load_manifest()
    record = shipped[KEY].to_json()
    blobs, manifest = {}, {"format": 1, "weights": {}}
    for model in ("dmrnet_8", "dmrnet_20"):  # one file name, different bytes
        blobs[model] = bytes(range(256)) * 4 + model.encode()
        src = tmp_path / "origin" / model / "model.weights.h5"
        src.parent.mkdir(parents=True)
        src.write_bytes(blobs[model])
        manifest["weights"][f"{model}.mine"] = {
            **record, "model": model, "tag": "mine", "file_name": "model.weights.h5",
            "sha256": hashlib.sha256(blobs[model]).hexdigest(), "origin": src.as_uri()}
    manifest["weights"]["dmrnet_32.mine"] = {  # never fetched
        **record, "model": "dmrnet_32", "tag": "mine", "file_name": "model.weights.h5",
        "sha256": hashlib.sha256(b"elsewhere").hexdigest(), "origin": None}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(tmp_path / "m.json"))

    paths = {}
    for model in ("dmrnet_8", "dmrnet_20"):
        assert cli.main(["fetch", f"{model}.mine"]) == 0
        paths[model] = weights.Path(capsys.readouterr().out.strip())
        assert paths[model].read_bytes() == blobs[model]
    assert paths["dmrnet_8"] != paths["dmrnet_20"]
    assert cli.main(["verify"]) == 0
    lines = _verify_lines(capsys.readouterr().out)
    assert lines[KEY] == {("OK", "shipped")}
    assert lines["dmrnet_8.mine"] == lines["dmrnet_20.mine"] == {("OK", "cache")}
    assert lines["dmrnet_32.mine"] == {("MISSING", "-")}

    paths["dmrnet_20"].write_bytes(b"corrupted")
    assert cli.main(["verify"]) == 1
    out = capsys.readouterr().out
    lines = _verify_lines(out)
    assert lines["dmrnet_20.mine"] == {("BAD", "cache")}
    assert lines["dmrnet_8.mine"] == {("OK", "cache")} and lines[KEY] == {("OK", "shipped")}
    assert out.splitlines()[-1].endswith("1 BAD")
