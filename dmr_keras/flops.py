"""Multiply-accumulates per image, counted from a built model's layers (keras only).

Every ``Conv2D`` and ``Dense`` layer, nested ones included, contributes
``output positions x kernel size x input channels / groups x output channels``; batch norm,
additions, ReLU and pooling are not counted (a few percent at most, and not what FLOP
figures in papers count). ``flops = 2 x macs``.
"""

from __future__ import annotations

import math

import keras


def _layers(layer):
    yield layer
    for sub in layer._flatten_layers(include_self=False, recursive=True):
        yield sub


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates for one image at the model's input size (which must be fixed)."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    if any(d is None for d in shape[1:]):
        raise ValueError(
            f"Counting FLOPs needs a fixed input size; model '{model.name}' has input shape "
            f"{shape}. Build it with e.g. input_shape=(32, 32, 3)."
        )
    macs = 0
    for layer in _layers(model):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            continue
        in_shape = layer.get_build_config()["input_shape"]
        out_shape = layer.compute_output_shape(in_shape)
        kernel = tuple(layer.kernel.shape)  # conv: (kh, kw, cin/groups, cout); dense: (in, out)
        positions = math.prod(out_shape[1:-1]) if len(out_shape) > 2 else 1
        macs += positions * math.prod(kernel)
    return int(macs)


def count_flops(model: keras.Model) -> int:
    """``2 x count_macs(model)``: floating-point operations for one image's forward pass."""
    return 2 * count_macs(model)
