"""Architecture arithmetic without Keras: forms, blocks per stage, depth, widths.

Kept apart from :mod:`dmr_keras.models` so that the registry, the model cards and the command
lines (``dmr-zoo list``, ``--help``) work without importing Keras or TensorFlow.
"""

from __future__ import annotations

import math

from dmr_keras import checks

_check_positive_int = checks.integer

FORMS = ("cifar", "imagenet2016", "imagenet2018")

# Blocks per stage for named ImageNet depths (reference code's table; 2018: the IJCAI paper).
IMAGENET_BLOCKS = {
    "imagenet2016": {
        26: (2, 2, 3, 1),
        29: (2, 2, 4, 1),
        44: (2, 2, 8, 2),
        50: (3, 4, 6, 3),
        101: (3, 4, 23, 3),
        152: (3, 8, 36, 3),
    },
    "imagenet2018": {50: (1, 2, 11, 2)},
}

_DEFAULTS = {
    "cifar": dict(input_shape=(32, 32, 3), classes=10, block_type="basic", base=(16, 32, 64)),
    "imagenet2016": dict(
        input_shape=(224, 224, 3), classes=1000, block_type="bottleneck", base=(64, 128, 256, 512)
    ),
    "imagenet2018": dict(
        input_shape=(224, 224, 3), classes=1000, block_type="bottleneck", base=(64, 128, 256, 512)
    ),
}
_CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3}
_PREFIX = {"merge_and_run": "dmrnet", "identity": "dilnet", "resnet": "resnet"}


def _blocks_from_depth(form, depth, block_type):
    per_block = _CONVS_PER_BLOCK[block_type]
    if form == "cifar":
        n, rem = divmod(depth - 2, 3 * per_block)
        if rem or n < 1:
            valid = ", ".join(str(3 * per_block * i + 2) for i in range(1, 6))
            raise ValueError(
                f"No number of blocks per stage gives depth={depth!r} for the CIFAR form with "
                f"{block_type} blocks: depth must be {3 * per_block}n+2 with n >= 1 "
                f"(e.g. {valid}, ...)."
            )
        return (n, n, n)
    table = IMAGENET_BLOCKS[form]
    if depth not in table or block_type != "bottleneck":
        raise ValueError(
            f"No named block layout gives depth={depth!r} for form '{form}' with {block_type} "
            f"blocks. Valid depths: {sorted(table)} (bottleneck); or pass `blocks=(b1, b2, b3, "
            "b4)` explicitly."
        )
    return table[depth]


def _resolve_blocks(form, depth, blocks, block_type):
    num_stages = len(_DEFAULTS[form]["base"])
    if blocks is None:
        if depth is None:
            raise ValueError("Pass `depth` (e.g. depth=56) or `blocks` (blocks per stage).")
        _check_positive_int("depth", depth, minimum=3)
        return tuple(_blocks_from_depth(form, depth, block_type))
    blocks = tuple(blocks)
    if len(blocks) != num_stages:
        raise ValueError(
            f"Form '{form}' has {num_stages} stages, so `blocks` needs {num_stages} entries. "
            f"Received: blocks={blocks!r}"
        )
    for b in blocks:
        _check_positive_int("blocks[i]", b)
    implied = _CONVS_PER_BLOCK[block_type] * sum(blocks) + 2
    if depth is not None and depth != implied:
        raise ValueError(
            f"`depth`={depth!r} does not match blocks={blocks!r}, which give depth {implied} "
            f"({_CONVS_PER_BLOCK[block_type]} convs per {block_type} block + stem + classifier)."
        )
    return blocks


def _check_width(width, base):
    ok = (
        isinstance(width, (int, float))
        and not isinstance(width, bool)
        and math.isfinite(width)
        and width > 0
    )
    if not ok:
        raise ValueError(f"`width` must be a positive number. Received: width={width!r}")
    widths = [c * width for c in base]
    if any(abs(c - round(c)) > 1e-9 for c in widths):
        raise ValueError(
            f"`width`={width!r} gives non-integer channel counts {widths}; pick a width for which "
            f"every stage width {list(base)} x width is an integer."
        )
    return [int(round(c)) for c in widths]


def total_stride(form: str) -> int:
    """Total downsampling of a form's feature extractor (minimum input side)."""
    return 4 if form == "cifar" else 32


def model_depth(blocks, block_type) -> int:
    """Depth counted on the longest path: stem conv + convs of every block + classifier."""
    return _CONVS_PER_BLOCK[block_type] * sum(blocks) + 2
