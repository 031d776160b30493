"""The current recipe of `dmr-train` (issue 12): each flag changes what it should, is recorded,
is checked before any data is read, and leaves the defaults (and old runs) as they were."""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from dmr_keras import augment, training
from dmr_keras import data as data_lib
from zoo.train import OPTIMIZER_DEFAULTS, RUN_KEYS, build_parser, train

TINY = dict(model="dmrnet_8_tiny", dataset="digits", verbose=0, seed=3)
RECIPE = dict(optimizer="adamw", ema=0.3, mixup=0.2, cutmix=1.0, randaugment=9.0,
              label_smoothing=0.1, jit_compile=False, warmup_epochs=0.0, image_size="keep")


def _first_batch(**kwargs):
    train_ds, eval_ds, info = data_lib.load("digits", batch_size=16, epochs=2,
                                            **{"seed": 1, **kwargs})
    x, y = next(iter(train_ds))
    return x.numpy(), y.numpy(), eval_ds, info


def _png_folder(root, sizes, per_class=6, classes=3):
    """A folder of ``classes`` classes of PNGs of the given (H, W) sizes, cycled over the
    files."""
    rng = np.random.default_rng(0)
    k = 0
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[k % len(sizes)]
            k += 1
            img = np.clip(rng.normal(40 + 30 * c, 30, (h, w, 3)), 0, 255).astype("uint8")
            (d / f"{i}.png").write_bytes(tf.io.encode_png(img).numpy())
    return root


# ---- the loss, the optimizer, the metrics ---------------------------------------------------

def test_label_smoothing_changes_the_loss_on_a_fixed_batch():
    probs = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    labels = tf.constant([0, 1])
    plain = float(training.make_loss(0.0)(labels, probs))
    smooth = float(training.make_loss(0.1)(labels, probs))
    assert smooth > plain + 0.05
    # The soft-label loss (MixUp / CutMix runs) is the same loss on one-hot labels.
    one_hot = tf.one_hot(labels, 3)
    assert float(training.make_loss(0.0, soft_labels=True)(one_hot, probs)) == pytest.approx(plain)
    assert float(training.make_loss(0.1, soft_labels=True)(one_hot, probs)) == pytest.approx(
        smooth, rel=1e-5)


def test_adamw_decays_decoupled_and_in_its_scope():
    opt = training.make_optimizer(0.1, "adamw", weight_decay=0.5, weight_decay_scope="kernels")
    assert isinstance(opt, keras.optimizers.AdamW) and opt.weight_decay == 0.5
    dense = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="ones")
    dense.build((None, 2))
    kernel, bias = dense.kernel, dense.bias
    opt.apply([tf.zeros((2, 2)), tf.zeros((2,))], [kernel, bias])  # no gradient: decay only
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.5, rtol=1e-6)  # w -= lr * wd * w
    np.testing.assert_array_equal(bias.numpy(), 1.0)  # "kernels": not the bias
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, training.AdamW) and again.kernels_only
    with pytest.raises(ValueError, match="L2 regulariser"):
        training.make_optimizer(0.1, "sgd", weight_decay=1e-4)


def test_top5_only_with_more_than_five_classes():
    names = [m if isinstance(m, str) else m.name for m in training.make_metrics(10)]
    assert names == ["accuracy", "top5"]
    assert training.make_metrics(5) == ["accuracy"]
    soft = training.make_metrics(10, soft_labels=True)
    assert [type(m).__name__ for m in soft] == ["CategoricalAccuracy", "TopKCategoricalAccuracy"]


def test_ema_weights_differ_and_survive_a_save(tmp_path):
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    net.compile(optimizer=training.make_optimizer(0.5, ema=0.9),
                loss=training.make_loss(), metrics=training.make_metrics(3))
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    for _ in range(5):
        net.train_on_batch(x, y)
    averages = training.ema_weights(net.optimizer)
    raw = [w.numpy() for w in net.trainable_weights]
    assert any(not np.allclose(a, r) for a, r in zip(averages, raw))
    net.save(tmp_path / "ckpt.keras")
    loaded = keras.saving.load_model(tmp_path / "ckpt.keras")
    for a, b in zip(averages, training.ema_weights(loaded.optimizer)):
        np.testing.assert_array_equal(a, b)  # the checkpoint keeps the average
    loaded.optimizer.finalize_variable_values(loaded.trainable_weights)
    for a, w in zip(averages, loaded.trainable_weights):
        np.testing.assert_array_equal(a, w.numpy())


def _built(**change):
    from types import SimpleNamespace

    from zoo.train import DEFAULTS, _build

    run = dict(DEFAULTS, model="dmrnet_8_tiny", **OPTIMIZER_DEFAULTS["sgd"])
    run.update(change)
    info = SimpleNamespace(num_classes=10, image_shape=(32, 32, 3))
    return _build(run, info, steps=10)


def test_the_default_build_is_the_papers_and_jit_compile_is_passed(monkeypatch):
    calls = []
    compile_ = keras.Model.compile

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return compile_(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", spy)
    net = _built()
    opt = net.optimizer
    assert type(opt) is keras.optimizers.SGD and opt.nesterov and not opt.use_ema
    assert type(net.loss) is keras.losses.SparseCategoricalCrossentropy
    assert len(net.losses) > 20  # the L2 weight decay, in the model
    assert "jit_compile" not in calls[0]  # Keras' default ("auto"), as before
    assert _built(jit_compile=True).jit_compile is True
    assert _built(jit_compile=False).jit_compile is False
    adamw = _built(optimizer="adamw", **OPTIMIZER_DEFAULTS["adamw"], ema=0.99)
    assert isinstance(adamw.optimizer, training.AdamW) and adamw.optimizer.use_ema
    assert adamw.optimizer.ema_momentum == 0.99 and adamw.optimizer.weight_decay == 0.05
    assert not adamw.losses  # decoupled: no L2 term as well


# ---- the data -------------------------------------------------------------------------------

def test_mixup_and_cutmix_change_images_and_make_labels_soft():
    x0, y0, _, _ = _first_batch()
    for kwargs in (dict(mixup=0.4), dict(cutmix=1.0), dict(mixup=0.4, cutmix=1.0)):
        x, y, eval_ds, _ = _first_batch(**kwargs)
        assert y.shape == (16, 10) and y.dtype == np.float32
        np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
        assert (y.max(1) < 1).any(), kwargs  # some labels are mixed
        # The same images in the same order, each mixed with one partner from the batch.
        assert ((y > 0).sum(1) <= 2).all() and set(np.nonzero(y)[1]) <= set(y0)
        assert not np.allclose(x, x0)
        assert next(iter(eval_ds))[1].dtype == tf.int64  # evaluation keeps integer labels
    again = _first_batch(mixup=0.4, cutmix=1.0)
    np.testing.assert_array_equal(again[0], x)  # a function of the seed


def test_cutmix_label_weights_are_the_pasted_areas():
    images = tf.reshape(tf.repeat(tf.range(8, dtype=tf.float32), 10 * 12 * 3), [8, 10, 12, 3])
    mixer = augment.BatchMixer(8, cutmix=1.0)
    mixed, labels = mixer(images, tf.range(8), tf.constant([4, 2], tf.int64))
    for i in range(8):
        own = float(np.mean(mixed[i].numpy() == i))  # the fraction of pixels left of image i
        assert labels[i, i].numpy() == pytest.approx(own, abs=1e-6) or own == 1.0


def test_randaugment_changes_images_deterministically_per_seed():
    x0, y0, _, _ = _first_batch()
    x1, y1, _, _ = _first_batch(randaugment=9.0)
    np.testing.assert_array_equal(y0, y1)  # the same order: only the images change
    assert np.abs(x1 - x0).mean() > 0.05
    np.testing.assert_array_equal(_first_batch(randaugment=9.0)[0], x1)
    assert not np.allclose(_first_batch(randaugment=9.0, seed=2)[0], x1)
    # Off without augmentation (the precise-BN pass), like the crop.
    plain = data_lib.load("digits", batch_size=16, augment=False, randaugment=9.0, epochs=1)[0]
    reference = data_lib.load("digits", batch_size=16, augment=False, epochs=1)[0]
    np.testing.assert_array_equal(next(iter(plain))[0], next(iter(reference))[0])


def test_folder_images_keep_their_size_or_are_resized(tmp_path):
    folder = _png_folder(tmp_path / "f", [(40, 48)])
    assert data_lib.load(f"folder:{folder}", batch_size=4)[2].image_shape == (32, 32, 3)
    assert data_lib.load(f"folder:{folder}", batch_size=4, image_size=24)[2].image_shape == (
        24, 24, 3)
    train_ds, _, info = data_lib.load(f"folder:{folder}", batch_size=4, image_size="keep")
    assert info.image_shape == (40, 48, 3)
    assert next(iter(train_ds))[0].shape == (4, 40, 48, 3)
    pair = data_lib.load(f"folder:{folder}", batch_size=4, image_size=(20, 24))[2]
    assert pair.image_shape == (20, 24, 3)  # what dmr-eval needs for such a model
    mixed = _png_folder(tmp_path / "m", [(40, 40), (40, 40), (20, 30)])
    with pytest.raises(ValueError, match=r"not all one size \(2 sizes: 40x40.*--image-size N"):
        data_lib.load(f"folder:{mixed}", batch_size=4, image_size="keep")


# ---- dmr-train ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """Every recipe flag at once, on a folder of 6 classes of 40x40 PNGs (9 train images and 1
    held out each: 6 steps of 8)."""
    folder = _png_folder(tmp_path_factory.mktemp("data") / "png", [(40, 40)], per_class=10,
                         classes=6)
    out = tmp_path_factory.mktemp("recipe")
    args = dict(TINY, **RECIPE, dataset=f"folder:{folder}", epochs=1, batch_size=8,
                output=str(out))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # 0.3 ** 5: no short-EMA warning
        metrics = train(**args)
    return out, metrics, args


def test_recipe_flags_are_recorded_and_used(recipe_run):
    out, metrics, _ = recipe_run
    stored = json.loads((out / "run.json").read_text())
    assert set(RUN_KEYS) <= set(stored)
    for key, value in dict(RECIPE, lr=1e-3, weight_decay=0.05).items():
        assert stored[key] == value, key  # adamw's own lr and weight decay
        assert metrics["hparams"][key] == value, key
    assert {"top5", "val_top5", "accuracy", "val_accuracy"} <= set(metrics["history"])
    assert 0 <= metrics["test_top5"] <= 1 and metrics["test_top5"] >= metrics["test_accuracy"]
    assert metrics["data"]["image_shape"] == [40, 40, 3]  # --image-size keep
    model = keras.saving.load_model(out / "model.keras")
    assert model.input_shape == (None, 40, 40, 3)
    assert isinstance(model.optimizer, training.AdamW)
    assert not model.losses  # decoupled decay: no L2 term in the model
    assert type(model.loss).__name__ == "CategoricalCrossentropy"
    assert model.loss.get_config()["label_smoothing"] == 0.1
    assert model.jit_compile is False


def test_the_saved_model_holds_the_ema_weights(recipe_run):
    out, _, _ = recipe_run
    checkpoint = keras.saving.load_model(out / "checkpoints" / "epoch-0001.keras")
    averages = training.ema_weights(checkpoint.optimizer)  # the checkpoint keeps the state
    raw = [w.numpy() for w in checkpoint.trainable_weights]
    final = [w.numpy() for w in keras.saving.load_model(out / "model.keras").trainable_weights]
    assert any(not np.allclose(a, r) for a, r in zip(averages, raw))
    for a, f in zip(averages, final):
        np.testing.assert_array_equal(a, f)


def test_a_changed_recipe_flag_is_refused(recipe_run):
    out, _, args = recipe_run
    finished = json.loads((out / "metrics.json").read_text())
    assert train(**args) == finished
    for change, shown in [(dict(ema=0.5), "ema: 0.3 there, 0.5 now"),
                          (dict(optimizer="sgd"), "optimizer: 'adamw' there, 'sgd' now"),
                          (dict(mixup=0.0), "mixup: 0.2 there, 0.0 now"),
                          (dict(image_size=40), "image_size: 'keep' there, 40 now"),
                          (dict(jit_compile=None), "jit_compile: False there, None now")]:
        with pytest.raises(ValueError, match="--overwrite") as err:
            train(**dict(args, **change))
        assert shown in str(err.value)


def test_a_short_run_warns_that_its_average_remembers_the_start():
    from zoo.train import _warn_short_ema

    with pytest.warns(UserWarning, match="initial weights still weigh 82%"):
        _warn_short_ema(dict(ema=0.999, epochs=2), 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_short_ema(dict(ema=0.9, epochs=2), 100)
        _warn_short_ema(dict(ema=0.0, epochs=2), 100)


def test_a_run_of_the_earlier_dmr_train_resumes(tmp_path):
    """run.json without the recipe keys and a checkpoint compiled as dmr-train compiled before
    (SGD, metrics=["accuracy"]): resumed, continued and finished."""
    from zoo.registry import create_model

    out = tmp_path / "old"
    (out / "checkpoints").mkdir(parents=True)
    old = dict(model="dmrnet_8_tiny", dataset="digits", epochs=2, batch_size=256, lr=0.1,
               weight_decay=1e-4, weight_decay_scope="all", schedule="paper",
               warmup_epochs=3.0, label_smoothing=0.0, zero_init_last_bn=False,
               precise_bn=False, seed=3, mixed_precision=False, init_weights=None,
               freeze_backbone=False, validation_split=None, skip_corrupt=False)
    (out / "run.json").write_text(json.dumps(old))
    reg = training.kernel_weight_decay(1e-4)
    net = create_model("dmrnet_8_tiny", classes=10, kernel_regularizer=reg,
                       bias_regularizer=reg)
    sched = training.learning_rate_schedule("paper", 0.1, 2, 5, warmup_epochs=3.0)
    net.compile(optimizer=keras.optimizers.SGD(sched, momentum=0.9, nesterov=True),
                loss=training.make_loss(0.0), metrics=["accuracy"])
    x, y = next(iter(data_lib.load("digits", batch_size=256, epochs=1)[0]))
    net.train_on_batch(x, y)
    net.save(out / "checkpoints" / "epoch-0001.keras")
    (out / "checkpoints" / "checkpoint.json").write_text(json.dumps(
        {"epoch": 1, "file": "epoch-0001.keras", "history": {"loss": [2.0], "accuracy": [0.2]}}))
    metrics = train(**TINY, epochs=2, batch_size=256, precise_bn=False, output=str(out))
    assert metrics["resumed_from_epoch"] == 1 and len(metrics["history"]["loss"]) == 2
    assert metrics["hparams"]["optimizer"] == "sgd" and metrics["hparams"]["ema"] == 0.0
    assert 0 <= metrics["test_accuracy"] <= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(optimizer="adam"), "Unknown `optimizer`: 'adam'. Valid values: 'sgd', 'adamw'"),
        (dict(ema=1.0), "`ema` is the momentum of the weights' moving average, in (0, 1)"),
        (dict(mixup=-0.2), "`mixup` must be a number >= 0. Received: mixup=-0.2"),
        (dict(cutmix="yes"), "`cutmix` must be a number >= 0"),
        (dict(randaugment=15), "`randaugment` is a magnitude in (0, 10]"),
        (dict(jit_compile="xla"), "Unknown `jit_compile`: 'xla'"),
        (dict(precise_bn="aug"), "Unknown `precise_bn`: 'aug'. Valid values: False, True, "
                                 "'plain', 'augmented'"),
        (dict(image_size=64), "digits images are 32x32: `image_size` must be None, 32 or"),
        (dict(image_size="big"), "`image_size` must be an integer >= 8, 'keep'"),
        (dict(dataset="imagenet2012", image_size="keep"), "imagenet2012's images are of many"),
    ],
)
def test_bad_recipe_values_fail_before_any_data_is_read(kwargs, message, tmp_path):
    args = dict(TINY, epochs=1, output=str(tmp_path / "x"))
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        train(**args)
    assert message in str(err.value)
    assert not (tmp_path / "x").exists()


def test_cli_flags_and_their_bare_values():
    p = build_parser()
    d = vars(p.parse_args([]))
    assert (d["optimizer"], d["mixup"], d["cutmix"], d["randaugment"], d["ema"],
            d["jit_compile"], d["image_size"], d["lr"]) == ("sgd", 0.0, 0.0, 0.0, 0.0, None,
                                                             None, None)
    bare = vars(p.parse_args(["--mixup", "--cutmix", "--randaugment", "--ema", "--jit-compile",
                              "--image-size", "keep", "--optimizer", "adamw"]))
    assert (bare["mixup"], bare["cutmix"], bare["randaugment"], bare["ema"],
            bare["jit_compile"], bare["image_size"]) == (0.2, 1.0, 9.0, 0.999, True, "keep")
    assert vars(p.parse_args(["--ema", "0.99", "--image-size", "64"]))["image_size"] == 64
    precise = {tuple(a): p.parse_args(a).precise_bn for a in (
        [], ["--precise-bn"], ["--precise-bn", "augmented"], ["--no-precise-bn"])}
    assert list(precise.values()) == [True, "plain", "augmented", False]
    with pytest.raises(SystemExit):
        p.parse_args(["--precise-bn", "aug"])


def _moving_statistics(model):
    """Every BatchNorm's moving mean and variance, as arrays."""
    return [w.numpy() for w in model.weights if "moving" in w.path]


@pytest.mark.parametrize("mode", ["augmented", "plain"])
def test_precise_bn_over_augmented_or_plain_batches(mode, tmp_path):
    """``precise_bn="augmented"`` sets each BN's statistics to precise BN over the training
    pipeline's batches (the crop and flip on), "plain" (the default, True in run.json) over the
    same images without augmentation: the saved model equals the last epoch's checkpoint with
    precise_batchnorm applied here to those batches, and not to the other ones."""
    out = tmp_path / mode
    metrics = train(**TINY, epochs=1, batch_size=128, precise_bn=mode, output=str(out))
    assert metrics["hparams"]["precise_bn"] == ("augmented" if mode == "augmented" else True)
    saved = keras.saving.load_model(out / "model.keras")

    def statistics(augmented):
        net = keras.saving.load_model(out / "checkpoints" / "epoch-0001.keras")
        batches = data_lib.load("digits", batch_size=128, seed=3, augment=augmented,
                                epochs=1)[0]
        assert training.precise_batchnorm(net, batches, max_batches=100) > 0
        return _moving_statistics(net)

    ours = _moving_statistics(saved)
    for augmented in (True, False):
        theirs = statistics(augmented)
        same = all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(ours, theirs))
        assert same == (augmented == (mode == "augmented")), augmented


def test_a_finished_run_is_finished_again_with_another_precise_bn(tmp_path, capsys):
    """precise_bn acts after the last epoch only: the same run with another value finishes
    again from its last checkpoint (the epochs are not trained again, the checkpoint is
    untouched), the same value again does nothing, and going back to the first value gives
    the first run's model and test accuracy."""
    out = tmp_path / "run"

    def moving(path):
        return _moving_statistics(keras.saving.load_model(path))

    first = train(**TINY, epochs=1, batch_size=128, output=str(out))
    first_stats = moving(out / "model.keras")
    ckpt = (out / "checkpoints" / "epoch-0001.keras").read_bytes()
    capsys.readouterr()
    other = train(**TINY, epochs=1, batch_size=128, precise_bn="augmented", output=str(out))
    said = capsys.readouterr().out
    assert "finishing it again from its last checkpoint (precise_bn: True there, " \
           "'augmented' now)" in said and "already hold 1 epochs" in said
    assert other["hparams"]["precise_bn"] == "augmented"
    assert json.loads((out / "run.json").read_text())["precise_bn"] == "augmented"
    assert other["history"] == first["history"] and other["train_time_s"] == first["train_time_s"]
    assert (out / "checkpoints" / "epoch-0001.keras").read_bytes() == ckpt
    assert not all(np.allclose(a, b) for a, b in zip(first_stats, moving(out / "model.keras")))
    assert train(**TINY, epochs=1, batch_size=128, precise_bn="augmented",
                 output=str(out)) == other
    back = train(**TINY, epochs=1, batch_size=128, precise_bn="plain", output=str(out))
    assert back["test_accuracy"] == first["test_accuracy"]
    for a, b in zip(first_stats, moving(out / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="holds another run"):  # a training setting: refused
        train(**TINY, epochs=1, batch_size=128, lr=0.05, output=str(out))
