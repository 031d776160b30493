"""dmr_keras.data: the digits split and pipeline, TFDS datasets (mocked: no download), folders of
images (layout errors, corrupt files), argument checks."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dmr_keras import data
from dmr_keras.digits import load_digits_images


def _all(ds):
    """A dataset's batches concatenated: (images, labels) as numpy arrays."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def _denormalise(x, info):
    return x * np.asarray(info.std, "float32") + np.asarray(info.mean, "float32")


def _rows(images):
    """Images as a sorted array of byte strings (for multiset comparisons)."""
    rounded = np.round(np.asarray(images, "float64"), 4).reshape(len(images), -1)
    return np.sort([r.tobytes() for r in rounded])


# ---- digits -------------------------------------------------------------------------------------


def test_digits_shapes_counts_and_info():
    train, test, info = data.load("digits", batch_size=64, seed=0)
    assert info.name == "digits" and info.num_classes == 10 and info.image_shape == (32, 32, 3)
    assert (info.train_examples, info.eval_examples) == (1437, 360)
    assert info.class_names == tuple(str(i) for i in range(10))
    sizes = []
    for x, y in train:
        assert x.dtype == tf.float32 and y.dtype == tf.int64
        assert x.shape[1:] == (32, 32, 3)
        sizes.append(int(x.shape[0]))
    assert sizes == [64] * (1437 // 64)  # drop_remainder, not repeated
    x_test, y_test = _all(test)
    assert x_test.shape == (360, 32, 32, 3) and y_test.dtype == np.int64
    assert [int(x.shape[0]) for x, _ in test][-1] == 360 % 64  # the partial batch is kept
    assert set(y_test.tolist()) == set(range(10))


def test_digits_split_is_fixed_disjoint_and_seed_independent():
    images, labels = load_digits_images()
    train_idx, test_idx = data.digits_split()
    assert len(train_idx) == 1437 and len(test_idx) == 360
    assert not set(train_idx) & set(test_idx)
    assert sorted(np.concatenate([train_idx, test_idx])) == list(range(len(images)))

    seen = []
    for seed in (0, 7):
        train, test, info = data.load("digits", batch_size=1437, seed=seed, augment=False)
        x_train, y_train = _all(train)
        x_test, y_test = _all(test)
        # The eval set is the raw test images in the split's order, whatever the seed.
        np.testing.assert_allclose(_denormalise(x_test, info), images[test_idx], atol=1e-5)
        np.testing.assert_array_equal(y_test, labels[test_idx])
        # The train set is the same multiset of images (in a seed-dependent order).
        train_rows = _rows(_denormalise(x_train, info))
        np.testing.assert_array_equal(train_rows, _rows(images[train_idx]))
        assert not set(train_rows.tolist()) & set(_rows(images[test_idx]).tolist())
        seen.append(y_train)
    assert not np.array_equal(*seen)  # but the order does depend on the seed


def test_digits_normalised_train_images_have_zero_mean_unit_std():
    train, test, _ = data.load("digits", batch_size=1437, augment=False)
    x, _ = _all(train)
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2), dtype="float64"), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2), dtype="float64"), 1.0, atol=1e-4)
    x_test, _ = _all(test)
    assert abs(x_test.mean()) < 0.1 and abs(x_test.std() - 1) < 0.1  # same constants for eval


def test_digits_augmentation_is_a_translation_without_flip():
    plain, _, info = data.load("digits", batch_size=64, seed=3, augment=False)
    augmented, _, _ = data.load("digits", batch_size=64, seed=3, augment=True)
    (x, y), (xa, ya) = next(iter(plain)), next(iter(augmented))
    np.testing.assert_array_equal(y.numpy(), ya.numpy())  # labels (and order) unchanged
    x, xa = x.numpy(), xa.numpy()
    assert not np.allclose(x, xa)
    pad_value = np.zeros(3)  # the mean pixel, normalised: the reference pads with the mean
    offsets = []
    for original, moved in zip(x, xa):
        padded = np.broadcast_to(pad_value, (40, 40, 3)).copy()
        padded[4:36, 4:36] = original
        matches = [(i, j) for i in range(9) for j in range(9)
                   if np.allclose(padded[i:i + 32, j:j + 32], moved, atol=1e-5)]
        assert matches, "an augmented image is not a pure translation of its original"
        offsets.append(matches[0])
    assert len(set(offsets)) > 5  # random offsets, not one fixed shift


def test_digits_same_seed_same_batches_other_seed_other_order():
    def two_epochs(seed):
        train, _, _ = data.load("digits", batch_size=128, seed=seed)
        return [_all(train) for _ in range(2)]

    first, again, other = two_epochs(0), two_epochs(0), two_epochs(1)
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(first[0][1], first[1][1])  # reshuffled every epoch
    assert not np.array_equal(first[0][1], other[0][1])


# ---- arguments and names ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, shown", [
    ({"batch_size": 0}, "0"), ({"batch_size": -3}, "-3"), ({"batch_size": 2.5}, "2.5"),
    ({"validation_split": 0.0}, "0.0"), ({"validation_split": 1.0}, "1.0"),
    ({"validation_split": -0.2}, "-0.2"), ({"validation_split": 1.5}, "1.5"),
    ({"image_size": 64}, "64"),  # digits are 32x32
])
def test_bad_values_raise_with_the_value(kwargs, shown):
    args = {"batch_size": 8, **kwargs}
    with pytest.raises(ValueError) as err:
        data.load("digits", **args)
    assert shown in str(err.value)
    assert next(iter(kwargs)) in str(err.value)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        data.check_dataset("mnist")
    message = str(err.value)
    assert "mnist" in message and "folder:" in message
    assert all(name in message for name in data.DATASETS)
    with pytest.raises(ValueError, match="Did you mean 'cifar10'"):
        data.load("cifar1O", batch_size=8)
    assert data.check_dataset(" CIFAR100 ") == "cifar100"
    assert data.check_dataset("svhn_cropped") == "svhn"


# ---- TFDS (mocked) ------------------------------------------------------------------------------

SPLITS = {
    "cifar10": {"train": 50, "test": 20},
    "cifar100": {"train": 60, "test": 30},
    "svhn_cropped": {"train": 70, "extra": 90, "test": 40},
    "imagenet2012": {"train": 80, "validation": 25},
}
MOCK_EXAMPLES = 10


@pytest.fixture(scope="module")
def tfds_metadata(tmp_path_factory):
    """Metadata (split sizes) for the mocked TFDS datasets, so `DataInfo` counts can be checked."""
    root = tmp_path_factory.mktemp("tfds")
    for name, counts in SPLITS.items():
        builder = tfds.builder(name, data_dir=str(root))
        builder.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0)
            for s, n in counts.items()]))
        os.makedirs(builder.data_dir, exist_ok=True)
        builder.info.write_to_directory(builder.data_dir)
    return str(root)


@pytest.mark.parametrize("name, tfds_name, classes", [
    ("cifar10", "cifar10", 10), ("cifar100", "cifar100", 100), ("svhn", "svhn_cropped", 10)])
def test_tfds_32x32_datasets(name, tfds_name, classes, tfds_metadata):
    counts = SPLITS[tfds_name]
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, data_dir=tfds_metadata):
        train, test, info = data.load(name, batch_size=4, seed=0)
        plain, _, _ = data.load(name, batch_size=4, seed=0, augment=False)
        x_train, y_train = _all(train)
        x_plain, _ = _all(plain)
        x_test, y_test = _all(test)
    assert info.num_classes == classes and len(info.class_names) == classes
    assert info.image_shape == (32, 32, 3)
    assert info.train_examples == sum(n for s, n in counts.items() if s != "test")
    assert info.eval_examples == counts["test"]
    assert x_train.shape == (MOCK_EXAMPLES // 4 * 4, 32, 32, 3) and x_train.dtype == np.float32
    assert x_test.shape == (MOCK_EXAMPLES, 32, 32, 3)
    for y in (y_train, y_test):
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() < classes
    # Normalised with the info's constants: de-normalised eval pixels are k / 255.
    pixels = _denormalise(x_test, info) * 255
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    assert pixels.min() > -0.5 and pixels.max() < 255.5
    # The mock yields the same examples for every split: compare train with eval images.
    eval_rows = set(_rows(x_test).tolist())
    moved = [r not in eval_rows for r in _rows(x_train).tolist()]
    assert not any(r not in eval_rows for r in _rows(x_plain).tolist())
    if name == "svhn":
        assert not any(moved)  # no augmentation for SVHN (as the paper)
    else:
        assert any(moved)  # pad + crop + flip


def test_tfds_imagenet_sizes(tfds_metadata):
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, data_dir=tfds_metadata):
        train, test, info = data.load("imagenet2012", batch_size=4, seed=0)
        x_train, y_train = next(iter(train))
        x_test, _ = _all(test)
        _, small_test, small_info = data.load("imagenet2012", batch_size=4, image_size=64)
        x_small, _ = next(iter(small_test))
    assert info.num_classes == 1000 and info.image_shape == (224, 224, 3)
    assert (info.train_examples, info.eval_examples) == (80, 25)
    assert x_train.shape == (4, 224, 224, 3) and y_train.dtype == tf.int64
    assert x_test.shape == (MOCK_EXAMPLES, 224, 224, 3)
    assert np.isfinite(x_test).all() and x_test.std() > 0.1
    assert small_info.image_shape == (64, 64, 3) and x_small.shape == (4, 64, 64, 3)


# ---- folders ------------------------------------------------------------------------------------

PER_CLASS = 10


def _write_digit_folder(root, classes=(0, 1, 2), per_class=PER_CLASS):
    """One sub-folder per digit class, each with `per_class` real digit PNGs."""
    images, labels = load_digits_images()
    for c in classes:
        d = root / f"digit_{c}"
        d.mkdir(parents=True)
        for i, img in enumerate(images[labels == c][:per_class]):
            png = tf.io.encode_png(tf.cast(np.round(img * 255), tf.uint8)).numpy()
            (d / f"{i:03d}.png").write_bytes(png)
    return root


@pytest.fixture
def digit_folder(tmp_path):
    return _write_digit_folder(tmp_path / "digits_png")


def test_folder_classes_counts_split_and_labels(digit_folder):
    spec = f"folder:{digit_folder}"
    train, test, info = data.load(spec, batch_size=4, seed=0, augment=False)
    assert info.name == data.check_dataset(spec) == f"folder:{os.path.abspath(digit_folder)}"
    assert info.class_names == ("digit_0", "digit_1", "digit_2") and info.num_classes == 3
    held_out = round(0.1 * PER_CLASS)
    assert info.eval_examples == 3 * held_out
    assert info.train_examples == 3 * (PER_CLASS - held_out)
    assert info.image_shape == (32, 32, 3)
    x_train, y_train = _all(train)
    x_test, y_test = _all(test)
    assert x_train.shape == (info.train_examples // 4 * 4, 32, 32, 3)
    assert sorted(y_test.tolist()) == [0] * held_out + [1] * held_out + [2] * held_out
    # Each image has the label of the folder it came from.
    images, labels = load_digits_images()
    for x, y in zip(_denormalise(np.concatenate([x_train, x_test]), info),
                    np.concatenate([y_train, y_test])):
        sources = np.round(images[labels == y][:PER_CLASS] * 255) / 255
        assert np.abs(sources - x).max(axis=(1, 2, 3)).min() < 1e-3
    # The split does not depend on the seed; eval is not shuffled.
    _, test_other, _ = data.load(spec, batch_size=4, seed=5, augment=False)
    np.testing.assert_array_equal(_all(test_other)[0], x_test)
    # A different image size.
    train_small, _, small = data.load(spec, batch_size=4, image_size=16)
    assert small.image_shape == (16, 16, 3) and next(iter(train_small))[0].shape == (4, 16, 16, 3)


def test_folder_large_set_pipeline_gives_the_same_batches(digit_folder, monkeypatch):
    """Sets too big for the in-memory cache shuffle paths and decode each epoch: same batches."""
    spec = f"folder:{digit_folder}"
    cached, _, _ = data.load(spec, batch_size=4, seed=2)
    monkeypatch.setattr(data, "_CACHE_BYTES", 0)
    streamed, streamed_test, _ = data.load(spec, batch_size=4, seed=2)
    (xa, ya), (xb, yb) = _all(cached), _all(streamed)
    np.testing.assert_array_equal(ya, yb)
    # Same pixels; the channel statistics are summed in float64 (uint8 cache) vs float32
    # (streamed), so normalised values may differ in the last float32 bit.
    np.testing.assert_allclose(xa, xb, atol=1e-5)
    assert len(_all(streamed_test)[1]) == 3 * round(0.1 * PER_CLASS)


def test_folder_corrupt_images_are_listed_before_training(digit_folder):
    bad = [digit_folder / "digit_1" / "broken.png", digit_folder / "digit_2" / "empty.jpg"]
    bad[0].write_bytes(np.random.default_rng(0).bytes(300))
    bad[1].write_bytes(b"")
    spec = f"folder:{digit_folder}"
    assert data.check_dataset(spec)  # the layout is fine: the contents are checked by load
    with pytest.raises(ValueError) as err:
        data.load(spec, batch_size=4)
    message = str(err.value)
    assert all(str(p) in message for p in bad)
    assert "000.png" not in message  # only the bad files are named


@pytest.mark.parametrize("layout", ["empty_class", "only_text_class", "one_class", "empty_root",
                                    "missing", "a_file"])
def test_folder_layout_errors_name_the_path(layout, tmp_path):
    root = tmp_path / "data"
    offending = root
    if layout == "empty_class":
        _write_digit_folder(root, per_class=2)
        offending = root / "digit_9"
        offending.mkdir()
    elif layout == "only_text_class":
        _write_digit_folder(root, per_class=2)
        offending = root / "notes"
        offending.mkdir()
        (offending / "readme.txt").write_text("not an image")
    elif layout == "one_class":
        _write_digit_folder(root, classes=(0,), per_class=2)
    elif layout == "empty_root":
        root.mkdir()
    elif layout == "a_file":
        root.write_text("x")
    for call in (lambda: data.check_dataset(f"folder:{root}"),
                 lambda: data.load(f"folder:{root}", batch_size=2)):
        with pytest.raises(ValueError) as err:
            call()
        assert str(offending) in str(err.value)


def test_epoch_batches_depend_only_on_seed_and_epoch():
    """A run resumed at epoch 2 sees exactly the batches the uninterrupted run saw in epoch 2,
    and iterating the pipeline before (as a killed process did) changes nothing."""
    batch = 256
    full, _, info = data.load("digits", batch_size=batch, seed=5, epochs=3)
    steps = info.train_examples // batch
    everything = [(x.numpy(), y.numpy()) for x, y in full]
    assert len(everything) == 3 * steps
    import tensorflow as tf

    tf.random.set_seed(0)  # the global seed plays no part (and 0 once broke Dataset.shuffle)
    resumed, _, _ = data.load("digits", batch_size=batch, seed=5, epochs=3, initial_epoch=2)
    for _ in resumed.take(2):  # iterated before, in the same process: no effect
        pass
    tail = [(x.numpy(), y.numpy()) for x, y in resumed]
    assert len(tail) == steps
    for (x, y), (xr, yr) in zip(everything[2 * steps:], tail):
        np.testing.assert_array_equal(y, yr)
        np.testing.assert_array_equal(x, xr)
    # Epochs differ from each other (shuffle and augmentation move on).
    assert not np.array_equal(everything[0][1], everything[steps][1])
    other_seed, _, _ = data.load("digits", batch_size=batch, seed=6, epochs=1)
    assert not np.array_equal(next(iter(other_seed))[1], everything[0][1])


def test_epoch_examples_is_the_start_of_each_full_epoch():
    """``epoch_examples=N``: each epoch is the first N // batch batches of the uncapped epoch
    (same images, same augmentation), so a capped run resumes as exactly as a full one."""
    capped, _, info = data.load("digits", batch_size=32, epochs=3, epoch_examples=96, seed=1)
    full, _, _ = data.load("digits", batch_size=32, epochs=3, seed=1)
    capped, full = list(capped), list(full)
    steps = info.train_examples // 32
    assert len(capped) == 3 * 3 and len(full) == 3 * steps
    for epoch in range(3):
        for i in range(3):
            x, y = capped[epoch * 3 + i]
            fx, fy = full[epoch * steps + i]
            np.testing.assert_array_equal(y, fy)
            np.testing.assert_allclose(x, fx, rtol=0, atol=0)
    assert not np.array_equal(capped[0][1], capped[3][1])  # another part each epoch
    with pytest.raises(ValueError, match="epoch_examples"):
        data.load("digits", batch_size=32, epoch_examples=10)
