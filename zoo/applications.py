"""keras.applications-style functions for every registered variant, generated from the table.

``DMRNet56(include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
classes=None, classifier_activation="softmax", name="dmrnet_56", include_preprocessing=None)``
and one such function per variant (``DMRNet32W4``, ``DILNet56``, ``ResNet110``, ``DMRNet38K3``,
``DMRNet44ImageNet``, ``DMRNet50ImageNet``, ``ResNet101ImageNet``, ...), with
keras.applications' errors: ``ValueError`` for unknown weights, a pretrained head with another
class count, a classifier activation other than softmax/None on a pretrained head.
``classes=None`` means the weights' class count, or the form's default (10 for CIFAR forms,
1000 for ImageNet) without weights. Pretrained weights take any channel count
(``input_shape=(32, 32, 1)``: the stem kernel is adapted, timm style).

With weights given by tag the model takes 0-255 pixels (``include_preprocessing``, on by default
then, as in keras.applications' EfficientNetV2 and ConvNeXt): pass raw images.
:func:`preprocess_input` is for a model built with ``include_preprocessing=False``: it applies
the normalisation stored with the weights entry, and warns when its input does not look like
0-255 pixels. :func:`decode_predictions` gives the entry's class names. :func:`digits_to_images`
turns scikit-learn's 8x8 digits into the 32x32x3 0-255 pixels these models take
(``dmrnet_8_tiny.digits``).
Weights given by tag are checked against the entry's fingerprint when loaded (one forward pass on
4 reference inputs, :mod:`zoo.fingerprint`): a network that has drifted from the published one
raises ``ValueError``.
"""

from __future__ import annotations

import warnings

import numpy as np

from dmr_keras import digits as _digits
from zoo.registry import _variants, create_model, get_variant, resolve_weights, split_name

_PREFIX = {"dmrnet": "DMRNet", "dilnet": "DILNet", "resnet": "ResNet"}
_WORDS = {"imagenet": "ImageNet", "tiny": "Tiny"}


def function_name(variant_name: str) -> str:
    """``dmrnet_32_w4`` -> ``DMRNet32W4``, ``resnet_101_imagenet`` -> ``ResNet101ImageNet``."""
    head, *rest = variant_name.split("_")
    return _PREFIX[head] + "".join(_WORDS.get(p, p.upper() if p[0] in "wk" else p) for p in rest)


def _check_pretrained_head(weights, include_top, classes, classifier_activation, entry_classes):
    if not include_top:
        return
    if classes is not None and classes != entry_classes:
        raise ValueError(
            f"If using `weights={weights!r}` with `include_top=True`, `classes` should be "
            f"{entry_classes}. Received: classes={classes}. For another class count use "
            "include_top=False and your own head, or zoo.create_model(..., classes=N), which "
            "builds a new head on the pretrained backbone."
        )
    if classifier_activation not in (None, "softmax"):
        raise ValueError(
            "Only `None` and `softmax` activations are allowed for the `classifier_activation` "
            "argument when using pretrained weights, with `include_top=True`; Received: "
            f"classifier_activation={classifier_activation!r}"
        )


def _make(variant_name: str):
    def application(
        include_top: bool = True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes: int | None = None,
        classifier_activation="softmax",
        name: str = variant_name,
        include_preprocessing=None,
    ):
        kwargs = dict(include_top=include_top, input_tensor=input_tensor,
                      input_shape=input_shape, pooling=pooling,
                      classifier_activation=classifier_activation, name=name,
                      include_preprocessing=include_preprocessing)
        if weights is not None:
            _, entry_classes, _ = resolve_weights(variant_name, weights)
            _check_pretrained_head(weights, include_top, classes, classifier_activation,
                                   entry_classes)
            classes = entry_classes if include_top else classes
        if classes is not None:
            kwargs["classes"] = classes
        return create_model(variant_name, weights=weights, **kwargs)

    variant = get_variant(variant_name)
    application.__name__ = application.__qualname__ = function_name(variant_name)
    application.__doc__ = f"""Instantiate {variant.description or variant_name}

    keras.applications-style constructor for the registered model ``{variant_name!r}``
    (``zoo.model_info({variant_name!r})`` has its card).

    Args:
        include_top: whether to include the global pooling and classifier.
        weights: ``None`` (random initialization), a registered tag for this model
            (``zoo.list_models({variant_name!r}, pretrained=True)``), or the path to a
            ``.weights.h5`` / ``.keras`` file.
        input_tensor: optional Keras tensor to use as the image input.
        input_shape: optional ``(H, W, C)``; ``(None, None, 3)`` for any size.
        pooling: with ``include_top=False``: ``None``, ``"avg"`` or ``"max"``.
        classes: classifier outputs; ``None`` means the weights' (or the form's default).
        classifier_activation: ``"softmax"`` or ``None`` (logits) with pretrained weights.
        name: model name.
        include_preprocessing: ``Rescaling`` + ``Normalization`` layers in front, so the
            model takes 0-255 pixels; ``None`` means on with weights given by tag, off
            otherwise (``zoo.create_model`` has the details).

    Returns:
        A ``keras.Model``.
    """
    return application


APPLICATIONS = {function_name(n): _make(n) for n in _variants()}
globals().update(APPLICATIONS)
__all__ = sorted(APPLICATIONS) + ["decode_predictions", "digits_to_images", "preprocess_input"]


def _entry(weights: str):
    from zoo.weights import load_manifest

    manifest = load_manifest()
    if weights not in manifest:
        model, tag = split_name(weights)
        raise ValueError(
            f"Unknown weights {weights!r}: pass a 'model.tag' key with weights, one of "
            f"{', '.join(sorted(manifest)) or 'none registered'}."
        )
    return manifest[weights]


def digits_to_images(digits) -> np.ndarray:
    """scikit-learn's 8x8 digits -> the 32x32x3 pixels (0-255) that :func:`preprocess_input`
    takes for ``dmrnet_8_tiny.digits``, exactly as that model's training images were made.

    Args:
        digits: ``(N, 64)`` (``sklearn.datasets.load_digits().data``) or ``(N, 8, 8)``
            (``.images``), grey levels 0..16 as loaded.

    Returns:
        ``(N, 32, 32, 3)`` float32 in [0, 255]: each grey level times 255/16 (16 -> 255), each
        pixel repeated 4x4 (8x8 -> 32x32, nearest neighbour) and over the 3 channels.

    Example:
    >>> from sklearn.datasets import load_digits  # doctest: +SKIP
    >>> pixels = digits_to_images(load_digits().data)  # doctest: +SKIP
    >>> x = preprocess_input(pixels, weights="dmrnet_8_tiny.digits")  # doctest: +SKIP

    Passing the 0..16 values (or the 8x8 images) straight to :func:`preprocess_input` gives
    about 10 % accuracy: it expects 0-255 pixels (and warns). ``dmr_keras.digits`` has the same
    conversion into [0, 1] (``max_value=1``), the units of the ``digits`` training pipeline.
    """
    return _digits.digits_to_images(digits, max_value=255.0)


# preprocess_input's check of its input: pixels are 0-255, so a batch whose largest value is at
# most _SMALL_MAX (while not constant) was almost surely scaled otherwise: [0, 1] images, digits'
# 0..16 grey levels, or an already normalised batch. A valid 0-255 image that dark (every pixel
# at most 16, about 6 % grey) is rare; a constant batch (e.g. all zeros) is not checked.
_SMALL_MAX = 16.5


def _check_pixel_range(x, weights, pre):
    """One ``UserWarning`` when ``x`` does not look like 0-255 pixels (see ``_SMALL_MAX``)."""
    if x.size == 0 or not np.isfinite(x).any():
        return
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if hi > _SMALL_MAX or hi <= lo:
        return
    if lo < 0:
        looks, fix = ("already normalised (negative values)", "pass the 0-255 pixels, not "
                      "preprocess_input's (or another normalisation's) output")
    elif hi <= 1.0 + 1e-6:
        looks, fix = "like [0, 1] images", "multiply by 255"
    else:
        looks, fix = ("like scikit-learn digits' 0..16 grey levels", "multiply by 255/16, or "
                      "convert 8x8 digits with zoo.applications.digits_to_images")
    mean = ", ".join(f"{255 * m:.1f}" for m in pre["mean"])
    warnings.warn(
        f"preprocess_input(weights={weights!r}): the input's values lie in [{lo:.4g}, {hi:.4g}], "
        f"which looks {looks}; it expects pixels in [0, 255] (the weights' training images: "
        f"mean {mean} per channel), else the predictions are near chance. Fix: {fix}. (A "
        "0-255 image this dark, every value <= 16, is rare; if that is what you have, ignore "
        "this warning.)", UserWarning, stacklevel=3)


def preprocess_input(x, weights: str):
    """Images with values in [0, 255] (``(..., H, W, 3)``) -> what ``weights`` expects.

    ``weights`` is a ``"model.tag"`` key; its stored preprocessing (scale to [0, 1], then
    per-channel ``(x - mean) / std``) is applied. Returns float32 NumPy.

    Warns (one ``UserWarning``) when ``x`` does not look like 0-255 pixels: its largest value
    is at most 16.5 while the batch is not constant, as for [0, 1] images (fix: multiply by
    255), scikit-learn's 0..16 digits (multiply by 255/16, or :func:`digits_to_images`) or an
    already normalised batch. Correctly scaled input, a dark image included, is not warned about
    unless every value is at most 16.5.
    """
    pre = _entry(weights).preprocessing
    x = np.asarray(x, dtype="float32")
    _check_pixel_range(x, weights, pre)
    x = x / 255.0
    return (x - np.asarray(pre["mean"], "float32")) / np.asarray(pre["std"], "float32")


def decode_predictions(preds, weights: str, top: int = 5) -> list:
    """For each row of ``preds``: the ``top`` ``(class_index, class_name, score)`` tuples."""
    entry = _entry(weights)
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != entry.classes:
        raise ValueError(
            f"`decode_predictions` expects a batch of predictions of shape (samples, "
            f"{entry.classes}) for {weights!r}. Received shape {preds.shape}"
        )
    names = entry.class_names or tuple(str(i) for i in range(entry.classes))
    result = []
    for row in preds:
        order = np.argsort(row)[::-1][:top]
        result.append([(int(i), names[i], float(row[i])) for i in order])
    return result
