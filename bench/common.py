"""Shared helpers of the bench scripts: worker subprocesses, thread settings, statistics, tables.

Bench scripts are run as ``python bench/NAME.py``; each measurement that needs its own process
(a backend, a thread setting, a peak-memory reading) runs this interpreter again with
``--worker ...`` and reads one JSON object from the last line of its output.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts run from a checkout, installed or not
    sys.path.append(str(ROOT))

# TensorFlow CPU thread settings compared by the benchmarks (dmr_keras.performance):
#   default: TensorFlow's own choice (both pools sized to the cores).
#   intra:   every core works inside one op at a time (ops run one after another).
#   inter:   one thread per op, as many ops at once as cores (independent branches in parallel).
#   single:  one thread in all (bench only): the one-core rate, for the multi-core upper bound.
THREADS = ("default", "intra", "inter", "single")


def thread_counts(setting: str, cores: int | None = None) -> tuple[int, int]:
    """``(intra, inter)`` for a THREADS name; 0 means TensorFlow's default."""
    from dmr_keras.performance import thread_counts as counts

    if setting == "single":
        return 1, 1
    return counts(setting, cores)


def apply_tf_threads(setting: str) -> None:
    """Size TensorFlow's thread pools for a THREADS setting (before its runtime starts)."""
    import tensorflow as tf

    intra, inter = thread_counts(setting)
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def save_png(fig, path) -> None:
    """Write a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    from dmr_keras.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_worker(script: str, args: list[str], backend: str, timeout: float | None = None) -> dict:
    """Run ``script --worker ...`` under ``KERAS_BACKEND=backend``; return its last JSON line."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, script, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"Bench worker failed (exit {proc.returncode}) for backend={backend} args={args}:\n"
            f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def emit(obj) -> None:
    """A worker's result: one JSON line on stdout."""
    print(json.dumps(obj), flush=True)


def median_spread(values) -> tuple[float, float, float]:
    """Median, minimum and maximum."""
    values = list(values)
    return statistics.median(values), min(values), max(values)


def mean_std(values) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# Two-sided 95 % critical values of Student's t by degrees of freedom (n - 1 paired seeds).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262}


def separable(diffs) -> str:
    """Whether paired per-seed differences are separable from the seed noise: a paired t-test,
    two-sided, 95 % (``t = mean / (std / sqrt(n))`` against Student's t with n - 1 degrees of
    freedom). ``"yes (t=5.1)"``, ``"no (t=1.2)"``, or ``"n/a"`` with fewer than 2 seeds (or
    more than 10) ."""
    n = len(diffs)
    if n < 2 or n - 1 not in _T95:
        return "n/a"
    mean, std = mean_std(diffs)
    if std == 0:
        return "yes (no spread)" if mean != 0 else "no (equal)"
    t = mean / (std / n ** 0.5)
    return f"{'yes' if abs(t) > _T95[n - 1] else 'no'} (t={t:.1f})"


def machine() -> dict:
    """What a reader needs to compare numbers: CPU, cores, Python and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    for mod in ("keras", "tensorflow", "jax"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - an absent backend is just not listed
            pass
    if "jax" in info:
        import jax

        accel = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
        if accel:
            info["accelerator"] = f"{len(accel)} x {accel[0]}"
    return info


def table(headers: list[str], rows: list[list], aligns: str | None = None) -> str:
    """A GitHub-markdown table (also readable as plain text)."""
    cells = [[str(c) for c in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    aligns = aligns or "l" + "r" * (len(headers) - 1)

    def line(r):
        return "| " + " | ".join(
            c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, aligns)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                         for w, a in zip(widths, aligns)) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _fmt(c) -> str:
    if isinstance(c, float):
        if c == 0:
            return "0"
        if abs(c) >= 100:
            return f"{c:,.0f}"
        if abs(c) >= 10:
            return f"{c:.1f}"
        return f"{c:.2f}"
    return str(c)
