"""Argument checks shared by every module: one wording for every error.

Each check returns the (normalised) value or raises ``ValueError`` naming the argument, the rule
and the value received: ``"`epochs` must be an integer >= 1. Received: epochs=0"``. Pure Python
(no Keras or TensorFlow import).
"""

from __future__ import annotations

import math
import numbers


def integer(name: str, value, minimum: int = 1, allow_none: bool = False) -> int | None:
    """An integer (not a bool) >= ``minimum``; None passes through with ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def number(name: str, value, minimum: float, strict: bool = False,
           allow_none: bool = False) -> float | None:
    """A finite real number (not a bool) >= ``minimum`` (> with ``strict``)."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"`{name}` must be a number {rel} {minimum}. Received: {name}={value!r}")
    return float(value)


def choice(name: str, value, choices, allow_none: bool = False):
    """One of ``choices`` (or None when ``allow_none``)."""
    if allow_none and value is None:
        return value
    if value not in choices:
        raise ValueError(
            f"Unknown `{name}`: {value!r}. Valid values: {', '.join(repr(c) for c in choices)}")
    return value


def differing_settings(stored: dict, current: dict, keys, now: str = "now") -> list[str]:
    """``"key: OLD there, NEW now"`` for every key whose stored value differs from the current
    one: the wording of the errors that refuse to resume a run or a search with other settings.
    """
    return [f"{k}: {stored.get(k)!r} there, {current[k]!r} {now}" for k in keys
            if stored.get(k) != current[k]]
