"""CPU thread settings (dmr_keras.performance) and their use by dmr-train."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmr_keras import performance

ROOT = Path(__file__).resolve().parents[1]


def test_thread_counts():
    assert performance.thread_counts("default", 8) == (0, 0)
    assert performance.thread_counts("intra", 8) == (8, 1)
    assert performance.thread_counts("inter", 8) == (1, 8)
    for bad in ("auto", "fast", None):
        with pytest.raises(ValueError, match="Valid values: 'default', 'intra', 'inter'"):
            performance.thread_counts(bad)


@pytest.mark.parametrize("setting, streams, gpu, expected", [
    ("auto", 2, False, "inter"),
    ("auto", 3, False, "inter"),
    ("auto", 1, False, "default"),
    ("auto", 2, True, "default"),
    ("intra", 2, False, "intra"),
    ("default", 2, False, "default"),
])
def test_resolve(setting, streams, gpu, expected):
    assert performance.resolve_cpu_threads(setting, streams, gpu) == expected


_CHILD = """
import json, keras, tensorflow as tf
from dmr_keras import performance
first = performance.configure_cpu_threads("inter")
pools = [tf.config.threading.get_intra_op_parallelism_threads(),
         tf.config.threading.get_inter_op_parallelism_threads()]
keras.ops.convert_to_numpy(keras.ops.ones((2, 2)) + 1)  # the runtime starts
lenient = performance.configure_cpu_threads("intra", strict=False)
try:
    performance.configure_cpu_threads("intra")
    error = ""
except ValueError as err:
    error = str(err)
print(json.dumps([first, pools, lenient, error]))
"""


def test_configure_before_and_after_the_runtime_starts():
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, pools, lenient, error = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first is True and pools == [1, os.cpu_count()]
    assert lenient is False
    assert "runtime has already started" in error and "'intra'" in error


# oneDNN: TF_ENABLE_ONEDNN_OPTS before TensorFlow starts (dmr_keras.performance.configure_onednn,
# called by the command lines). Each case runs in a fresh process: this one's TensorFlow has
# already started. The child defers the package's Keras import, as the command lines do.
_ONEDNN_CHILD = """
import json, sys
from dmr_keras import performance
before = performance.onednn_enabled()
asked = performance.configure_onednn(sys.argv[1])
import tensorflow as tf
tf.constant(1.0) + 1
started = performance.onednn_enabled()
other = "off" if started else "on"
try:
    performance.configure_onednn(other)
    error = ""
except ValueError as err:
    error = str(err)
print(json.dumps([before, asked, started, performance.configure_onednn("auto"), error]))
"""


def _onednn_child(setting, env_value=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow", DMR_KERAS_DEFER_IMPORTS="1")
    env.pop(performance.ONEDNN_ENV, None)
    if env_value is not None:
        env[performance.ONEDNN_ENV] = env_value
    proc = subprocess.run([sys.executable, "-c", _ONEDNN_CHILD, setting], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("setting, env_value, expected", [
    ("auto", None, True),   # the default: on, whatever this host's TensorFlow would choose
    ("auto", "0", False),   # a user's TF_ENABLE_ONEDNN_OPTS wins over auto
    ("on", "0", True),      # an explicit setting wins over the variable
    ("off", None, False),
])
def test_configure_onednn_before_tensorflow_starts(setting, env_value, expected):
    before, asked, started, auto_after, error = _onednn_child(setting, env_value)
    assert before is None  # nothing decided before TensorFlow is imported
    assert asked is expected and started is expected and auto_after is expected
    # Once started, the other explicit setting is refused, naming the variable to set.
    assert f"already started in this process with it {'on' if expected else 'off'}" in error
    assert f"TF_ENABLE_ONEDNN_OPTS={0 if expected else 1}" in error


def test_configure_onednn_rejects_unknown_settings():
    with pytest.raises(ValueError, match="Valid values: 'auto', 'on', 'off'"):
        performance.configure_onednn("fast")


def _dmr_train(*args, **env_extra):
    """The dmr-train console script (``python -m zoo.train`` imports TensorFlow first)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **env_extra)
    env.pop(performance.ONEDNN_ENV, None)
    code = "import sys, dmr_cli; sys.argv[0] = 'dmr-train'; sys.exit(dmr_cli.train())"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=600)


_LOGITS_CHILD = """
import json, sys
import numpy as np
import keras
from dmr_keras import performance
from zoo import create_model
shape = tuple(keras.saving.load_model(sys.argv[1]).input_shape[1:])
x = np.random.default_rng(0).uniform(0, 255, (8, *shape)).astype("float32")  # pixels
logits = []
for path in sys.argv[1:]:  # a .keras file, then a .weights.h5 file
    model = create_model("dmrnet_8_tiny", input_shape=shape, classes=10,
                         classifier_activation=None)
    model.load_weights(path)
    logits.append(model.predict(x, verbose=0).tolist())
print(json.dumps([performance.onednn_enabled(), *logits]))
"""


def test_onednn_on_and_off_train_alike_and_share_weights(tmp_path):
    """The new default path (oneDNN on, fused BatchNorm) against the old one (oneDNN off,
    Keras' BatchNorm ops): one seed, 4 epochs of dmrnet_8_tiny on digits. They differ only by
    floating-point rounding, so the test accuracies must agree within the seed noise (measured
    on this recipe: seeds 1 and 2 differ by 1.9 points on the new path and 2.2 on the old,
    while the paths differed by 0.28 and 0.0 points). And weights saved on one path give the
    same logits on the other."""
    runs = {}
    for setting in ("on", "off"):
        out = tmp_path / setting
        proc = _dmr_train("--model", "dmrnet_8_tiny", "--dataset", "digits", "--epochs", "4",
                          "--batch-size", "16", "--seed", "1", "--onednn", setting,
                          *([] if setting == "on" else ["--no-fused-batchnorm"]),
                          "--output", str(out), "--verbose", "0")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[setting] = json.loads((out / "metrics.json").read_text())
        # The flags reached TensorFlow and the layers.
        assert runs[setting]["onednn"] is (setting == "on")
        assert runs[setting]["fused_batchnorm"] is (setting == "on")
    assert abs(runs["on"]["test_accuracy"] - runs["off"]["test_accuracy"]) <= 0.015
    assert runs["on"]["test_accuracy"] > 0.85 and runs["off"]["test_accuracy"] > 0.85

    logits = {}
    for env_value in ("1", "0"):  # the "on" run's .keras and the "off" run's .weights.h5
        env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
                   TF_ENABLE_ONEDNN_OPTS=env_value)
        proc = subprocess.run([sys.executable, "-c", _LOGITS_CHILD,
                               str(tmp_path / "on" / "model.keras"),
                               str(tmp_path / "off" / "model.weights.h5")],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        enabled, from_on, from_off = json.loads(proc.stdout.strip().splitlines()[-1])
        assert enabled is (env_value == "1")
        logits[env_value] = (np.array(from_on), np.array(from_off))
    # Noise images give logits of up to ~2,000, where float32 rounding alone is ~1e-4: the
    # tolerance is relative to the largest logit (1e-6 of it).
    for i in (0, 1):
        scale = np.abs(logits["0"][i]).max()
        np.testing.assert_allclose(logits["1"][i], logits["0"][i], rtol=0, atol=1e-6 * scale)
    # The two runs' models differ (different rounding through 4 epochs), so each comparison
    # above is of one set of weights on two paths, not of two equal models.
    assert np.abs(logits["1"][0] - logits["1"][1]).max() > 1e-3
