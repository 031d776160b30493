"""Weights that check their own outputs: a manifest entry's *fingerprint*.

A sha256 proves that the weight file is the published one; it cannot tell whether the code that
builds the network around it still computes what the weights were trained for. A BatchNorm
epsilon, a padding, a layer order or the stored preprocessing can drift while every weight
still loads by name and shape. The fingerprint records what the published network outputs on a
few reference inputs that need no data, and :func:`check_fingerprint` recomputes it.

Reference inputs (:func:`reference_inputs`), exactly::

    u = numpy.random.default_rng(seed).random((count, H, W, C))   # float64, uniform [0, 1)
    u = u.astype("float32")
    x = (u - float32(preprocessing["mean"])) / float32(preprocessing["std"])   # float32

with ``(H, W, C)`` the entry's ``input_shape`` and ``mean``/``std`` its preprocessing (per
channel, broadcast over the last axis): what :func:`zoo.applications.preprocess_input` makes of
``u * 255``, i.e. what a user's preprocessed image looks like. ``seed=0``, ``count=4``.

What is stored (the manifest entry's ``"fingerprint"`` object)::

    {"version": 1, "seed": 0, "count": 4, "inputs": "<the recipe above, in words>",
     "output": "logits", "top": 5,
     "indices": [[5 class indices per image, largest first], ...],
     "values":  [[their 5 values], ...],
     "tolerance": <absolute, in the units of "output">}

``output`` is ``"logits"`` (the pre-softmax values, which are far more sensitive than
probabilities: a softmax saturated at 0.9999 hides a logit change of 1) whenever the model has
the zoo's ``predictions`` Dense layer with a softmax or linear activation: the logits are its
kernel and bias applied to its input, whatever ``classifier_activation`` the model was built
with. For other models it is ``"outputs"``, the model's own outputs. ``top`` is
``min(5, classes)``.

The check (:func:`compare`): one float32 forward pass of the 4 images, then per image the
largest of (a) ``|now - stored|`` at the stored top-5 classes and (b) how far any other class
now rises above the stored 5th value; the largest over the images must not exceed
``tolerance``. A near tie at 5th/6th place that swaps under float noise therefore passes; a
class that really moves fails. The message also counts the images whose top-5 set changed.

Tolerance: ``tolerance = REL_TOLERANCE * max(1, max |stored values|)``, ``REL_TOLERANCE =
1e-4`` (``dmrnet_8_tiny.digits``: largest stored logit 30.2, tolerance 3.0e-3). Measured (CPU,
2 cores, Keras 3.15, TensorFlow 2.21, JAX 0.10), as the largest logit difference on the
reference inputs between two float32 runs with the same weights, which should pass:

==============================================================  =========  ==============
same weights, float32                                           absolute   / largest logit
==============================================================  =========  ==============
dmrnet_8_tiny.digits: batch 1 (x4) vs batch 4, TensorFlow        4e-15      1e-16
dmrnet_8_tiny.digits: 1 vs 2 intra/inter-op threads              0          0
dmrnet_8_tiny.digits: JAX vs TensorFlow                          4.3e-06    1.4e-07
dmrnet_56 (random weights, calibrated BN): JAX vs TensorFlow     1.4e-05    1.9e-06
dmrnet_44_imagenet (same, 224x224): batch 1 vs batch 4           1.3e-04    1.5e-06
dmrnet_44_imagenet: JAX vs TensorFlow                            4.2e-04    4.8e-06
stored values rounded to 7 significant digits                    <= 5e-06   1.7e-07
==============================================================  =========  ==============

and the difference :func:`compare` reports for real changes to ``dmrnet_8_tiny.digits``, which
should fail (tolerance 3.0e-3):

==============================================================  ==========
a real change                                                   difference
==============================================================  ==========
BatchNorm epsilon 2e-5 -> 1e-3 (Keras' default), every BN       2.0e-02
stride-2 convolutions padded as Keras ``"same"`` (not k // 2)   8.5e+00
the stem's BatchNorm missing (made the identity)                1.6e+01
one kernel weight of stage2_block1 moved by 1e-2                3.4e-02
preprocessing mean 0.3054 -> 0.3                                5.6e-01
==============================================================  ==========

So float32 noise stays at least 20x inside the tolerance (the deepest model measured) and the
smallest real change measured is 6.6x outside it. Lower precisions do not stay inside: the same
weights under the ``mixed_float16`` policy differ by 8.3e-03. The check therefore runs in true
float32: on a model built under the float32 dtype policy (:func:`float32_policy`, used by
:func:`zoo.registry.load_pretrained` and :func:`zoo.registry.build_published`), with
TensorFloat-32 matmuls and convolutions switched off for its forward pass
(:func:`full_float32`; TF32 keeps float16's 10 mantissa bits). No GPU was available to measure
here; with TF32 off, a GPU's float32 differences come from summation order, like the
JAX-vs-TensorFlow ones above.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

FINGERPRINT_VERSION = 1
SEED = 0
COUNT = 4
TOP = 5
REL_TOLERANCE = 1e-4
INPUTS_RECIPE = ("numpy.random.default_rng(seed).random((count, *input_shape)) (uniform [0, 1)),"
                 " cast to float32, then (u - mean) / std with the entry's preprocessing")


def _preprocessing_arrays(preprocessing: dict, channels: int):
    pre = preprocessing or {}
    mean, std = pre.get("mean"), pre.get("std")
    mean = np.zeros(channels, "float32") if mean is None else np.asarray(mean, "float32")
    std = np.ones(channels, "float32") if std is None else np.asarray(std, "float32")
    return mean, std


def reference_inputs(input_shape, preprocessing: dict, seed: int = SEED,
                     count: int = COUNT) -> np.ndarray:
    """The fingerprint's inputs: seeded uniform noise, normalised as the entry says (float32).

    See the module docstring for the exact recipe."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise ValueError(f"A fingerprint needs a fixed (H, W, C) input shape; got {shape!r}")
    u = np.random.default_rng(seed).random((count, *shape)).astype("float32")
    mean, std = _preprocessing_arrays(preprocessing, shape[-1])
    return ((u - mean) / std).astype("float32")


@contextlib.contextmanager
def full_float32():
    """Run float32 as float32: TensorFloat-32 matmuls and convolutions off (TensorFlow, PyTorch)
    or the highest matmul precision (JAX) for the duration; the previous settings come back."""
    import keras

    backend = keras.backend.backend()
    with contextlib.ExitStack() as stack:
        if backend == "tensorflow":
            import tensorflow as tf

            old = tf.config.experimental.tensor_float_32_execution_enabled()
            tf.config.experimental.enable_tensor_float_32_execution(False)
            stack.callback(tf.config.experimental.enable_tensor_float_32_execution, old)
        elif backend == "jax":
            import jax

            stack.enter_context(jax.default_matmul_precision("float32"))
        elif backend == "torch":  # pragma: no cover
            import torch

            old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

            def restore():
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old

            stack.callback(restore)
        yield


def _head(model):
    """The zoo's ``predictions`` Dense layer when its activation is softmax or linear."""
    import keras

    try:
        layer = model.get_layer("predictions")
    except ValueError:
        return None
    if not isinstance(layer, keras.layers.Dense):
        return None
    act = getattr(layer.activation, "__name__", "")
    return layer if act in ("softmax", "linear") else None


def model_outputs(model, x) -> tuple[np.ndarray, str]:
    """``(values, kind)`` on ``x`` in inference mode: ``kind`` is ``"logits"`` (the
    ``predictions`` layer's kernel and bias on its input) or ``"outputs"``.

    ``x`` is normalised input; a model that carries its own preprocessing layers
    (``include_preprocessing``) gets the 0-255 pixels that its layers turn into ``x``."""
    import keras

    from zoo.preprocessing import model_preprocessing

    pre = model_preprocessing(model)
    if pre is not None:
        mean, std = (np.asarray(pre[k], "float64") for k in ("mean", "std"))
        x = ((np.asarray(x, "float64") * std + mean) * 255.0).astype("float32")
    head = _head(model)
    with full_float32():
        if head is None:
            y = keras.ops.convert_to_numpy(model(x, training=False))
            return y.astype("float64"), "outputs"
        features = keras.Model(model.input, head.input)
        f = keras.ops.convert_to_numpy(features(x, training=False)).astype("float64")
    kernel = keras.ops.convert_to_numpy(head.kernel).astype("float64")
    bias = keras.ops.convert_to_numpy(head.bias).astype("float64") if head.use_bias else 0.0
    return f @ kernel + bias, "logits"


def _entry_field(entry_like, name, default=None):
    if isinstance(entry_like, dict):
        return entry_like.get(name, default)
    return getattr(entry_like, name, default)


def _round(v: float) -> float:
    return float(f"{v:.7g}")


def compute_fingerprint(model, entry_like, *, seed: int = SEED, count: int = COUNT,
                        top: int = TOP) -> dict:
    """The fingerprint of ``model`` (float32, weights loaded) for an entry (a
    :class:`zoo.weights.WeightEntry` or a dict with ``input_shape`` and ``preprocessing``)."""
    x = reference_inputs(_entry_field(entry_like, "input_shape"),
                         _entry_field(entry_like, "preprocessing"), seed, count)
    values, kind = model_outputs(model, x)
    k = min(top, values.shape[-1])
    order = np.argsort(-values, axis=-1, kind="stable")[:, :k]
    stored = np.take_along_axis(values, order, axis=-1)
    scale = max(1.0, float(np.max(np.abs(stored))))
    return {
        "version": FINGERPRINT_VERSION, "seed": seed, "count": count, "inputs": INPUTS_RECIPE,
        "output": kind, "top": k,
        "indices": order.astype(int).tolist(),
        "values": [[_round(v) for v in row] for row in stored.tolist()],
        "tolerance": _round(REL_TOLERANCE * scale),
    }


@contextlib.contextmanager
def float32_policy():
    """Build models in float32 whatever the global dtype policy (the fingerprint is float32)."""
    import keras

    old = keras.config.dtype_policy()
    if old.name == "float32":
        yield
        return
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def compare(model, fingerprint: dict, entry_like) -> dict:
    """Recompute ``fingerprint`` on ``model``: ``{"ok", "difference", "tolerance", "changed",
    "count", "output"}`` (``changed``: images whose top-k class set differs)."""
    version = fingerprint.get("version", FINGERPRINT_VERSION)
    if version != FINGERPRINT_VERSION:
        raise ValueError(f"Fingerprint version {version!r} is not readable by this version "
                         f"(reads {FINGERPRINT_VERSION})")
    count = int(fingerprint["count"])
    x = reference_inputs(_entry_field(entry_like, "input_shape"),
                         _entry_field(entry_like, "preprocessing"), int(fingerprint["seed"]),
                         count)
    values, kind = model_outputs(model, x)
    if kind != fingerprint["output"]:
        raise ValueError(f"The fingerprint holds {fingerprint['output']}, but this model gives "
                         f"{kind}: check it on the model as published (its `predictions` head).")
    indices = np.asarray(fingerprint["indices"], dtype=int)
    stored = np.asarray(fingerprint["values"], dtype="float64")
    if values.shape[0] != count or indices.max() >= values.shape[-1]:
        raise ValueError(f"The model gives outputs of shape {values.shape}; the fingerprint "
                         f"was recorded on {count} images with indices up to {indices.max()}.")
    k = indices.shape[1]
    worst, changed = 0.0, 0
    for row, idx, want in zip(values, indices, stored):
        diff = float(np.max(np.abs(row[idx] - want)))
        others = np.delete(row, idx)
        if others.size:
            diff = max(diff, float(np.max(others)) - float(want[-1]))
        worst = max(worst, diff)
        now = set(np.argsort(-row, kind="stable")[:k].tolist())
        changed += now != set(idx.tolist())
    tolerance = float(fingerprint["tolerance"])
    ok = math.isfinite(worst) and worst <= tolerance
    return {"ok": ok, "difference": worst, "tolerance": tolerance, "changed": changed,
            "count": count, "output": kind, "top": k}


def check_fingerprint(model, entry) -> dict:
    """Raise ``ValueError`` if ``model`` (the published architecture with ``entry``'s weights)
    no longer reproduces ``entry.fingerprint``; returns :func:`compare`'s result otherwise
    (also when the entry has no fingerprint: ``{"ok": True, "difference": None, ...}``)."""
    fingerprint = _entry_field(entry, "fingerprint")
    if not fingerprint:
        return {"ok": True, "difference": None, "tolerance": None}
    result = compare(model, fingerprint, entry)
    if not result["ok"]:
        key = _entry_field(entry, "key", "weights")
        raise ValueError(
            f"{key}: the model's outputs on the reference inputs differ from those recorded "
            f"when the weights were published (largest difference {result['difference']:.3g} "
            f"in {result['output']}, tolerance {result['tolerance']:.3g}; top-{result['top']} "
            f"classes changed for {result['changed']} of {result['count']} images). The "
            "architecture, padding or preprocessing has drifted from the one the weights were "
            "trained with: the file loads (its sha256 matches) but the network built around it "
            "computes something else. Look for changes to dmr_keras.models / dmr_keras.layers "
            "(BatchNorm epsilon, padding, a layer added or removed) or to the entry's "
            "preprocessing since the weights were published; `dmr-zoo verify --deep` checks "
            "every entry. To load these weights into a deliberately changed network anyway, "
            f"pass the file's path (`dmr-zoo fetch {key}`) as `weights=`: a file given by path "
            "is not checked."
        )
    return result
