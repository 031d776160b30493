"""The command lines start without Keras, stay quiet, and a plain `import dmr_keras` still
registers everything `keras.saving.load_model` needs.

Whole-process timings are in bench/cli_startup.py (ratios, not thresholds); here the tests
check the cause: which modules a command imported before it answered.
"""

import os
import subprocess
import sys

import pytest

from dmr_keras import startup

HEAVY = ("keras", "tensorflow", "keras_tuner", "h5py", "jax", "torch")

# (console script function in dmr_cli, argv) that must answer without importing Keras.
LIGHT_COMMANDS = [
    ("train", ["--help"]),
    ("train", ["--epochs", "x"]),          # an argument error
    ("train", ["--cpu-threads", "many"]),  # a bad choice
    ("evaluate", ["--help"]),
    ("evaluate", ["m", "--split", "nope"]),
    ("zoo_cli", ["--help"]),
    ("zoo_cli", ["list"]),
    ("zoo_cli", ["list", "dmrnet_*"]),
    ("zoo_cli", ["info", "dmrnet_56"]),
    ("zoo_cli", ["verify"]),
    ("demo", ["--help"]),
    ("tune", ["--help"]),
    ("tune", ["--tuner", "grid"]),
]


def _run(code, env=None, defer=False):
    env = {**os.environ, **(env or {})}
    env.pop("DMR_KERAS_DEFER_IMPORTS", None)
    if defer:  # import the package without Keras, so that TensorFlow prints nothing itself
        env["DMR_KERAS_DEFER_IMPORTS"] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("fn,argv", LIGHT_COMMANDS, ids=[" ".join([f, *a]) for f, a in
                                                          LIGHT_COMMANDS])
def test_command_answers_without_importing_keras(fn, argv, tmp_path):
    code = (
        "import sys, dmr_cli\n"
        f"sys.argv = ['dmr', *{argv!r}]\n"
        "try:\n"
        f"    rc = dmr_cli.{fn}()\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('RC', rc, 'HEAVY', ','.join(heavy) or '-')\n"
    )
    # A manifest-free cache so that `verify` has nothing slow to hash.
    out = _run(code, env={"DMR_KERAS_HOME": str(tmp_path)})
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("RC "), out.stderr[-2000:]
    assert last.endswith("HEAVY -"), f"{fn} {argv} imported {last}; stderr: {out.stderr[-500:]}"
    if argv[0] != "--help" and argv[0] not in ("list", "info", "verify"):
        assert "RC 2" in last, last  # argparse's exit status for an argument error
        assert "error:" in out.stderr


def test_plain_import_registers_layers_schedule_and_loss():
    # A checkpoint compiled with the package's warm-up schedule and loss loads after a plain
    # `import dmr_keras` (the console scripts defer this; user code must not need to).
    out = _run(
        "import dmr_keras, keras\n"
        "reg = keras.saving.get_custom_objects()\n"
        "print(sorted(k for k in reg if k.startswith('dmr_keras>')))\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    names = out.stdout.strip().splitlines()[-1]
    for cls in ("MergeAndRunBlock", "Warmup", "SparseCrossentropy"):
        assert f"dmr_keras>{cls}" in names, names


def test_deferred_import_is_not_inherited_by_child_processes():
    # dmr_cli sets the deferral flag only around its own import of the package.
    out = _run(
        "import os, sys, dmr_cli\n"
        "sys.argv = ['dmr-zoo', 'list']\n"
        "dmr_cli.zoo_cli()\n"
        "print('FLAG', os.environ.get('DMR_KERAS_DEFER_IMPORTS'))\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "FLAG None"


NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796049747.834674    1794 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results",
    "I0000 00:00:1796049747.835286    1794 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796050073.237693    3723 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
]
NOT_NOISE = [
    "E0000 00:00:1796050073.237693    3723 op_kernel.cc:1800] OP_REQUIRES failed at "
    "conv_ops.cc: INVALID_ARGUMENT",
    "Traceback (most recent call last):",
    "ImportError: libcudnn.so.9: cannot open shared object file",
    "UserWarning: something the user should see",
]


@pytest.mark.parametrize("line", NOISE)
def test_start_up_notices_are_noise(line):
    assert startup.is_noise(line)


@pytest.mark.parametrize("line", NOT_NOISE)
def test_real_errors_are_not_noise(line):
    assert not startup.is_noise(line)


def test_filtered_stderr_drops_notices_and_passes_the_rest():
    # File descriptor 2 as C++ code writes it, in a child process whose stderr is a pipe.
    code = (
        "import os\n"
        "from dmr_keras.startup import filtered_stderr\n"
        "with filtered_stderr():\n"
        f"    os.write(2, ({NOISE[0]!r} + '\\n' + {NOISE[2]!r} + '\\n').encode())\n"
        "    os.write(2, b'a real problem\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    out = _run(code, defer=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["a real problem", "after"]


def test_filtered_stderr_replays_output_when_the_import_fails():
    code = (
        "import os\n"
        "from dmr_keras.startup import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    os.write(2, b'why it failed\\n')\n"
        "    raise ImportError('boom')\n"
    )
    out = _run(code, defer=True)
    assert out.returncode == 1
    assert "why it failed" in out.stderr and "ImportError: boom" in out.stderr


def test_a_real_command_prints_no_tensorflow_notices(tmp_path):
    # dmr-demo imports Keras and TensorFlow and runs a model: the whole start-up path.
    env = {"DMR_KERAS_HOME": str(tmp_path)}
    env_without_level = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = "import sys, dmr_cli\nsys.argv = ['dmr-demo', 'dmrnet_8_tiny']\ndmr_cli.demo()\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env_without_level, **env}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "forward pass" in out.stdout
    noisy = [ln for ln in out.stderr.splitlines() if startup.is_noise(ln)]
    assert not noisy, noisy
