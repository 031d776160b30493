"""Feature extraction: `features_only` shapes and `feature_info`, equality with the network's own
tensors, keras-hub pyramid outputs, argument errors and the `.keras` round trip."""

import keras
import numpy as np
import pytest

from dmr_keras import build_model, feature_info, features_model, pyramid_outputs, stage_outputs


def _run(model, x):
    return [keras.ops.convert_to_numpy(y) for y in model(x, training=False)]


def _images(side, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, side, side, 3)).astype("float32")


def _check(features, x, expected):
    """`expected`: (num_chs, reduction, module, height) per level, computed by hand."""
    info = [
        {"num_chs": c, "reduction": r, "module": module, "index": i}
        for i, (c, r, module, _) in enumerate(expected)
    ]
    assert features.feature_info == info
    assert feature_info(features) == info
    ys = _run(features, x)
    assert [y.shape for y in ys] == [(len(x), h, h, c) for c, _, _, h in expected]


# CIFAR, blocks (2, 1, 1), width 1: 16, 32, 64 channels per stream; stride 2 at stages 2 and 3.
# The last stage leaves through the head (`head_relu`), merged by the network: 64 channels.
CIFAR_CASES = {
    "dmrnet_k2_mean": (
        dict(mapping="merge_and_run", num_branches=2), "mean",
        [(16, 1, "stem_relu", 32), (16, 1, "stage1_merge", 32), (32, 2, "stage2_merge", 16),
         (64, 4, "head_relu", 8)],
    ),
    "dmrnet_k3_concat": (
        dict(mapping="merge_and_run", num_branches=3), "concat",
        [(16, 1, "stem_relu", 32), (48, 1, "stage1_merge", 32), (96, 2, "stage2_merge", 16),
         (64, 4, "head_relu", 8)],
    ),
    "resnet_k1": (  # one stream: every stage passes through from its last block
        dict(mapping="resnet"), "concat",
        [(16, 1, "stem_relu", 32), (16, 1, "stage1_block2", 32), (32, 2, "stage2_block1", 16),
         (64, 4, "head_relu", 8)],
    ),
    "dilnet_k2": (  # identity mapping: K branches on one stream
        dict(mapping="identity", num_branches=2), "sum",
        [(16, 1, "stem_relu", 32), (16, 1, "stage1_block2", 32), (32, 2, "stage2_block1", 16),
         (64, 4, "head_relu", 8)],
    ),
}


@pytest.mark.parametrize("case", sorted(CIFAR_CASES))
def test_features_only_shapes_and_feature_info_cifar(case):
    kwargs, stream_merge, expected = CIFAR_CASES[case]
    model = build_model(blocks=(2, 1, 1), input_shape=(32, 32, 3), **kwargs)
    features = features_model(model, stream_merge=stream_merge)
    assert features.name == f"{model.name}_features"
    _check(features, _images(32), expected)
    assert sorted(features.pyramid_outputs) == ["P0", "P1", "P2"]


# ImageNet forms, blocks (1, 1, 1, 1), width 0.125: stem 8 channels; bottleneck stages 32, 64,
# 128, 256 channels per stream. 64x64 input: stem conv 32x32 (reduction 2); the 2016 stem pool
# is unpadded (32 -> 15), the 2018 one padded (32 -> 16). The 2018 stem is a bare conv and its
# head concatenates the K = 2 streams (512 channels).
IMAGENET_CASES = {
    "imagenet2016": (
        "mean",
        [(8, 2, "stem_relu", 32), (32, 4, "stage1_merge", 15), (64, 8, "stage2_merge", 8),
         (128, 16, "stage3_merge", 4), (256, 32, "head_relu", 2)],
    ),
    "imagenet2018": (
        "concat",
        [(8, 2, "stem_conv", 32), (64, 4, "stage1_merge", 16), (128, 8, "stage2_merge", 8),
         (256, 16, "stage3_merge", 4), (512, 32, "head_concat", 2)],
    ),
}


@pytest.mark.parametrize("form", sorted(IMAGENET_CASES))
def test_features_only_shapes_and_feature_info_imagenet(form):
    stream_merge, expected = IMAGENET_CASES[form]
    model = build_model(form=form, blocks=(1, 1, 1, 1), width=0.125, input_shape=(64, 64, 3))
    features = features_model(model, stream_merge=stream_merge)
    _check(features, _images(64), expected)
    # keras-hub's convention: "Pn" is 2^n times smaller than the input; stages only.
    assert list(features.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    assert list(features.pyramid_outputs.values()) == features.outputs[1:]
    pyramid = pyramid_outputs(model, stream_merge=stream_merge)
    assert {k: tuple(v.shape[1:]) for k, v in pyramid.items()} == {
        f"P{i + 1}": (h, h, c) for i, (c, _, _, h) in enumerate(expected) if i > 0
    }
    backbone = keras.Model(model.input, pyramid)  # as keras-hub uses a backbone's pyramid
    assert tuple(backbone(_images(64, batch=1))["P5"].shape) == (1, 2, 2, expected[-1][0])


def test_features_equal_the_network_tensors_and_share_its_weights():
    model = build_model(blocks=(1, 1, 1), num_branches=2, input_shape=(32, 32, 3))
    # Random kernels, so that the K streams differ and a wrong merge cannot pass.
    rng = np.random.default_rng(1)
    for w in model.weights:
        if w.path.endswith("kernel"):
            w.assign(rng.normal(0.0, 0.1, w.shape).astype("float32"))
    stages = stage_outputs(model)
    reference = keras.Model(
        model.input,
        [model.get_layer("stem_relu").output, stages["stage1"], stages["stage2"],
         stages["stage3"]],
    )
    x = _images(32)
    stem, stage1, stage2, stage3 = reference(x, training=False)
    stem, stage3 = keras.ops.convert_to_numpy(stem), keras.ops.convert_to_numpy(stage3)
    streams = [[keras.ops.convert_to_numpy(t) for t in s] for s in (stage1, stage2)]
    merge = {
        "mean": lambda s: (s[0] + s[1]) / 2,
        "sum": lambda s: s[0] + s[1],
        "concat": lambda s: np.concatenate(s, axis=-1),
    }
    for stream_merge, fn in merge.items():
        ys = _run(features_model(model, stream_merge=stream_merge), x)
        np.testing.assert_allclose(ys[0], stem, rtol=1e-6, atol=1e-6)
        for y, s in zip(ys[1:3], streams):
            np.testing.assert_allclose(y, fn(s), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ys[3], stage3, rtol=1e-6, atol=1e-6)
        assert not np.allclose(streams[0][0], streams[0][1])  # the merge is not a no-op here

    features = features_model(model)
    assert features.get_layer("stem_conv") is model.get_layer("stem_conv")
    assert features.get_layer("stage3_block1") is model.get_layer("stage3_block1")
    head = {w.path for w in model.get_layer("predictions").weights}
    assert {w.path for w in features.weights} == {w.path for w in model.weights} - head


def test_out_indices_select_levels_in_network_order():
    model = build_model(blocks=(1, 1, 1), num_branches=2, input_shape=(32, 32, 3))
    features = features_model(model, out_indices=[-1, 0], name="fpn")
    assert features.name == "fpn"
    assert [f["index"] for f in features.feature_info] == [0, 3]
    assert [f["module"] for f in features.feature_info] == ["stem_relu", "head_relu"]
    assert list(features.pyramid_outputs) == ["P2"]  # the stem is not a pyramid level
    # A truncated graph: only the stem and stage 1.
    shallow = features_model(model, out_indices=(0, 1))
    assert "stage2_block1" not in [layer.name for layer in shallow.layers]
    assert [f["module"] for f in feature_info(shallow)] == ["stem_relu", "stage1_merge"]
    # A headless network's one output is described as its last stage.
    headless = build_model(blocks=(1, 1, 1), include_top=False, input_shape=(32, 32, 3))
    assert feature_info(headless) == [
        {"num_chs": 64, "reduction": 4, "module": "head_relu", "index": 3}
    ]


@pytest.mark.parametrize(
    "out_indices, match",
    [
        ((4,), r"out of range.*Received: out_indices=\(4,\)"),
        ((-5,), r"out of range.*Received: out_indices=\(-5,\)"),
        ((1, 1), r"level 1 twice"),
        ((1, -3), r"level 1 twice"),  # -3 is level 1 of 4
        ((1.0,), r"1\.0 is not one"),
        ((True,), r"True is not one"),
        ("12", r"Received: out_indices='12'"),
        ((), r"non-empty"),
        (2, r"Received: out_indices=2"),
    ],
)
def test_features_model_rejects_bad_out_indices(out_indices, match):
    model = build_model(blocks=(1, 1, 1), input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=match):
        features_model(model, out_indices=out_indices)


def test_feature_errors_name_the_bad_value():
    model = build_model(blocks=(1, 1, 1), input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"Unknown `stream_merge`: 'max'"):
        features_model(model, stream_merge="max")
    with pytest.raises(ValueError, match=r"Unknown `stream_merge`: 'add'"):
        pyramid_outputs(model, stream_merge="add")
    with pytest.raises(ValueError, match=r"layer 'predictions'.*not a feature level"):
        feature_info(model)

    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
    no_stages = keras.Model(inputs, conv, name="plain")
    with pytest.raises(ValueError, match=r"'plain' has no layers named stage\{s\}_block\{b\}"):
        features_model(no_stages)
    no_stem = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(inputs), name="bare")
    with pytest.raises(ValueError, match=r"'bare' has no stem layer"):
        features_model(no_stem)
    with pytest.raises(ValueError, match=r"must be a keras.Model.*Received: model='dmrnet'"):
        features_model("dmrnet")


def test_features_keras_round_trip(tmp_path):
    model = build_model(form="imagenet2018", blocks=(1, 1, 1, 1), width=0.125,
                        input_shape=(64, 64, 3))
    features = features_model(model, out_indices=(0, 2, 4), stream_merge="sum")
    x = _images(64)
    ys = _run(features, x)
    path = tmp_path / "features.keras"
    features.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    for y, y_loaded in zip(ys, _run(loaded, x)):
        np.testing.assert_allclose(y_loaded, y, rtol=1e-5, atol=1e-5)
    # The attributes do not survive saving; the functions recompute them from the graph.
    assert feature_info(loaded) == features.feature_info
    assert [f["module"] for f in features.feature_info] == [
        "stem_conv", "stage2_merge", "head_concat"
    ]
    pyramid = pyramid_outputs(loaded, stream_merge="sum")
    assert pyramid["P3"] is loaded.outputs[1]  # its own merge layer, reused
    assert list(pyramid) == ["P2", "P3", "P4", "P5"]
