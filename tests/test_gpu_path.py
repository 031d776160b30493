"""The TensorFlow-free GPU path on the CPU at toy size: ``dmr_keras.numpy_data`` against the tf.data
pipeline, and ``bench/gpu_train.py`` on JAX with TensorFlow made unimportable (publishable,
resumable)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmr_keras import data, numpy_data

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BATCH = 16


def _write_folder(root: Path, n_train: int, n_test: int, ext: str = "png", seed: int = 0):
    """A CIFAR-10 layout of random 32x32 images (noise: every crop of every image is unique)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(data.CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                image[0, 0, 0] = label  # labels matter to nobody here; keep images distinct
                kwargs = {"quality": 75} if ext == "jpg" else {}
                Image.fromarray(image).save(folder / f"{i:04d}.{ext}", **kwargs)
    return root


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("cifar_png"), n_train=8, n_test=4)


def _as_numpy(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


def test_constants_are_the_tf_pipelines():
    assert numpy_data.CIFAR10_MEAN == data.CIFAR10_MEAN
    assert numpy_data.CIFAR10_STD == data.CIFAR10_STD
    assert numpy_data.CIFAR10_CLASSES == data.CIFAR10_CLASSES


def test_unaugmented_images_equal_the_tf_pipelines(png_folder):
    arrays = numpy_data.load_cifar10(png_folder)
    train, evaluation, info = data.load("cifar10", data_dir=str(png_folder), batch_size=BATCH,
                                        augment=False, epochs=1)
    assert arrays.class_names == info.class_names == data.CIFAR10_CLASSES
    assert (arrays.mean, arrays.std) == (info.mean, info.std)
    assert arrays.sha256 == data.content_sha256(png_folder)
    # eval: the same images in the same order, bit for bit
    x_tf, y_tf = _as_numpy(evaluation)
    x_np, y_np = map(np.concatenate, zip(*numpy_data.eval_batches(
        arrays.x_test, arrays.y_test, BATCH)))
    assert x_np.dtype == x_tf.dtype == np.float32
    assert x_np.tobytes() == x_tf.tobytes()
    np.testing.assert_array_equal(y_np, y_tf)
    # train without augmentation: the same set of images (each pipeline shuffles its own way)
    x_tf, y_tf = _as_numpy(train)
    batches = numpy_data.TrainBatches(arrays.x_train, arrays.y_train, batch_size=BATCH,
                                      augment=False)
    x_np, y_np = map(np.concatenate, zip(*batches.epoch(0)))
    assert len(x_np) == len(x_tf) == 80

    def rows(x, y):
        return sorted(a.tobytes() + bytes([b]) for a, b in zip(x, y))

    assert rows(x_np, y_np) == rows(x_tf, y_tf)


def _variants(arrays):
    """{hash of an image: (source, dy, dx, flipped)} for every pad-4 crop (+ flip) of every
    normalised train image, zeros in the pad (the mean pixel)."""
    x = numpy_data.normalise(arrays.x_train)
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    table = {}
    for src in range(len(x)):
        for dy in range(9):
            for dx in range(9):
                crop = padded[src, dy:dy + 32, dx:dx + 32]
                for flipped in (False, True):
                    image = np.ascontiguousarray(crop[:, ::-1] if flipped else crop)
                    table[hashlib.sha1(image.tobytes()).digest()] = (src, dy, dx, flipped)
    return table


def _explain(batches, table, labels):
    """Each augmented image as (source, dy, dx, flipped); asserts every one is such a crop."""
    found = []
    for x, y in batches:
        for image, label in zip(x, y):
            key = hashlib.sha1(np.ascontiguousarray(image + np.float32(0)).tobytes()).digest()
            assert key in table, "an augmented image is no pad-4 crop (+ flip) of a train image"
            found.append(table[key])
            assert labels[found[-1][0]] == label
    return np.array([(s, dy, dx, f) for s, dy, dx, f in found])


def test_augmentation_is_the_tf_pipelines(png_folder):
    """Both pipelines give exactly pad-4 (mean pixel) crops, flipped or not, of the train images,
    every image once an epoch, with uniform offsets and fair flips."""
    arrays = numpy_data.load_cifar10(png_folder)
    table = _variants(arrays)
    epochs = 4
    train, _, _ = data.load("cifar10", data_dir=str(png_folder), batch_size=BATCH, seed=0,
                            epochs=epochs)
    tf_found = _explain(((x.numpy(), y.numpy()) for x, y in train), table, arrays.y_train)
    np_batches = numpy_data.TrainBatches(arrays.x_train, arrays.y_train, batch_size=BATCH, seed=0)
    np_found = _explain(np_batches.iterate(0, epochs), table, arrays.y_train)
    n = len(arrays.y_train)
    for found in (tf_found, np_found):
        assert len(found) == epochs * n
        for e in range(epochs):  # a permutation per epoch
            assert sorted(found[e * n:(e + 1) * n, 0]) == list(range(n))
        offsets = found[:, 1:3]
        assert offsets.min() == 0 and offsets.max() == 8
        assert abs(offsets.mean() - 4) < 0.6  # uniform 0..8: mean 4, sd 2.6, 640 draws
        assert len(np.unique(offsets)) == 9
        assert 0.38 < found[:, 3].mean() < 0.62  # flips: p = 1/2, 320 draws
    # what the pad looks like: zeros (the mean pixel), positive zeros as tf.pad writes them
    x, _ = np_batches.batch(0, 0)
    assert not np.signbit(x[x == 0]).any()


def test_batches_depend_on_seed_and_epoch_only():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 50)

    def make(seed=7):
        return numpy_data.TrainBatches(x, y, batch_size=8, seed=seed)

    def same(a, b):
        return len(a) == len(b) and all(
            xa.tobytes() == xb.tobytes() and np.array_equal(ya, yb)
            for (xa, ya), (xb, yb) in zip(a, b))

    full = list(make().iterate(0, 3))
    assert len(full) == 3 * (50 // 8)
    assert same(full, list(make().iterate(0, 3)))
    # a run resumed at epoch 2 by a new process sees the uninterrupted run's batches
    assert same(full[12:], list(make().iterate(2, 3)))
    # threads building batches ahead change nothing
    assert same(full, list(make().iterate(0, 3, workers=3, prefetch=2)))
    # what was drawn before does not matter: epoch 1 first, then 0
    fresh = make()
    one, zero = list(fresh.epoch(1)), list(fresh.epoch(0))
    assert same(zero + one, full[:12])
    # and they do depend on the seed and the epoch
    assert not same(full[:6], full[6:12])
    assert not same(full[:6], list(make(seed=8).iterate(0, 1)))


def test_pack_holds_the_files_and_tf_test_pixels(tmp_path):
    folder = _write_folder(tmp_path / "jpeg", n_train=2, n_test=2, ext="jpg", seed=3)
    pack = tmp_path / "cifar.npz"
    summary = numpy_data.write_pack(folder, pack, exact_splits=("test",))
    assert summary["sha256"] == data.content_sha256(folder)
    from_pack = numpy_data.load_cifar10(pack)
    from_folder = numpy_data.load_cifar10(folder)
    assert from_pack.source == "pack" and from_pack.sha256 == from_folder.sha256
    assert from_pack.class_names == data.CIFAR10_CLASSES
    # train: the files' bytes, decoded by Pillow either way
    np.testing.assert_array_equal(from_pack.x_train, from_folder.x_train)
    np.testing.assert_array_equal(from_pack.y_train, from_folder.y_train)
    # test: exactly the pixels dmr_keras.data (TensorFlow's decoder) gives
    _, items = numpy_data.scan_split_folder(folder)
    tf_pixels, bad = data.decode_images([p for p, _ in items["test"]], 32)
    assert not bad
    np.testing.assert_array_equal(from_pack.x_test, tf_pixels)
    np.testing.assert_array_equal(from_pack.y_test, [label for _, label in items["test"]])
    assert from_pack.decoder["test"]["pixels_equal_tensorflow_decode"] is True
    assert from_pack.decoder["test"]["pillow_matches_pack"] is True
    # a subset decodes only what it keeps; the uint8 cache returns what was decoded
    cache = tmp_path / "cache.npz"
    small = numpy_data.load_cifar10(pack, max_train=5, max_test=3, cache=cache)
    assert (len(small.y_train), len(small.y_test), small.full_sizes) == (5, 3, (20, 20))
    keep = numpy_data.subset_indices(20, 3)
    np.testing.assert_array_equal(small.x_test, tf_pixels[keep])
    again = numpy_data.load_cifar10(pack, max_train=5, max_test=3, cache=cache)
    np.testing.assert_array_equal(again.x_train, small.x_train)
    assert again.decoder == small.decoder and cache.exists()


def _weights(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


# Runs bench/gpu_train.py three times in one JAX process where `import tensorflow` fails: an
# uninterrupted 2-epoch run (A), a run stopped once epoch 1 is checkpointed (B, what a kill
# during epoch 2 leaves on disk), and the same command again, which resumes B.
_DRIVER = """
import sys
sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
sys.path.append(sys.argv[1])
import gpu_train
data_dir, a, b = sys.argv[2:5]
common = ["--model", "dmrnet_8_tiny", "--data-dir", data_dir, "--epochs", "2",
          "--batch-size", "16", "--lr", "0.05", "--warmup-epochs", "1", "--eval-batch-size", "40",
          "--mixed-precision", "none", "--no-validate", "--verbose", "0"]
assert gpu_train.main(common + ["--output", a]) == 0
assert gpu_train.main(common + ["--output", b, "--stop-after-epoch", "1"]) == 0
assert gpu_train.main(common + ["--output", b]) == 0
assert sys.modules["tensorflow"] is None
import keras
print("DRIVER_OK", keras.backend.backend())
"""


def test_toy_jax_run_without_tensorflow_publishes_and_resumes_exactly(png_folder, tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    # The three runs compile the same steps: JAX's persistent cache compiles them once.
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(BENCH), str(png_folder),
                           str(run_a), str(run_b)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "DRIVER_OK jax" in out
    assert "Stopping after epoch 1 of 2" in out and "Resuming from epoch 1" in out

    metrics = json.loads((run_a / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and metrics["tensorflow_imported"] is False
    assert metrics["completed"] is True and metrics["epochs"] == 2
    assert metrics["data"]["class_names"] == list(data.CIFAR10_CLASSES)
    assert metrics["data"]["sha256"] == data.content_sha256(png_folder)
    assert 0 <= metrics["test_accuracy"] <= 1 and np.isfinite(metrics["test_loss"])
    assert metrics["test_images"] == 40 and metrics["precise_bn_batches"] == 5
    assert (run_a / "train.log").read_text().count("test accuracy") == 1

    # killed after epoch 1, resumed: the uninterrupted run's weights, bit for bit
    resumed = json.loads((run_b / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == 1 and resumed["completed"] is True
    assert resumed["test_accuracy"] == metrics["test_accuracy"]
    wa, wb = _weights(run_a / "model.weights.h5"), _weights(run_b / "model.weights.h5")
    assert wa.keys() == wb.keys() and len(wa) > 10
    for name in wa:
        assert wa[name].tobytes() == wb[name].tobytes(), name

    # dmr-zoo publish accepts the run
    from zoo.cli import publish

    manifest = tmp_path / "m.json"
    entry = publish(run_a, "toy", manifest=manifest, dest=tmp_path / "weights")
    assert entry.key == "dmrnet_8_tiny.toy" and entry.dataset == "cifar10"
    assert entry.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert entry.fingerprint is not None and entry.provenance["backend"] == "jax"
    assert entry.provenance["data_sha256"] == metrics["data"]["sha256"]
    assert "dmrnet_8_tiny.toy" in json.loads(manifest.read_text())["weights"]
    assert (tmp_path / "weights" / entry.file_name).exists()
