"""dmr_keras.data.load(..., skip_corrupt=True): unreadable image files (a text file named .png,
zero bytes, a truncated JPEG) are left out with one warning naming them and listed in
``info.skipped``; without it (the default) loading stops with an error that names them and the
option. Fixtures: the real-digit class folders of test_data.py and the tiny CIFAR-10 train/ +
test/ folders of test_data_cifar.py, plus a few broken files."""

import shutil
import warnings

import numpy as np
import pytest
import tensorflow as tf

from dmr_keras import data
from tests.test_data import _all, _write_digit_folder
from tests.test_data_cifar import X_TEST, X_TRAIN, Y_TEST, Y_TRAIN, _write_split

PER_CLASS = 4
SPLIT = 0.25  # 1 of the 4 (3 once one is left out) images of each class held out


def _truncated_jpeg():
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(image).numpy()[:-10]


def _break(root, specs):
    """Write the broken files ``{relative path: bytes}``; return their absolute paths."""
    paths = []
    for rel, blob in specs.items():
        path = root / rel
        path.write_bytes(blob)
        paths.append(str(path))
    return sorted(paths)


@pytest.fixture
def corrupt_folder(tmp_path):
    """3 classes x 4 digit PNGs, plus a text file named .png and an empty .jpg."""
    root = _write_digit_folder(tmp_path / "digits", per_class=PER_CLASS)
    bad = _break(root, {"digit_1/notes.png": b"this is text, not a PNG",
                        "digit_2/empty.jpg": b""})
    return root, bad


def _load(root, **kwargs):
    kwargs = {"batch_size": 3, "augment": False, "epochs": 1, "validation_split": SPLIT,
              **kwargs}
    return data.load(f"folder:{root}", **kwargs)


def _skip(root, **kwargs):
    """``_load(skip_corrupt=True)`` and the UserWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _load(root, skip_corrupt=True, **kwargs)
    return result, [w for w in caught if issubclass(w.category, UserWarning)
                    and "skip_corrupt" in str(w.message)]


def test_default_stops_naming_the_files_and_the_option(corrupt_folder):
    root, bad = corrupt_folder
    with pytest.raises(ValueError) as err:
        _load(root)
    message = str(err.value)
    assert all(p in message for p in bad) and "2 unreadable or corrupt" in message
    assert "000.png" not in message  # only the bad files are named
    assert "--skip-corrupt" in message and "skip_corrupt=True" in message


def test_skip_corrupt_leaves_them_out_warns_and_records(corrupt_folder, tmp_path):
    root, bad = corrupt_folder
    (train, test, info), caught = _skip(root)
    assert info.skipped == tuple(bad)
    assert (info.train_examples, info.eval_examples) == (9, 3)  # 12 readable, 1 per class out
    x_train, y_train = _all(train)
    x_eval, y_eval = _all(test)
    assert sorted(y_train.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sorted(y_eval.tolist()) == [0, 1, 2]
    assert len(caught) == 1  # reported once
    message = str(caught[0].message)
    assert "left out 2 unreadable or corrupt" in message and all(p in message for p in bad)

    # The same data (split, labels, pixels) as the folder with the broken files deleted.
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    for p in bad:
        (clean / p[len(str(root)) + 1:]).unlink()
    c_train, c_test, c_info = _load(clean)
    assert c_info.skipped == ()
    xc_eval, yc_eval = _all(c_test)
    np.testing.assert_array_equal(y_eval, yc_eval)
    np.testing.assert_allclose(x_eval, xc_eval, atol=1e-6)
    xc_train, yc_train = _all(c_train)
    np.testing.assert_array_equal(np.sort(y_train), np.sort(yc_train))
    np.testing.assert_allclose(info.mean, c_info.mean, atol=1e-9)


def test_skipping_does_not_poison_the_cache(corrupt_folder, monkeypatch):
    root, bad = corrupt_folder
    monkeypatch.setattr(data, "_DECODED", {})
    with pytest.raises(ValueError):  # default first: the cache holds the bad list
        _load(root)
    assert _skip(root)[0][2].skipped == tuple(bad)
    with pytest.raises(ValueError) as err:  # skipping then the default: still stops
        _load(root)
    assert all(p in str(err.value) for p in bad)
    assert _skip(root)[0][2].skipped == tuple(bad)


def test_streamed_folder_skips_the_same_files(corrupt_folder, monkeypatch):
    root, bad = corrupt_folder
    (train, test, info), _ = _skip(root)
    monkeypatch.setattr(data, "_CACHE_BYTES", 0)  # too big for memory: decoded every epoch
    with pytest.raises(ValueError) as err:
        _load(root)
    assert all(p in str(err.value) for p in bad)
    (s_train, s_test, s_info), caught = _skip(root)
    assert s_info.skipped == info.skipped and len(caught) == 1
    assert (s_info.train_examples, s_info.eval_examples) == (9, 3)
    (xa, ya), (xb, yb) = _all(test), _all(s_test)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(xa, xb, atol=1e-4)
    assert sorted(_all(s_train)[1].tolist()) == sorted(_all(train)[1].tolist())


def test_split_layout_lists_both_splits_and_skips_them(tmp_path):
    root = tmp_path / "split"
    _write_digit_folder(root / "train", per_class=PER_CLASS)
    _write_digit_folder(root / "test", per_class=2)
    bad = _break(root, {"train/digit_0/truncated.jpg": _truncated_jpeg(),
                        "test/digit_2/text.png": b"hello"})
    with pytest.raises(ValueError) as err:
        _load(root)
    assert all(p in str(err.value) for p in bad)  # one error for both splits
    (train, test, info), caught = _skip(root)
    assert info.skipped == tuple(bad) and info.eval_split == "test"
    assert (info.train_examples, info.eval_examples) == (12, 6)  # the broken ones are extra
    assert sorted(_all(test)[1].tolist()) == [0, 0, 1, 1, 2, 2]
    assert len(caught) == 1 and all(p in str(caught[0].message) for p in bad)


def test_cifar_folder_skips_too(tmp_path):
    _write_split(tmp_path / "train", X_TRAIN, Y_TRAIN)
    _write_split(tmp_path / "test", X_TEST, Y_TEST)
    bad = _break(tmp_path, {"train/cat/broken.png": b"", "test/dog/broken.jpg": b"x" * 50})
    with pytest.raises(ValueError, match="--skip-corrupt"):
        data.load("cifar10", batch_size=2, data_dir=str(tmp_path))
    with pytest.warns(UserWarning, match="left out 2"):
        _, test, info = data.load("cifar10", batch_size=2, data_dir=str(tmp_path),
                                  skip_corrupt=True, augment=False)
    assert info.skipped == tuple(bad) and info.source == "folder"
    assert (info.train_examples, info.eval_examples) == (len(Y_TRAIN), len(Y_TEST))
    np.testing.assert_array_equal(np.sort(_all(test)[1]), np.sort(Y_TEST))


def test_a_class_with_no_readable_image_is_an_error(tmp_path):
    root = _write_digit_folder(tmp_path / "digits", per_class=2)
    for path in (root / "digit_1").iterdir():
        path.write_bytes(b"")
    with pytest.raises(ValueError) as err:
        _load(root, skip_corrupt=True)
    message = str(err.value)
    assert str(root / "digit_1") in message and "no image" in message
    assert str(root / "digit_0") not in message


def test_all_files_unreadable_is_an_error(tmp_path):
    root = _write_digit_folder(tmp_path / "digits", per_class=2)
    for class_dir in root.iterdir():
        for path in class_dir.iterdir():
            path.write_text("not an image")
    with pytest.raises(ValueError, match="Every image file in .* is unreadable"):
        _load(root, skip_corrupt=True)


def test_warning_lists_the_first_20_and_a_count(tmp_path):
    root = _write_digit_folder(tmp_path / "digits", per_class=PER_CLASS)
    bad = _break(root, {f"digit_{i % 3}/bad_{i:02d}.png": b"" for i in range(23)})
    (_, _, info), caught = _skip(root)
    assert info.skipped == tuple(bad) and info.train_examples + info.eval_examples == 12
    message = str(caught[0].message)
    assert "left out 23" in message and "... and 3 more" in message
    assert sum(p in message for p in bad) == 20


def test_skip_corrupt_changes_nothing_for_a_clean_folder(tmp_path):
    root = _write_digit_folder(tmp_path / "digits", per_class=PER_CLASS)
    (train, test, info), caught = _skip(root)
    plain = _load(root)
    assert info == plain[2] and info.skipped == () and not caught
    np.testing.assert_array_equal(_all(test)[1], _all(plain[1])[1])
    np.testing.assert_allclose(_all(test)[0], _all(plain[1])[0], atol=1e-6)
