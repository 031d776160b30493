"""The builder: forms, keras.applications arguments, feature extraction, mixed precision, errors."""

import keras
import numpy as np
import pytest

from dmr_keras import build_model, stage_outputs
from dmr_keras.models import IMAGENET_BLOCKS

TINY = dict(depth=8, width=0.5)  # one block per stage, 8-16-32 channels


def test_cifar_form_structure():
    model = build_model(depth=14, width=1, num_branches=2)
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["input", "stem_conv", "stem_bn", "stem_relu"]
    assert [n for n in names if n.startswith("stage")] == [
        f"stage{s}_block{b}" for s in (1, 2, 3) for b in (1, 2)
    ]
    assert names[-2:] == ["avg_pool", "predictions"]
    assert model.output_shape == (None, 10)
    # Stage transitions get one projection per stream; other blocks none.
    assert len(model.get_layer("stage2_block1").shortcuts) == 2
    assert model.get_layer("stage1_block1").shortcuts == []
    assert model.get_layer("stage3_block2").return_parts
    assert names[-4:-2] == ["head_add", "head_relu"]


def test_imagenet_forms_structure():
    m16 = build_model(form="imagenet2016", blocks=(1, 1, 1, 1), width=0.125,
                      input_shape=(64, 64, 3))
    # MXNet pads the 7x7/2 stem by 3 and does not pad the pool: 64 -> 32 -> 15.
    assert m16.get_layer("stem_pool").output.shape == (None, 15, 15, 8)
    assert len(m16.get_layer("stage1_block1").shortcuts) == 2  # 8 -> 32 channels: projected
    assert m16.get_layer("stage4_block1").output[0].shape == (None, 2, 2, 256)  # parts
    assert m16.get_layer("stage4_block1").strides == 2
    m18 = build_model(form="imagenet2018", blocks=(1, 1, 1, 2), width=0.125,
                      input_shape=(64, 64, 3), include_top=False)
    assert "stem_bn" not in [layer.name for layer in m18.layers]
    assert not m18.get_layer("stem_conv").use_bias
    assert "stem_relu" not in [layer.name for layer in m18.layers]
    for s in (1, 2, 3, 4):
        assert m18.get_layer(f"stage{s}_block1").shortcut == "none"
    assert m18.get_layer("stage4_block2").shortcuts == []
    assert m18.output_shape == (None, 2, 2, 2 * 256)  # two streams concatenated
    assert IMAGENET_BLOCKS["imagenet2018"][50] == (1, 2, 11, 2)


@pytest.mark.parametrize("mapping, k, streams", [("merge_and_run", 3, 3), ("identity", 3, 1),
                                                 ("resnet", 1, 1)])
def test_mappings_and_stage_outputs(mapping, k, streams):
    model = build_model(**TINY, mapping=mapping, num_branches=k, input_shape=(None, None, 3))
    feats = stage_outputs(model)
    assert list(feats) == ["stage1", "stage2", "stage3"]
    s1 = feats["stage1"]
    assert (len(s1) if isinstance(s1, list) else 1) == streams
    extractor = keras.Model(model.input, feats)
    out = extractor.predict(np.zeros((2, 16, 16, 3), "float32"), verbose=0)
    s3 = out["stage3"]
    assert s3.shape == (2, 4, 4, 32)


@pytest.mark.parametrize("pooling, shape", [(None, (None, 8, 8, 32)), ("avg", (None, 32)),
                                            ("max", (None, 32))])
def test_include_top_false_pooling(pooling, shape):
    model = build_model(**TINY, include_top=False, pooling=pooling)
    assert model.output_shape == shape
    assert model.layers[-1].name == {None: "head_relu", "avg": "avg_pool",
                                     "max": "max_pool"}[pooling]


def test_variable_input_size_and_classifier_options():
    model = build_model(**TINY, input_shape=(None, None, 1), classes=7, classifier_activation=None)
    for size in (16, 40):
        logits = model.predict(np.random.rand(3, size, size, 1).astype("float32"), verbose=0)
        assert logits.shape == (3, 7)
        assert not np.allclose(logits.sum(-1), 1.0)  # logits, not probabilities
    probs = build_model(**TINY, classes=4)(np.random.rand(2, 32, 32, 3).astype("float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probs).sum(-1), 1.0, rtol=1e-5)


def test_input_tensor():
    inp = keras.Input((24, 24, 3), name="images")
    model = build_model(**TINY, input_tensor=inp)
    assert model.inputs[0] is inp
    assert model.input_shape == (None, 24, 24, 3)
    # A tensor produced by other layers: the model starts at that graph's source input.
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    model2 = build_model(**TINY, input_tensor=x)
    assert model2.inputs[0] is inp
    assert model2.get_layer("rescaling") is not None


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_gives_float32_logits(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_model(**TINY)
        block = model.get_layer("stage2_block1")
        assert block.compute_dtype == policy.split("_")[1]
        assert block.branches[0].convs[0].kernel.dtype == "float32"
        out = model(np.random.rand(2, 32, 32, 3).astype("float32"), training=False)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))
    finally:
        keras.config.set_dtype_policy(previous)


def test_default_name_and_depth():
    assert build_model(depth=20).name == "dmrnet_20"
    assert build_model(depth=20, mapping="resnet").name == "resnet_20"
    assert build_model(blocks=(1, 1, 1), mapping="identity").name == "dilnet_8"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=57), "No number of blocks per stage gives depth=57 for the CIFAR form"),
        (dict(depth=2), "depth=2"),
        (dict(depth=45, form="imagenet2016"), "Valid depths: [26, 29, 44, 50, 101, 152]"),
        (dict(depth=44, form="imagenet2018"), "Valid depths: [50]"),
        (dict(depth=20, num_branches=0), "`num_branches` must be an integer >= 1. Received: "
                                         "num_branches=0"),
        (dict(depth=20, width=0), "`width` must be a positive number. Received: width=0"),
        (dict(depth=20, width=-2), "Received: width=-2"),
        (dict(depth=20, width=0.3), "non-integer channel counts"),
        (dict(depth=20, mapping="cross"), "Unknown `mapping`: 'cross'. Valid values: "
                                          "'merge_and_run', 'identity', 'resnet'"),
        (dict(depth=20, block_type="dense"), "Unknown `block_type`: 'dense'"),
        (dict(depth=20, form="svhn"), "Unknown `form`: 'svhn'. Valid values: 'cifar'"),
        (dict(depth=20, mapping="resnet", num_branches=2), "`num_branches` must be 1"),
        (dict(depth=20, input_shape=(2, 2, 3)), "Input size 2x2 is smaller than form 'cifar' "
                                                "downsamples (total stride 4)"),
        (dict(depth=50, form="imagenet2018", input_shape=(16, 16, 3)), "at least 32x32"),
        (dict(depth=20, input_shape=(32, 32)), "`input_shape` must be (height, width, channels)"),
        (dict(depth=20, input_shape=(32, 32, None)), "channel count"),
        (dict(depth=20, pooling="mean"), "`pooling` must be None, 'avg' or 'max'. Received: "
                                         "pooling='mean'"),
        (dict(depth=20, blocks=(1, 1)), "Form 'cifar' has 3 stages"),
        (dict(depth=20, blocks=(1, 1, 1)), "does not match blocks=(1, 1, 1)"),
        (dict(), "Pass `depth`"),
        (dict(depth=20, classes=0), "`classes` must be an integer >= 1"),
    ],
)
def test_builder_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        build_model(**kwargs)
    assert message in str(err.value)


def test_channels_first_is_a_clear_error():
    keras.config.set_image_data_format("channels_first")
    try:
        with pytest.raises(ValueError, match="channels-last"):
            build_model(depth=8)
    finally:
        keras.config.set_image_data_format("channels_last")


def test_initialisation_is_the_reference_codes():
    """fusenet's train_model.py: convs Xavier(gaussian, in, 2) = N(0, 2/fan_in), untruncated;
    the classifier Xavier(uniform, in, 1) = U(+-sqrt(3/fan_in)); BN gamma 1, beta 0."""
    keras.utils.set_random_seed(0)
    model = build_model(depth=20, width=2)
    kernel = np.asarray(model.get_layer("stage3_block2").branches[0].convs[1].kernel)
    fan_in = 3 * 3 * kernel.shape[2]
    sigma = np.sqrt(2 / fan_in)
    assert abs(kernel.std() / sigma - 1) < 0.02
    assert np.mean(np.abs(kernel) > 2 * sigma) > 0.03  # a truncated normal has none beyond 2σ
    dense = np.asarray(model.get_layer("predictions").kernel)
    bound = np.sqrt(3 / dense.shape[0])
    assert np.abs(dense).max() <= bound and np.abs(dense).max() > 0.9 * bound
    assert abs(dense.std() / (bound / np.sqrt(3)) - 1) < 0.1
    bn = model.get_layer("stage1_block1").branches[0].bns[1]
    assert np.all(np.asarray(bn.gamma) == 1) and np.all(np.asarray(bn.beta) == 0)
