"""The shipped digits weights are reproducible: re-running the manifest's own command gives a
test accuracy within the spread measured for it.

Spread (2026-11-30, this project's 2-core machine, `dmr-train ... --seed S` of the manifest
command, measured before the branch-initialisation fix of that day): seeds 0-4 gave 98.33,
98.61, 98.89, 98.33, 98.89 % (mean 98.61, sample std 0.28); seed 0 with `--cpu-threads intra`
instead of the default gave 98.89 %, so another host's thread pools or vector units act like
another seed. The tolerance is 3 std plus a margin = 4 of the 360 test images (1.11 points).
The same command on the same host gives the same weights (bit-identical: the manifest's
98.61 %, retrained after the fix, is what the command gives here).
"""

import json
import shlex
import subprocess
import sys
from pathlib import Path

from zoo import weights

KEY = "dmrnet_8_tiny.digits"
TOLERANCE_IMAGES = 4
TEST_IMAGES = 360
ROOT = Path(__file__).resolve().parents[1]


def _command_with_output(command: str, output: Path) -> list[str]:
    argv = shlex.split(command)
    assert argv[0] == "dmr-train", command
    argv = argv[1:]
    if "--output" in argv:
        i = argv.index("--output")
        del argv[i:i + 2]
    return argv + ["--output", str(output), "--verbose", "0"]


def test_digits_manifest_command_reproduces_its_accuracy(tmp_path):
    entry = weights.load_manifest()[KEY]
    argv = _command_with_output(entry.command, tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "zoo.train", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == entry.metrics["epochs"]
    got, stored = metrics["test_accuracy"], entry.metrics["test_accuracy"]
    assert abs(got - stored) <= TOLERANCE_IMAGES / TEST_IMAGES + 1e-9, (
        f"{KEY}: the manifest command gave {got:.4f}, the manifest says {stored:.4f} "
        f"(allowed: {TOLERANCE_IMAGES} of {TEST_IMAGES} images)")
