"""The zoo's CIFAR-10 weights through the public API, on real test images.

Reads the shared CIFAR-10 JPEG copy (``../shared/data/cifar10-jpeg``); skips where it is absent.
Everything a user would type: ``DMRNet20(weights="cifar10")``, ``preprocess_input`` on 0-255
pixels read with Pillow, ``decode_predictions`` class names, ``list_models(pretrained=True)``.
"""

from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo import weights
from zoo.applications import DMRNet20, decode_predictions, preprocess_input

KEY = "dmrnet_20.cifar10"
SHARED_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
N_PER_CLASS = 100  # 1,000 test images: the first 100 file names of each class, sorted


def _test_images():
    from PIL import Image

    if not (SHARED_JPEG / "test").is_dir():
        pytest.skip(f"CIFAR-10 JPEG copy not found at {SHARED_JPEG}: see shared/data/README.md")
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        files = sorted((SHARED_JPEG / "test" / name).iterdir())[:N_PER_CLASS]
        for f in files:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB"), dtype="float32"))
        labels += [label] * len(files)
    return np.stack(images), np.asarray(labels)


def test_the_weights_are_registered_with_their_provenance():
    assert KEY in zoo.list_models(pretrained=True)
    entry = weights.load_manifest()[KEY]
    assert tuple(entry.class_names) == CLASSES and entry.classes == 10
    prov = entry.provenance
    assert prov["epochs"] == entry.metrics["epochs"] == 100
    assert len(prov["data_sha256"]) == 64 and prov["train_time_s"] > 0
    assert entry.command.startswith("dmr-train --model dmrnet_20 --dataset cifar10")


def test_dmrnet20_cifar10_classifies_real_test_images():
    x, y = _test_images()
    model = DMRNet20(weights="cifar10")  # fingerprint checked on loading
    probs = model.predict(x, batch_size=250, verbose=0)  # 0-255 pixels: preprocessing inside
    accuracy = float(np.mean(probs.argmax(axis=1) == y))
    # the same weights without the preprocessing layers, fed preprocess_input's output
    bare = DMRNet20(weights="cifar10", include_preprocessing=False)
    np.testing.assert_allclose(
        bare.predict(preprocess_input(x[:50], weights=KEY), verbose=0), probs[:50], atol=1e-5)
    stored = weights.load_manifest()[KEY].metrics["test_accuracy"]
    # 1,000 of the 10,000 images the stored figure was measured on: binomial standard error
    # sqrt(p (1 - p) / 1000) is about 1 point, so 4 points is a 4-sigma band.
    assert abs(accuracy - stored) < 0.04, (accuracy, stored)
    top = decode_predictions(probs[:1], weights=KEY, top=3)[0]
    assert [name for _, name, _ in top][0] in CLASSES
    assert top[0][0] == int(probs[0].argmax())


def test_forgetting_the_0_255_scale_is_warned_and_wrong():
    x, y = _test_images()
    x, y = x[::10], y[::10]  # 100 images, 10 per class
    model = DMRNet20(weights="cifar10", include_preprocessing=False)
    with pytest.warns(UserWarning, match="multiply by 255"):
        wrong = preprocess_input(x / 255.0, weights=KEY)
    accuracy = float(np.mean(model.predict(wrong, verbose=0).argmax(axis=1) == y))
    assert accuracy < 0.5, accuracy


def test_the_first_weights_stay_available_as_cifar10_e40():
    """The 40-epoch weights the fine-tuning study ran with keep a tag of their own: listed,
    another file than ``cifar10``'s, and loading checks their stored fingerprint."""
    manifest = weights.load_manifest()
    old = manifest["dmrnet_20.cifar10_e40"]
    assert "dmrnet_20.cifar10_e40" in zoo.list_models(pretrained=True)
    assert old.metrics["epochs"] == 40 and old.sha256 != manifest[KEY].sha256
    model = zoo.create_model("dmrnet_20.cifar10_e40")  # raises if the fingerprint drifted
    assert model.count_params() == DMRNet20(weights="cifar10").count_params()
