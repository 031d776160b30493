"""Merge-and-run layers: the skip mappings, residual branches and the K-stream block.

Everything here uses ``keras.ops`` only, so the layers run on TensorFlow, JAX and PyTorch.
All layers are channels-last and registered for serialization under the package ``dmr_keras``.

The block computes, for K streams ``x_1..x_K`` (Zhao et al., arXiv 1611.07718)::

    merge_and_run:  x_k <- relu( mean_j s_j(x_j) + H_k(x_k) ),   k = 1..K
    identity:       x   <- relu( s(x) + H_1(x) + ... + H_K(x) )   (DILNet; K = 1 is ResNet)

where ``s`` is the identity or, at a stage transition, a per-stream 1x1 projection.

Form: each branch is its own pair of convolutions (not one grouped convolution). Measured on
TensorFlow's CPU kernels, a grouped convolution (``groups=K``) of the same block trains several
times slower than K separate convolutions; ``bench/block_forms.py`` prints the table. The weight
layout is per branch (``branch{k}/conv{i}``), so any faster fused form can be computed from the
same weights.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from dmr_keras import checks

_PACKAGE = "dmr_keras"
MAPPINGS = ("merge_and_run", "identity", "resnet")
BLOCK_TYPES = ("basic", "bottleneck")
SHORTCUTS = ("auto", "projection", "identity", "none")

# The authors' final code (zlmzju/fusenet HEAD 659e6bf, network/base.py; also its ImageNet
# symbol_cross.py): BatchNorm(momentum=0.9, eps=2e-5). Keras' momentum has
# MXNet's meaning (moving = momentum * moving + (1 - momentum) * batch). The repository's first
# commit (783185b) used momentum 0.99.
BN_MOMENTUM = 0.9
BN_EPSILON = 2e-5


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Keras 3 computes a batch norm from separate ops (in training: moments, then the
    normalisation, about ten element-wise kernels forward and more backward); TensorFlow has
    one fused kernel for it, ``FusedBatchNormV3``, with its own fused gradient, and its oneDNN
    graph rewrites fold the inference form into the convolution before it. On the TensorFlow
    backend, for a float32 4-D channels-last input, this layer calls that kernel, in training
    (batch statistics) and in inference (moving statistics, also for a frozen layer); every
    other case (other backends, masks, renorm, synchronized statistics, other dtypes or axes,
    a symbolic ``training``) is Keras' own code. The weights, their names, the config and the
    moving-statistics update (Keras' biased batch variance, Keras' momentum) are those of the
    Keras layer, so a weights file loads either way; results equal Keras' to float32 rounding
    (``tests/test_fused_batchnorm.py``; speed: ``bench/fused_batchnorm.py``). Exports
    (``zoo.export``) are traced with Keras' ops.

    ``BatchNormalization.fused = False`` (or :func:`dmr_keras.performance.fused_batchnorm`,
    which restores it after) makes every instance use Keras' ops; it is read when a step is
    traced.
    """

    fused = True

    def _fusable(self, inputs, training, mask):
        return type(self).fused and (training is None or isinstance(training, bool)) \
            and mask is None and not self.renorm and not self.synchronized and self.scale \
            and self.center and len(inputs.shape) == 4 and self.axis in (-1, 3) \
            and keras.backend.standardize_dtype(inputs.dtype) == "float32" \
            and keras.backend.backend() == "tensorflow"

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        gamma, beta = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")
        moving_mean = ops.cast(self.moving_mean, "float32")
        moving_variance = ops.cast(self.moving_variance, "float32")
        if not (training and self.trainable):  # Keras' rule for the moving statistics
            outputs = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta, mean=moving_mean, variance=moving_variance,
                epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                is_training=False)[0]
            return ops.cast(outputs, self.compute_dtype)
        empty = tf.constant([], tf.float32)
        outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=gamma, offset=beta, mean=empty, variance=empty,
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
            is_training=True)
        # The kernel returns the unbiased (n - 1) batch variance for the moving average; Keras
        # averages the biased one (n), which also normalised the outputs.
        shape = tf.shape(inputs)
        n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
        variance = variance * tf.maximum(n - 1.0, 0.0) / tf.maximum(n, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
        return ops.cast(outputs, self.compute_dtype)


def conv_initializer():
    """fusenet's convolution init, MXNet ``Xavier(gaussian, 'in', magnitude=2)``: N(0, 2/fan_in),
    not truncated (Keras' ``he_normal`` truncates at two standard deviations)."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def own_initializer(initializer):
    """A copy of ``initializer`` for one convolution, so that no two convolutions start equal.

    A Keras 3 random initializer built without a seed fixes one when it is created and returns
    the same values on every call: shared by the K branches of a block (and by the convolutions
    inside a branch), it would start every branch with the same kernels, and the K streams of
    a merge-and-run or identity block, which all start from the same input, would stay equal
    for the whole of training (equal inputs, equal weights, equal gradients): the network would
    train as a ResNet. Re-created from its config, an unseeded initializer draws a seed of its
    own (from Python's ``random``, so ``keras.utils.set_random_seed`` still makes the model
    reproducible). A seeded initializer keeps its seed, as Keras defines it: every convolution
    then starts from the same values, which is what a seed asks for.
    """
    return initializer.__class__.from_config(initializer.get_config())


def classifier_initializer():
    """fusenet's classifier init, MXNet ``Xavier(uniform, 'in', magnitude=1)``: U(+-sqrt(3/fan_in))
    (LeCun uniform; Keras' Dense default is Glorot uniform)."""
    return keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")


def conv_padding(kernel_size: int, strides: int):
    """Padding as MXNet / PyTorch pad a convolution: ``kernel_size // 2`` on every side.

    Returns ``(explicit_pad, keras_padding)``. Keras ``"same"`` equals symmetric padding for an
    odd kernel at stride 1, but at stride 2 on an even input it pads only the bottom/right, which
    shifts every window by one pixel and makes weights non-portable between frameworks; there we
    pad explicitly and use ``"valid"`` (as ``keras.applications``' ResNet does).
    """
    if kernel_size == 1:
        return 0, "valid"
    if strides == 1:
        return 0, "same"
    return kernel_size // 2, "valid"


def symmetric_pad(x, pad: int, value: float = 0.0):
    """Pad both spatial sides of a channels-last batch by ``pad`` with ``value``."""
    if not pad:
        return x
    return ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=value)


_check_positive_int = checks.integer  # the names used across the builders
_check_choice = checks.choice


def merge_and_run_matrix(num_streams: int, channels: int = 1) -> np.ndarray:
    """The skip matrix ``M = (1/K) (1 1^T kron I_C)`` over K stacked streams of C channels.

    ``M @ [x_1; ...; x_K]`` puts the average of the streams in every stream. M is idempotent.
    """
    k = _check_positive_int("num_streams", num_streams)
    c = _check_positive_int("channels", channels)
    return np.kron(np.ones((k, k)), np.eye(c)) / k


def stream_mean(streams):
    """Average of a list of equally shaped tensors (the 'merge' of merge-and-run)."""
    if len(streams) == 1:
        return streams[0]
    total = streams[0]
    for s in streams[1:]:
        total = ops.add(total, s)
    return ops.multiply(total, ops.cast(1.0 / len(streams), total.dtype))


def _as_list(inputs):
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MergeAndRun(keras.layers.Layer):
    """The merge-and-run skip mapping on K streams, with no branches.

    Takes a list of K tensors of the same shape and returns K tensors, each the average of the
    inputs: ``M x`` with ``M = merge_and_run_matrix(K, C)``. Applying it twice equals applying
    it once.

    Example:
    >>> a, b = keras.ops.ones((1, 2, 2, 3)), keras.ops.zeros((1, 2, 2, 3))
    >>> [float(t[0, 0, 0, 0]) for t in MergeAndRun()([a, b])]
    [0.5, 0.5]
    """

    def call(self, inputs):
        streams = _as_list(inputs)
        merged = stream_mean(streams)
        return [merged for _ in streams]

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, list):
            return [tuple(input_shape[0]) for _ in input_shape]
        return [tuple(input_shape)]


class _ConvBNStack(keras.layers.Layer):
    """Shared machinery: a chain of (conv, BN) pairs with ReLU between them (not after the last).

    ``specs`` = [(filters, kernel_size, strides), ...]; sublayers are named ``conv{i}`` /
    ``bn{i}``.
    """

    def __init__(
        self,
        specs,
        kernel_initializer=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        bn_momentum: float = BN_MOMENTUM,
        bn_epsilon: float = BN_EPSILON,
        zero_init_last_bn: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer or conv_initializer())
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.zero_init_last_bn = bool(zero_init_last_bn)
        self.convs = []
        self.bns = []
        self.pads = []
        for i, (filters, kernel_size, strides) in enumerate(specs, start=1):
            pad, padding = conv_padding(kernel_size, strides)
            self.pads.append(pad)
            self.convs.append(
                keras.layers.Conv2D(
                    filters,
                    kernel_size,
                    strides=strides,
                    padding=padding,
                    use_bias=False,
                    kernel_initializer=own_initializer(self.kernel_initializer),
                    kernel_regularizer=self.kernel_regularizer,
                    dtype=self.dtype_policy,
                    name=f"conv{i}",
                )
            )
            last = i == len(specs)
            self.bns.append(
                BatchNormalization(
                    momentum=bn_momentum, epsilon=bn_epsilon,
                    gamma_initializer="zeros" if last and self.zero_init_last_bn else "ones",
                    gamma_regularizer=self.bias_regularizer,
                    beta_regularizer=self.bias_regularizer,
                    dtype=self.dtype_policy, name=f"bn{i}",
                )
            )

    def _padded_shape(self, shape, pad):
        if not pad:
            return shape
        grow = [None if d is None else d + 2 * pad for d in shape[1:3]]
        return (shape[0], *grow, shape[3])

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, bn, pad in zip(self.convs, self.bns, self.pads):
            shape = self._padded_shape(shape, pad)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            bn.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        last = len(self.convs) - 1
        for i, (conv, bn, pad) in enumerate(zip(self.convs, self.bns, self.pads)):
            x = bn(conv(symmetric_pad(x, pad)), training=training)
            if i < last:
                x = ops.relu(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for conv, pad in zip(self.convs, self.pads):
            shape = conv.compute_output_shape(self._padded_shape(shape, pad))
        return shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
                "zero_init_last_bn": self.zero_init_last_bn,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResidualBranch(_ConvBNStack):
    """One residual branch H(x), post-activation order, no ReLU at its end.

    - ``basic``: conv3x3(strides)-BN-ReLU-conv3x3-BN, ``filters`` channels throughout.
    - ``bottleneck``: conv1x1-BN-ReLU-conv3x3(strides)-BN-ReLU-conv1x1-BN with inner width
      ``filters // expansion`` and ``filters`` output channels (stride on the 3x3, as the
      reference ImageNet code).

    Args:
        filters: output channels of the branch.
        block_type: ``"basic"`` or ``"bottleneck"``.
        strides: 1, or 2 at a stage transition.
        expansion: bottleneck expansion; ``filters`` must be divisible by it.
    """

    def __init__(self, filters, block_type="basic", strides=1, expansion=4, **kwargs):
        filters = _check_positive_int("filters", filters)
        block_type = _check_choice("block_type", block_type, BLOCK_TYPES)
        strides = _check_positive_int("strides", strides)
        expansion = _check_positive_int("expansion", expansion)
        if block_type == "basic":
            specs = [(filters, 3, strides), (filters, 3, 1)]
        else:
            if filters % expansion:
                raise ValueError(
                    f"A bottleneck branch needs `filters` divisible by `expansion`={expansion}. "
                    f"Received: filters={filters!r}"
                )
            inner = filters // expansion
            specs = [(inner, 1, 1), (inner, 3, strides), (filters, 1, 1)]
        super().__init__(specs, **kwargs)
        self.filters = filters
        self.block_type = block_type
        self.strides = strides
        self.expansion = expansion

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "block_type": self.block_type,
                "strides": self.strides,
                "expansion": self.expansion,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ProjectionShortcut(_ConvBNStack):
    """A 1x1 convolution (with ``strides``) followed by BN: the shortcut at stage transitions."""

    def __init__(self, filters, strides=1, **kwargs):
        filters = _check_positive_int("filters", filters)
        strides = _check_positive_int("strides", strides)
        super().__init__([(filters, 1, strides)], **kwargs)
        self.filters = filters
        self.strides = strides

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "strides": self.strides})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MergeAndRunBlock(keras.layers.Layer):
    """One K-branch block: merge-and-run (DMRNet), identity (DILNet) or ResNet.

    Call it on one tensor (fed to every stream, as the stem feeds the first block) or on a list
    of stream tensors. It returns the list of its streams (one tensor where there is one stream).

    - ``mapping="merge_and_run"``: K streams, ``x_k <- relu(mean_j s_j(x_j) + H_k(x_k))``.
    - ``mapping="identity"``: one stream, ``x <- relu(s(x) + sum_k H_k(x))`` (DILNet).
    - ``mapping="resnet"``: the identity mapping with ``num_branches=1``.

    With ``return_parts=True`` it returns the un-activated pieces instead,
    ``[skip, H_1, ..., H_K]`` with ``skip = mean_j s_j(x_j)`` (every mapping), so that a network
    can combine them in its graph with plain layers: the reference CIFAR head is
    ``relu(skip + sum_k H_k)`` (``Add`` + ``ReLU``), the 2016 ImageNet head
    ``relu(sum_k (skip + H_k))``.

    Args:
        filters: output channels of every stream.
        num_branches: K >= 1. With ``merge_and_run``, K = 1 is a ResNet block.
        mapping: ``"merge_and_run"``, ``"identity"`` or ``"resnet"``.
        block_type: ``"basic"`` (3x3-3x3) or ``"bottleneck"`` (1x1-3x3-1x1).
        strides: stride of the block's first spatial convolution (padded ``k // 2`` on every
            side, as MXNet and PyTorch; see :func:`conv_padding`).
        shortcut: ``"auto"`` (projection where shape changes, else identity), ``"projection"``
            (a separate 1x1 conv + BN per stream), ``"identity"``, or ``"none"`` (no skip at all:
            each stream is ``relu(H_k(x_k))``; the first block of each stage in the 2018 form).
        return_parts: return ``[skip, H_1, ..., H_K]`` un-activated (see above).
        expansion: bottleneck expansion (inner width = ``filters // expansion``).
        zero_init_last_bn: start the last BatchNorm scale of every branch at 0, so the block
            starts as its skip mapping (Goyal et al., 2017); not in the reference code.
        kernel_initializer, kernel_regularizer, bn_momentum, bn_epsilon: passed to the
            convolutions and batch normalizations (default init: :func:`conv_initializer`);
            ``bias_regularizer`` to BatchNorm's gamma and beta.

    Example:
    >>> block = MergeAndRunBlock(16, num_branches=2)
    >>> streams = block(keras.ops.ones((1, 8, 8, 16)))
    >>> len(streams), tuple(streams[0].shape)
    (2, (1, 8, 8, 16))
    """

    def __init__(
        self,
        filters,
        num_branches=2,
        mapping="merge_and_run",
        block_type="basic",
        strides=1,
        shortcut="auto",
        return_parts=False,
        expansion=4,
        kernel_initializer=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        bn_momentum=BN_MOMENTUM,
        bn_epsilon=BN_EPSILON,
        zero_init_last_bn=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = _check_positive_int("filters", filters)
        self.num_branches = _check_positive_int("num_branches", num_branches)
        self.mapping = _check_choice("mapping", mapping, MAPPINGS)
        self.block_type = _check_choice("block_type", block_type, BLOCK_TYPES)
        self.strides = _check_positive_int("strides", strides)
        self.shortcut = _check_choice("shortcut", shortcut, SHORTCUTS)
        self.return_parts = bool(return_parts)
        self.expansion = _check_positive_int("expansion", expansion)
        if mapping == "resnet" and num_branches != 1:
            raise ValueError(
                "`mapping='resnet'` is one stream with one branch, so `num_branches` must be 1. "
                f"Received: num_branches={num_branches!r}. Use mapping='identity' (DILNet) for "
                "several branches on one stream, or 'merge_and_run' for several streams."
            )
        if self.return_parts and self.shortcut == "none":
            raise ValueError(
                "`return_parts=True` returns the skip and the branches, so the block needs a "
                "skip: use shortcut='auto', 'projection' or 'identity'. Received: shortcut='none'"
            )
        self.kernel_initializer = keras.initializers.get(kernel_initializer or conv_initializer())
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.zero_init_last_bn = bool(zero_init_last_bn)
        self.num_streams = self.num_branches if mapping == "merge_and_run" else 1

        common = dict(
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            dtype=self.dtype_policy,
        )
        self.branches = [
            ResidualBranch(
                filters, block_type, strides, expansion, name=f"branch{k + 1}",
                zero_init_last_bn=self.zero_init_last_bn, **common
            )
            for k in range(self.num_branches)
        ]
        self._common = common
        self.shortcuts = []  # created in build, once input channels are known

    def _needs_projection(self, in_channels):
        if self.shortcut == "projection":
            return True
        if self.shortcut == "auto":
            return self.strides != 1 or in_channels != self.filters
        if self.shortcut == "identity" and (self.strides != 1 or in_channels != self.filters):
            raise ValueError(
                f"`shortcut='identity'` needs strides=1 and input channels == filters; got "
                f"strides={self.strides}, input channels={in_channels}, filters={self.filters}. "
                "Use shortcut='auto' or 'projection'."
            )
        return False

    def _stream_shapes(self, input_shape):
        if isinstance(input_shape, list) and input_shape and isinstance(
            input_shape[0], (list, tuple)
        ):
            shapes = [tuple(s) for s in input_shape]
        else:
            shapes = [tuple(input_shape)]
        if len(shapes) not in (1, self.num_streams):
            raise ValueError(
                f"Layer '{self.name}' ({self.mapping}, {self.num_streams} stream(s)) takes one "
                f"tensor or a list of {self.num_streams}; received {len(shapes)} tensors."
            )
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"Layer '{self.name}': stream shapes differ: {shapes}")
        if shapes[0][-1] is None:
            raise ValueError(f"Layer '{self.name}': the channel axis must be known: {shapes[0]}")
        return shapes

    def build(self, input_shape):
        shape = self._stream_shapes(input_shape)[0]
        for branch in self.branches:
            branch.build(shape)
        if self.shortcut != "none" and self._needs_projection(shape[-1]):
            self.shortcuts = [
                ProjectionShortcut(
                    self.filters, self.strides, name=f"shortcut{k + 1}", **self._common
                )
                for k in range(self.num_streams)
            ]
            for sc in self.shortcuts:
                sc.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        streams = _as_list(inputs)
        if len(streams) == 1 and self.num_streams > 1:
            streams = streams * self.num_streams
        if self.mapping == "merge_and_run":
            branch_inputs = streams
        else:
            branch_inputs = [streams[0]] * self.num_branches
        residuals = [b(x, training=training) for b, x in zip(self.branches, branch_inputs)]
        if self.shortcut == "none":
            skip = None
        elif self.shortcuts:
            skip = stream_mean(
                [sc(x, training=training) for sc, x in zip(self.shortcuts, streams)])
        else:
            skip = stream_mean(streams[: self.num_streams])
        if self.return_parts:
            return [skip] + residuals
        if self.mapping == "merge_and_run":
            pre = residuals if skip is None else [ops.add(skip, h) for h in residuals]
            return _one_or_list([ops.relu(p) for p in pre])
        total = residuals[0] if skip is None else ops.add(skip, residuals[0])
        for h in residuals[1:]:
            total = ops.add(total, h)
        return ops.relu(total)

    def compute_output_shape(self, input_shape):
        shape = self.branches[0].compute_output_shape(self._stream_shapes(input_shape)[0])
        if self.return_parts:
            return [shape for _ in range(self.num_branches + 1)]
        if self.num_streams == 1:
            return shape
        return [shape for _ in range(self.num_streams)]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "num_branches": self.num_branches,
                "mapping": self.mapping,
                "block_type": self.block_type,
                "strides": self.strides,
                "shortcut": self.shortcut,
                "return_parts": self.return_parts,
                "expansion": self.expansion,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
                "zero_init_last_bn": self.zero_init_last_bn,
            }
        )
        return config


def _one_or_list(tensors):
    return tensors[0] if len(tensors) == 1 else tensors


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SymmetricMaxPooling2D(keras.layers.Layer):
    """Max pooling padded by ``padding`` on every side with -inf, as MXNet's ``Pooling(pad=p)``.

    Keras ``"same"`` max pooling at stride 2 on an even input pads only bottom/right; the
    reference ImageNet code pads both sides (and its 2018 stem has no ReLU before the pool, so
    padding with zeros would not be the same either).
    """

    def __init__(self, pool_size=3, strides=2, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _check_positive_int("pool_size", pool_size)
        self.strides = _check_positive_int("strides", strides)
        self.padding = _check_positive_int("padding", padding, minimum=0)

    def call(self, inputs):
        x = symmetric_pad(inputs, self.padding, value=float("-inf"))
        return ops.max_pool(x, self.pool_size, self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        def side(d):
            if d is None:
                return None
            return (d + 2 * self.padding - self.pool_size) // self.strides + 1

        return (input_shape[0], side(input_shape[1]), side(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding}
        )
        return config
