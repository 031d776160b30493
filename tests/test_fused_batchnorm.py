"""dmr_keras.layers.BatchNormalization: TensorFlow's fused training kernel behind Keras' layer.

Checked against keras.layers.BatchNormalization with the same config and weights (outputs,
gradients, moving statistics), against float64 for a whole model, and for the cases it must
leave to Keras."""

import keras
import numpy as np
import pytest

from dmr_keras import performance
from dmr_keras.layers import BatchNormalization
from dmr_keras.training import precise_batchnorm
from zoo import create_model

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the fused kernel is the TensorFlow backend's")


def _pair(shape, momentum=0.9, epsilon=2e-5, **kwargs):
    """A fused layer and a Keras one with equal config and random weights and statistics."""
    rng = np.random.default_rng(0)
    layers = [BatchNormalization(momentum=momentum, epsilon=epsilon, **kwargs),
              keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, **kwargs)]
    channels = shape[kwargs.get("axis", -1)]
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(0, 1, channels),
               rng.normal(0, 1, channels), rng.uniform(0.5, 2, channels)]
    for layer in layers:
        layer.build(shape)
        layer.set_weights([w.astype("float32") for w in weights])
    return layers


def _step(layer, x, r, training=True):
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * r)
        return y, tape.gradient(loss, [x, *layer.trainable_weights])

    ops = {op.type for op in step.get_concrete_function(tf.TensorSpec(x.shape)).graph
           .get_operations()}
    y, grads = step(x)
    return (y.numpy(), [g.numpy() for g in grads],
            [w.numpy() for w in layer.non_trainable_weights], ops)


def test_training_step_equals_keras():
    shape = (8, 6, 6, 5)
    rng = np.random.default_rng(1)
    x = rng.normal(1, 3, shape).astype("float32")
    r = rng.normal(0, 1, shape).astype("float32")
    fused, plain = _pair(shape)
    yf, gf, sf, ops_f = _step(fused, x, r)
    yk, gk, sk, ops_k = _step(plain, x, r)
    assert "FusedBatchNormV3" in ops_f and "FusedBatchNormGradV3" in ops_f
    assert "FusedBatchNormV3" not in ops_k
    np.testing.assert_allclose(yf, yk, atol=2e-5)
    for a, b in zip(gf, gk):  # d/dx, d/dgamma, d/dbeta
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(sf, sk):  # moving mean and variance: Keras' biased variance, its momentum
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # The moving statistics moved: the comparison is of an update, not of the initial values.
    assert np.abs(sf[1] - _pair(shape)[0].moving_variance.numpy()).max() > 1e-2


def test_inference_and_frozen_use_the_moving_statistics_and_switching_off_restores_keras():
    shape = (4, 3, 3, 2)
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, shape).astype("float32")
    r = rng.normal(0, 1, shape).astype("float32")
    fused, plain = _pair(shape)
    yf, gf, sf, ops = _step(fused, x, r, training=False)
    yk, gk, sk, _ = _step(plain, x, r, training=False)
    assert "FusedBatchNormV3" in ops
    np.testing.assert_allclose(yf, yk, atol=1e-5)
    for a, b in zip(gf, gk):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(sf, sk):  # inference leaves the moving statistics alone
        np.testing.assert_array_equal(a, b)
    fused.trainable = plain.trainable = False  # frozen: moving statistics even in training
    yf, _, sf, ops = _step(fused, x, r)
    yk, _, sk, _ = _step(plain, x, r)
    assert "FusedBatchNormV3" in ops
    np.testing.assert_allclose(yf, yk, atol=1e-5)
    for a, b in zip(sf, sk):
        np.testing.assert_array_equal(a, b)
    fused.trainable = True
    with performance.fused_batchnorm(False):
        assert "FusedBatchNormV3" not in _step(fused, x, r)[3]
        assert "FusedBatchNormV3" not in _step(fused, x, r, training=False)[3]
    assert BatchNormalization.fused is True
    assert "FusedBatchNormV3" in _step(fused, x, r)[3]


def test_exports_are_traced_with_keras_ops(tmp_path):
    from zoo.export import export_model, run_exported

    model = create_model("dmrnet_8_tiny", input_shape=(8, 8, 3), classes=10,
                         classifier_activation=None)
    x = np.random.default_rng(6).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    path = export_model(model, tmp_path / "sm", "saved_model")
    graph = b"".join(p.read_bytes() for p in path.rglob("*.pb"))
    assert b"FusedBatchNormV3" not in graph and b"FusedBatchNorm" not in graph
    np.testing.assert_allclose(run_exported(path, "saved_model", x),
                               model.predict(x, verbose=0), atol=1e-4)
    assert BatchNormalization.fused is True


@pytest.mark.parametrize("kind", ["mask", "axis1", "rank2", "float16"])
def test_cases_it_leaves_to_keras(kind):
    shape = {"rank2": (6, 4), "axis1": (4, 3, 3, 3)}.get(kind, (4, 3, 3, 2))
    kwargs = {"axis": 1} if kind == "axis1" else {}
    if kind == "float16":
        kwargs["dtype"] = "mixed_float16"
    fused, plain = _pair(shape, **kwargs)
    x = np.random.default_rng(3).normal(0, 1, shape).astype(
        "float16" if kind == "float16" else "float32")
    mask = np.ones(shape[:-1], bool) if kind == "mask" else None
    outs = [layer(x, training=True, mask=mask) for layer in (fused, plain)]
    np.testing.assert_array_equal(*[keras.ops.convert_to_numpy(o) for o in outs])
    np.testing.assert_array_equal(fused.moving_mean.numpy(), plain.moving_mean.numpy())


def test_same_config_and_weights_as_keras(tmp_path):
    fused, plain = _pair((2, 4, 4, 3), gamma_initializer="zeros", name="bn")
    assert fused.get_config() == plain.get_config()
    assert [w.path for w in fused.weights] == [w.path for w in plain.weights]
    model = create_model("dmrnet_8_tiny", input_shape=(8, 8, 3), classes=10)
    bns = [la for la in model._flatten_layers(recursive=True)
           if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(isinstance(la, BatchNormalization) for la in bns)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert all(isinstance(la, BatchNormalization) for la in loaded._flatten_layers(recursive=True)
               if isinstance(la, keras.layers.BatchNormalization))


def _gradients(name, dtype, fused, x, y, weights=None):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        model = create_model(name, input_shape=x.shape[1:], classes=10,
                             classifier_activation=None)
    finally:
        keras.config.set_dtype_policy(saved)
    with performance.fused_batchnorm(fused):
        if weights is not None:
            model.set_weights(weights)
        with tf.GradientTape() as tape:
            logits = model(x.astype(dtype), training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_weights)
    return [np.asarray(g, "float64") for g in grads], model.get_weights(), model


def test_whole_model_gradients_against_float64():
    """A merge-and-run network's float32 gradients through the fused kernel are as close to the
    float64 ones as Keras' own float32 gradients are (both differ from float64 by rounding
    amplified through the depth; the fused path must not add to it)."""
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, 16)
    ref, weights, _ = _gradients("dmrnet_8_tiny", "float64", False, x, y)
    weights32 = [w.astype("float32") for w in weights]
    errors = {}
    for fused in (True, False):
        grads = _gradients("dmrnet_8_tiny", "float32", fused, x, y, weights32)[0]
        errors[fused] = max(float(np.abs(g - r).max() / (np.abs(r).max() + 1e-12))
                            for g, r in zip(grads, ref))
    assert errors[True] <= max(2 * errors[False], 1e-4), errors


def test_precise_batchnorm_through_the_fused_kernel():
    """precise_batchnorm changes each layer's momentum between eager calls: the fused path reads
    it per call and gives Keras' statistics."""
    rng = np.random.default_rng(5)
    batches = [rng.uniform(0, 255, (8, 8, 8, 3)).astype("float32") for _ in range(3)]
    stats = {}
    for fused in (True, False):
        keras.utils.set_random_seed(0)
        model = create_model("dmrnet_8_tiny", input_shape=(8, 8, 3), classes=10)
        with performance.fused_batchnorm(fused):
            assert precise_batchnorm(model, batches) == 3
        stats[fused] = [w.numpy() for w in model.non_trainable_weights]
    for a, b in zip(stats[True], stats[False]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
