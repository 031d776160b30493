"""Multi-scale features for detection and segmentation: timm's ``features_only``, keras-hub's
``pyramid_outputs``.

A feature model is a functional model on an existing network's input that shares its layers and
weights and outputs one tensor per feature *level*, as timm numbers them: level 0 is the stem's
output before any stem pooling (``stem_relu``; the 2018 ImageNet form's bare ``stem_conv``),
levels 1..S are the S stages. Inside a merge-and-run network a stage ends in K streams; they are
merged into one tensor by a plain, stable-named Keras layer (``stage{s}_merge``: ``Average``,
``Add`` or ``Concatenate``), so a saved feature model loads in safe mode. Single-stream stages
and the last stage (already merged by the network's head layers) pass through unchanged.

Each level is described timm-style, ``{"num_chs": C, "reduction": r, "module": layer name,
"index": i}``; the reduction is nominal (the product of the strides), as in timm: the 2016
ImageNet stem pools without padding, so its stage 1 is 55x55, not 56x56, at 224x224.
"""

from __future__ import annotations

import numbers
import re

import keras

from dmr_keras import checks
from dmr_keras.models import stage_outputs

STREAM_MERGES = ("mean", "sum", "concat")

_MERGE_LAYERS = {
    "mean": keras.layers.Average,
    "sum": keras.layers.Add,
    "concat": keras.layers.Concatenate,
}
_STEM_OUTPUTS = ("stem_relu", "stem_conv")  # the first the model has: 2018's stem is a bare conv
_HEADS = ("head_relu", "head_concat")
_BLOCK_NAME = re.compile(r"^stage(\d+)_block(\d+)$")
_MERGE_NAME = re.compile(r"^stage(\d+)_merge$")


def _stride(layer) -> int:
    strides = getattr(layer, "strides", 1)
    return int(strides[0]) if isinstance(strides, (tuple, list)) else int(strides)


def _structure(model, require_stages=True):
    """The stem's output layer, each stage's blocks in order, the head layer, and the nominal
    reduction of every level, read from the layer names and strides."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            "`model` must be a keras.Model built by dmr_keras.build_model (or loaded from one). "
            f"Received: model={model!r}"
        )
    layers = {layer.name: layer for layer in model.layers}
    stem = next((layers[n] for n in _STEM_OUTPUTS if n in layers), None)
    if stem is None:
        raise ValueError(
            f"Model '{model.name}' has no stem layer ('stem_relu' or 'stem_conv'): feature "
            "extraction needs a network built by dmr_keras.build_model."
        )
    stages = {}
    for layer in model.layers:
        match = _BLOCK_NAME.match(layer.name)
        if match:
            stages.setdefault(int(match.group(1)), []).append((int(match.group(2)), layer))
    if require_stages and not stages:
        raise ValueError(f"Model '{model.name}' has no layers named stage{{s}}_block{{b}}.")
    if sorted(stages) != list(range(1, len(stages) + 1)):
        raise ValueError(
            f"Model '{model.name}' has stages {sorted(stages)}; expected stage1..stage"
            f"{len(stages)} with no gaps."
        )
    stem_reduction = _stride(layers.get("stem_conv", stem))
    reductions = [stem_reduction]
    r = stem_reduction * (_stride(layers["stem_pool"]) if "stem_pool" in layers else 1)
    for s in sorted(stages):
        stages[s] = [layer for _, layer in sorted(stages[s], key=lambda item: item[0])]
        for layer in stages[s]:
            r *= _stride(layer)
        reductions.append(r)
    head = next((layers[n] for n in _HEADS if n in layers), None)
    return dict(layers=layers, stem=stem, stages=stages, head=head, reductions=reductions)


def _check_out_indices(out_indices, num_levels):
    if out_indices is None:
        return list(range(num_levels))
    valid = f"level indices in [-{num_levels}, {num_levels - 1}] (0 = stem, 1..{num_levels - 1}"
    valid += " = stages)"
    if not isinstance(out_indices, (list, tuple, range)) or len(out_indices) == 0:
        raise ValueError(
            f"`out_indices` must be a non-empty list or tuple of {valid}, or None for all. "
            f"Received: out_indices={out_indices!r}"
        )
    indices = []
    for i in out_indices:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise ValueError(
                f"`out_indices` must hold integers ({valid}); {i!r} is not one. "
                f"Received: out_indices={out_indices!r}"
            )
        if not -num_levels <= i < num_levels:
            raise ValueError(
                f"`out_indices` holds {i!r}, out of range: the model has {num_levels} levels, "
                f"so use {valid}. Received: out_indices={out_indices!r}"
            )
        i = int(i) % num_levels
        if i in indices:
            raise ValueError(
                f"`out_indices` names level {i} twice. Received: out_indices={out_indices!r}"
            )
        indices.append(i)
    return sorted(indices)


def _level_tensor(model, structure, index, stream_merge):
    """Level ``index`` of ``model``'s graph as one tensor, merging K streams with a new layer
    (or reusing the model's own ``stage{s}_merge`` of the same kind)."""
    if index == 0:
        return structure["stem"].output
    stage = stage_outputs(model)[f"stage{index}"]
    if not isinstance(stage, (list, tuple)):
        return stage
    if len(stage) == 1:
        return stage[0]
    name = f"stage{index}_merge"
    layer_cls = _MERGE_LAYERS[stream_merge]
    existing = structure["layers"].get(name)
    if existing is not None and type(existing) is layer_cls:
        return existing.output
    return layer_cls(name=name)(list(stage))


def feature_info(model: keras.Model) -> list[dict]:
    """Describe each output of a feature model, timm-style, from its graph alone.

    Works on a model from :func:`features_model` also after a ``.keras`` round trip, where the
    ``feature_info`` attribute is gone, and on a network built with ``include_top=False,
    pooling=None`` (its one output is the last stage).

    Args:
        model: a functional model whose outputs are feature levels (the stem, a stage's last
            block, a ``stage{s}_merge`` layer or the head).

    Returns:
        One dict per output, in output order: ``{"num_chs": C, "reduction": r, "module": name
        of the layer that computes it, "index": level}``.

    Example:
    >>> from dmr_keras import build_model
    >>> features = features_model(build_model(8), stream_merge="concat")
    >>> [f["num_chs"] for f in feature_info(features)]
    [16, 32, 64, 64]
    """
    structure = _structure(model, require_stages=False)
    last_stage = max(structure["stages"], default=0)
    info = []
    for i, tensor in enumerate(model.outputs):
        layer = tensor._keras_history.operation
        index = None
        block, merge = _BLOCK_NAME.match(layer.name), _MERGE_NAME.match(layer.name)
        if layer is structure["stem"]:
            index = 0
        elif merge:
            index = int(merge.group(1))
        elif (block and structure["stages"][int(block.group(1))][-1] is layer
              and not isinstance(layer.output, (list, tuple))):
            index = int(block.group(1))
        elif layer is structure["head"]:
            index = last_stage
        if index is None or index >= len(structure["reductions"]):
            raise ValueError(
                f"Output {i} of model '{model.name}' comes from layer '{layer.name}', which is "
                "not a feature level (the stem, a stage's last block, a stage{s}_merge layer or "
                "the head). Build a feature model with dmr_keras.features_model(model) first."
            )
        info.append({
            "num_chs": int(tensor.shape[-1]),
            "reduction": structure["reductions"][index],
            "module": layer.name,
            "index": index,
        })
    return info


def _pyramid_key(reduction):
    if reduction < 1 or reduction & (reduction - 1):
        raise ValueError(f"A pyramid level needs a power-of-two reduction. Received: {reduction}")
    return f"P{reduction.bit_length() - 1}"


def pyramid_outputs(model: keras.Model, stream_merge: str = "mean") -> dict:
    """Each stage's output keyed as keras-hub's ``FeaturePyramidBackbone.pyramid_outputs``.

    ``"Pn"`` is a feature map 2^n times smaller than the input: ``P2``..``P5`` for the ImageNet
    forms (as keras-hub's ResNet), ``P0``..``P2`` for the CIFAR form. The stem is left out, as
    keras-hub leaves it out. Stages of K streams are merged as :func:`features_model` merges them.

    Args:
        model: a network from :func:`dmr_keras.build_model` (any ``include_top``), or a feature
            model (its own merge layers are reused).
        stream_merge: ``"mean"``, ``"sum"`` or ``"concat"``.

    Returns:
        ``{"P2": KerasTensor, ...}``, tensors of ``model``'s graph, ready for
        ``keras.Model(model.input, pyramid)``.

    Example:
    >>> from dmr_keras import build_model
    >>> m = build_model(form="imagenet2016", blocks=(1, 1, 1, 1), input_shape=(64, 64, 3))
    >>> sorted(pyramid_outputs(m))
    ['P2', 'P3', 'P4', 'P5']
    """
    stream_merge = checks.choice("stream_merge", stream_merge, STREAM_MERGES)
    structure = _structure(model)
    return {
        _pyramid_key(structure["reductions"][s]): _level_tensor(model, structure, s, stream_merge)
        for s in sorted(structure["stages"])
    }


def features_model(
    model: keras.Model,
    out_indices=None,
    stream_merge: str = "mean",
    name: str | None = None,
) -> keras.Model:
    """A model giving ``model``'s multi-scale features (timm's ``features_only``).

    The feature model shares ``model``'s layers and weights (training one trains the other). Its
    output is a list, one tensor per selected level, in network order (as timm's). It carries
    ``feature_info`` (see :func:`feature_info`) and ``pyramid_outputs`` (the selected stages,
    keyed ``"P{log2 reduction}"``, see :func:`pyramid_outputs`); neither attribute survives a
    ``.keras`` round trip, but :func:`feature_info` and :func:`pyramid_outputs` recompute them
    from a loaded model.

    Args:
        model: a network from :func:`dmr_keras.build_model` (any ``include_top``) or loaded
            from one.
        out_indices: levels to output: 0 the stem (before any stem pooling), 1..S the stages;
            negative values count from the end. ``None`` (default): every level.
        stream_merge: how a stage of K streams becomes one tensor: ``"mean"`` (default; the
            merge of merge-and-run), ``"sum"`` or ``"concat"`` (K*C channels). Single-stream
            stages and the last stage, which the network's head merges, pass through.
        name: the feature model's name; defaults to ``"{model.name}_features"``.

    Returns:
        A functional ``keras.Model``.

    Example:
    >>> from dmr_keras import build_model
    >>> m = build_model(20, num_branches=2)
    >>> features = features_model(m, out_indices=(1, 2, 3))
    >>> [tuple(y.shape) for y in features(keras.ops.ones((1, 32, 32, 3)))]
    [(1, 32, 32, 16), (1, 16, 16, 32), (1, 8, 8, 64)]
    >>> [(f["num_chs"], f["reduction"]) for f in features.feature_info]
    [(16, 1), (32, 2), (64, 4)]
    """
    stream_merge = checks.choice("stream_merge", stream_merge, STREAM_MERGES)
    structure = _structure(model)
    indices = _check_out_indices(out_indices, len(structure["reductions"]))
    outputs = [_level_tensor(model, structure, i, stream_merge) for i in indices]
    features = keras.Model(model.input, outputs, name=name or f"{model.name}_features")
    features.feature_info = feature_info(features)
    features.pyramid_outputs = {
        _pyramid_key(info["reduction"]): tensor
        for info, tensor in zip(features.feature_info, outputs) if info["index"] > 0
    }
    return features
