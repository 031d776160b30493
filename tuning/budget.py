"""Closed-form cost of a CIFAR-form network: parameters and multiply-accumulates, nothing built.

A search checks its budgets (``max_params``, ``max_macs``) on every configuration an oracle
proposes, before any model exists; these formulas make that check free. They follow
:func:`dmr_keras.build_model` (CIFAR form, basic blocks, ``blocks=(n, n, n)``) layer by layer:

- stem: a 3x3 convolution ``C -> c1`` and its BatchNorm;
- every block: K branches of conv3x3 (stride 2 at the first block of stages 2 and 3) - BN -
  conv3x3 - BN; at a stage transition one 1x1 projection + BN per stream (K streams for
  merge-and-run, one for identity / ResNet);
- the head: global average pooling and a dense ``c3 -> classes`` with bias.

Stage widths are ``16w, 32w, 64w``; a stride-2 stage has ``ceil(H / 2) x ceil(W / 2)`` positions.
Parameters are the trainable ones (BatchNorm's moving statistics excluded); MACs count
convolutions and the dense layer only, as :func:`dmr_keras.flops.count_macs` does (FLOPs = 2 x
MACs). ``tests/test_tuning_budget.py`` checks both against built models.
"""

from __future__ import annotations

import math

BASE = (16, 32, 64)  # CIFAR-form stage widths at w = 1


def _plan(n: int, width: float, branches: int, mapping: str):
    """``(stage channels, K, streams)`` of an architecture."""
    k = 1 if mapping == "resnet" else int(branches)
    streams = k if mapping == "merge_and_run" else 1
    channels = [int(round(c * width)) for c in BASE]
    return channels, k, streams


def _convs(n: int, width: float, branches: int, mapping: str, channels_in: int):
    """Every convolution as ``(stage, kernel, c_in, c_out, copies)``; stage 0 at full size."""
    chans, k, streams = _plan(n, width, branches, mapping)
    out = [(0, 3, channels_in, chans[0], 1)]  # the stem
    c_in = chans[0]
    for s, f in enumerate(chans):
        for b in range(int(n)):
            out.append((s, 3, c_in, f, k))  # first conv of every branch (strided at b = 0, s > 0)
            out.append((s, 3, f, f, k))
            if b == 0 and (s > 0 or c_in != f):
                out.append((s, 1, c_in, f, streams))  # projection shortcut, one per stream
            c_in = f
    return out


def count_params(n: int, width: float, branches: int = 2, mapping: str = "merge_and_run",
                 classes: int = 10, channels: int = 3) -> int:
    """Trainable parameters of ``build_model(blocks=(n, n, n), width=width,
    num_branches=branches, mapping=mapping, classes=classes)`` (closed form, nothing built).

    >>> count_params(1, 0.5, 2)  # dmrnet_8_tiny
    39346
    """
    total = 0
    for _, kernel, c_in, c_out, copies in _convs(n, width, branches, mapping, channels):
        total += copies * (kernel * kernel * c_in * c_out + 2 * c_out)  # conv + BN gamma, beta
    c3 = _plan(n, width, branches, mapping)[0][-1]
    return int(total + c3 * classes + classes)


def count_macs(n: int, width: float, branches: int = 2, mapping: str = "merge_and_run",
               classes: int = 10, input_shape=(32, 32, 3)) -> int:
    """Multiply-accumulates per image of the same model at ``input_shape`` ``(H, W, C)``
    (closed form; convolutions and the classifier, as :func:`dmr_keras.flops.count_macs`).

    >>> count_macs(1, 0.5, 2)  # dmrnet_8_tiny
    6250816
    """
    h, w, c = input_shape
    if h is None or w is None:
        raise ValueError(f"Counting MACs needs a fixed image size. Received: input_shape="
                         f"{tuple(input_shape)!r}")
    sizes = [(int(h), int(w))]
    for _ in range(len(BASE) - 1):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    total = 0
    for stage, kernel, c_in, c_out, copies in _convs(n, width, branches, mapping, int(c)):
        total += copies * sizes[stage][0] * sizes[stage][1] * kernel * kernel * c_in * c_out
    c3 = _plan(n, width, branches, mapping)[0][-1]
    return int(total + c3 * classes)
