"""The CIFAR-form DMRNet, DILNet and ResNet as plain PyTorch modules, and a Keras weight copier.

A bench-only peer of :func:`dmr_keras.build_model` (``form="cifar"``): what a PyTorch user would
write for the same network, so ``bench/peer_torch.py`` can time both on one machine. Written
from the paper's and the reference code's definition (as ``tests/reference_numpy.py``), not by
translating the Keras layers:

- stem: conv3x3 (16w channels, no bias), BN, ReLU;
- three stages of n blocks (16w, 32w, 64w channels), stride 2 in the first block of stages 2
  and 3, with one 1x1-conv + BN projection per stream there;
- a block on K streams: ``merge_and_run`` ``x_k <- relu(mean_j s_j(x_j) + H_k(x_k))``;
  ``identity`` (DILNet; ``resnet`` is K = 1) ``x <- relu(s(x) + sum_k H_k(x))``;
- the last block merges its streams once: ``relu(mean_j s_j(x_j) + sum_k H_k(x_k))``;
- global average pooling and a linear classifier (logits).

Every convolution is padded ``k // 2`` on every side (PyTorch's ``padding=k // 2``), as the
Keras models are, and BatchNorm has the reference's epsilon 2e-5 and momentum 0.9 (PyTorch's
``momentum`` is the weight of the new batch: 0.1). Module names mirror the Keras weight paths
(``stage2_block1.branch1.conv1`` is ``stage2_block1/branch1/conv1``), so :func:`copy_from_keras`
maps every weight by name and checks that each one on either side is used exactly once.

This module needs PyTorch and NumPy only; it never imports Keras.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

BN_EPSILON = 2e-5
BN_MOMENTUM = 0.1  # PyTorch's convention: 1 - Keras' 0.9
MAPPINGS = ("merge_and_run", "identity", "resnet")


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class Branch(nn.Module):
    """A residual branch H(x): conv3x3(stride)-BN-ReLU-conv3x3-BN (basic) or
    conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN (bottleneck, inner width cout / 4)."""

    def __init__(self, cin: int, cout: int, stride: int, block_type: str = "basic"):
        super().__init__()
        if block_type == "basic":
            specs = [(cin, cout, 3, stride), (cout, cout, 3, 1)]
        elif block_type == "bottleneck":
            inner = cout // 4
            specs = [(cin, inner, 1, 1), (inner, inner, 3, stride), (inner, cout, 1, 1)]
        else:
            raise ValueError(f"`block_type` must be 'basic' or 'bottleneck'. "
                             f"Received: {block_type!r}")
        self.depth = len(specs)
        for i, (a, b, k, s) in enumerate(specs, start=1):
            self.add_module(f"conv{i}", _conv(a, b, k, s))
            self.add_module(f"bn{i}", _bn(b))

    def forward(self, x):
        for i in range(1, self.depth + 1):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            if i < self.depth:
                x = torch.relu(x)
        return x


class Projection(nn.Module):
    """The shortcut at a stage transition: conv1x1(stride)-BN."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv(cin, cout, 1, stride)
        self.bn1 = _bn(cout)

    def forward(self, x):
        return self.bn1(self.conv1(x))


class Block(nn.Module):
    """One block on a list of streams; returns the list of its output streams.

    ``last=True``: returns one tensor, the streams merged as the reference CIFAR head merges
    them, ``relu(mean_j s_j(x_j) + sum_k H_k(x_k))``.
    """

    def __init__(self, cin: int, cout: int, stride: int, num_branches: int, mapping: str,
                 block_type: str = "basic", last: bool = False):
        super().__init__()
        self.mapping, self.last = mapping, last
        self.num_branches = num_branches
        self.num_streams = num_branches if mapping == "merge_and_run" else 1
        for k in range(num_branches):
            self.add_module(f"branch{k + 1}", Branch(cin, cout, stride, block_type))
        self.project = stride != 1 or cin != cout
        if self.project:
            for k in range(self.num_streams):
                self.add_module(f"shortcut{k + 1}", Projection(cin, cout, stride))

    def forward(self, streams: list):
        if self.mapping == "merge_and_run":
            inputs = streams
        else:
            inputs = [streams[0]] * self.num_branches
        hs = [getattr(self, f"branch{k + 1}")(x) for k, x in enumerate(inputs)]
        skips = streams[: self.num_streams]
        if self.project:
            skips = [getattr(self, f"shortcut{k + 1}")(x) for k, x in enumerate(skips)]
        skip = skips[0]
        for s in skips[1:]:
            skip = skip + s
        if len(skips) > 1:
            skip = skip * (1.0 / len(skips))
        if self.last or self.mapping != "merge_and_run":
            total = skip
            for h in hs:
                total = total + h
            return [torch.relu(total)]
        return [torch.relu(skip + h) for h in hs]


class CifarNet(nn.Module):
    """The CIFAR-form network on NCHW input; returns logits.

    Args:
        depth: 6n + 2 (basic) or 9n + 2 (bottleneck).
        width: width multiplier w (16w, 32w, 64w channels; bottleneck outputs 4x that).
        num_branches: K (1 for ``mapping="resnet"``).
        mapping: ``"merge_and_run"``, ``"identity"`` or ``"resnet"``.
        classes: classifier outputs.
        block_type: ``"basic"`` or ``"bottleneck"``.

    Example:
    >>> net = CifarNet(8, width=0.5)
    >>> tuple(net(torch.zeros(1, 3, 32, 32)).shape)
    (1, 10)
    """

    def __init__(self, depth: int, width: float = 1, num_branches: int = 2,
                 mapping: str = "merge_and_run", classes: int = 10, block_type: str = "basic",
                 in_channels: int = 3):
        super().__init__()
        if mapping not in MAPPINGS:
            raise ValueError(f"`mapping` must be one of {MAPPINGS}. Received: {mapping!r}")
        if mapping == "resnet" and num_branches != 1:
            raise ValueError(f"`mapping='resnet'` has one branch. Received: {num_branches!r}")
        per = 6 if block_type == "basic" else 9
        if (depth - 2) % per or depth <= 2:
            raise ValueError(f"A CIFAR {block_type} network has depth {per}n + 2. "
                             f"Received: depth={depth!r}")
        n = (depth - 2) // per
        expansion = 1 if block_type == "basic" else 4
        base = [round(c * width) for c in (16, 32, 64)]
        self.num_streams = num_branches if mapping == "merge_and_run" else 1
        self.stem_conv = _conv(in_channels, base[0], 3)
        self.stem_bn = _bn(base[0])
        cin = base[0]
        self.block_names = []
        for s, c in enumerate(base):
            cout = c * expansion
            for b in range(n):
                name = f"stage{s + 1}_block{b + 1}"
                last = s == len(base) - 1 and b == n - 1
                self.add_module(name, Block(cin, cout, 2 if (s > 0 and b == 0) else 1,
                                            num_branches, mapping, block_type, last))
                self.block_names.append(name)
                cin = cout
        self.predictions = nn.Linear(cin, classes)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem_conv(x)))
        streams = [x] * self.num_streams
        for name in self.block_names:
            streams = getattr(self, name)(streams)
        return self.predictions(streams[0].mean(dim=(2, 3)))


_BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
             "moving_variance": "running_var"}


def torch_name(keras_path: str) -> str:
    """The state-dict key of a Keras weight path (``a/bn1/gamma`` -> ``a.bn1.weight``)."""
    *layers, leaf = keras_path.split("/")
    if leaf == "kernel" or (leaf == "bias" and layers[-1] == "predictions"):
        leaf = "weight" if leaf == "kernel" else "bias"
    else:
        leaf = _BN_NAMES[leaf]
    return ".".join(layers + [leaf])


def to_torch_layout(value: np.ndarray) -> np.ndarray:
    """A Keras array in PyTorch's layout: conv (kh, kw, in, out) -> (out, in, kh, kw), dense
    (in, out) -> (out, in), vectors unchanged."""
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T
    return value


def copy_from_keras(net: nn.Module, named_arrays) -> None:
    """Copy ``(keras_path, array)`` pairs (a Keras model's ``(w.path, w.numpy())``) into ``net``.

    Every Keras weight must land on a tensor of the same shape, and every parameter and BN
    statistic of ``net`` must be written once: anything left over on either side raises.
    """
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    written = set()
    for path, value in named_arrays:
        key = torch_name(path)
        if key not in state:
            raise KeyError(f"Keras weight {path!r} has no PyTorch counterpart {key!r}")
        value = np.ascontiguousarray(to_torch_layout(np.asarray(value)))
        if tuple(state[key].shape) != value.shape:
            raise ValueError(f"{path!r}: Keras {value.shape} vs PyTorch "
                             f"{tuple(state[key].shape)} (PyTorch layout)")
        if key in written:
            raise ValueError(f"{key!r} written twice")
        with torch.no_grad():
            state[key].copy_(torch.from_numpy(value).to(state[key].dtype))
        written.add(key)
    missing = sorted(set(state) - written)
    if missing:
        raise ValueError(f"PyTorch tensors no Keras weight wrote: {missing[:5]} "
                         f"({len(missing)} in all)")


def copy_keras_model(net: nn.Module, model) -> None:
    """:func:`copy_from_keras` from a built Keras model."""
    copy_from_keras(net, [(w.path, np.asarray(w.numpy())) for w in model.weights])


def count_parameters(net: nn.Module) -> int:
    """Trainable parameters (BN statistics are buffers, not counted)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
