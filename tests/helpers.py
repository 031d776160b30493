"""A shared model test, run for every registered variant (modelled on keras-hub's helpers)."""

import copy

import keras
import numpy as np


def _predict(model, x):
    # A direct call: no graph tracing, which costs more than the forward pass on tiny inputs.
    return keras.ops.convert_to_numpy(model(x, training=False))


def run_model_test(model, x, expected_output_shape, tmp_path):
    """Output shape, config round trip with equal outputs, `.keras` round trip in safe mode."""
    y = _predict(model, x)
    assert y.shape == expected_output_shape, (y.shape, expected_output_shape)
    assert np.all(np.isfinite(y))

    config = model.get_config()
    clone = keras.Model.from_config(copy.deepcopy(config))  # from_config mutates its input
    assert clone.get_config() == config
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(_predict(clone, x), y, rtol=1e-5, atol=1e-5)

    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.name == model.name
    np.testing.assert_allclose(_predict(loaded, x), y, rtol=1e-5, atol=1e-5)
    return y
