"""Check a weights file against a model before Keras reads it, so that a bad file gives one line.

Keras reports a truncated or foreign file with a 40-line h5py traceback, or with the values of
every mismatched tensor (a hundred lines and more). Here, instead, a ``ValueError`` names the
file, what is wrong and the fix:

- :func:`load_weights_checked`: compare the layout of a ``.weights.h5`` (read with h5py, no
  tensor is loaded) with the model's, layer by layer, then load it. For another architecture:
  ``layer 'stem_conv' expects kernel shape (3, 3, 3, 8), the file has (3, 3, 3, 16)``, and the
  registered model whose parameter count the file has (:func:`guess_variants`).
- :func:`load_keras_model`: ``keras.saving.load_model`` with the same care for a ``.keras``
  file that is truncated, empty or not a zip archive.
- :func:`keras_head_classes`: the classifier's width from a ``.keras`` file's config, without
  building the model.

The unreadable-file messages come from :func:`dmr_keras.training.describe_unreadable_file`.
No Keras import at module level.
"""

from __future__ import annotations

import collections
import math
import re
import zipfile
from pathlib import Path

# Keras's BatchNormalization saves gamma, beta, moving_mean, moving_variance: 2 and 3 are
# statistics, not parameters.
_BN_STATISTIC = re.compile(r"(^|/)batch_normalization(_\d+)?/vars/[23]$")


def _snake_case(name: str) -> str:
    """``keras.src.utils.naming.to_snake_case``: how Keras names a layer's group in the file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def file_layout(path) -> dict:
    """``{group under 'layers/': [(path inside it, shape), ...]}`` of a Keras 3 ``.weights.h5``."""
    import h5py

    from dmr_keras.training import open_weights_h5

    groups: dict = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            top, _, rest = name.partition("/")
            groups.setdefault(top, []).append((rest, tuple(int(s) for s in obj.shape)))

    with open_weights_h5(path) as f:
        f["layers"].visititems(visit)
    return groups


def model_layout(model) -> dict:
    """``{group name in a weights file: layer}`` for the layers of ``model`` that have weights.

    Keras saves the layers of a functional model under ``layers/<class name in snake case>``,
    numbered ``_1``, ``_2``, ... in the order of ``model.layers`` (``saving_lib
    ._save_container_state``), not under the layers' own names."""
    used: dict = {}
    layout = {}
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        if base in used:
            used[base] += 1
            group = f"{base}_{used[base]}"
        else:
            used[base] = 0
            group = base
        if layer.weights:
            layout[group] = layer
    return layout


def _trainable_count(groups: dict) -> int:
    return sum(math.prod(shape) for top, items in groups.items() for rest, shape in items
               if not _BN_STATISTIC.search(f"{top}/{rest}"))


def _head(groups: dict):
    """``(kernel shape, parameters)`` of the one dense classifier in the file, else None."""
    dense = [items for top, items in groups.items() if top.startswith("dense")]
    kernels = [shape for items in dense for _, shape in items if len(shape) == 2]
    if len(dense) != 1 or len(kernels) != 1:
        return None
    return kernels[0], sum(math.prod(shape) for _, shape in dense[0])


def guess_variants(groups: dict) -> list:
    """The registered models whose trainable parameter count, head aside, is the file's.

    ``Variant.params`` counts the default head (10 or 1000 classes); the file may have another
    class count, so the heads are taken out of both counts (same feature width, same bias)."""
    from dmr_keras.arch import _DEFAULTS
    from zoo.registry import _variants

    head = _head(groups)
    if head is None:
        return []
    (features, classes), head_params = head
    per_class = head_params // classes  # features + 1 with a bias
    backbone = _trainable_count(groups) - head_params
    return sorted(
        v.name for v in _variants().values()
        if v.params - per_class * _DEFAULTS[v.config["form"]]["classes"] == backbone
    )


def _pair(missing_shape, extra: list):
    """The file's shape to name next to a missing one: the first of the same rank."""
    return next((s for s in extra if len(s) == len(missing_shape)), None)


def _layer_problem(layer, items: list) -> str | None:
    """What differs between ``layer``'s variables and the file's ``items`` for it, else None."""
    want = [(w.name.split("/")[-1], tuple(int(d) for d in w.shape)) for w in layer.weights]
    have = [shape for _, shape in items]
    left = collections.Counter(have)
    missing = []
    for name, shape in want:
        if left[shape] > 0:
            left[shape] -= 1
        else:
            missing.append((name, shape))
    extra = list(left.elements())
    if not missing and not extra:
        return None
    if missing:
        name, shape = missing[0]
        other = _pair(shape, extra)
        if other is not None:
            return f"layer '{layer.name}' expects {name} shape {shape}, the file has {other}"
        return (f"layer '{layer.name}' expects {len(want)} variables, among them {name} of shape "
                f"{shape}; the file has {len(have)}, none of that shape")
    return (f"layer '{layer.name}' has {len(want)} variables, the file {len(have)} for it "
            f"(one more of shape {extra[0]})")


def find_mismatch(model, groups: dict) -> str | None:
    """The first layer of ``model`` (in model order) whose variables the file does not have,
    or the file's layers that the model lacks; None when the layouts agree."""
    layout = model_layout(model)
    for group, layer in layout.items():
        if group not in groups:
            return (f"layer '{layer.name}' has no weights in the file (the file has "
                    f"{len(groups)} layers with weights, the model {len(layout)})")
        problem = _layer_problem(layer, groups[group])
        if problem:
            return problem
    extra = [g for g in groups if g not in layout]
    if extra:
        return (f"the file has weights for {len(extra)} more layer(s) than the model "
                f"({len(groups)} against {len(layout)})")
    return None


def mismatch_message(path, model, groups: dict, problem: str) -> str:
    """``PATH does not fit MODEL: PROBLEM. The file seems to be for X ...: the fix.``"""
    label = model.name
    guesses = [g for g in guess_variants(groups) if g != label]
    if len(guesses) == 1:
        g = guesses[0]
        hint = (f"The file seems to be for {g} (zoo.list_models()). Fix: use that model name "
                f"(create_model('{g}', weights=...), --model / --arch {g}), or weights saved "
                f"from {label}.")
    else:
        params = _trainable_count(groups)
        hint = (f"The file is for another architecture ({params:,} parameters; no single "
                f"registered model has that count). Fix: use the model it was saved from, or "
                f"weights saved from {label}.")
    return f"{path} does not fit {label}: {problem}. {hint}"


def _first_line(err: Exception, limit: int = 240) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    text = text.split(" Target variable:")[0]  # Keras appends the tensor's values after this
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_weights_checked(model, path) -> None:
    """``model.load_weights(path)`` for a Keras 3 ``.weights.h5``, after checking that the file
    is readable and holds the model's variables; ``ValueError`` (one line) otherwise."""
    from dmr_keras.training import describe_unreadable_file

    groups = file_layout(path)
    problem = find_mismatch(model, groups)
    if problem:
        raise ValueError(mismatch_message(path, model, groups, problem))
    try:
        model.load_weights(path)
    except (OSError, RuntimeError, KeyError) as err:  # h5py, reading a damaged dataset
        raise ValueError(describe_unreadable_file(path, "weights", _first_line(err))) from None
    except ValueError as err:  # a mismatch the layout check missed: its first line only
        raise ValueError(f"{path} does not fit {model.name}: {_first_line(err)}") from None


def keras_head_classes(path) -> int | None:
    """The ``units`` of the layer named ``predictions`` in a ``.keras`` file's ``config.json``
    (read from the zip; nothing is built or loaded), or None when the file has no such layer
    or no readable config (the caller then loads the model)."""
    import json

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    found = []

    def walk(node):
        if isinstance(node, dict):
            cfg = node.get("config")
            if (isinstance(cfg, dict) and cfg.get("name") == "predictions"
                    and isinstance(cfg.get("units"), int)):
                found.append(cfg["units"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found[0] if len(found) == 1 else None


def load_keras_model(path):
    """``keras.saving.load_model(path)`` for a ``.keras`` file; a file that is not a complete
    zip archive (truncated, empty, text, HDF5) or that Keras cannot read raises ``ValueError``
    with one line naming the file, what is wrong and the fix."""
    from dmr_keras.training import describe_unreadable_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(describe_unreadable_file(path, "keras"))
    import keras

    import dmr_keras.layers  # noqa: F401  (registers the layers for deserialization)
    import dmr_keras.training  # noqa: F401  (the schedules a compiled model refers to)

    try:
        return keras.saving.load_model(path)
    except (OSError, EOFError, KeyError, zipfile.BadZipFile):  # a damaged member of the zip
        raise ValueError(describe_unreadable_file(path, "keras")) from None
