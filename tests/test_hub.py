"""keras-hub citizens (`zoo/hub.py`): presets that keras-hub loads in a fresh process and that
compute what the zoo's models compute, on raw 0-255 pixels."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

import zoo  # noqa: E402
from dmr_keras.digits import load_digits_images  # noqa: E402
from dmr_keras.models import build_model  # noqa: E402
from zoo import cli, hub  # noqa: E402
from zoo.applications import preprocess_input  # noqa: E402

KEY = "dmrnet_8_tiny.digits"  # the cheapest registered weights: 39k parameters
ROOT = Path(__file__).resolve().parents[1]
PRESET_FILES = {"config.json", "model.weights.h5", "metadata.json", "task.json",
                "task.weights.h5", "preprocessor.json", "image_converter.json"}

# Runs in a fresh interpreter: argv = preset dir, pixels .npy, output .npz.
FRESH = r"""
import sys
import numpy as np
import dmr_keras, zoo, zoo.applications, zoo.cli, zoo.registry, zoo.weights
assert "keras_hub" not in sys.modules, "importing zoo or dmr_keras imported keras_hub"
import keras_hub
preset, pixels, out = sys.argv[1:]
try:
    keras_hub.models.Backbone.from_preset(preset)
    unregistered = ""
except ValueError as err:
    unregistered = str(err)
import zoo.hub
x = np.load(pixels)
clf = keras_hub.models.ImageClassifier.from_preset(preset)
backbone = keras_hub.models.Backbone.from_preset(preset)
features = backbone.predict(clf.preprocessor.image_converter(x), verbose=0)
np.savez(out, logits=clf.predict(x, verbose=0), features=features, unregistered=unregistered,
         types=[type(clf).__name__, type(backbone).__name__,
                type(clf.preprocessor).__name__, type(clf.preprocessor.image_converter).__name__])
"""


@pytest.fixture(scope="module")
def pixels():
    """8 digits as raw uint8 pixels (32x32x3, 0-255) and their labels."""
    images, labels = load_digits_images()
    return np.round(images[:8] * 255).astype("uint8"), labels[:8]


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """``dmr-zoo preset KEY DIR --overwrite`` into a directory holding a stray file."""
    directory = tmp_path_factory.mktemp("preset")
    (directory / "notes.txt").write_text("left alone")
    assert cli.main(["preset", KEY, str(directory), "--overwrite"]) == 0
    return directory


def _zoo_outputs(x, **kwargs):
    model = zoo.create_model(KEY, include_preprocessing=False, **kwargs)
    return np.asarray(model(preprocess_input(x, weights=KEY), training=False))


def test_cli_writes_a_preset(preset, capsys):
    assert {p.name for p in preset.iterdir()} == PRESET_FILES | {"notes.txt"}
    meta = json.loads((preset / "metadata.json").read_text())
    assert meta["tasks"] == ["ImageClassifier"] and meta["parameter_count"] > 0
    card = meta["dmr_keras"]
    assert card["key"] == KEY and card["import"] == "zoo.hub" and card["classes"] == 10
    assert card["class_names"][:2] == ["0", "1"] and card["input_shape"] == [32, 32, 3]
    config = json.loads((preset / "config.json").read_text())
    assert config["registered_name"] == "zoo.hub>DMRNetBackbone"
    assert config["config"]["depth"] == 8 and config["config"]["width"] == 0.5
    task = json.loads((preset / "task.json").read_text())
    assert task["registered_name"] == "zoo.hub>DMRNetImageClassifier"


def test_preset_loads_in_a_fresh_process_and_matches_the_zoo(preset, pixels, tmp_path):
    x, y = pixels
    np.save(tmp_path / "pixels.npy", x)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", FRESH, str(preset), str(tmp_path / "pixels.npy"),
                          str(tmp_path / "out.npz")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert list(out["types"]) == ["DMRNetImageClassifier", "DMRNetBackbone",
                                  "DMRNetImageClassifierPreprocessor", "DMRNetImageConverter"]
    # Without `import zoo.hub` keras-hub cannot find the class; its error names the module.
    assert "zoo.hub>DMRNetBackbone" in str(out["unregistered"])
    assert np.mean(np.argmax(out["logits"], axis=-1) == y) >= 0.75  # digits, read right
    np.testing.assert_allclose(out["logits"], _zoo_outputs(x, classifier_activation=None),
                               atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(out["features"], _zoo_outputs(x, include_top=False),
                               atol=1e-4, rtol=1e-5)


def test_image_converter_is_the_manifest_normalisation(pixels):
    x, _ = pixels
    for key in (KEY, "dmrnet_20.cifar10"):
        got = keras.ops.convert_to_numpy(hub.image_converter(key)(x))
        np.testing.assert_allclose(got, preprocess_input(x, weights=key), atol=1e-5)
    big = hub.image_converter(KEY)(np.zeros((2, 64, 48, 3), "uint8"))  # resized, cropped
    assert tuple(big.shape) == (2, 32, 32, 3)


def test_fit_takes_raw_pixels(pixels):
    x, y = pixels
    clf = hub.classifier_from_zoo(KEY)
    kernel = clf.get_layer("predictions").get_weights()[0].copy()
    # keras-hub feeds arrays through its own pipeline, unshuffled (shuffle=True only warns).
    history = clf.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)  # one step
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(kernel, clf.get_layer("predictions").get_weights()[0])


def test_config_round_trips():
    reg = keras.regularizers.L2(1e-4)
    backbone = hub.DMRNetBackbone(**zoo.get_variant("dmrnet_8_tiny").config,
                                  image_shape=(None, None, 3), kernel_regularizer=reg, name="b")
    assert backbone.output_shape == (None, None, None, 32)
    zoo_names = {layer.name for layer in build_model(8, width=0.5, include_top=False).layers}
    assert {layer.name for layer in backbone.layers} == zoo_names
    config = backbone.get_config()
    clone = hub.DMRNetBackbone.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    assert [w.path for w in clone.weights] == [w.path for w in backbone.weights]
    clone.set_weights(backbone.get_weights())
    x = np.random.default_rng(0).normal(size=(2, 40, 40, 3)).astype("float32")
    np.testing.assert_allclose(clone(x), backbone(x), atol=1e-6)

    clf = hub.DMRNetImageClassifier(
        backbone=backbone, num_classes=3, activation="softmax",
        preprocessor=hub.DMRNetImageClassifierPreprocessor(hub.image_converter(KEY)))
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(clf)))
    serialized.pop("compile_config", None)  # as in a preset: a Task compiles itself
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is hub.DMRNetImageClassifier
    assert (restored.num_classes, restored.activation) == (3, "softmax")
    assert restored.backbone.get_config() == config
    assert restored.preprocessor.image_converter.get_config()["scale"] == pytest.approx(
        clf.preprocessor.image_converter.scale)


@pytest.mark.parametrize("argv, message", [
    (["dmrnet_8_tiny.digit"], "Did you mean: dmrnet_8_tiny.digits"),
    (["dmrnet_8_tiny"], "a preset takes a NAME.TAG key"),
    (["dmrnet_99.cifar10"], "Unknown model name 'dmrnet_99'"),
])
def test_cli_preset_unknown_key(argv, message, tmp_path, capsys):
    assert cli.main(["preset", *argv, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmr-zoo: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_preset_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert cli.main(["preset", KEY, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_missing_keras_hub_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` now fails
    monkeypatch.delitem(sys.modules, "zoo.hub")
    with pytest.raises(ImportError, match=r'pip install "dmr-keras\[hub\]"'):
        importlib.import_module("zoo.hub")
    assert cli.main(["preset", KEY, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "dmr-keras[hub]"' in err and err.count("\n") == 1
