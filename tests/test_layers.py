"""Layers: the mapping's idempotence, a literal reference of the block, argument errors."""

import keras
import numpy as np
import pytest
from keras import ops

from dmr_keras.layers import (
    MergeAndRun,
    MergeAndRunBlock,
    ProjectionShortcut,
    ResidualBranch,
    merge_and_run_matrix,
)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_mapping_matrix_is_idempotent_and_matches_layer(k):
    c = 3
    m = merge_and_run_matrix(k, c)
    assert m.shape == (k * c, k * c)
    np.testing.assert_allclose(m @ m, m, atol=1e-12)
    assert not np.allclose(m, np.eye(k * c))  # not trivially idempotent

    # The layer applies exactly M to the stacked per-pixel channel vectors.
    rng = np.random.default_rng(k)
    streams = [rng.standard_normal((2, 4, 4, c)).astype("float32") for _ in range(k)]
    out = MergeAndRun()(streams)
    stacked = np.concatenate(streams, axis=-1)  # (..., K*C)
    expected = stacked @ m.T
    np.testing.assert_allclose(np.concatenate([_np(o) for o in out], -1), expected, atol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_skip_mapping_twice_equals_once(k):
    rng = np.random.default_rng(0)
    streams = [rng.standard_normal((2, 5, 5, 4)).astype("float32") for _ in range(k)]
    layer = MergeAndRun()
    once = layer(streams)
    twice = layer(once)
    for a, b in zip(once, twice):
        np.testing.assert_allclose(_np(a), _np(b), atol=1e-6)
    assert not np.allclose(_np(once[0]), streams[0])


def _switch_off_branches(block):
    for branch in block.branches:
        bn = branch.bns[-1]
        bn.gamma.assign(ops.zeros_like(bn.gamma))
        bn.beta.assign(ops.zeros_like(bn.beta))


@pytest.mark.parametrize("k", [2, 3])
def test_block_with_branches_off_is_idempotent(k):
    block = MergeAndRunBlock(6, num_branches=k)
    rng = np.random.default_rng(1)
    streams = [np.maximum(rng.standard_normal((2, 6, 6, 6)), 0).astype("float32") for _ in range(k)]
    block(streams)  # build
    _switch_off_branches(block)
    once = block(streams, training=False)
    twice = block(once, training=False)
    mean = np.mean(streams, axis=0)
    for a, b in zip(once, twice):
        np.testing.assert_allclose(_np(a), mean, atol=1e-5)
        np.testing.assert_allclose(_np(b), _np(a), atol=1e-5)


# ---- a literal reference of the block, written plainly ---------------------------------------

def _randomize(layer, rng):
    """Non-trivial weights and BN statistics, so the comparison cannot pass by accident."""
    for w in layer.weights:
        shape = tuple(w.shape)
        if "moving_variance" in w.path or "gamma" in w.path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.standard_normal(shape) * 0.3
        w.assign(value.astype("float32"))


def _conv_bn(x, conv, bn, strides):
    # Pad k // 2 on every side, as MXNet / PyTorch (Keras 'same' differs at stride 2).
    p = conv.kernel.shape[0] // 2
    x = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    y = _np(ops.conv(x, conv.kernel, strides=strides, padding="valid"))
    g, b, mu, var = (_np(v) for v in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    return g * (y - mu) / np.sqrt(var + bn.epsilon) + b


def _reference_branch(x, branch, strides):
    c1, c2 = branch.convs
    b1, b2 = branch.bns
    h = np.maximum(_conv_bn(x, c1, b1, strides), 0)
    return _conv_bn(h, c2, b2, 1)


def _reference_block(streams, block, strides):
    """Per stream: average of the (projected) inputs + that stream's branch, then ReLU."""
    if block.shortcuts:
        skips = [_conv_bn(x, sc.convs[0], sc.bns[0], strides)
                 for x, sc in zip(streams, block.shortcuts)]
    else:
        skips = streams
    average = sum(skips) / len(skips)
    return [np.maximum(average + _reference_branch(x, br, strides), 0)
            for x, br in zip(streams, block.branches)]


@pytest.mark.parametrize(
    "k, strides, in_channels", [(1, 1, 4), (2, 1, 4), (3, 1, 4), (2, 2, 3), (3, 2, 4)]
)
def test_block_matches_literal_reference(k, strides, in_channels):
    rng = np.random.default_rng(10 * k + strides)
    streams = [rng.standard_normal((2, 8, 8, in_channels)).astype("float32") for _ in range(k)]
    block = MergeAndRunBlock(4, num_branches=k, strides=strides)
    block(streams if k > 1 else streams[0])
    assert bool(block.shortcuts) == (strides == 2 or in_channels != 4)
    _randomize(block, rng)
    got = block(streams if k > 1 else streams[0], training=False)
    got = [got] if k == 1 else got
    expected = _reference_block(streams, block, strides)
    assert len(got) == k
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(_np(g), e, rtol=1e-4, atol=1e-4)


def test_identity_mapping_matches_literal_reference():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 6, 5)).astype("float32")
    block = MergeAndRunBlock(5, num_branches=3, mapping="identity")
    block(x)
    _randomize(block, rng)
    got = _np(block(x, training=False))
    expected = np.maximum(x + sum(_reference_branch(x, b, 1) for b in block.branches), 0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mapping, k", [("merge_and_run", 2), ("merge_and_run", 3),
                                        ("identity", 3), ("resnet", 1)])
def test_return_parts(mapping, k):
    rng = np.random.default_rng(4)
    n_in = k if mapping == "merge_and_run" else 1
    streams = [rng.standard_normal((1, 4, 4, 4)).astype("float32") for _ in range(n_in)]
    base = MergeAndRunBlock(4, num_branches=k, mapping=mapping)
    base(streams if n_in > 1 else streams[0])
    _randomize(base, rng)
    block = MergeAndRunBlock(4, num_branches=k, mapping=mapping, return_parts=True)
    parts = block(streams if n_in > 1 else streams[0])
    block.set_weights(base.get_weights())
    parts = [_np(p) for p in block(streams if n_in > 1 else streams[0], training=False)]
    inputs = streams if n_in > 1 else streams * k
    residuals = [_reference_branch(x, b, 1) for x, b in zip(inputs, base.branches)]
    assert len(parts) == k + 1
    np.testing.assert_allclose(parts[0], sum(streams) / n_in, rtol=1e-5, atol=1e-5)
    for got, expected in zip(parts[1:], residuals):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_bottleneck_branch_shapes_and_names():
    branch = ResidualBranch(16, block_type="bottleneck", strides=2, name="branch1")
    y = branch(np.zeros((1, 8, 8, 8), "float32"))
    assert tuple(y.shape) == (1, 4, 4, 16)
    assert [tuple(c.kernel.shape) for c in branch.convs] == [(1, 1, 8, 4), (3, 3, 4, 4),
                                                             (1, 1, 4, 16)]
    assert branch.convs[1].strides == (2, 2)
    assert [w.path for w in branch.weights][0] == "branch1/conv1/kernel"


def test_layer_config_round_trip():
    for layer in [MergeAndRunBlock(8, 3, block_type="bottleneck", strides=2, return_parts=True,
                                   kernel_regularizer="l2", bias_regularizer="l2",
                                   zero_init_last_bn=True, name="b"),
                  ResidualBranch(8, strides=2), ProjectionShortcut(8, 2), MergeAndRun()]:
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(filters=8, num_branches=0), "`num_branches` must be an integer >= 1. Received: "
                                          "num_branches=0"),
        (dict(filters=0), "`filters` must be an integer >= 1. Received: filters=0"),
        (dict(filters=8, mapping="cross"), "Unknown `mapping`: 'cross'. Valid values: "
                                           "'merge_and_run', 'identity', 'resnet'"),
        (dict(filters=8, block_type="wide"), "Unknown `block_type`: 'wide'. Valid values: "
                                             "'basic', 'bottleneck'"),
        (dict(filters=8, mapping="resnet", num_branches=2), "`num_branches` must be 1"),
        (dict(filters=10, block_type="bottleneck"), "divisible by `expansion`=4"),
    ],
)
def test_layer_argument_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        MergeAndRunBlock(**kwargs)
    assert message in str(err.value)


def test_wrong_stream_count_is_a_clear_error():
    block = MergeAndRunBlock(4, num_branches=3, name="blk")
    x = keras.Input((8, 8, 4))
    with pytest.raises(ValueError, match="takes one tensor or a list of 3; received 2"):
        block([x, x])


def test_branches_and_convolutions_start_from_their_own_weights():
    """Every convolution of a block draws its own initial kernel. One shared unseeded Keras
    initializer returns the same values on every call, which started the K branches equal:
    then the K streams, fed the same stem output, stay equal for the whole of training and a
    DMRNet trains as a ResNet. Same seed, same model: reproducibility is kept."""
    from dmr_keras.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(blocks=(2, 1, 1), num_branches=3)
    for name in ("stage1_block1", "stage2_block1"):
        kernels = {w.path: np.asarray(w) for w in model.get_layer(name).weights
                   if w.path.endswith("kernel")}
        assert len(kernels) == (9 if name == "stage2_block1" else 6)  # 3x2 convs (+3 shortcuts)
        values = list(kernels.items())
        for i, (p, a) in enumerate(values):
            for q, b in values[i + 1:]:
                assert a.shape != b.shape or not np.allclose(a, b), (p, q)
    # the streams leaving the first block differ (they all enter it as the stem's output)
    streams = keras.Model(model.input, model.get_layer("stage1_block1").output)(
        np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32"), training=False)
    assert len(streams) == 3
    s = [np.asarray(t) for t in streams]
    assert not np.allclose(s[0], s[1]) and not np.allclose(s[1], s[2])
    keras.utils.set_random_seed(0)
    again = build_model(blocks=(2, 1, 1), num_branches=3)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
