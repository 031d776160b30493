"""Registry machinery: ``list_models``, ``create_model``, ``model_info``.

The table of variants is data, in ``zoo/variants.py``; pretrained weights are described by the
manifest of ``zoo/weights.py``. Names may carry a weight tag, timm style: ``dmrnet_8_tiny.digits``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING

from dmr_keras.arch import _DEFAULTS, _resolve_blocks, model_depth

if TYPE_CHECKING:  # Keras is imported when a model is built, not when the registry is read
    import keras


@dataclasses.dataclass(frozen=True)
class Variant:
    """One named model: builder arguments, its parameter count and the paper's figures."""

    name: str
    config: dict
    params: int
    macs: int = 0
    description: str = ""
    paper: dict = dataclasses.field(default_factory=dict)
    reference_params: float | None = None


@functools.cache
def _builder_args() -> frozenset:
    from dmr_keras.models import build_model

    return frozenset(inspect.signature(build_model).parameters)


def _variants() -> dict:
    from zoo.variants import VARIANTS  # the table imports this module's Variant

    return VARIANTS


def _manifest() -> dict:
    from zoo import weights

    return weights.load_manifest()


def split_name(name: str) -> tuple[str, str | None]:
    """``"dmrnet_56.cifar10"`` -> ``("dmrnet_56", "cifar10")``; no tag -> ``(name, None)``."""
    model, _, tag = str(name).partition(".")
    return model, (tag or None)


def get_variant(name: str) -> Variant:
    """The registered :class:`Variant` for ``name``; ``ValueError`` listing close matches."""
    variants = _variants()
    if name in variants:
        return variants[name]
    close = difflib.get_close_matches(str(name), variants, n=4, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}? " if close else ""
    raise ValueError(
        f"Unknown model name {name!r}. {hint}Registered models: {', '.join(sorted(variants))}"
    )


def weight_tags(name: str) -> list[str]:
    """The pretrained weight tags registered for a model name."""
    return sorted(e.tag for e in _manifest().values() if e.model == name)


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted.

    With ``pretrained=True``: the ``name.tag`` keys that have weights (timm style).

    Example:
    >>> list_models("dilnet_*")
    ['dilnet_56']
    """
    if pretrained:
        keys = [k for k, e in _manifest().items() if e.model in _variants()]
        return sorted(k for k in keys
                      if fnmatch.fnmatchcase(k, pattern)
                      or fnmatch.fnmatchcase(split_name(k)[0], pattern))
    return sorted(n for n in _variants() if fnmatch.fnmatchcase(n, pattern))


def resolve_weights(name: str, weights) -> tuple[Path, int, object]:
    """``(file, classes of its head, manifest entry or None)`` for a tag or a file path."""
    from dmr_keras.training import head_classes_in_weights_file
    from zoo import weights as weights_lib

    manifest = _manifest()
    key = f"{name}.{weights}"
    if key in manifest:
        entry = manifest[key]
        return weights_lib.resolve(entry), entry.classes, entry
    path = Path(str(weights)).expanduser()
    if path.suffix in (".h5", ".keras") or "/" in str(weights):
        if not path.exists():
            raise ValueError(f"The `weights` file does not exist: {path}")
        if str(path).endswith(".weights.h5"):
            return path, head_classes_in_weights_file(path), None
        if path.suffix == ".keras":
            from zoo.weights_check import keras_head_classes, load_keras_model

            # the head's width from the file's config; the model itself is loaded once, by
            # load_pretrained (a headless file has no 'predictions': then it is loaded here)
            classes = keras_head_classes(path)
            if classes is None:
                classes = int(load_keras_model(path).output_shape[-1])
            return path, classes, None
        raise ValueError(f"`weights` must be a .weights.h5 or .keras file. Received: {path}")
    tags = weight_tags(name)
    raise ValueError(
        "The `weights` argument should be None, a registered tag for "
        f"{name} ({', '.join(repr(t) for t in tags) or 'none registered yet'}), or the path to "
        f"a .weights.h5 / .keras file. Received: weights={weights!r}"
    )


def _load_local(path: Path, weights=None, overrides=None) -> keras.Model:
    """A tuned or trained model saved as ``.keras``, or a local manifest pointing to one.

    With ``overrides`` (``classes=5``, ...), a manifest that records the model's
    ``build_kwargs`` (``best.json`` from ``dmr-tune``) rebuilds the model with them and copies
    the saved weights in, the head only where it still fits; a bare ``.keras`` file cannot be
    rebuilt and raises ``ValueError`` saying what to do instead."""
    from zoo.weights_check import load_keras_model

    record, manifest = None, path
    if path.suffix == ".json":
        if not path.is_file():
            raise ValueError(f"The model manifest {path} does not exist (a best.json written "
                             "by dmr-tune, or a registered model name: zoo.list_models()).")
        try:
            record = json.loads(path.read_text())
            target = Path(record["model_path"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a model manifest with 'model_path': "
                             f"{type(err).__name__}: {err}") from None
        path = target if target.is_absolute() else path.parent / target
    if not path.exists():
        named = f" (named by {manifest})" if record is not None else ""
        raise ValueError(f"Model file not found: {path}{named}")
    if weights is not None:
        raise ValueError(
            f"{manifest} is a saved model with its own weights: `weights`={weights!r} cannot "
            f"apply. Fix: create_model({str(manifest)!r}) alone, or a registered model name "
            "with `weights`.")
    overrides = dict(overrides or {})
    build_kwargs = (record or {}).get("build_kwargs")
    if overrides and not isinstance(build_kwargs, dict):
        args = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise ValueError(
            f"{manifest} is a saved model: it loads as it was saved, so {args} cannot apply "
            "(it records no build_kwargs to rebuild it with). Fix: fine-tune it with dmr-train "
            f"--model NAME --init-weights {path} (NAME: its registered architecture), or load "
            f"it with create_model({str(manifest)!r}) and replace the head.")
    source = load_keras_model(path)
    if not overrides:
        return source
    from dmr_keras.models import build_model
    from dmr_keras.training import transfer_weights

    unknown = set(overrides) - _builder_args()
    if unknown:
        raise ValueError(f"Unknown argument(s) for create_model({str(manifest)!r}): "
                         f"{sorted(unknown)}. Valid: {sorted(_builder_args())}")
    kwargs = {**build_kwargs, **overrides}
    for key in ("input_shape", "blocks"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    model = build_model(**kwargs)
    names = [layer.name for layer in model.layers]
    head_fits = ("predictions" in names and "predictions" in [x.name for x in source.layers]
                 and model.get_layer("predictions").units == source.get_layer("predictions").units)
    try:
        transfer_weights(source, model, skip=() if head_fits else ("predictions",))
    except ValueError as err:
        raise ValueError(f"{manifest}: {err} Only arguments that keep the backbone can change "
                         "(classes, include_top, pooling, input_shape, ...).") from None
    return model


def create_model(model_name: str, weights=None, *, include_preprocessing=None,
                 in_chans: int | None = None, features_only: bool = False, out_indices=None,
                 stream_merge: str = "mean", **overrides) -> keras.Model:
    """Build a registered variant, optionally with pretrained weights (timm / keras-hub style).

    Args:
        model_name: a registered name (``list_models()``), optionally with a weight tag
            (``"dmrnet_8_tiny.digits"``), or the path of a ``.keras`` file or of a local
            manifest (``best.json`` from ``dmr-tune``) to load a saved model as it is.
        weights: ``None`` (random init), a registered tag, or a ``.weights.h5`` / ``.keras``
            file of the same architecture.
        include_preprocessing: put ``Rescaling(1/255)`` + ``Normalization(mean, std**2)`` in
            front of the network, so that the model (and its ``.keras`` file and exports) takes
            0-255 pixels. ``None`` (default): on when weights are given by tag (with their
            manifest's mean and std), off otherwise. ``True`` without weights uses the form's
            dataset (CIFAR-10 / ImageNet); a dict ``{"mean": [...], "std": [...]}`` sets them.
            :func:`zoo.data_config` tells which.
        in_chans: input channels (timm's name; the last entry of ``input_shape``). With
            pretrained weights the stem kernel is adapted (:func:`zoo.adapt_input_conv`: summed
            for 1 channel, repeated and rescaled for more).
        features_only: return a feature extractor instead of a classifier: one output per
            level (``out_indices``; 0 is the stem, 1.. the stages), with ``model.feature_info``
            (:func:`dmr_keras.features_model`). ``stream_merge`` (``"mean"``, ``"sum"`` or
            ``"concat"``) says how a stage's K streams become one tensor.
        **overrides: :func:`dmr_keras.build_model` arguments (``classes``, ``include_top``,
            ``pooling``, ``input_shape``, ...). With weights and a class count other than the
            weights' (or ``include_top=False``), the backbone is loaded and a new head built.
            A ``best.json`` takes them too (rebuilt from its ``build_kwargs``, the saved
            weights copied in); a bare ``.keras`` file loads as saved, without overrides.

    A weights file that is truncated, not HDF5 or made for another architecture raises a
    one-line ``ValueError`` naming the file, the problem and the fix
    (:mod:`zoo.weights_check`).

    Example:
    >>> model = create_model("dmrnet_14", classes=5, input_shape=(None, None, 3))
    >>> model.output_shape
    (None, 5)
    """
    if str(model_name).endswith((".keras", ".json")):
        extra = {k: v for k, v in dict(include_preprocessing=include_preprocessing,
                                        in_chans=in_chans, features_only=features_only or None,
                                        out_indices=out_indices).items() if v is not None}
        if extra:
            raise ValueError(
                f"{model_name} is a saved model: {', '.join(sorted(extra))} cannot apply to it. "
                "Fix: create_model(NAME, weights=PATH_TO_WEIGHTS, ...) with its registered "
                "architecture.")
        return _load_local(Path(model_name).expanduser(), weights, overrides)
    from dmr_keras.models import build_model
    from zoo.preprocessing import preprocessing_layers, preprocessing_of

    base, tag = split_name(model_name)
    if tag is not None:
        if weights not in (None, tag):
            raise ValueError(f"{model_name!r} names the weights {tag!r}; `weights`={weights!r} "
                             "contradicts it. Pass one of them.")
        weights = tag
    variant = get_variant(base)
    unknown = set(overrides) - _builder_args()
    if unknown:
        raise ValueError(
            f"Unknown argument(s) for create_model({model_name!r}): {sorted(unknown)}. "
            f"Valid: {sorted(_builder_args())}"
        )
    kwargs = {**variant.config, "name": base, **overrides}
    if "blocks" in overrides and "depth" not in overrides:
        kwargs.pop("depth", None)
    form = variant.config["form"]
    if features_only:
        kwargs.update(include_top=False, pooling=None)
    elif out_indices is not None:
        raise ValueError("`out_indices` applies to features_only=True only. Received: "
                         f"out_indices={out_indices!r}")
    in_chans = _input_channels(kwargs, in_chans, form)

    path = weight_classes = entry = None
    if weights is not None:
        path, weight_classes, entry = resolve_weights(base, weights)
    pre = preprocessing_of(include_preprocessing, form=form, entry=entry,
                           weights=None if entry is not None else weights, in_chans=in_chans)
    if pre is not None:
        if kwargs.get("input_tensor") is not None:
            raise ValueError("include_preprocessing and input_tensor together: put your own "
                             "preprocessing before input_tensor, or pass "
                             "include_preprocessing=False.")
        import keras

        shape = tuple(kwargs.pop("input_shape", None) or _DEFAULTS[form]["input_shape"])
        kwargs["input_tensor"] = preprocessing_layers(keras.Input(shape, name="input"), pre)
    model = build_model(**kwargs)
    if weights is not None:
        load_pretrained(model, variant, path, weight_classes, entry=entry)
    if features_only:
        from dmr_keras.features import features_model

        model = features_model(model, out_indices=out_indices, stream_merge=stream_merge,
                               name=f"{base}_features")
    return model


def _input_channels(kwargs: dict, in_chans, form: str) -> int:
    """Reconcile ``in_chans`` with ``input_shape`` in ``kwargs`` (set there); the channels."""
    shape = kwargs.get("input_shape")
    if in_chans is None:
        return int(shape[-1]) if shape is not None else 3
    from dmr_keras.checks import integer

    in_chans = integer("in_chans", in_chans, 1)
    if shape is None:
        shape = _DEFAULTS[form]["input_shape"]
    elif shape[-1] != in_chans:
        raise ValueError(f"in_chans={in_chans} contradicts input_shape={tuple(shape)!r} (its "
                         "last entry is the channel count). Pass one of them.")
    kwargs["input_shape"] = (*tuple(shape)[:-1], in_chans)
    return in_chans


def _published_kwargs(variant: Variant, classes: int, input_shape=None) -> dict:
    """:func:`build_model` arguments of the network as its weights were published."""
    kwargs = {**variant.config, "name": variant.name, "classes": classes}
    if input_shape is not None and len(tuple(input_shape)) == 3:
        kwargs["input_shape"] = tuple(input_shape)
    return kwargs


def build_published(entry, path=None) -> keras.Model:
    """The network of a manifest entry as published: its variant, its class count and input
    shape, the default head, float32, with the entry's weights (``path``, else
    :func:`zoo.weights.resolve`). The fingerprint is not checked here."""
    from dmr_keras.models import build_model
    from zoo import weights as weights_lib
    from zoo.fingerprint import float32_policy
    from zoo.weights_check import load_weights_checked

    variant = get_variant(entry.model)
    path = weights_lib.resolve(entry) if path is None else path
    with float32_policy():
        model = build_model(**_published_kwargs(variant, entry.classes, entry.input_shape))
    load_weights_checked(model, path)
    return model


def load_pretrained(model: keras.Model, variant: Variant, path, weight_classes: int,
                    skip_head: bool | None = None, entry=None) -> list:
    """Load a weights file into ``model`` by layer name. The head is loaded when it fits
    (``skip_head=None``), always skipped (``True``: fine-tuning) or required (``False``).

    The weights are first loaded into a *source* network built as they were published (the
    variant with ``weight_classes`` and, given the manifest ``entry``, its input shape; float32
    whatever the dtype policy), then copied into ``model`` layer by layer. When ``entry`` has a
    fingerprint it is checked on that source network
    (:func:`zoo.fingerprint.check_fingerprint`, one forward pass of 4 small images) before
    anything is copied, so a drifted architecture raises ``ValueError`` instead of silently
    computing something else. It is checked on the source rather than on ``model`` because the
    source is always the full published network, whatever head, input size, input tensor or
    classifier activation ``model`` was built with (fine-tuning included): the layers copied
    into ``model`` are the same code and the same tensors. A weights file given by path
    (no manifest entry) is not checked.
    """
    from dmr_keras.models import build_model
    from dmr_keras.training import transfer_weights
    from zoo.fingerprint import check_fingerprint, float32_policy
    from zoo.weights_check import load_keras_model, load_weights_checked

    path = Path(path)
    if path.suffix == ".keras":
        source = load_keras_model(path)
    else:
        shape = entry.input_shape if entry is not None else None
        with float32_policy():
            source = build_model(**_published_kwargs(variant, weight_classes, shape))
        load_weights_checked(source, path)  # one line for a truncated or foreign file
        if entry is not None and entry.fingerprint:
            check_fingerprint(source, entry)
    if skip_head is None:
        skip_head = not ("predictions" in [layer.name for layer in model.layers]
                         and model.get_layer("predictions").units == weight_classes)
    skip = ("predictions",) if skip_head else ()
    stem = _stem_to_adapt(source, model)
    try:
        copied = transfer_weights(source, model, skip=skip + (("stem_conv",) if stem else ()))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if stem:
        from zoo.preprocessing import adapt_input_conv

        kernel = source.get_layer("stem_conv").get_weights()[0]
        model.get_layer("stem_conv").set_weights(
            [adapt_input_conv(kernel, stem).astype(kernel.dtype)])
        copied.append("stem_conv")
    return copied


def _stem_to_adapt(source, model) -> int | None:
    """The channel count of ``model``'s stem when it differs from the weights' (else None)."""
    names = {layer.name for layer in model.layers}
    if "stem_conv" not in names:
        return None
    src, dst = source.get_layer("stem_conv"), model.get_layer("stem_conv")
    if len(src.weights) != 1 or len(dst.weights) != 1:  # a stem with a bias: not ours
        return None
    s, d = tuple(src.weights[0].shape), tuple(dst.weights[0].shape)
    if s[:2] != d[:2] or s[3:] != d[3:] or s[2] == d[2]:
        return None
    return int(d[2])


@functools.cache
def _path_info(model_name: str) -> dict:
    from dmr_keras.paths import path_statistics

    return path_statistics(create_model(model_name))


def path_info(name: str) -> dict:
    """The paths from input to output of a registered variant (the paper's Claim 2), counted
    on the graph of the model as built (:func:`dmr_keras.paths.path_statistics`): num_paths,
    length_in_blocks and length_in_convs (mean, std, min, max), critical_path_convs and the
    histograms. Builds the model (about a second for the 56-layer networks), once per process.
    """
    import copy

    model_name, _ = split_name(name)
    get_variant(model_name)
    return copy.deepcopy(_path_info(model_name))


def model_info(name: str, paths: bool = False) -> dict:
    """The model card of a registered variant, as a plain dict.

    Keys: name, description, params (trainable, paper convention), macs and flops per image,
    depth, width, num_branches (K), mapping, form, block_type, blocks, input_shape, classes,
    paper (the paper's name, rounded parameter count and test errors in %, where it reports
    them), and weights: for each tag, its dataset, measured metrics, input shape,
    preprocessing, the command that produced it and, where recorded, its provenance (package
    versions, wall time, the data's sha256).

    With ``paths=True`` also ``paths``: :func:`path_info`, which builds the model (Keras);
    without it the card is read from the table alone, without Keras.
    """
    model_name, _ = split_name(name)
    v = get_variant(model_name)
    cfg = v.config
    form = cfg["form"]
    block_type = cfg.get("block_type") or _DEFAULTS[form]["block_type"]
    blocks = _resolve_blocks(form, cfg.get("depth"), cfg.get("blocks"), block_type)
    info = {
        "name": v.name,
        "description": v.description,
        "params": v.params,
        "macs": v.macs,
        "flops": 2 * v.macs,
        "depth": model_depth(blocks, block_type),
        "width": cfg.get("width", 1),
        "num_branches": cfg.get("num_branches", 1 if cfg["mapping"] == "resnet" else 2),
        "mapping": cfg["mapping"],
        "form": form,
        "block_type": block_type,
        "blocks": list(blocks),
        "input_shape": list(_DEFAULTS[form]["input_shape"]),
        "classes": _DEFAULTS[form]["classes"],
        "paper": dict(v.paper),
        "weights": {
            e.tag: {
                "dataset": e.dataset,
                "metrics": dict(e.metrics),
                "classes": e.classes,
                "input_shape": list(e.input_shape),
                "preprocessing": dict(e.preprocessing),
                "command": e.command,
                "sha256": e.sha256,
                "license": e.license,
                **({"provenance": dict(e.provenance)} if e.provenance else {}),
            }
            for e in _manifest().values()
            if e.model == v.name
        },
    }
    if v.reference_params is not None:
        info["reference_params"] = v.reference_params
    if paths:
        info["paths"] = path_info(model_name)
    return info
