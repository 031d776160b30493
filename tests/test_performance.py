"""CPU thread settings (dmr_keras.performance) and their use by dmr-train."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
