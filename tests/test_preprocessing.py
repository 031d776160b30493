"""zoo.preprocessing: preprocessing inside the model, data_config, other channel counts,
reset_head (issue 12, items 1 and 5)."""

import keras
import numpy as np
import pytest

import zoo
from zoo.applications import DMRNet8Tiny, digits_to_images, preprocess_input
from zoo.preprocessing import adapt_input_conv, model_preprocessing

KEY = "dmrnet_8_tiny.digits"


@pytest.fixture(scope="module")
def pixels():
    from sklearn.datasets import load_digits

    return digits_to_images(load_digits().data[:24])  # 0-255


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_raw_pixels_in_the_model_equal_normalised_input_outside(pixels):
    with_pre = zoo.create_model(KEY)  # default: on, with weights by tag
    bare = zoo.create_model(KEY, include_preprocessing=False)
    assert [layer.name for layer in with_pre.layers[1:3]] == ["rescaling", "normalization"]
    assert "normalization" not in [layer.name for layer in bare.layers]
    np.testing.assert_allclose(_predict(with_pre, pixels),
                               _predict(bare, preprocess_input(pixels, weights=KEY)), atol=1e-5)
    # the layers hold the manifest's numbers
    pre = zoo.model_info("dmrnet_8_tiny")["weights"]["digits"]["preprocessing"]
    np.testing.assert_allclose(model_preprocessing(with_pre)["mean"], pre["mean"], atol=1e-6)
    np.testing.assert_allclose(model_preprocessing(with_pre)["std"], pre["std"], atol=1e-6)
    # and predict right: at least 20 of 24 digits
    assert np.mean(_predict(with_pre, pixels).argmax(1) == np.arange(24) % 10) >= 20 / 24


def test_preprocessing_survives_a_keras_round_trip(pixels, tmp_path):
    model = DMRNet8Tiny(weights="digits")
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(_predict(again, pixels), _predict(model, pixels), atol=1e-6)
    assert zoo.data_config(again)["preprocessing_in_model"] is True


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="export needs TensorFlow")
def test_exports_of_a_model_with_preprocessing_take_raw_pixels(pixels, tmp_path):
    from zoo.export import export_model, run_exported

    model = DMRNet8Tiny(weights="digits")
    want = _predict(model, pixels[:4])
    for fmt, name in (("saved_model", "sm"), ("tflite", "m.tflite")):
        path = export_model(model, tmp_path / name, fmt)
        np.testing.assert_allclose(run_exported(path, fmt, pixels[:4]), want, atol=1e-5)


def test_include_preprocessing_choices():
    # off by default without weights; True without weights takes the form's dataset
    assert model_preprocessing(zoo.create_model("dmrnet_8_tiny")) is None
    cifar = model_preprocessing(zoo.create_model("dmrnet_8_tiny", include_preprocessing=True))
    np.testing.assert_allclose(cifar["mean"], [0.4914, 0.4822, 0.4465], atol=1e-6)
    given = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}
    m = zoo.create_model("dmrnet_8_tiny", include_preprocessing=given)
    np.testing.assert_allclose(model_preprocessing(m)["std"], given["std"], atol=1e-6)
    x = np.full((1, 32, 32, 3), 255.0, "float32")
    normalised = keras.Model(m.input, m.get_layer("normalization").output)
    np.testing.assert_allclose(_predict(normalised, x)[0, 0, 0], [2.0, 1.0, 0.5], atol=1e-6)
    # fine-tuning with weights by tag keeps the weights' preprocessing
    five = zoo.create_model(KEY.split(".")[0], weights="digits", classes=5)
    assert model_preprocessing(five) == model_preprocessing(zoo.create_model(KEY))
    with pytest.raises(ValueError, match="saved model: include_preprocessing cannot apply"):
        zoo.create_model("x.keras", include_preprocessing=True)


def test_data_config_for_names_keys_and_models():
    cfg = zoo.data_config("dmrnet_20.cifar10")
    assert cfg["input_size"] == (32, 32, 3) and cfg["crop_pct"] == 1.0
    assert cfg["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    assert cfg["preprocessing_in_model"] is False and "dmrnet_20.cifar10" in cfg["source"]
    digits = zoo.data_config(KEY)
    assert digits["mean"] == pytest.approx([0.3054] * 3, abs=1e-4)
    # a name without a tag: its first weights; a name without weights: the form's default
    assert zoo.data_config("dmrnet_8_tiny")["mean"] == digits["mean"]
    imagenet = zoo.data_config("dmrnet_50_imagenet")
    assert imagenet["input_size"] == (224, 224, 3) and imagenet["crop_pct"] == 0.875
    assert imagenet["mean"] == pytest.approx([0.485, 0.456, 0.406])
    model = zoo.create_model("dmrnet_8_tiny", include_preprocessing={"mean": [0.1] * 3,
                                                                     "std": [0.2] * 3},
                             input_shape=(40, 40, 3))
    cfg = zoo.data_config(model)
    assert cfg["input_size"] == (40, 40, 3) and cfg["mean"] == pytest.approx([0.1] * 3)
    assert cfg["preprocessing_in_model"] is True
    anonymous = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)], name="mine")
    with pytest.raises(ValueError, match="'mine' is not a registered model"):
        zoo.data_config(anonymous)
    with pytest.raises(ValueError, match="Unknown weights 'dmrnet_20.imagenet'"):
        zoo.data_config("dmrnet_20.imagenet")


def test_adapt_input_conv_rules():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 4))
    np.testing.assert_allclose(adapt_input_conv(kernel, 1)[:, :, 0], kernel.sum(axis=2))
    five = adapt_input_conv(kernel, 5)
    assert five.shape == (3, 3, 5, 4)
    np.testing.assert_allclose(five[:, :, 3], kernel[:, :, 0] * 3 / 5)
    np.testing.assert_allclose(five[:, :, 4], kernel[:, :, 1] * 3 / 5)
    np.testing.assert_array_equal(adapt_input_conv(kernel, 3), kernel)


def test_one_channel_pretrained_equals_the_three_channel_gray_copy(pixels):
    gray = zoo.create_model("dmrnet_8_tiny", weights="digits", in_chans=1,
                            include_preprocessing=False)
    rgb = zoo.create_model(KEY, include_preprocessing=False)
    assert gray.input_shape == (None, 32, 32, 1)
    x1 = preprocess_input(pixels, weights=KEY)[..., :1]  # the digits are gray: channels equal
    np.testing.assert_allclose(_predict(gray, x1), _predict(rgb, np.repeat(x1, 3, axis=-1)),
                               atol=1e-4)
    # with preprocessing inside: one channel, the average of the weights' statistics
    gray_pre = zoo.create_model(KEY, in_chans=1)
    assert model_preprocessing(gray_pre)["mean"] == pytest.approx([0.3054], abs=1e-4)
    np.testing.assert_allclose(_predict(gray_pre, pixels[..., :1]),
                               _predict(zoo.create_model(KEY), pixels), atol=1e-4)
    four = DMRNet8Tiny(weights="digits", input_shape=(32, 32, 4), include_preprocessing=False)
    kernel = rgb.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_allclose(four.get_layer("stem_conv").get_weights()[0][:, :, 3],
                               kernel[:, :, 0] * 3 / 4, atol=1e-7)
    with pytest.raises(ValueError, match="in_chans=1 contradicts input_shape"):
        zoo.create_model("dmrnet_8_tiny", in_chans=1, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="`in_chans` must be an integer >= 1"):
        zoo.create_model("dmrnet_8_tiny", in_chans=0)


def test_reset_head_keeps_the_backbone(pixels):
    model = zoo.create_model(KEY)
    five = zoo.reset_head(model, 5)
    assert five.output_shape == (None, 5)
    assert five.get_layer("predictions").get_config()["activation"] == "softmax"
    pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
    features = zoo.reset_head(model, 0)
    np.testing.assert_allclose(_predict(features, pixels), _predict(pooled, pixels), atol=1e-6)
    # shared layers: the backbone is the same object, the head new
    assert five.get_layer("stage3_block1") is model.get_layer("stage3_block1")
    assert five.get_layer("predictions") is not model.get_layer("predictions")
    logits = zoo.reset_head(model, 3, classifier_activation=None)
    assert logits.get_layer("predictions").get_config()["activation"] == "linear"
    with pytest.raises(ValueError, match="has no 'avg_pool' layer"):
        zoo.reset_head(zoo.create_model("dmrnet_8_tiny", include_top=False), 3)
    with pytest.raises(ValueError, match="`classes` must be an integer >= 0"):
        zoo.reset_head(model, -1)


def test_features_only_through_create_model():
    feats = zoo.create_model("dmrnet_8_tiny", weights="digits", features_only=True,
                             out_indices=(1, 3), stream_merge="concat",
                             include_preprocessing=False)
    assert [i["index"] for i in feats.feature_info] == [1, 3]
    full = zoo.create_model(KEY, include_preprocessing=False)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    last = keras.Model(full.input, full.get_layer("head_relu").output)
    outputs = [keras.ops.convert_to_numpy(t) for t in feats(x, training=False)]
    np.testing.assert_allclose(outputs[1], _predict(last, x), atol=1e-5)
    with pytest.raises(ValueError, match="`out_indices` applies to features_only=True only"):
        zoo.create_model("dmrnet_8_tiny", out_indices=(1,))


def test_dmr_eval_feeds_pixels_to_a_model_with_preprocessing_inside(tmp_path):
    """zoo.evaluate normalises the data for a bare network; a saved model that carries its own
    preprocessing gets the pixels back, so both score the same."""
    from zoo.evaluate import evaluate

    path = tmp_path / "with_pre.keras"
    zoo.create_model(KEY).save(path)
    bare = evaluate(KEY)
    inside = evaluate(str(path), dataset="digits")
    assert inside["images"] == bare["images"] == 360
    assert inside["top1"] == pytest.approx(bare["top1"], abs=1e-6)
    assert inside["loss"] == pytest.approx(bare["loss"], abs=1e-4)
