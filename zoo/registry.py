"""Registry machinery: ``list_models``, ``create_model``, ``model_info``.

The table of variants is data, in ``zoo/variants.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect

import keras

from dmr_keras.models import _DEFAULTS, _resolve_blocks, build_model, model_depth


@dataclasses.dataclass(frozen=True)
class Variant:
    """One named model: builder arguments, its parameter count and the paper's figures."""

    name: str
    config: dict
    params: int
    description: str = ""
    paper: dict = dataclasses.field(default_factory=dict)
    reference_params: float | None = None


_BUILDER_ARGS = frozenset(inspect.signature(build_model).parameters)


def _variants() -> dict:
    from zoo.variants import VARIANTS  # the table imports this module's Variant

    return VARIANTS


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


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted.

    Example:
    >>> list_models("dilnet_*")
    ['dilnet_56']
    """
    return sorted(n for n in _variants() if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, **overrides) -> keras.Model:
    """Build a registered variant; ``overrides`` are :func:`dmr_keras.build_model` arguments.

    Example:
    >>> model = create_model("dmrnet_14", classes=5, input_shape=(None, None, 3))
    >>> model.output_shape
    (None, 5)
    """
    variant = get_variant(name)
    unknown = set(overrides) - _BUILDER_ARGS
    if unknown:
        raise ValueError(
            f"Unknown argument(s) for create_model({name!r}): {sorted(unknown)}. "
            f"Valid: {sorted(_BUILDER_ARGS)}"
        )
    kwargs = {**variant.config, "name": name, **overrides}
    if "blocks" in overrides and "depth" not in overrides:
        kwargs.pop("depth", None)
    return build_model(**kwargs)


def model_info(name: str) -> dict:
    """The model card of a registered variant, as a plain dict.

    Keys: name, description, params (trainable, paper convention), depth, width,
    num_branches (K), mapping, form, block_type, blocks, input_shape, classes, paper (the
    paper's name, rounded parameter count and test errors in %, where it reports them).
    """
    v = get_variant(name)
    cfg = v.config
    form = cfg["form"]
    block_type = cfg.get("block_type") or _DEFAULTS[form]["block_type"]
    blocks = _resolve_blocks(form, cfg.get("depth"), cfg.get("blocks"), block_type)
    info = {
        "name": v.name,
        "description": v.description,
        "params": v.params,
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
    }
    if v.reference_params is not None:
        info["reference_params"] = v.reference_params
    return info
