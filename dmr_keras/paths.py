"""Paths from input to output of a built model, counted on its graph (the paper's Claim 2).

A residual network is a collection of paths (Veit et al., 2016): at every block the signal
goes either through a residual branch or through the skip. Zhao et al. argue that
merge-and-run blocks make these paths shorter than in a ResNet of the same size: through one
2-branch block, the two residual blocks of a ResNet have average path length 2 (in layers),
the inception-like (identity, DILNet) block 4/3 and the merge-and-run block 2/3, because the
merge offers one skip route from *every* stream and only one branch.

:func:`path_statistics` counts them on the built model.

Definitions:

- A **path** is a route from the model's input to its output through the computation graph,
  one operand of one operation at each step: every operand is a route, so the merge (mean) of
  K streams offers K routes, also where the K streams are one tensor (the stem output fed to
  every stream, the paper's stacked-stream view ``[x; x]``; the ImageNet-2016 head adds the
  skip once per stream: K routes). Equivalently: the terms of the network's unraveled
  expansion (Veit et al.) before like terms are collected. This does not depend on how an
  addition of several operands is bracketed, and it is the paper's own count (the 2/3 above
  is the mean over a merge-and-run stream's three routes: skip from stream 1, skip from
  stream 2, its branch).
- Inside a :class:`~dmr_keras.layers.MergeAndRunBlock` a path takes either one residual
  branch (from its own stream; with ``identity``/``resnet`` every branch reads the one
  stream) or the skip: the identity from any of the K streams or, at a transition, one of
  the K per-stream projections. The ``"none"`` shortcut has no skip route.
- **length in blocks**: the residual branches a path traverses.
- **length in convs**: the weighted layers it traverses: every convolution (stem, branches,
  projection shortcuts) and the dense classifier, counted once each, which is the paper's
  depth convention (6n+2 = stem + 6n branch convolutions + classifier). BatchNorm, ReLU,
  additions and pooling are not counted.
- **critical path**: the largest length in convs, i.e. the longest chain of weighted layers
  that must run one after another (what bounds latency at batch size 1). For the CIFAR
  networks it equals the depth.

How it reads the graph: the sequence of layers (stem, blocks, head, the stream wiring, which
tensor feeds which layer) is walked on the Keras functional graph, node by node, from the
model's inputs; nested functional and ``Sequential`` models are walked too. A
``MergeAndRunBlock`` is a single node there, so its inside is taken from the built layer: its
mapping, its stream count, the convolutions of each built branch and projection sublayer and
whether it returns its parts, following ``MergeAndRunBlock.call``. Any other layer that holds
convolutions inside it raises ``ValueError`` rather than being counted wrong.

Counting is dynamic programming over the DAG: each tensor carries the histogram of its paths,
``{(blocks, convs): number of paths}``, in exact integers (ResNet-110 has 2**54 paths); no
path is ever enumerated.
"""

from __future__ import annotations

import math
from collections import Counter

import keras

from dmr_keras.layers import MergeAndRunBlock

# Layers counted as one weighted layer on a path (a "conv" in the paper's depth convention).
_WEIGHTED = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
    keras.layers.EinsumDense,
)

_SEED = Counter({(0, 0): 1})  # the input: one path of length 0


def _shift(hist: Counter, blocks: int, convs: int) -> Counter:
    if not blocks and not convs:
        return hist
    return Counter({(b + blocks, c + convs): n for (b, c), n in hist.items()})


def _union(hists) -> Counter:
    total = Counter()
    for h in hists:
        total.update(h)
    return total


def _num_convs(layer) -> int:
    return len(layer.convs)


def _block(layer: MergeAndRunBlock, inputs):
    """The block's output histograms, following ``MergeAndRunBlock.call`` on the built layer."""
    if not layer.built:
        raise ValueError(f"Block '{layer.name}' is not built: build the model first.")
    streams = inputs * layer.num_streams if len(inputs) == 1 else list(inputs)
    if len(streams) != layer.num_streams:
        raise ValueError(f"Block '{layer.name}' has {layer.num_streams} stream(s) but "
                         f"{len(inputs)} inputs in the graph.")
    if layer.mapping == "merge_and_run":
        branch_inputs = streams
    else:
        branch_inputs = [streams[0]] * layer.num_branches
    residuals = [_shift(hist, 1, _num_convs(branch))
                 for branch, hist in zip(layer.branches, branch_inputs)]
    if layer.shortcut == "none":
        skip = None
    elif layer.shortcuts:  # one projection (its own convolution) per stream: K routes
        skip = _union(_shift(hist, 0, _num_convs(sc))
                      for sc, hist in zip(layer.shortcuts, streams))
    else:  # the mean of the K streams: one route per stream (also when they are one tensor)
        skip = _union(streams)
    if layer.return_parts:
        return [skip] + residuals
    if layer.mapping == "merge_and_run":
        return [h if skip is None else _union([skip, h]) for h in residuals]
    return [_union(([] if skip is None else [skip]) + residuals)]


def _has_weighted_sublayers(layer) -> bool:
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return False
    return any(isinstance(sub, _WEIGHTED) for sub in flatten(include_self=False, recursive=True))


def _apply(op, inputs, num_outputs: int):
    """Output histograms of one operation, given one histogram per input operand."""
    if isinstance(op, MergeAndRunBlock):
        return _block(op, inputs)
    if isinstance(op, _WEIGHTED):
        return [_shift(_union(inputs), 0, 1)] * num_outputs
    if isinstance(op, keras.Sequential):
        for layer in op.layers:
            inputs = _apply(layer, inputs, 1)
        return inputs
    if isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth"):  # nested functional
        return _walk(op, inputs)
    if _has_weighted_sublayers(op):
        raise ValueError(
            f"Layer '{op.name}' ({type(op).__name__}) has convolutions inside it that the graph "
            "does not expose: path_statistics cannot count its paths.")
    # Everything else (BatchNorm, activations, pooling, padding, Add, Concatenate, ...): the
    # union of the routes of its operands, passed to every output.
    return [_union(inputs)] * num_outputs


def _walk(model, seeds):
    """Histograms of the model's outputs given one histogram per model input."""
    inputs = list(model.inputs)
    if len(seeds) == 1 and len(inputs) > 1:
        seeds = seeds * len(inputs)
    values = {id(t): h for t, h in zip(inputs, seeds)}
    # Nodes in dependency order: an iterative post-order walk back from the outputs along
    # each tensor's Keras history (the operation call that produced it).
    order, state = [], {}
    stack = [("tensor", t) for t in model.outputs]
    while stack:
        kind, obj = stack.pop()
        if kind == "emit":
            order.append(obj)
            continue
        if id(obj) in values:
            continue
        history = getattr(obj, "_keras_history", None)
        if history is None or history.operation is None:
            raise ValueError(f"Tensor {obj} of model '{model.name}' is not connected to its "
                             "inputs.")
        node = history.operation._inbound_nodes[history.node_index]
        if id(node) in state:
            continue
        state[id(node)] = True
        stack.append(("emit", node))
        stack.extend(("tensor", t) for t in node.input_tensors)
    for node in order:
        if node.is_input or not node.operation:
            continue
        operands = [values[id(t)] for t in node.input_tensors]  # a repeated tensor: twice
        hists = _apply(node.operation, operands, len(node.outputs))
        if len(hists) != len(node.outputs):
            raise ValueError(f"Layer '{node.operation.name}': {len(node.outputs)} outputs in the "
                             f"graph, {len(hists)} counted.")
        for tensor, hist in zip(node.outputs, hists):
            values[id(tensor)] = hist
    return [values[id(t)] for t in model.outputs]


def _summary(hist: dict) -> dict:
    """mean, std (of the population of paths), min, max of a ``{length: count}`` histogram."""
    n = sum(hist.values())
    s1 = sum(length * c for length, c in hist.items())
    s2 = sum(length * length * c for length, c in hist.items())
    variance = (n * s2 - s1 * s1) / (n * n)  # exact integers until this division
    return {"mean": s1 / n, "std": math.sqrt(max(variance, 0.0)),
            "min": min(hist), "max": max(hist)}


def path_histogram(model: keras.Model) -> Counter:
    """``{(length in blocks, length in convs): number of paths}`` from the input to the output.

    Several outputs: the paths to each of them, added.
    """
    return _union(_walk(model, [_SEED]))


def path_statistics(model: keras.Model) -> dict:
    """Paths from the input to the output of a built functional model (see the module doc).

    Returns a dict:

    - ``num_paths``: the number of paths (a Python int; ResNet-110 has 2**54).
    - ``length_in_blocks``, ``length_in_convs``: ``{"mean", "std", "min", "max"}`` of the path
      lengths over all paths, each path counted once (std of the population).
    - ``critical_path_convs``: the longest chain of weighted layers (= ``length_in_convs``'s
      max; the depth for the CIFAR networks).
    - ``histogram_blocks``, ``histogram_convs``: ``{length: number of paths}``.

    Example:
    >>> from dmr_keras.models import build_model
    >>> stats = path_statistics(build_model(blocks=(1, 1, 1), mapping="resnet"))
    >>> stats["num_paths"], stats["critical_path_convs"]
    (8, 8)
    """
    joint = path_histogram(model)
    if not joint:
        raise ValueError(f"Model '{model.name}' has no path from its input to its output.")
    by_blocks, by_convs = Counter(), Counter()
    for (b, c), n in joint.items():
        by_blocks[b] += n
        by_convs[c] += n
    convs = _summary(by_convs)
    return {
        "num_paths": sum(joint.values()),
        "length_in_blocks": _summary(by_blocks),
        "length_in_convs": convs,
        "critical_path_convs": convs["max"],
        "histogram_blocks": dict(sorted(by_blocks.items())),
        "histogram_convs": dict(sorted(by_convs.items())),
    }
