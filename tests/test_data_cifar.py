"""dmr_keras.data: CIFAR from a directory (train/<class>/ + test/<class>/ images, the official
python batch files read by an allow-list unpickler, the .tar.gz; else TFDS with that data_dir),
folder:PATH with train/ + test/ and/or val/ splits, and the per-process cache of decoded images.

The fixtures are a tiny CIFAR-10 (3 train and 2 test images per class, seeded random pixels)
written in every layout from the same uint8 arrays, so every load is compared with known pixels
and labels."""

import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dmr_keras import data

CLASSES = data.CIFAR10_CLASSES
TRAIN_PER_CLASS = 3
TEST_PER_CLASS = 2
N_TRAIN = 10 * TRAIN_PER_CLASS
N_TEST = 10 * TEST_PER_CLASS
BATCH = 6  # divides N_TRAIN: one epoch of the train set holds every train image once
PYTHON_FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
SHARED_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


# ---- fixture data -------------------------------------------------------------------------------


def _arrays():
    """Known uint8 images and int64 labels, class by class (the folder layout's order)."""
    rng = np.random.default_rng(1234)
    x_train = rng.integers(0, 256, (N_TRAIN, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (N_TEST, 32, 32, 3), dtype=np.uint8)
    y_train = np.repeat(np.arange(10, dtype=np.int64), TRAIN_PER_CLASS)
    y_test = np.repeat(np.arange(10, dtype=np.int64), TEST_PER_CLASS)
    return x_train, y_train, x_test, y_test


X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = _arrays()


def _png(image):
    return tf.io.encode_png(image).numpy()


def _jpeg(image):
    return tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False).numpy()


def _write_split(root, x, y, jpeg_every=None):
    """``root/<class>/NNNN.png`` (``.jpg`` for every ``jpeg_every``-th image of a class)."""
    for name in CLASSES:
        (root / name).mkdir(parents=True)
    written = []
    for label in range(10):
        for i, image in enumerate(x[y == label]):
            as_jpeg = jpeg_every is not None and i % jpeg_every == 1
            path = root / CLASSES[label] / f"{i:04d}.{'jpg' if as_jpeg else 'png'}"
            path.write_bytes(_jpeg(image) if as_jpeg else _png(image))
            written.append(path)
    return written


def _to_rows(x):
    """(N, 32, 32, 3) -> (N, 3072) channel-major (R 1024, G 1024, B 1024), each row-major."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), 3072))


def _batch_dict(x, y, label):
    return {b"batch_label": label.encode(), b"labels": [int(v) for v in y],
            b"data": _to_rows(x),
            b"filenames": [f"img_{label}_{i}.png".encode() for i in range(len(y))]}


def _python_files():
    """{file name: pickled bytes} of the official cifar-10-batches-py layout. The train images
    are permuted across the 5 batches (labels travel with their rows); the test batch keeps the
    class-by-class order, so every layout has the same eval order."""
    perm = np.random.default_rng(7).permutation(N_TRAIN)
    x, y = X_TRAIN[perm], Y_TRAIN[perm]
    files = {}
    per_batch = N_TRAIN // 5
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        files[f"data_batch_{b + 1}"] = _batch_dict(x[part], y[part],
                                                   f"training batch {b + 1} of 5")
    files["test_batch"] = _batch_dict(X_TEST, Y_TEST, "testing batch 1 of 1")
    files["batches.meta"] = {b"label_names": [c.encode() for c in CLASSES],
                             b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    return {k: pickle.dumps(v, protocol=2) for k, v in files.items()}


def _write_python(folder):
    folder.mkdir(parents=True)
    for name, blob in _python_files().items():
        (folder / name).write_bytes(blob)
    return folder


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """{layout: data_dir} for the same tiny CIFAR-10."""
    base = tmp_path_factory.mktemp("cifar")
    out = {}
    out["folder"] = base / "folder"
    _write_split(out["folder"] / "train", X_TRAIN, Y_TRAIN)
    _write_split(out["folder"] / "test", X_TEST, Y_TEST)
    out["python_parent"] = base / "python_parent"
    _write_python(out["python_parent"] / PYTHON_FOLDER)
    out["python_folder"] = out["python_parent"] / PYTHON_FOLDER
    out["archive"] = base / "archive"
    out["archive"].mkdir()
    with tarfile.open(out["archive"] / ARCHIVE, "w:gz") as tar:
        tar.add(out["python_folder"], arcname=PYTHON_FOLDER)
    return out


def _copy_python(layouts, tmp_path):
    return Path(shutil.copytree(layouts["python_folder"], tmp_path / PYTHON_FOLDER))


# ---- helpers ------------------------------------------------------------------------------------


def _all(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def _pixels(x, info):
    """Normalised float images back to [0, 255] pixel values."""
    return (x * np.asarray(info.std, "float32") + np.asarray(info.mean, "float32")) * 255


def _as_uint8(x, info):
    pixels = _pixels(x, info)
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3 * 255)
    return np.round(pixels).astype(np.uint8)


def _multiset(x, y):
    """(image, label) pairs as a sorted list of byte strings."""
    return sorted(img.tobytes() + int(label).to_bytes(2, "little") for img, label in zip(x, y))


def _load(data_dir, **kwargs):
    kwargs = {"batch_size": BATCH, "augment": False, "epochs": 1, **kwargs}
    return data.load("cifar10", data_dir=str(data_dir), **kwargs)


# ---- 1. the three layouts -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(layouts):
    """{layout: (x_train, y_train, x_eval, y_eval, info)} as uint8 pixels."""
    out = {}
    for layout, path in layouts.items():
        train, test, info = _load(path)
        x_train, y_train = _all(train)
        x_test, y_test = _all(test)
        out[layout] = (_as_uint8(x_train, info), y_train, _as_uint8(x_test, info), y_test, info)
    return out


@pytest.mark.parametrize("layout, source", [
    ("folder", "folder"), ("python_parent", "cifar-python"), ("python_folder", "cifar-python"),
    ("archive", "cifar-python")])
def test_cifar10_layout_gives_the_fixture(loaded, layout, source):
    x_train, y_train, x_test, y_test, info = loaded[layout]
    assert info.name == "cifar10" and info.num_classes == 10 and info.image_shape == (32, 32, 3)
    assert (info.train_examples, info.eval_examples) == (N_TRAIN, N_TEST)
    assert info.class_names == CLASSES
    assert info.eval_split == "test" and info.source == source
    assert info.mean == data.CIFAR10_MEAN and info.std == data.CIFAR10_STD
    # Eval: not shuffled, class by class (folder: sorted file names; python: the batch order).
    assert y_test.dtype == np.int64 and y_train.dtype == np.int64
    np.testing.assert_array_equal(y_test, Y_TEST)
    np.testing.assert_array_equal(x_test, X_TEST)
    # Train (no augmentation, one epoch, batch size dividing the count): every image once,
    # with its label.
    assert x_train.shape == (N_TRAIN, 32, 32, 3)
    assert _multiset(x_train, y_train) == _multiset(X_TRAIN, Y_TRAIN)


def test_cifar10_layouts_give_identical_arrays(loaded):
    ref = loaded["folder"]
    for layout in ("python_parent", "python_folder", "archive"):
        other = loaded[layout]
        np.testing.assert_array_equal(other[2], ref[2])
        np.testing.assert_array_equal(other[3], ref[3])
        assert _multiset(other[0], other[1]) == _multiset(ref[0], ref[1])
        assert other[4].class_names == ref[4].class_names


def test_cifar10_python_arrays_are_the_fixture_in_file_order(layouts):
    """The unpickled rows, channel-major -> HWC, are the fixture's images in the files' order."""
    x_train, y_train, x_test, y_test, names, source = data._cifar_from_dir(
        "cifar10", str(layouts["archive"]))
    perm = np.random.default_rng(7).permutation(N_TRAIN)
    np.testing.assert_array_equal(x_train, X_TRAIN[perm])
    np.testing.assert_array_equal(y_train, Y_TRAIN[perm])
    np.testing.assert_array_equal(x_test, X_TEST)
    np.testing.assert_array_equal(y_test, Y_TEST)
    assert x_train.dtype == np.uint8 and names == CLASSES and source == "cifar-python"


def test_cifar10_folder_reads_jpeg_files(tmp_path):
    root = tmp_path / "jpeg_mix"
    train_files = _write_split(root / "train", X_TRAIN, Y_TRAIN, jpeg_every=2)
    test_files = _write_split(root / "test", X_TEST, Y_TEST, jpeg_every=2)
    jpegs = [p for p in test_files if p.suffix == ".jpg"]
    assert len(jpegs) == 10 and sum(p.suffix == ".jpg" for p in train_files) == 10
    train, test, info = _load(root)
    assert (info.train_examples, info.eval_examples) == (N_TRAIN, N_TEST)
    assert info.source == "folder"
    x_test, y_test = _all(test)
    np.testing.assert_array_equal(y_test, Y_TEST)
    pixels = _pixels(x_test, info)
    is_jpeg = np.array([p.suffix == ".jpg" for p in test_files])
    # PNG: lossless; JPEG: the decoder's pixels, close to the originals.
    np.testing.assert_allclose(pixels[~is_jpeg], X_TEST[~is_jpeg], atol=1e-3 * 255)
    decoded = np.stack([tf.io.decode_jpeg(p.read_bytes(), channels=3).numpy() for p in jpegs])
    np.testing.assert_allclose(pixels[is_jpeg], decoded, atol=1e-3 * 255)
    error = np.abs(pixels[is_jpeg] - X_TEST[is_jpeg].astype("float32"))
    assert error.mean() < 6 and not np.array_equal(decoded, X_TEST[is_jpeg])
    x_train, y_train = _all(train)
    assert x_train.shape == (N_TRAIN, 32, 32, 3)
    assert sorted(y_train.tolist()) == sorted(Y_TRAIN.tolist())


# ---- 2-3. unsafe and broken python files --------------------------------------------------------


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload, global_name", [(_System, "system"), (_Eval, "eval")])
@pytest.mark.parametrize("nested", [False, True])
def test_malicious_pickle_is_refused_and_not_run(layouts, tmp_path, payload, global_name, nested):
    folder = _copy_python(layouts, tmp_path)
    marker = tmp_path / "pwned"
    evil = payload(marker)
    if nested:  # inside an otherwise valid-looking batch dict
        evil = {b"data": evil, b"labels": [0], b"batch_label": b"x", b"filenames": [b"x"]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    for data_dir in (folder, folder.parent):
        with pytest.raises(ValueError) as err:
            _load(data_dir)
        message = str(err.value)
        assert "refused" in message and global_name in message
        assert str(folder / "data_batch_1") in message
        assert not marker.exists()


def test_unpickler_allows_numpy_arrays_only():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4):
        blob = pickle.dumps({b"data": array, b"labels": [1, 2]}, protocol=protocol)
        out = data._read_cifar_pickle(blob, "x")
        np.testing.assert_array_equal(out[b"data"], array)
        assert out[b"labels"] == [1, 2]
    with pytest.raises(ValueError, match=r"refused.*posix\.system|refused.*os\.system"):
        data._read_cifar_pickle(pickle.dumps(_System("/nonexistent/x"), protocol=2), "x")


def _write_batch(folder, name, obj):
    (folder / name).write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize("case", ["random_bytes", "empty", "wrong_width", "flat_data",
                                  "label_count", "missing_key", "not_a_dict"])
def test_broken_python_batch_raises_naming_the_file(layouts, tmp_path, case):
    folder = _copy_python(layouts, tmp_path)
    name = "data_batch_3"
    good = _batch_dict(X_TRAIN[:6], Y_TRAIN[:6], "b")
    if case == "random_bytes":
        (folder / name).write_bytes(np.random.default_rng(3).bytes(5000))
    elif case == "empty":
        (folder / name).write_bytes(b"")
    elif case == "wrong_width":
        _write_batch(folder, name, {**good, b"data": np.zeros((6, 3000), np.uint8)})
    elif case == "flat_data":
        _write_batch(folder, name, {**good, b"data": _to_rows(X_TRAIN[:6]).reshape(-1)})
    elif case == "label_count":
        _write_batch(folder, name, {**good, b"labels": [0] * 5})
    elif case == "missing_key":
        _write_batch(folder, name, {b"data": good[b"data"]})
    elif case == "not_a_dict":
        _write_batch(folder, name, [1, 2, 3])
    with pytest.raises(ValueError) as err:
        _load(tmp_path)
    assert str(folder / name) in str(err.value)
    if case in ("wrong_width", "flat_data", "label_count"):
        assert "(N, 3072)" in str(err.value)


def test_missing_python_batch_file_is_named(layouts, tmp_path):
    folder = _copy_python(layouts, tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(ValueError, match="data_batch_4"):
        _load(folder)


def test_missing_archive_member_is_named(layouts, tmp_path):
    with tarfile.open(tmp_path / ARCHIVE, "w:gz") as tar:
        for name in ("data_batch_1", "data_batch_2", "batches.meta"):
            tar.add(layouts["python_folder"] / name, arcname=f"{PYTHON_FOLDER}/{name}")
    with pytest.raises(ValueError) as err:
        _load(tmp_path)
    assert "data_batch_3" in str(err.value) and ARCHIVE in str(err.value)


@pytest.mark.parametrize("case", ["no_names", "nine_names", "not_a_dict"])
def test_broken_python_meta_raises_naming_the_file(layouts, tmp_path, case):
    folder = _copy_python(layouts, tmp_path)
    meta = {"no_names": {b"num_vis": 3072},
            "nine_names": {b"label_names": [c.encode() for c in CLASSES[:9]]},
            "not_a_dict": 42}[case]
    _write_batch(folder, "batches.meta", meta)
    with pytest.raises(ValueError) as err:
        _load(folder)
    assert str(folder / "batches.meta") in str(err.value)


def test_python_labels_out_of_range_raise(layouts, tmp_path):
    folder = _copy_python(layouts, tmp_path)
    batch = _batch_dict(X_TEST, np.where(Y_TEST == 9, 10, Y_TEST), "t")
    _write_batch(folder, "test_batch", batch)
    with pytest.raises(ValueError) as err:
        _load(folder)
    assert str(folder / "test_batch") in str(err.value) and "10" in str(err.value)


# ---- 4. folder layout errors --------------------------------------------------------------------


def _tiny_split(root, classes, per_class=1, seed=0):
    """``root/<class>/NNNN.png`` with random 32x32 images; returns the images, class by class."""
    rng = np.random.default_rng(seed)
    images = []
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            (root / name / f"{i:04d}.png").write_bytes(_png(image))
            images.append(image)
    return np.stack(images)


def test_cifar_test_classes_differ_from_train(tmp_path):
    _tiny_split(tmp_path / "train", CLASSES)
    _tiny_split(tmp_path / "test", CLASSES[:9] + ("zebra",))
    with pytest.raises(ValueError) as err:
        _load(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "train") in message and str(tmp_path / "test") in message
    assert "zebra" in message and "truck" in message


@pytest.mark.parametrize("classes", [CLASSES[:9], CLASSES[:9] + ("zebra",),
                                     tuple(c.upper() for c in CLASSES)])
def test_cifar_folder_with_other_classes_points_to_folder_spec(tmp_path, classes):
    for split in ("train", "test"):
        _tiny_split(tmp_path / split, classes)
    with pytest.raises(ValueError) as err:
        _load(tmp_path)
    message = str(err.value)
    assert f"folder:{tmp_path}" in message and "airplane" in message
    # ... and folder:PATH does load it.
    _, test, info = data.load(f"folder:{tmp_path}", batch_size=4, augment=False)
    assert info.class_names == classes and info.eval_split == "test"


def test_cifar100_folder_with_ten_classes_raises(layouts):
    with pytest.raises(ValueError, match=r"10 class folders; cifar100 has 100") as err:
        data.load("cifar100", batch_size=4, data_dir=str(layouts["folder"]))
    assert f"folder:{layouts['folder']}" in str(err.value)


def test_missing_data_dir_is_named(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(ValueError) as err:
        _load(missing)
    assert str(missing) in str(err.value) and "not found" in str(err.value)


# ---- 5. anything else goes to TFDS with that data_dir -------------------------------------------


class _Called(Exception):
    pass


@pytest.mark.parametrize("layout", ["empty", "train_only", "other_files", "cifar100_files"])
def test_unknown_layout_falls_through_to_tfds(tmp_path, monkeypatch, layout):
    import tensorflow_datasets as tfds

    if layout == "train_only":
        _tiny_split(tmp_path / "train", CLASSES)
    elif layout == "other_files":
        (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
        (tmp_path / "notes.txt").write_text("x")
    elif layout == "cifar100_files":
        _write_batch(tmp_path, "train", {b"data": np.zeros((1, 3072), np.uint8)})
    calls = []

    def fake_load(name, **kwargs):
        calls.append((name, kwargs))
        raise _Called

    monkeypatch.setattr(tfds, "load", fake_load)
    with pytest.raises(_Called):
        _load(tmp_path)
    assert calls and calls[0][0] == "cifar10"
    assert calls[0][1]["data_dir"] == str(tmp_path)


# ---- 6. folder:PATH with splits -----------------------------------------------------------------


def test_folder_spec_with_train_and_test_splits(layouts):
    spec = f"folder:{layouts['folder']}"
    train, test, info = data.load(spec, batch_size=BATCH, augment=False, epochs=1)
    assert info.eval_split == "test" and info.class_names == CLASSES
    assert info.source == "folder" and info.name == spec
    assert (info.train_examples, info.eval_examples) == (N_TRAIN, N_TEST)
    # Mean and std from the train images.
    expected_mean = X_TRAIN.reshape(-1, 3).mean(0) / 255
    expected_std = (X_TRAIN.reshape(-1, 3) / 255).std(0)
    np.testing.assert_allclose(info.mean, expected_mean, atol=1e-6)
    np.testing.assert_allclose(info.std, expected_std, atol=1e-6)
    x_test, y_test = _all(test)
    np.testing.assert_array_equal(_as_uint8(x_test, info), X_TEST)
    np.testing.assert_array_equal(y_test, Y_TEST)
    x_train, y_train = _all(train)
    assert _multiset(_as_uint8(x_train, info), y_train) == _multiset(X_TRAIN, Y_TRAIN)
    # eval_split="val" is not a split of it.
    with pytest.raises(ValueError, match=r"eval_split='val'.*test"):
        data.load(spec, batch_size=BATCH, eval_split="val")


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_folder_spec_with_val_evaluates_on_val(tmp_path, val_name):
    root = tmp_path / "three"
    _tiny_split(root / "train", ("cats", "dogs"), per_class=3, seed=0)
    val = _tiny_split(root / val_name, ("cats", "dogs"), per_class=2, seed=1)
    test = _tiny_split(root / "test", ("cats", "dogs"), per_class=1, seed=2)
    spec = f"folder:{root}"
    _, ev, info = data.load(spec, batch_size=4, augment=False)
    assert info.eval_split == "val" and (info.train_examples, info.eval_examples) == (6, 4)
    x, y = _all(ev)
    np.testing.assert_array_equal(_as_uint8(x, info), val)
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    _, ev, info_test = data.load(spec, batch_size=4, augment=False, eval_split="test")
    assert info_test.eval_split == "test" and info_test.eval_examples == 2
    x, y = _all(ev)
    np.testing.assert_array_equal(_as_uint8(x, info_test), test)
    np.testing.assert_array_equal(y, [0, 1])
    assert info_test.mean == info.mean  # statistics of the train split either way


@pytest.mark.parametrize("spec", ["cifar10", "digits"])
def test_eval_split_val_on_fixed_split_datasets_raises(layouts, spec):
    data_dir = str(layouts["folder"]) if spec == "cifar10" else None
    with pytest.raises(ValueError, match=rf"{spec} has no validation split.*eval_split"):
        data.load(spec, batch_size=4, data_dir=data_dir, eval_split="val")


def test_flat_folder_has_no_test_split(tmp_path):
    images = _tiny_split(tmp_path, ("a", "b"), per_class=10)
    with pytest.raises(ValueError, match=r"eval_split='test'.*no train/ \+ test/"):
        data.load(f"folder:{tmp_path}", batch_size=4, eval_split="test")
    # The default (and "val") is the held-out fraction.
    _, ev, info = data.load(f"folder:{tmp_path}", batch_size=4, augment=False, eval_split="val")
    assert info.eval_split == "val" and (info.train_examples, info.eval_examples) == (18, 2)
    assert info.source == "folder"
    x, y = _all(ev)
    rows = {img.tobytes() for img in images}
    assert all(img.tobytes() in rows for img in _as_uint8(x, info))
    np.testing.assert_array_equal(y, [0, 1])


def test_split_folders_and_eval_split_of(tmp_path):
    assert data.split_folders(str(tmp_path)) is None
    (tmp_path / "train").mkdir()
    assert data.split_folders(str(tmp_path)) is None  # train/ alone is no split layout
    (tmp_path / "validation").mkdir()
    (tmp_path / "test").write_text("a file, not a folder")
    splits = data.split_folders(str(tmp_path))
    assert splits == {"train": str(tmp_path / "train"), "val": str(tmp_path / "validation")}
    assert data.eval_split_of(splits, None) == "val"
    with pytest.raises(ValueError, match=r"eval_split='test'.*it has: val"):
        data.eval_split_of(splits, "test")
    both = {"train": "t", "val": "v", "test": "s"}
    assert data.eval_split_of(both, None) == "val"
    assert data.eval_split_of(both, "test") == "test"
    assert data.eval_split_of({"train": "t", "test": "s"}, None) == "test"
    with pytest.raises(ValueError, match="not a split"):
        data.eval_split_of(both, "train")


# ---- 7. the decoded-image cache -----------------------------------------------------------------


@pytest.fixture
def counted_decodes(monkeypatch):
    """An empty cache, and a count of tf.io.decode_image traces (one per decoding pass)."""
    monkeypatch.setattr(data, "_DECODED", {})
    calls = []
    original = tf.io.decode_image

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tf.io, "decode_image", counting)
    return calls


def test_decode_images_caches_and_notices_changed_files(tmp_path, counted_decodes):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(_png(X_TEST[i]))
    first = data.decode_images(paths, 32)
    np.testing.assert_array_equal(first[0], X_TEST[:4])
    assert first[1] == [] and len(counted_decodes) == 1
    again = data.decode_images([str(p) for p in paths], 32)
    assert again is first and len(counted_decodes) == 1  # not decoded again
    # Rewritten with other pixels (another size on disk): decoded again, the new pixels.
    new = np.full((32, 32, 3), 17, np.uint8)
    paths[2].write_bytes(_png(new))
    changed = data.decode_images(paths, 32)
    assert changed is not first and len(counted_decodes) == 2
    np.testing.assert_array_equal(changed[0][2], new)
    np.testing.assert_array_equal(changed[0][[0, 1, 3]], X_TEST[[0, 1, 3]])
    np.testing.assert_array_equal(first[0][2], X_TEST[2])  # the cached result is not modified
    # Same bytes, same size, a new modification time: decoded again.
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = data.decode_images(paths, 32)
    assert touched is not changed and len(counted_decodes) == 3
    np.testing.assert_array_equal(touched[0], changed[0])
    # Another size is another cache entry (resized).
    small = data.decode_images(paths, 16)
    assert small[0].shape == (4, 16, 16, 3) and len(counted_decodes) == 4
    np.testing.assert_array_equal(small[0][2], new[:16, :16])  # a constant image stays constant
    assert data.decode_images(paths, 32) is touched


def test_decode_images_lists_corrupt_files(tmp_path, counted_decodes):
    good = tmp_path / "good.png"
    good.write_bytes(_png(X_TEST[0]))
    broken = tmp_path / "broken.png"
    broken.write_bytes(np.random.default_rng(5).bytes(400))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    images, bad = data.decode_images([broken, good, empty], 32)
    assert sorted(bad) == sorted([str(broken), str(empty)])
    np.testing.assert_array_equal(images[1], X_TEST[0])
    assert not images[0].any() and not images[2].any()


def test_cifar_folder_load_reports_corrupt_files(tmp_path):
    _write_split(tmp_path / "train", X_TRAIN, Y_TRAIN)
    _write_split(tmp_path / "test", X_TEST, Y_TEST)
    broken = tmp_path / "test" / "cat" / "0001.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError) as err:
        _load(tmp_path)
    assert str(broken) in str(err.value) and "0000.png" not in str(err.value)


# ---- 8. the shared CIFAR-10 JPEG copy -----------------------------------------------------------


def test_shared_cifar10_jpeg_copy():
    if not (SHARED_JPEG / "train").is_dir() or not (SHARED_JPEG / "test").is_dir():
        pytest.skip(f"CIFAR-10 JPEG copy not found at {SHARED_JPEG}: see shared/data/README.md")
    train, test, info = data.load("cifar10", batch_size=500, data_dir=str(SHARED_JPEG),
                                  augment=False, epochs=1)
    assert (info.train_examples, info.eval_examples) == (50_000, 10_000)
    assert info.class_names == CLASSES and info.source == "folder"
    assert info.eval_split == "test"
    x_test, y_test = _all(test)
    assert x_test.shape == (10_000, 32, 32, 3) and x_test.dtype == np.float32
    np.testing.assert_array_equal(y_test, np.repeat(np.arange(10), 1000))
    pixels = _pixels(x_test, info)
    assert pixels.min() > -0.01 and pixels.max() < 255.01
    # Real photos: per-channel means near CIFAR-10's (JPEG q75 changes them a little).
    np.testing.assert_allclose(pixels.mean((0, 1, 2)) / 255, data.CIFAR10_MEAN, atol=0.01)
    assert pixels.std() > 40  # not zero rows (no file failed to decode)
    x, y = next(iter(train))
    assert x.shape == (500, 32, 32, 3) and y.shape == (500,)
    assert len(set(y.numpy().tolist())) == 10
