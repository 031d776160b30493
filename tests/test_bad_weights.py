"""A bad weights file gives one clear line (file, what is wrong, the fix), not a traceback.

Truncated, empty, text or foreign files, another architecture's weights and a dmr-tune
manifest with overrides, through ``create_model``, ``load_pretrained``, ``build_published`` and
the command lines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import zoo
from dmr_keras import training

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_weights")
    tiny = zoo.create_model("dmrnet_8_tiny")
    tiny.save_weights(d / "tiny.weights.h5")
    tiny.save(d / "tiny.keras")
    zoo.create_model("dmrnet_20").save_weights(d / "d20.weights.h5")
    zoo.create_model("dmrnet_8_tiny", classes=100).save_weights(d / "tiny100.weights.h5")
    data = (d / "tiny.weights.h5").read_bytes()
    (d / "trunc.weights.h5").write_bytes(data[: len(data) // 2])
    archive = (d / "tiny.keras").read_bytes()
    (d / "trunc.keras").write_bytes(archive[: len(archive) // 2])
    (d / "text.weights.h5").write_text("hello, this is not HDF5\n")
    (d / "text.keras").write_text("not a zip\n")
    (d / "empty.weights.h5").write_bytes(b"")
    (d / "page.weights.h5").write_text("<!DOCTYPE html><html><body>404</body></html>\n")
    (d / "lfs.weights.h5").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                                      + "0" * 64 + "\nsize 327504\n")
    (d / "model.weights.h5").write_bytes(archive)  # a .keras archive under a weights name
    (d / "weights.keras").write_bytes(data)  # HDF5 weights under a .keras name
    with h5py.File(d / "legacy.weights.h5", "w") as f:  # Keras 2 layout: no 'layers' group
        f.create_group("model_weights").create_dataset("kernel", data=np.zeros((2, 2)))
    return d, len(data), tiny


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert len(message.splitlines()) <= MAX_LINES, message
    assert info.value.__cause__ is None or info.value.__suppress_context__
    assert "Traceback" not in message and "value=[" not in message and "[[" not in message
    return message


@pytest.mark.parametrize("model", ["dmrnet_8_tiny", "dmrnet_20"])
def test_truncated_weights_file(files, model):
    d, size, _ = files
    path = d / "trunc.weights.h5"
    message = _error(zoo.create_model, model, weights=str(path))
    assert str(path) in message and "truncated" in message
    assert f"{size // 2:,} of {size:,} bytes" in message
    assert "Fix: download or copy it again" in message


@pytest.mark.parametrize("name, what", [
    ("text.weights.h5", "it is a text file, starting 'hello, this is not HDF5'"),
    ("empty.weights.h5", "it is empty (0 bytes)"),
    ("page.weights.h5", "HTML"),
    ("lfs.weights.h5", "git lfs pull"),
    ("model.weights.h5", "zip archive (a whole .keras model?)"),
    ("legacy.weights.h5", "no 'layers' group"),
])
def test_not_a_weights_file(files, name, what):
    d, _, _ = files
    path = d / name
    message = _error(zoo.create_model, "dmrnet_8_tiny", weights=str(path))
    assert str(path) in message and what in message and "Fix:" in message
    assert message == _error(training.head_classes_in_weights_file, path)  # dmr-zoo publish


def test_another_architecture_names_layer_shapes_and_model(files):
    d, _, _ = files
    path = d / "d20.weights.h5"
    message = _error(zoo.create_model, "dmrnet_8_tiny", weights=str(path))
    assert message.startswith(f"{path} does not fit dmrnet_8_tiny: ")
    assert "layer 'stem_conv' expects kernel shape (3, 3, 3, 8), the file has (3, 3, 3, 16)" \
        in message
    assert "seems to be for dmrnet_20" in message and "--model / --arch dmrnet_20" in message

    message = _error(zoo.create_model, "dmrnet_20", weights=str(d / "tiny.weights.h5"))
    assert "expects kernel shape (3, 3, 3, 16), the file has (3, 3, 3, 8)" in message
    assert "seems to be for dmrnet_8_tiny" in message


def test_another_architecture_without_a_registered_match(files, tmp_path):
    d, _, _ = files
    path = tmp_path / "custom.weights.h5"
    zoo.create_model("dmrnet_8_tiny", width=0.25).save_weights(path)
    message = _error(zoo.create_model, "dmrnet_8_tiny", weights=str(path))
    assert "expects kernel shape (3, 3, 3, 8), the file has (3, 3, 3, 4)" in message
    assert "seems to be for" not in message and "no single registered model" in message


def test_other_head_is_still_skipped_for_fine_tuning(files):
    d, _, _ = files
    path = d / "tiny100.weights.h5"
    with h5py.File(path, "r") as f:
        stem = f["layers/conv2d/vars/0"][()]
        head = f["layers/dense/vars/0"][()]
    model = zoo.create_model("dmrnet_8_tiny", weights=str(path))  # 10 classes: new head
    assert model.output_shape == (None, 10)
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0], stem)
    model = zoo.create_model("dmrnet_8_tiny", weights=str(path), classes=100)
    np.testing.assert_array_equal(model.get_layer("predictions").get_weights()[0], head)


def test_good_file_and_published_weights_still_load(files):
    d, _, tiny = files
    model = zoo.create_model("dmrnet_8_tiny", weights=str(d / "tiny.weights.h5"))
    for a, b in zip(model.get_weights(), tiny.get_weights()):
        np.testing.assert_array_equal(a, b)
    from zoo.registry import build_published
    from zoo.weights import load_manifest

    entry = load_manifest()["dmrnet_8_tiny.digits"]
    assert build_published(entry).output_shape == (None, entry.classes)
    message = _error(build_published, entry, d / "trunc.weights.h5")
    assert "trunc.weights.h5" in message and "truncated" in message


@pytest.mark.parametrize("name, what", [
    ("trunc.keras", "truncated or damaged zip archive"),
    ("text.keras", "it is a text file, starting 'not a zip'"),
    ("weights.keras", "HDF5 file (weights?), not a zip archive"),
])
def test_bad_keras_file(files, name, what):
    d, _, _ = files
    path = d / name
    for message in (_error(zoo.create_model, str(path)),
                    _error(zoo.create_model, "dmrnet_8_tiny", weights=str(path))):
        assert str(path) in message and what in message and "Fix:" in message
        assert "File not found" not in message


def test_keras_file_of_another_architecture(files):
    d, _, _ = files
    path = d / "tiny.keras"
    message = _error(zoo.create_model, "dmrnet_20", weights=str(path))
    assert message.startswith(f"{path}: ") and "layer 'stem_conv'" in message
    assert "[(3, 3, 3, 16)]" in message and "another architecture ('dmrnet_8_tiny')" in message


def _tuning_run(source: Path, d: Path, build_kwargs=None) -> Path:
    run = d / "tuning_runs" / "dmr"
    run.mkdir(parents=True, exist_ok=True)
    (run / "best.keras").write_bytes(source.read_bytes())
    record = {"format": "dmr-keras-tuning-best/1", "model_path": "best.keras"}
    if build_kwargs:
        record["build_kwargs"] = build_kwargs
    (run / "best.json").write_text(json.dumps(record))
    return run / "best.json"


def test_best_json_with_overrides(files, tmp_path):
    d, _, tiny = files
    manifest = _tuning_run(d / "tiny.keras", tmp_path)
    message = _error(zoo.create_model, str(manifest), classes=5)
    assert "Unknown model name" not in message and "classes=5 cannot apply" in message
    assert message.startswith(f"{manifest} is a saved model")
    assert f"--init-weights {manifest.parent / 'best.keras'}" in message
    message = _error(zoo.create_model, str(manifest.parent / "best.keras"), classes=5)
    assert "classes=5 cannot apply" in message

    # build_kwargs as dmr-tune writes them (tuning.hypermodel.DMRHyperModel.build_kwargs)
    manifest = _tuning_run(d / "tiny.keras", tmp_path, {
        "blocks": [1, 1, 1], "width": 0.5, "num_branches": 2, "mapping": "merge_and_run",
        "classes": 10, "input_shape": [32, 32, 3], "name": "dmrnet_8_w0p5_k2"})
    model = zoo.create_model(str(manifest), classes=5)
    assert model.output_shape == (None, 5)
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0],
                                  tiny.get_layer("stem_conv").get_weights()[0])
    message = _error(zoo.create_model, str(manifest), width=1)
    assert "only arguments that keep the backbone" in message.lower()


def test_missing_best_json(tmp_path):
    path = tmp_path / "tuning_runs" / "dmr" / "best.json"
    for kwargs in ({}, {"classes": 5}):
        message = _error(zoo.create_model, str(path), **kwargs)
        assert f"{path} does not exist" in message and "Unknown model name" not in message


def _cli(entry: str, *argv):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    argv = [f"dmr-{entry}", *argv]
    code = f"import dmr_cli, sys; sys.argv = {argv!r}; sys.exit(dmr_cli.{entry}())"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_prints_one_line(files, tmp_path):
    d, _, _ = files
    bad = d / "trunc.weights.h5"
    proc = _cli("train", "--model", "dmrnet_8_tiny", "--init-weights", str(bad), "--dataset",
                "digits", "--epochs", "1", "--output", str(tmp_path / "run"))
    lines = [s for s in proc.stderr.splitlines() if s.strip()]
    assert proc.returncode == 2, proc.stderr
    assert 1 <= len(lines) <= MAX_LINES and lines[0].startswith("dmr-train: error: "), proc.stderr
    assert str(bad) in lines[0] and "truncated" in lines[0]


def test_weights_from_a_keras_file_load_once_and_equal_the_saved_model(tmp_path, monkeypatch):
    """``create_model(name, weights="x.keras")`` reads the head's width from the file's config
    and loads the model once (it used to load it twice); the result computes what the saved
    model computes, for a 5-class head and for a headless file."""
    import keras
    import numpy as np

    import zoo

    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    saved = zoo.create_model("dmrnet_8_tiny", classes=5)
    saved.save(tmp_path / "five.keras")
    headless = zoo.create_model("dmrnet_8_tiny", include_top=False, pooling="avg")
    headless.save(tmp_path / "headless.keras")
    loads = []
    real = keras.saving.load_model
    monkeypatch.setattr(keras.saving, "load_model",
                        lambda *a, **k: loads.append(a[0]) or real(*a, **k))

    model = zoo.create_model("dmrnet_8_tiny", weights=str(tmp_path / "five.keras"), classes=5)
    assert len(loads) == 1 and model.output_shape == (None, 5)
    np.testing.assert_allclose(model.predict(x, verbose=0), saved.predict(x, verbose=0),
                               atol=1e-6)
    features = zoo.create_model("dmrnet_8_tiny", weights=str(tmp_path / "headless.keras"),
                                include_top=False, pooling="avg")
    np.testing.assert_allclose(features.predict(x, verbose=0), headless.predict(x, verbose=0),
                               atol=1e-6)
