"""Preprocessing that travels with the model, the data config of a model, other input channels.

* ``create_model(..., include_preprocessing=True)`` (and every application function) puts
  ``Rescaling(1/255)`` + ``Normalization(mean, std**2)`` in front of the network, keras
  EfficientNetV2 / ConvNeXt style: the model takes 0-255 RGB pixels, and so do its ``.keras``
  file and its SavedModel / ONNX / TFLite exports. It is on by default when weights given by tag
  are loaded (their manifest entry says how their training images were normalised);
  :func:`preprocessing_of` decides.
* :func:`data_config` is timm's ``resolve_model_data_config``: input size, mean, std,
  interpolation, crop fraction, for a name, a ``name.tag`` key or a built model.
* :func:`adapt_input_conv` is timm's rule for pretrained weights on another channel count (sum
  the stem kernel over its input channels for 1 channel; repeat it and rescale by 3/C for C).
* :func:`reset_head` gives a model in hand a new classifier (timm's ``reset_classifier``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from dmr_keras.arch import _DEFAULTS
from dmr_keras.dataset_stats import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import keras

# The normalisation a form's networks are trained with when nothing else is known (the
# dataset the form is made for): CIFAR-10's for the CIFAR form, ImageNet's for the others.
_FORM_DATA = {
    "cifar": dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, crop_pct=1.0, dataset="cifar10"),
    "imagenet": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875,
                     dataset="imagenet2012"),
}
INTERPOLATION = "bilinear"  # how dmr_keras.data resizes images (folders, ImageNet)
RESCALING, NORMALIZATION = "rescaling", "normalization"  # the layers' stable names


def _form_data(form: str) -> dict:
    return _FORM_DATA["cifar" if form == "cifar" else "imagenet"]


def channel_stats(mean, std, in_chans: int) -> tuple[list, list]:
    """Per-channel mean and std for ``in_chans`` channels from 3-channel ones: their average
    for 1 channel (a gray image), cycled (R, G, B, R, ...) for more."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if in_chans == len(mean):
        return mean, std
    if in_chans == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    return ([mean[i % len(mean)] for i in range(in_chans)],
            [std[i % len(std)] for i in range(in_chans)])


def preprocessing_of(include_preprocessing, *, form: str, entry=None, weights=None,
                     in_chans: int = 3) -> dict | None:
    """The ``{"mean": [...], "std": [...]}`` (in [0, 1] pixel units) a model puts in front of
    its network, or None for none.

    ``include_preprocessing``: None (default) means True when ``entry`` (weights given by tag)
    is known, else False; True takes the entry's normalisation, or the form's dataset's without
    weights (CIFAR-10 for ``cifar``, ImageNet otherwise); a dict ``{"mean": ..., "std": ...}``
    is used as given. True with weights from a file (no entry) is an error: the file does not
    say how its training images were normalised.
    """
    if include_preprocessing is None:
        include_preprocessing = entry is not None
    if include_preprocessing is False:
        return None
    if isinstance(include_preprocessing, dict):
        try:
            mean = [float(m) for m in include_preprocessing["mean"]]
            std = [float(s) for s in include_preprocessing["std"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                "`include_preprocessing` as a dict needs 'mean' and 'std' lists (per channel, "
                "in [0, 1] pixel units). Received: "
                f"include_preprocessing={include_preprocessing!r}") from None
        if len(mean) != in_chans or len(std) != in_chans or min(std) <= 0:
            raise ValueError(
                f"`include_preprocessing` needs {in_chans} means and {in_chans} positive stds "
                f"(one per input channel). Received: mean={mean}, std={std}")
        return {"mean": mean, "std": std}
    if include_preprocessing is not True:
        raise ValueError("`include_preprocessing` must be True, False, None (True when "
                         "weights are given by tag) or a dict with 'mean' and 'std'. Received: "
                         f"include_preprocessing={include_preprocessing!r}")
    if entry is not None:
        source = entry.preprocessing
    elif weights is not None:
        raise ValueError(
            f"include_preprocessing=True: the weights file {str(weights)!r} does not say how its "
            "training images were normalised. Fix: pass include_preprocessing={'mean': [...], "
            "'std': [...]} (per channel, in [0, 1] pixel units: dmr-train records them in "
            "metrics.json under data), or include_preprocessing=False and normalise yourself.")
    else:
        source = _form_data(form)
    mean, std = channel_stats(source["mean"], source["std"], in_chans)
    return {"mean": mean, "std": std}


def preprocessing_layers(x, pre: dict):
    """``x`` (0-255 pixels) -> ``(x / 255 - mean) / std``, as two stable-named Keras layers."""
    import keras

    x = keras.layers.Rescaling(1.0 / 255.0, name=RESCALING)(x)
    return keras.layers.Normalization(
        mean=list(pre["mean"]), variance=[s * s for s in pre["std"]], name=NORMALIZATION)(x)


def model_preprocessing(model) -> dict | None:
    """The ``{"mean", "std"}`` of a model's own preprocessing layers, or None without them."""
    names = [layer.name for layer in model.layers]
    if NORMALIZATION not in names:
        return None
    config = model.get_layer(NORMALIZATION).get_config()
    mean = np.ravel(np.asarray(config["mean"], "float64"))
    std = np.sqrt(np.ravel(np.asarray(config["variance"], "float64")))
    return {"mean": [round(float(m), 7) for m in mean], "std": [round(float(s), 7) for s in std]}


def data_config(name_or_model) -> dict:
    """How to feed a model, timm's ``resolve_model_data_config``.

    Args:
        name_or_model: a registered name (``"dmrnet_20"``: its first pretrained weights' data,
            else the form's defaults), a ``"name.tag"`` key (those weights' data), or a built
            Keras model (its own preprocessing layers where it has them, else its name as a
            registered name).

    Returns:
        ``input_size`` (H, W, C), ``mean`` and ``std`` (per channel, [0, 1] pixel units: the
        network sees ``(pixels / 255 - mean) / std``), ``interpolation``, ``crop_pct`` (1.0:
        no centre crop), ``pixel_range`` (0-255), ``preprocessing_in_model`` (the model takes
        0-255 pixels itself: pass raw images) and ``source`` (which weights or default the
        numbers come from).

    Example:
    >>> data_config("dmrnet_20.cifar10")["mean"]
    [0.4914, 0.4822, 0.4465]
    """
    from zoo.registry import get_variant, split_name
    from zoo.weights import load_manifest

    in_model = None
    model_shape = None
    if not isinstance(name_or_model, str):
        model = name_or_model
        in_model = model_preprocessing(model)
        model_shape = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
        name = model.name
    else:
        name = name_or_model
    base, tag = split_name(name)
    try:
        variant = get_variant(base)
    except ValueError:
        if in_model is None:
            raise ValueError(
                f"data_config: {name!r} is not a registered model and the model carries no "
                "preprocessing layers, so how to feed it is unknown. Fix: pass the registered "
                "name or 'name.tag' it was built from, or build it with "
                "include_preprocessing=...") from None
        variant = None
    manifest = load_manifest()
    entry = None
    if tag is not None:
        key = f"{base}.{tag}"
        if key not in manifest:
            raise ValueError(f"Unknown weights {key!r}: registered keys are "
                             f"{', '.join(sorted(manifest)) or 'none'}.")
        entry = manifest[key]
    elif variant is not None and in_model is None:
        keys = sorted(k for k, e in manifest.items() if e.model == base)
        entry = manifest[keys[0]] if keys else None
    form = variant.config["form"] if variant is not None else "cifar"
    defaults = _form_data(form)
    if in_model is not None:
        stats, source = in_model, "the model's preprocessing layers"
    elif entry is not None:
        stats, source = entry.preprocessing, f"weights {entry.model}.{entry.tag}"
    else:
        stats, source = defaults, f"the {form} form's default ({defaults['dataset']})"
    size = (model_shape or (entry.input_shape if entry is not None else None)
            or _DEFAULTS[form]["input_shape"])
    return {
        "input_size": tuple(size),
        "mean": [float(m) for m in stats["mean"]],
        "std": [float(s) for s in stats["std"]],
        "interpolation": INTERPOLATION,
        "crop_pct": float(defaults["crop_pct"]),
        "pixel_range": (0, 255),
        "preprocessing_in_model": in_model is not None,
        "source": source,
    }


def adapt_input_conv(kernel, in_chans: int) -> np.ndarray:
    """A stem kernel ``(kh, kw, C, F)`` made for ``C`` input channels, for ``in_chans`` (timm's
    ``adapt_input_conv``, channels-last): 1 channel sums it over ``C``, so a gray image gives
    what its ``C``-channel copy gives; more channels repeat it (R, G, B, R, ...) and scale it by
    ``C / in_chans``, so the activations keep their scale."""
    kernel = np.asarray(kernel)
    c = kernel.shape[2]
    if in_chans == c:
        return kernel.copy()
    if in_chans == 1:
        return kernel.sum(axis=2, keepdims=True)
    reps = math.ceil(in_chans / c)
    return np.tile(kernel, (1, 1, reps, 1))[:, :, :in_chans, :] * (c / in_chans)


def reset_head(model: keras.Model, classes: int, classifier_activation="same",
               name: str | None = None) -> keras.Model:
    """A model with a new classifier for ``classes`` outputs on ``model``'s backbone (timm's
    ``reset_classifier``, for a model already in hand).

    The new model shares every other layer (and its weights) with ``model``; the new
    ``predictions`` layer starts from the package's classifier initialiser. ``classes=0``
    returns the pooled features (no classifier). ``classifier_activation="same"`` keeps the old
    head's activation; None gives logits.

    Example:
    >>> from zoo import create_model
    >>> model = reset_head(create_model("dmrnet_8_tiny"), 5)
    >>> model.output_shape
    (None, 5)
    """
    import keras

    from dmr_keras.checks import integer
    from dmr_keras.layers import classifier_initializer

    integer("classes", classes, 0)
    names = [layer.name for layer in model.layers]
    if "avg_pool" not in names:
        raise ValueError(
            f"reset_head: model {model.name!r} has no 'avg_pool' layer to put a classifier on "
            "(built with include_top=False and pooling other than 'avg'?). Fix: build it with "
            "include_top=True, or pooling='avg'.")
    features = model.get_layer("avg_pool").output
    old = model.get_layer("predictions") if "predictions" in names else None
    if classifier_activation == "same":
        classifier_activation = old.get_config()["activation"] if old is not None else None
    if classes == 0:
        output = features
    else:
        dtype = old.dtype_policy if old is not None else None
        output = keras.layers.Dense(
            classes, activation=classifier_activation,
            kernel_initializer=classifier_initializer(),
            kernel_regularizer=old.kernel_regularizer if old is not None else None,
            bias_regularizer=old.bias_regularizer if old is not None else None,
            dtype=dtype, name="predictions")(features)
    inputs = model.inputs if len(model.inputs) > 1 else model.inputs[0]
    return keras.Model(inputs, output, name=name or model.name)
