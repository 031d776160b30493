"""The same code on TensorFlow, JAX (and PyTorch where installed); weights move between them."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "backend_worker.py"
BACKENDS = ["tensorflow", "jax"] + (["torch"] if importlib.util.find_spec("torch") else [])


def _run(backend, *args, code=None):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-c", code] if code else [sys.executable, str(WORKER), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("src, dst", [(a, b) for a in BACKENDS for b in BACKENDS if a != b])
def test_weights_move_between_backends(src, dst, tmp_path):
    rc, out = _run(src, "save", str(tmp_path))
    assert rc == 0, out
    assert f"saved on {src}" in out
    rc, out = _run(dst, "load", str(tmp_path))
    assert f"loaded on {dst}" in out, out
    assert rc == 0, out


def test_models_import_and_run_without_tensorflow():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"  # any `import tensorflow` now fails
        "import numpy as np, keras, dmr_keras, zoo\n"
        "assert keras.backend.backend() == 'jax'\n"
        "m = zoo.create_model('dmrnet_14', classes=3)\n"
        "y = m(np.zeros((1, 32, 32, 3), 'float32'))\n"
        "print('ok', tuple(y.shape))\n"
    )
    rc, out = _run("jax", code=code)
    assert rc == 0, out
    assert "ok (1, 3)" in out
