"""Whole-network comparison of ``build_model`` against the float64 NumPy reference.

Every Keras weight is randomised (so a wrong wiring, scale or padding cannot hide
behind identity-like initialisations), copied into ``tests/reference_numpy.py``,
and the logits are compared.  The sensitivity tests show that plausible wrong
variants of the reference disagree with the model beyond the tolerance, so the
comparison could catch those bugs.
"""

import functools
import zlib

import keras
import numpy as np
import pytest

from dmr_keras import build_model
from tests.reference_numpy import TrackingParams, reference_logits

RTOL = 1e-4
ATOL_FRACTION = 1e-4  # atol = ATOL_FRACTION * max|logit|

CASES = {
    "cifar_k2": dict(form="cifar", depth=14, width=0.5, num_branches=2,
                     mapping="merge_and_run", size=32),
    "cifar_k3": dict(form="cifar", depth=14, width=0.5, num_branches=3,
                     mapping="merge_and_run", size=32),
    "cifar_identity_k2": dict(form="cifar", depth=14, width=0.5, num_branches=2,
                              mapping="identity", size=32),
    "cifar_resnet": dict(form="cifar", depth=14, width=0.5, num_branches=None,
                         mapping="resnet", size=32),
    "in2016_k2_64": dict(form="imagenet2016", blocks=(1, 1, 2, 1), width=0.125,
                         num_branches=2, mapping="merge_and_run", size=64),
    "in2016_k2_67": dict(form="imagenet2016", blocks=(1, 1, 2, 1), width=0.125,
                         num_branches=2, mapping="merge_and_run", size=67),
    "in2016_k3_64": dict(form="imagenet2016", blocks=(1, 1, 2, 1), width=0.125,
                         num_branches=3, mapping="merge_and_run", size=64),
    "in2018_k2_64": dict(form="imagenet2018", blocks=(1, 1, 2, 2), width=0.125,
                         num_branches=2, mapping="merge_and_run", size=64),
    "in2018_k2_67": dict(form="imagenet2018", blocks=(1, 1, 2, 2), width=0.125,
                         num_branches=2, mapping="merge_and_run", size=67),
    "in2018_k3_64": dict(form="imagenet2018", blocks=(1, 1, 2, 2), width=0.125,
                         num_branches=3, mapping="merge_and_run", size=64),
}


def _bn_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _randomise(model, rng):
    """Random weights keeping activations O(1); returns {path: float64 array}."""
    for v in model.weights:
        name = v.path.rsplit("/", 1)[-1]
        shape = tuple(v.shape)
        if name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("beta", "moving_mean", "bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        else:
            raise AssertionError(f"unexpected weight {v.path}")
        v.assign(value.astype(v.dtype))
    return {v.path: np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)
            for v in model.weights}


@functools.lru_cache(maxsize=None)
def _case(name):
    """(model logits float32 -> float64, params, input, reference kwargs)."""
    cfg = dict(CASES[name])
    size = cfg.pop("size")
    model = build_model(cfg.get("depth"), form=cfg["form"], blocks=cfg.get("blocks"),
                        width=cfg["width"], num_branches=cfg["num_branches"],
                        mapping=cfg["mapping"], input_shape=(size, size, 3), classes=10,
                        classifier_activation=None)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    weights = _randomise(model, rng)
    bns = _bn_layers(model)
    assert bns or cfg["form"] == "imagenet2018"
    for layer in bns:
        assert layer.epsilon == pytest.approx(2e-5), (layer.name, layer.epsilon)
        assert layer.momentum == pytest.approx(0.9), (layer.name, layer.momentum)
        prefix = layer.moving_mean.path.rsplit("/", 1)[0]
        weights[f"{prefix}/epsilon"] = float(layer.epsilon)
    # Two images with different statistics, so that the globally pooled features
    # (and hence the logits) depend strongly on the input.
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    smooth = np.stack([2 * np.sin(3 * xx + 1), 3 * yy * xx - 1, 2 * np.cos(4 * yy)], axis=-1)
    x = np.stack([rng.normal(0.0, 1.0, (size, size, 3)),
                  smooth + rng.normal(0.0, 0.3, (size, size, 3))])
    x = x.astype("float32")
    got = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float64)
    return got, weights, x, cfg


def _reference(name, **variant):
    _, weights, x, cfg = _case(name)
    params = TrackingParams(weights)
    ref = reference_logits(params, x.astype(np.float64), **cfg, **variant)
    return ref, params


def _errors(got, ref):
    abs_err = np.max(np.abs(got - ref))
    return abs_err, abs_err / np.max(np.abs(ref))


def _agrees(got, ref):
    atol = ATOL_FRACTION * np.max(np.abs(ref))
    return np.allclose(got, ref, rtol=RTOL, atol=atol)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_reference(name):
    got, weights, _, _ = _case(name)
    ref, params = _reference(name)
    assert got.shape == ref.shape == (2, 10)
    # The reference read every weight of the model (nothing extra, nothing skipped).
    unused = sorted(set(weights) - params.used)
    assert not unused, f"weights the reference never used: {unused}"
    # Logits are non-degenerate: O(1), differ between classes and between images.
    scale = np.max(np.abs(ref))
    assert 1e-2 < scale < 1e3, scale
    assert np.min(np.std(ref, axis=1)) > 1e-2 * scale
    assert np.max(np.abs(ref[0] - ref[1])) > 0.02 * scale
    abs_err, rel_err = _errors(got, ref)
    print(f"{name}: max|logit| {scale:.3g}, max abs err {abs_err:.3g}, "
          f"rel to max|logit| {rel_err:.3g}")
    np.testing.assert_allclose(
        got, ref, rtol=RTOL, atol=ATOL_FRACTION * scale,
        err_msg=f"{name}: max abs err {abs_err:.3g}, rel to max|logit| {rel_err:.3g}")


WRONG_VARIANTS = [
    # CIFAR last block as relu(sum_k (skip + H_k)) instead of relu(skip + sum_k H_k).
    ("cifar_k2", dict(head="sum_streams")),
    ("cifar_k3", dict(head="sum_streams")),
    # Keras 'same' padding (bottom/right only at stride 2 on even sizes).
    ("cifar_k2", dict(padding="keras_same")),
    ("in2016_k2_64", dict(padding="keras_same")),
    ("in2018_k2_64", dict(padding="keras_same")),
    # Merge by summing the streams' skips instead of averaging.
    ("cifar_k2", dict(skip_scale="sum")),
    ("in2018_k2_64", dict(skip_scale="sum")),
    # ImageNet 2016 last block with the CIFAR head relu(skip + sum_k H_k).
    ("in2016_k2_64", dict(head="merged_once")),
    # ImageNet 2018 stem pool padded with zeros instead of -inf (stem has no ReLU).
    ("in2018_k2_67", dict(pool_pad_value=0.0)),
]


@pytest.mark.parametrize(
    "name,variant", WRONG_VARIANTS,
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in var.items())}" for n, var in WRONG_VARIANTS])
def test_wrong_reference_variant_is_detected(name, variant):
    got = _case(name)[0]
    right, _ = _reference(name)
    wrong, _ = _reference(name, **variant)
    assert _agrees(got, right)
    # The wrong variant misses by far more than the tolerance.
    atol = ATOL_FRACTION * np.max(np.abs(wrong))
    excess = np.max(np.abs(got - wrong) - (atol + RTOL * np.abs(wrong)))
    assert not _agrees(got, wrong)
    assert excess > 10 * atol, (excess, atol)
