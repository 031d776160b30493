"""Paths from input to output (Claim 2 of the paper), counted on the built graph.

Hand counts use generating functions: a path's weight is ``z**blocks * w**convs`` (blocks:
residual branches traversed; convs: weighted layers, the classifier included), and a network's
polynomial is the product of its steps' factors. A step's factor sums its routes:

- stem conv, classifier: ``w``;
- merge-and-run block, K = 2, per output stream: skip from stream 1, skip from stream 2
  (one route each, also when both streams are the stem output), its own branch:
  ``2 + z w^2``; at a transition every skip route has a 1x1 projection: ``2w + z w^2``;
- identity block (DILNet, K = 2): skip + both branches: ``1 + 2 z w^2`` (``w + 2 z w^2``);
- resnet block: ``1 + z w^2`` (``w + z w^2``);
- the CIFAR head (the last block returns its parts, ``Add`` sums them): merge-and-run
  ``skip (K routes) + sum_k H_k``, i.e. ``2 + 2 z w^2`` for K = 2 (``2w + 2 z w^2`` at a
  transition); identity and resnet as their block.
"""

import functools
import math
import re
from collections import Counter

import keras
import pytest

import zoo
from dmr_keras.layers import MergeAndRunBlock
from dmr_keras.models import build_model
from dmr_keras.paths import path_histogram, path_statistics
from zoo import cli
from zoo.registry import path_info


def _two_block_model(mapping, num_branches, rewire=False):
    """stem conv - ReLU - block1 - block2 (parts) - Add - ReLU - pool - dense: 2 blocks, no
    transition (4 channels throughout), the CIFAR head. ``rewire``: block 2 reads block 1's
    first stream and the stem output instead of block 1's two streams."""
    inp = keras.Input((8, 8, 3))
    stem = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inp))
    x = MergeAndRunBlock(4, num_branches=num_branches, mapping=mapping)(stem)
    if rewire:
        x = [x[0], stem]
    parts = MergeAndRunBlock(4, num_branches=num_branches, mapping=mapping,
                             return_parts=True)(x)
    x = keras.layers.ReLU()(keras.layers.Add()(parts))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3)(x))


@functools.cache
def _stats(key):
    """Statistics of small builder configurations, built once per test session."""
    kwargs = dict(key)
    kwargs.setdefault("width", 0.25)
    return path_statistics(build_model(**kwargs))


def _joint(hist):
    return dict(sorted(hist.items()))


# --- hand counts ------------------------------------------------------------------------------

# Two blocks, no transition; joint histograms {(blocks, convs): paths}.
TWO_BLOCKS = {
    # Each stream of block 1 carries f = w (2 + z w^2) (skip from either copy of the stem
    # output, or its branch); the head sums skip = f + f and H_k = z w^2 f:
    # w (2 + z w^2) (2 + 2 z w^2) w = 2 w^2 (2 + 3 z w^2 + z^2 w^4)
    #   = 4 w^2 + 6 z w^4 + 2 z^2 w^6:
    # 4 paths through no branch (2 skip routes x 2), 6 through one (block 1's skip x the
    # head's 2 branches = 4, block 1's branch x the head's 2 skip routes = 2), 2 through both.
    ("merge_and_run", 2): {(0, 2): 4, (1, 4): 6, (2, 6): 2},
    # w (1 + 2 z w^2)^2 w = w^2 (1 + 4 z w^2 + 4 z^2 w^4): 1 + 2 choices per block.
    ("identity", 2): {(0, 2): 1, (1, 4): 4, (2, 6): 4},
    # w (1 + z w^2)^2 w: 2^2 paths, Binomial(2, 1/2) in blocks.
    ("resnet", 1): {(0, 2): 1, (1, 4): 2, (2, 6): 1},
}


@pytest.mark.parametrize("mapping,k", list(TWO_BLOCKS), ids=[m for m, _ in TWO_BLOCKS])
def test_two_block_network_matches_hand_count(mapping, k):
    model = _two_block_model(mapping, k)
    assert _joint(path_histogram(model)) == TWO_BLOCKS[(mapping, k)]
    stats = path_statistics(model)
    assert stats["num_paths"] == {"merge_and_run": 12, "identity": 9, "resnet": 4}[mapping]
    assert stats["critical_path_convs"] == 6 and stats["length_in_convs"]["min"] == 2
    mean, std = {
        # merge-and-run: (0*4 + 1*6 + 2*2) / 12 = 5/6; E[b^2] = (6 + 8)/12 = 7/6,
        # var = 7/6 - 25/36 = 17/36
        "merge_and_run": (5 / 6, math.sqrt(17) / 6),
        "identity": (12 / 9, math.sqrt(20 / 9 - 16 / 9)),  # (4 + 8)/9; E[b^2] = (4 + 16)/9
        "resnet": (1.0, math.sqrt(0.5)),
    }[mapping]
    assert stats["length_in_blocks"]["mean"] == pytest.approx(mean)
    assert stats["length_in_blocks"]["std"] == pytest.approx(std)
    assert stats["length_in_convs"]["mean"] == pytest.approx(2 + 2 * mean)  # convs = 2 + 2b
    assert stats["length_in_convs"]["std"] == pytest.approx(2 * std)


def test_stream_wiring_is_read_from_the_graph():
    # Block 2 reads [block 1's stream 1, the stem output] instead of both streams of block 1:
    # block 1 stream 1 carries f = w (2 + z w^2), the stem output w. Head: skip = f + w
    # (3 + z w^2 routes, times w), H_1 = z w^2 f, H_2 = z w^2 w; then the classifier:
    # w^2 (3 + z w^2 + 2 z w^2 + z^2 w^4 + z w^2) = w^2 (3 + 4 z w^2 + z^2 w^4).
    model = _two_block_model("merge_and_run", 2, rewire=True)
    assert _joint(path_histogram(model)) == {(0, 2): 3, (1, 4): 4, (2, 6): 1}


# The builder's smallest CIFAR networks: blocks=(1, 1, 1); blocks 2 and 3 are transitions.
# merge-and-run: w (2 + z w^2) w (2 + z w) 2w (1 + z w) w
#              = 2 w^4 (2 + z w^2)(2 + 3 z w + z^2 w^2)
#              = 8 w^4 + 12 z w^5 + 4 z w^6 + 4 z^2 w^6 + 6 z^2 w^7 + 2 z^3 w^8
# identity:    w (1 + 2 z w^2) w (1 + 2 z w) w (1 + 2 z w) w
#              = w^4 + 4 z w^5 + 2 z w^6 + 4 z^2 w^6 + 8 z^2 w^7 + 8 z^3 w^8
# resnet:      w (1 + z w^2) w (1 + z w) w (1 + z w) w
#              = w^4 + 2 z w^5 + z w^6 + z^2 w^6 + 2 z^2 w^7 + z^3 w^8
# (1, 5): one branch at a transition, the other transition through its projection;
# (1, 6): block 1's branch and both projections.
THREE_BLOCKS = {
    "merge_and_run": {(0, 4): 8, (1, 5): 12, (1, 6): 4, (2, 6): 4, (2, 7): 6, (3, 8): 2},
    "identity": {(0, 4): 1, (1, 5): 4, (1, 6): 2, (2, 6): 4, (2, 7): 8, (3, 8): 8},
    "resnet": {(0, 4): 1, (1, 5): 2, (1, 6): 1, (2, 6): 1, (2, 7): 2, (3, 8): 1},
}


@pytest.mark.parametrize("mapping", list(THREE_BLOCKS))
def test_builder_three_block_network_matches_hand_count(mapping):
    model = build_model(blocks=(1, 1, 1), width=0.25, mapping=mapping)
    joint = THREE_BLOCKS[mapping]
    assert _joint(path_histogram(model)) == joint
    stats = path_statistics(model)
    assert stats["num_paths"] == sum(joint.values()) == {"merge_and_run": 36, "identity": 27,
                                                         "resnet": 8}[mapping]
    assert stats["critical_path_convs"] == 8 == model_depth_of(model)
    assert stats["length_in_blocks"]["max"] == 3 and stats["length_in_convs"]["min"] == 4
    blocks = Counter()
    for (b, _), n in joint.items():
        blocks[b] += n
    assert stats["histogram_blocks"] == dict(sorted(blocks.items()))


def model_depth_of(model):
    """The builder's depth, from the model's name (``dmrnet_8``)."""
    return int(model.name.rsplit("_", 1)[1])


def test_block_order_changes_conv_lengths_not_block_lengths():
    # Merge-and-run, per-stream factors (stem and classifier w each):
    #   (2, 1, 1): (2 + z w^2)^2 (2w + z w^2) (2w + 2 z w^2)   [2 plain blocks, 2 transitions]
    #   (1, 1, 2): (2 + z w^2) (2w + z w^2)^2 (2 + 2 z w^2)    [the head has no projection]
    # In z alone both are 2 (2 + z)^3 (1 + z) = 16 + 40 z + 36 z^2 + 14 z^3 + 2 z^4: the same
    # 108 paths and lengths in blocks. In convs they differ: paths of 5 convs take one
    # transition's branch and the other's projection, skips elsewhere:
    #   (2, 1, 1): 2 * 2 * (1 * 2 + 2 * 2) = 24;   (1, 1, 2): 2 * (1 * 2 + 2 * 1) * 2 = 16.
    a = _stats((("blocks", (2, 1, 1)),))
    b = _stats((("blocks", (1, 1, 2)),))
    assert a["num_paths"] == b["num_paths"] == 2 * 3 * 3 * 3 * 2
    assert a["histogram_blocks"] == b["histogram_blocks"]
    assert a["histogram_convs"] != b["histogram_convs"]
    # No branch at all: (2, 1, 1) 2 * 2 * 2 * 2 = 16, (1, 1, 2) 2 * 2 * 2 * 2 = 16, 4 convs.
    assert a["histogram_blocks"] == {0: 16, 1: 40, 2: 36, 3: 14, 4: 2}
    assert a["histogram_convs"][4] == b["histogram_convs"][4] == 16
    assert (a["histogram_convs"][5], b["histogram_convs"][5]) == (24, 16)
    assert a["length_in_convs"]["max"] == b["length_in_convs"]["max"] == 10
    deeper = _stats((("blocks", (2, 2, 1)),))
    assert deeper["num_paths"] == 3 * a["num_paths"]  # one more (2 + z) block


def test_nested_model_is_walked():
    inner = _two_block_model("merge_and_run", 2)
    inp = keras.Input((8, 8, 3))
    outer = keras.Model(inp, inner(inp))
    assert path_histogram(outer) == path_histogram(inner)


def test_hidden_convolutions_are_refused():
    class Hidden(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3, padding="same")

        def call(self, x):
            return self.conv(x)

    inp = keras.Input((8, 8, 3))
    with pytest.raises(ValueError, match="convolutions inside it"):
        path_statistics(keras.Model(inp, Hidden()(inp)))


# --- against the traced TensorFlow graph ------------------------------------------------------

_BRANCH_ENTRY = re.compile(r"/branch\d+(_\d+)?/conv1(_\d+)?/")


def _traced_histogram(model):
    """The same count on the TensorFlow graph of ``model(x)``: every operand of every op is a
    route; Conv2D / MatMul ops are weighted layers, the first conv of a branch enters a
    block. Independent of the block's Python bookkeeping in dmr_keras.paths."""
    import tensorflow as tf

    shape = (1, *model.input_shape[1:])
    fn = tf.function(lambda x: model(x, training=False))
    graph_fn = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    hist = {graph_fn.inputs[0].name: Counter({(0, 0): 1})}
    for op in graph_fn.graph.get_operations():  # topologically sorted
        routes = Counter()
        for t in op.inputs:
            if t.name in hist:
                routes.update(hist[t.name])
        if not routes:
            continue
        conv = op.type in ("Conv2D", "MatMul")
        block = conv and bool(_BRANCH_ENTRY.search(op.name))
        routes = Counter({(b + block, c + conv): n for (b, c), n in routes.items()})
        for t in op.outputs:
            hist[t.name] = routes
    return hist[graph_fn.outputs[0].name]


TRACED = [
    dict(blocks=(1, 1, 1), mapping="merge_and_run"),
    dict(blocks=(1, 1, 1), mapping="identity"),
    dict(blocks=(1, 1, 1), mapping="resnet"),
    dict(blocks=(2, 1, 1), num_branches=3),  # K = 3: the mean of 3 copies of the stem output
    dict(form="imagenet2016", blocks=(1, 1, 1, 1), input_shape=(32, 32, 3), width=0.125),
    dict(form="imagenet2018", blocks=(1, 2, 1, 1), input_shape=(32, 32, 3), width=0.125),
]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="traces a TF graph")
@pytest.mark.parametrize("kwargs", TRACED, ids=lambda kw: "-".join(
    str(v) for v in (kw.get("form", "cifar"), kw.get("mapping", "mr"), kw.get("num_branches", ""))))
def test_counts_agree_with_the_traced_graph(kwargs):
    model = build_model(**{"width": 0.25, **kwargs})
    assert _joint(path_histogram(model)) == _joint(_traced_histogram(model))


# --- the paper's networks ---------------------------------------------------------------------


def test_resnet_110_and_dmrnet_56_path_counts():
    res = path_info("resnet_110")
    # 54 blocks, branch or skip at each (the two transitions' skip is a projection): 2**54.
    assert res["num_paths"] == 2**54
    assert res["length_in_blocks"] == {"mean": 27.0, "std": pytest.approx(math.sqrt(54) / 2),
                                       "min": 0, "max": 54}
    assert res["critical_path_convs"] == 110 and res["length_in_convs"]["min"] == 4
    dmr = path_info("dmrnet_56")
    # 27 blocks per stream: 26 blocks of (2 + z) per stream, then the head 2 (1 + z):
    # 3**26 * 4 paths, mean 26/3 + 1/2 blocks.
    assert dmr["num_paths"] == 4 * 3**26
    assert dmr["length_in_blocks"]["mean"] == pytest.approx(26 / 3 + 1 / 2)
    assert dmr["length_in_blocks"]["max"] == 27 and dmr["critical_path_convs"] == 56
    # The paper's argument at equal parameters: the longest chain of residual branches is
    # half ResNet-110's, and so is (about) the critical path; the mean path is about a third.
    assert dmr["length_in_blocks"]["max"] * 2 == res["length_in_blocks"]["max"]
    assert dmr["critical_path_convs"] / res["critical_path_convs"] < 0.52
    assert dmr["length_in_blocks"]["mean"] / res["length_in_blocks"]["mean"] < 0.35


def test_model_info_paths_are_opt_in_and_match_the_built_model(capsys):
    assert "paths" not in zoo.model_info("dmrnet_8_tiny")
    info = zoo.model_info("dmrnet_8_tiny", paths=True)
    assert info["paths"] == path_statistics(zoo.create_model("dmrnet_8_tiny"))
    assert info["paths"]["num_paths"] == 36  # blocks (1, 1, 1): THREE_BLOCKS["merge_and_run"]
    assert info["paths"]["critical_path_convs"] == info["depth"]
    assert cli.main(["info", "dmrnet_8_tiny", "--paths"]) == 0
    out = capsys.readouterr().out
    assert '"paths"' in out and '"critical_path_convs": 8' in out


def test_dmrnet_20_baselines_share_its_budget_and_have_longer_paths():
    base = zoo.model_info("dmrnet_20")["params"]
    for name in ("dilnet_20", "resnet_38", "dmrnet_14_k3"):
        assert abs(zoo.model_info(name)["params"] - base) / base < 0.05, name
    mean = {n: path_info(n)["length_in_blocks"]["mean"]
            for n in ("dmrnet_20", "dilnet_20", "resnet_38", "dmrnet_14_k3")}
    # per block: K=3 merge-and-run 1/4 (6 blocks), K=2 1/3 (9), identity 2/3 (9), resnet 1/2 (18)
    assert mean == {"dmrnet_14_k3": pytest.approx(5 / 4 + 1 / 2),
                    "dmrnet_20": pytest.approx(8 / 3 + 1 / 2),
                    "dilnet_20": pytest.approx(6.0), "resnet_38": pytest.approx(9.0)}
