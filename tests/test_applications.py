"""keras.applications-style functions, tested the way keras tests its applications."""

import keras
import numpy as np
import pytest

import zoo
from zoo import applications
from zoo.applications import APPLICATIONS, decode_predictions, function_name, preprocess_input

PRETRAINED = "dmrnet_8_tiny.digits"


def _feature_channels(name):
    info = zoo.model_info(name)
    last = (64 if info["form"] == "cifar" else 512 * 4) * info["width"]
    return int(last) * (info["num_branches"] if info["form"] == "imagenet2018" else 1)


def test_every_variant_has_a_function_with_keras_signature():
    assert set(APPLICATIONS) == {function_name(n) for n in zoo.list_models()}
    for expected in ("DMRNet56", "DMRNet32W4", "DMRNet50W4", "DILNet56", "ResNet110",
                     "DMRNet38K3", "DMRNet44ImageNet", "DMRNet50ImageNet", "ResNet101ImageNet"):
        fn = getattr(applications, expected)
        assert fn.__name__ == expected
        params = list(__import__("inspect").signature(fn).parameters)
        assert params == ["include_top", "weights", "input_tensor", "input_shape", "pooling",
                          "classes", "classifier_activation", "name", "include_preprocessing"]


@pytest.mark.parametrize("fn_name", sorted(APPLICATIONS))
def test_application_shapes(fn_name):
    fn = APPLICATIONS[fn_name]
    variant = next(n for n in zoo.list_models() if function_name(n) == fn_name)
    info = zoo.model_info(variant)
    side = info["input_shape"][0]
    # with top: the form's default classes, the variant's stable name
    model = fn()
    assert model.output_shape == (None, info["classes"]) and model.name == variant
    # without top, any input size, each pooling, input channels other than 3
    channels = _feature_channels(variant)
    feats = fn(include_top=False, input_shape=(None, None, 1), pooling="avg")
    assert feats.output_shape == (None, channels)
    # input_tensor and a custom class count
    inp = keras.Input((side, side, 3))
    model = fn(input_tensor=inp, classes=7, classifier_activation=None)
    assert model.inputs[0] is inp and model.output_shape == (None, 7)


def test_application_pooling_and_forward_pass():
    x = np.random.default_rng(0).random((2, 40, 40, 3)).astype("float32")
    for pooling, shape in ((None, (2, 10, 10, 64)), ("avg", (2, 64)), ("max", (2, 64))):
        model = applications.DMRNet14(include_top=False, pooling=pooling,
                                      input_shape=(None, None, 3))
        assert tuple(model(x).shape) == shape


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weights="imagenet"), "The `weights` argument should be None, a registered tag"),
        (dict(weights="/no/such/file.weights.h5"), "The `weights` file does not exist"),
        (dict(weights="digits", classes=5), "If using `weights='digits'` with "
                                            "`include_top=True`, `classes` should be 10"),
        (dict(weights="digits", classifier_activation="relu"),
         "Only `None` and `softmax` activations are allowed"),
        (dict(weights="digits", include_preprocessing=True, input_tensor=keras.Input((32, 32, 3))),
         "include_preprocessing and input_tensor together"),
        (dict(weights="digits", include_preprocessing={"mean": [0.5]}),
         "needs 'mean' and 'std'"),
        (dict(weights="digits", include_preprocessing={"mean": [0.5], "std": [0.2]}),
         "needs 3 means and 3 positive stds"),
        (dict(include_preprocessing="yes"), "`include_preprocessing` must be True, False, None"),
        (dict(input_shape=(2, 2, 3)), "smaller than form 'cifar' downsamples"),
        (dict(pooling="median", include_top=False), "`pooling` must be None, 'avg' or 'max'"),
    ],
)
def test_application_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        applications.DMRNet8Tiny(**kwargs)
    assert message in str(err.value)


def test_pretrained_weights_round_trip(tmp_path):
    model = applications.DMRNet8Tiny(weights="digits")
    x = np.random.default_rng(1).random((3, 32, 32, 3)).astype("float32")
    y = np.asarray(model(x, training=False))
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    # a weights file does not say how to preprocess: the model's own data config does
    again = applications.DMRNet8Tiny(weights=str(path),
                                     include_preprocessing=zoo.data_config(model))
    np.testing.assert_allclose(np.asarray(again(x, training=False)), y, atol=1e-6)
    with pytest.raises(ValueError, match="does not say how its training images were"):
        applications.DMRNet8Tiny(weights=str(path), include_preprocessing=True)
    fresh = applications.DMRNet8Tiny()
    assert not np.allclose(np.asarray(fresh(x, training=False)), y, atol=1e-3)
    # backbone only: same features, any input size
    backbone = applications.DMRNet8Tiny(weights="digits", include_top=False, pooling="avg",
                                        input_shape=(None, None, 3))
    feats = keras.Model(model.input, model.get_layer("avg_pool").output)(x, training=False)
    np.testing.assert_allclose(np.asarray(backbone(x, training=False)), np.asarray(feats),
                               atol=1e-6)


def test_create_model_adapts_the_head():
    src = zoo.create_model(PRETRAINED)
    model = zoo.create_model("dmrnet_8_tiny", weights="digits", classes=5)
    assert model.output_shape == (None, 5)
    np.testing.assert_array_equal(model.get_layer("stage3_block1").get_weights()[0],
                                  src.get_layer("stage3_block1").get_weights()[0])
    assert zoo.list_models("dmrnet_8*", pretrained=True) == [PRETRAINED]
    with pytest.raises(ValueError, match="contradicts"):
        zoo.create_model(PRETRAINED, weights="cifar10")


def test_preprocess_and_decode_with_the_weights_card():
    from dmr_keras.digits import load_digits_images

    images, labels = load_digits_images()
    entry = zoo.model_info("dmrnet_8_tiny")["weights"]["digits"]
    x = preprocess_input(images[:8] * 255.0, weights=PRETRAINED)
    mean = np.asarray(entry["preprocessing"]["mean"])
    std = np.asarray(entry["preprocessing"]["std"])
    np.testing.assert_allclose(x, (images[:8] - mean) / std, atol=1e-5)
    bare = zoo.create_model(PRETRAINED, include_preprocessing=False)
    preds = np.asarray(bare(x, training=False))
    # the default model carries the same preprocessing: raw pixels in, the same predictions
    raw = np.asarray(zoo.create_model(PRETRAINED)(images[:8] * 255.0, training=False))
    np.testing.assert_allclose(raw, preds, atol=1e-5)
    decoded = decode_predictions(preds, weights=PRETRAINED, top=3)
    assert len(decoded) == 8 and len(decoded[0]) == 3
    assert [d[0][0] for d in decoded] == list(np.argmax(preds, axis=1))
    assert decoded[0][0][2] >= decoded[0][1][2] >= decoded[0][2][2]
    assert np.mean(np.argmax(preds, axis=1) == labels[:8]) >= 0.75
    with pytest.raises(ValueError, match=r"shape \(samples, 10\)"):
        decode_predictions(preds[:, :5], weights=PRETRAINED)
