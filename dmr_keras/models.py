"""One configurable builder for DMRNet, DILNet and ResNet in the paper's CIFAR and ImageNet forms.

Forms (see ``shared/PAPER.md`` and the reference code ``zlmzju/fusenet``):

- ``"cifar"``: conv3x3 stem (16w channels, BN, ReLU), three stages of n blocks with 16w, 32w, 64w
  channels, stride 2 at stages 2 and 3 with per-stream projections; depth 6n+2 (basic) or 9n+2
  (bottleneck). The last block's streams leave as the authors' final code merges them
  (``cross.py``, ``last=True``): ``relu(mean_j s_j(x_j) + sum_k H_k(x_k))``, the merged skip
  counted once; then global average pooling and the classifier.
- ``"imagenet2016"``: conv7x7/2-BN-ReLU and maxpool3x3/2 (no padding) stem, four stages of
  bottleneck blocks (64w, 128w, 256w, 512w inner channels, 4x expansion), per-stream projections
  at each stage's first block; after the last block ``relu(sum_k (skip + H_k))``.
- ``"imagenet2018"``: the stem is a bare conv7x7/2 (no bias, no BN, no ReLU) and a maxpool3x3/2
  padded by 1; the first block of every stage has no shortcut (each stream runs a strided
  bottleneck) and the K streams are concatenated before pooling.

Every convolution is padded ``k // 2`` on every side as in MXNet and PyTorch (explicitly where
Keras' ``"same"`` would differ: stride 2), so weights port between frameworks.

Every layer has a stable name: ``stem_conv``, ``stage{s}_block{b}`` (with ``branch{k}/conv{i}``
and ``shortcut{k}/conv1`` inside), ``head_add``/``head_relu``/``head_concat``, ``avg_pool``,
``predictions``. :func:`stage_outputs` gives each
stage's output for feature extraction.
"""

from __future__ import annotations

import re

import keras

from dmr_keras.arch import (  # noqa: F401  (re-exported: the builder's public names)
    _CONVS_PER_BLOCK,
    _DEFAULTS,
    _PREFIX,
    FORMS,
    IMAGENET_BLOCKS,
    _blocks_from_depth,
    _check_width,
    _resolve_blocks,
    model_depth,
    total_stride,
)
from dmr_keras.layers import (
    BLOCK_TYPES,
    BN_EPSILON,
    BN_MOMENTUM,
    MAPPINGS,
    BatchNormalization,
    MergeAndRunBlock,
    SymmetricMaxPooling2D,
    _check_choice,
    _check_positive_int,
    classifier_initializer,
    conv_initializer,
)


def _resolve_input(form, input_tensor, input_shape):
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(keras.ops.shape(input_tensor)[1:])
    if input_shape is None:
        input_shape = _DEFAULTS[form]["input_shape"]
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels) (channels-last). "
            f"Received: input_shape={input_shape!r}"
        )
    h, w, c = input_shape
    if c is None or isinstance(c, bool) or not isinstance(c, int) or c < 1:
        raise ValueError(
            f"The channel count of `input_shape` must be a known positive integer. "
            f"Received: input_shape={input_shape!r}"
        )
    stride = total_stride(form)
    for side in (h, w):
        if side is not None and (not isinstance(side, int) or side < stride):
            raise ValueError(
                f"Input size {h}x{w} is smaller than form '{form}' downsamples (total stride "
                f"{stride}): use inputs of at least {stride}x{stride}, or None for any size. "
                f"Received: input_shape={input_shape!r}"
            )
    if input_tensor is None:
        return keras.Input(shape=input_shape, name="input"), None
    if keras.backend.is_keras_tensor(input_tensor):
        return input_tensor, keras.utils.get_source_inputs(input_tensor)
    img_input = keras.Input(tensor=input_tensor, shape=input_shape, name="input")
    return img_input, keras.utils.get_source_inputs(img_input)


def build_model(
    depth: int | None = None,
    *,
    form: str = "cifar",
    blocks=None,
    width: float = 1,
    num_branches: int | None = None,
    mapping: str = "merge_and_run",
    block_type: str | None = None,
    include_top: bool = True,
    input_tensor=None,
    input_shape=None,
    pooling: str | None = None,
    classes: int | None = None,
    classifier_activation="softmax",
    kernel_regularizer=None,
    bias_regularizer=None,
    zero_init_last_bn: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Build a DMRNet (merge-and-run), DILNet (identity) or ResNet as a functional Keras model.

    Args:
        depth: depth on the longest path (CIFAR: 6n+2 for basic blocks; ImageNet: a named depth
            of ``IMAGENET_BLOCKS``). Either ``depth`` or ``blocks`` is required.
        form: ``"cifar"``, ``"imagenet2016"`` or ``"imagenet2018"``.
        blocks: blocks per stage (per stream), e.g. ``(9, 9, 9)`` or ``(2, 2, 8, 2)``.
        width: width multiplier w (CIFAR stages have 16w, 32w, 64w channels).
        num_branches: K, branches per block. Defaults to 2, or 1 for ``mapping="resnet"``.
        mapping: ``"merge_and_run"`` (DMRNet), ``"identity"`` (DILNet) or ``"resnet"``.
        block_type: ``"basic"`` or ``"bottleneck"``; defaults to the form's.
        include_top: whether to add global pooling and the classifier.
        input_tensor: optional tensor to use as the model's input.
        input_shape: ``(H, W, C)``; ``(None, None, 3)`` for any size. Defaults to the form's.
        pooling: with ``include_top=False``: ``None`` (4D features), ``"avg"`` or ``"max"``.
        classes: classifier outputs (default 10 for CIFAR, 1000 for ImageNet forms).
        classifier_activation: activation of the classifier; ``None`` gives logits. Always
            computed in float32, also under a mixed-precision policy.
        kernel_regularizer: optional regularizer for every convolution and dense kernel.
        bias_regularizer: optional regularizer for every other parameter (BatchNorm gamma and
            beta, the classifier's bias). MXNet's ``wd``, which the reference recipe uses,
            decays these too.
        zero_init_last_bn: start the last BatchNorm scale of every residual branch at zero, so
            each block starts as its skip mapping and a deep network starts near a shallow one
            (Goyal et al., 2017). Not in the reference code; it changes only the initial
            values, not the architecture.
        name: model name; defaults to ``{dmrnet|dilnet|resnet}_{depth}``.

    Example:
    >>> model = build_model(20, width=1, num_branches=2)
    >>> model.output_shape
    (None, 10)
    """
    form = _check_choice("form", form, FORMS)
    mapping = _check_choice("mapping", mapping, MAPPINGS)
    defaults = _DEFAULTS[form]
    block_type = _check_choice("block_type", block_type or defaults["block_type"], BLOCK_TYPES)
    if num_branches is None:
        num_branches = 1 if mapping == "resnet" else 2
    num_branches = _check_positive_int("num_branches", num_branches)
    if mapping == "resnet" and num_branches != 1:
        raise ValueError(
            "`mapping='resnet'` has one branch per block, so `num_branches` must be 1 (or None). "
            f"Received: num_branches={num_branches!r}"
        )
    blocks = _resolve_blocks(form, depth, blocks, block_type)
    depth = model_depth(blocks, block_type)
    base = _check_width(width, defaults["base"])
    expansion = 4 if block_type == "bottleneck" else 1
    stage_filters = [c * expansion for c in base]
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}"
        )
    if classes is None:
        classes = defaults["classes"]
    classes = _check_positive_int("classes", classes)
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "dmr_keras models are channels-last; keras.config.image_data_format() is "
            f"{keras.config.image_data_format()!r}. Call "
            "keras.config.set_image_data_format('channels_last') first."
        )
    regularizer = keras.regularizers.get(kernel_regularizer)
    other_regularizer = keras.regularizers.get(bias_regularizer)
    img_input, source_inputs = _resolve_input(form, input_tensor, input_shape)

    regs = dict(kernel_regularizer=regularizer, bias_regularizer=other_regularizer)
    x = _stem(img_input, form, base[0], **regs)
    x = _stages(x, form, blocks, stage_filters, block_type, num_branches, mapping,
                zero_init_last_bn, **regs)
    x = _top(x, include_top, pooling, classes, classifier_activation, **regs)

    inputs = img_input
    if source_inputs is not None:  # a single input stays a tensor, not a list of one
        inputs = source_inputs[0] if len(source_inputs) == 1 else source_inputs
    if name is None:
        name = f"{_PREFIX[mapping]}_{depth}"
    return keras.Model(inputs, x, name=name)


def _stem(x, form, filters, kernel_regularizer, bias_regularizer):
    """The stem, padded as the reference (MXNet) pads it."""
    if form == "cifar":
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, kernel_initializer=conv_initializer(),
            kernel_regularizer=kernel_regularizer, name="stem_conv",
        )(x)
    else:
        x = keras.layers.ZeroPadding2D(3, name="stem_pad")(x)
        x = keras.layers.Conv2D(
            filters, 7, strides=2, padding="valid", use_bias=False,
            kernel_initializer=conv_initializer(), kernel_regularizer=kernel_regularizer,
            name="stem_conv",
        )(x)
    if form != "imagenet2018":  # the 2018 stem is a bare conv (symbol_cross.py)
        x = BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, gamma_regularizer=bias_regularizer,
            beta_regularizer=bias_regularizer, name="stem_bn",
        )(x)
        x = keras.layers.ReLU(name="stem_relu")(x)
    if form == "imagenet2016":  # Pooling(kernel 3, stride 2, pad 0)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")(x)
    elif form == "imagenet2018":  # Pooling(kernel 3, stride 2, pad 1), on un-activated input
        x = SymmetricMaxPooling2D(3, strides=2, padding=1, name="stem_pool")(x)
    return x


def _stages(x, form, blocks, stage_filters, block_type, num_branches, mapping,
            zero_init_last_bn, kernel_regularizer, bias_regularizer):
    """The stages of blocks, then the streams merged as the reference code merges them, with
    plain layers: CIFAR (cross.py, last=True) relu(skip + sum_k H_k), the merged skip counted
    once; ImageNet 2016 relu(sum_k (skip + H_k)); ImageNet 2018 the K streams concatenated."""
    last_stage = len(blocks) - 1
    for s, (n, filters) in enumerate(zip(blocks, stage_filters)):
        for b in range(n):
            first, last = b == 0, (s == last_stage and b == n - 1)
            block = MergeAndRunBlock(
                filters,
                num_branches=num_branches,
                mapping=mapping,
                block_type=block_type,
                strides=2 if (first and s > 0) else 1,
                shortcut="none" if first and form == "imagenet2018" else "auto",
                return_parts=last and form != "imagenet2018",
                expansion=4 if block_type == "bottleneck" else 1,
                kernel_regularizer=kernel_regularizer,
                bias_regularizer=bias_regularizer,
                zero_init_last_bn=zero_init_last_bn,
                name=f"stage{s + 1}_block{b + 1}",
            )
            x = block(x)
    if form == "cifar":
        return keras.layers.ReLU(name="head_relu")(keras.layers.Add(name="head_add")(x))
    if form == "imagenet2016":
        skip, residuals = x[0], x[1:]
        x = keras.layers.Add(name="head_add")([skip] * block.num_streams + residuals)
        return keras.layers.ReLU(name="head_relu")(x)
    if isinstance(x, list):
        return keras.layers.Concatenate(name="head_concat")(x)
    return x


def _top(x, include_top, pooling, classes, classifier_activation, kernel_regularizer,
         bias_regularizer):
    """Pooling and the classifier (float32 under a mixed-precision policy)."""
    policy = keras.config.dtype_policy()
    head_dtype = "float32" if policy.compute_dtype != policy.variable_dtype else None
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.layers.Dense(
            classes, activation=classifier_activation,
            kernel_initializer=classifier_initializer(), kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer, dtype=head_dtype, name="predictions",
        )(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def DMRNet(depth=56, **kwargs) -> keras.Model:
    """Merge-and-run network (``build_model(mapping="merge_and_run")``)."""
    return build_model(depth, mapping="merge_and_run", **kwargs)


def DILNet(depth=56, **kwargs) -> keras.Model:
    """Deep inception-like network, identity mappings only (``mapping="identity"``)."""
    return build_model(depth, mapping="identity", **kwargs)


def ResNet(depth=110, **kwargs) -> keras.Model:
    """Plain ResNet baseline from the same parts (``mapping="resnet"``, one branch)."""
    return build_model(depth, mapping="resnet", **kwargs)


_BLOCK_NAME = re.compile(r"^stage(\d+)_block(\d+)$")


def stage_outputs(model: keras.Model) -> dict:
    """Each stage's output, keyed ``"stage1"``, ``"stage2"``, ...: for feature extraction.

    A stage's output is its last block's: a list of K stream tensors inside the network, one
    tensor for the last stage (the streams merged by the head layers) or single-stream networks.

    Example:
    >>> m = build_model(20)
    >>> features = keras.Model(m.input, stage_outputs(m))
    """
    last = {}
    for layer in model.layers:
        match = _BLOCK_NAME.match(layer.name)
        if match:
            s, b = int(match.group(1)), int(match.group(2))
            if b >= last.get(s, (0, None))[0]:
                last[s] = (b, layer)
    if not last:
        raise ValueError(f"Model '{model.name}' has no layers named stage{{s}}_block{{b}}.")
    outputs = {f"stage{s}": last[s][1].output for s in sorted(last)}
    # The last block returns its parts; the head layers merge them into the stage's output.
    head = [layer for layer in model.layers if layer.name in ("head_relu", "head_concat")]
    if head:
        outputs[f"stage{max(last)}"] = head[0].output
    return outputs
