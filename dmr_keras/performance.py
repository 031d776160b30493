"""CPU thread settings that let TensorFlow run a merge-and-run block's branches at once.

TensorFlow executes a graph with two thread pools: *intra-op* threads split the work of one op
(one convolution over all cores), *inter-op* threads run independent ops at the same time. Its
default sizes both pools to the core count, so the K independent branch convolutions of a
merge-and-run block compete for the same intra-op threads. With one intra-op thread and one
inter-op thread per core (``"inter"``), the branches run side by side instead, each on its
own core; a one-stream ResNet then has nothing to run side by side and is best left at the
default. ``bench/throughput.py`` and ``bench/profile.py`` measure both settings
(docs/benchmarks.md has the numbers).

TensorFlow fixes its pools when its runtime starts, so :func:`configure_cpu_threads` must run
before the first TensorFlow op; ``dmr-train --cpu-threads`` does that. Other backends ignore it.

oneDNN: TensorFlow's x86 builds carry oneDNN kernels (fused convolutions, batch normalisation,
element-wise ops) but turn them on by default only on some CPUs (recent Intel ones); elsewhere
(AMD hosts) they stay off unless ``TF_ENABLE_ONEDNN_OPTS=1`` is set before TensorFlow starts.
Measured with ``bench/peer_torch.py`` and ``bench/throughput.py`` (docs/benchmarks.md): on with
either vendor, dmrnet_56 trains 1.6-2.1x faster than off. :func:`configure_onednn` sets the
variable; the command lines call it with ``"auto"`` (on, unless the user set the variable)
before TensorFlow starts. Importing the package never does: a library leaves the process
environment alone. As ``import dmr_keras`` loads Keras (and with it TensorFlow), a program of
its own turns oneDNN on with ``TF_ENABLE_ONEDNN_OPTS=1`` in its environment (or
``os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"`` before its first import of Keras).
"""

from __future__ import annotations

import contextlib
import os

CPU_THREADS = ("auto", "default", "intra", "inter")
ONEDNN = ("auto", "on", "off")
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def thread_counts(setting: str, cores: int | None = None) -> tuple[int, int]:
    """``(intra_op, inter_op)`` threads of a setting; ``(0, 0)`` is TensorFlow's default."""
    if setting not in CPU_THREADS or setting == "auto":
        valid = ", ".join(repr(s) for s in CPU_THREADS if s != "auto")
        raise ValueError(f"Unknown CPU thread setting: {setting!r}. Valid values: {valid}")
    cores = cores or os.cpu_count() or 1
    return {"default": (0, 0), "intra": (cores, 1), "inter": (1, cores)}[setting]


def resolve_cpu_threads(setting: str, num_streams: int = 1, has_gpu: bool = False) -> str:
    """``"auto"`` -> ``"inter"`` for a model of several parallel branches trained on the CPU,
    else ``"default"``; any other valid setting is returned unchanged."""
    if setting != "auto":
        thread_counts(setting)
        return setting
    return "inter" if num_streams > 1 and not has_gpu else "default"


def configure_cpu_threads(setting: str, strict: bool = True) -> bool:
    """Apply a setting to TensorFlow's thread pools; True if they now have it.

    A no-op that returns True on other backends and for ``"default"``.

    Args:
        setting: ``"default"``, ``"intra"`` or ``"inter"``.
        strict: if TensorFlow's runtime has already started (its pools can no longer change),
            raise (True) or leave the pools as they are and return False.

    Raises:
        ValueError: an unknown setting, or (``strict``) a runtime that has already started.
    """
    intra, inter = thread_counts(setting)
    import keras

    if keras.backend.backend() != "tensorflow" or setting == "default":
        return True
    import tensorflow as tf

    if (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads()) == (intra, inter):
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as err:
        if not strict:
            return False
        raise ValueError(
            f"Cannot apply CPU thread setting {setting!r}: TensorFlow's runtime has already "
            "started and its thread pools are fixed. Call configure_cpu_threads() before any "
            "TensorFlow op (or start a new process)."
        ) from err
    return True


def _env_onednn() -> bool | None:
    """What ``TF_ENABLE_ONEDNN_OPTS`` asks for (TensorFlow's parsing: 1/true on, 0/false off),
    None when it is unset or empty."""
    value = os.environ.get(ONEDNN_ENV, "").strip().lower()
    if not value:
        return None
    return value in ("1", "true", "t", "yes", "y", "on")


def onednn_enabled() -> bool | None:
    """Whether the TensorFlow of this process runs its oneDNN kernels; None when TensorFlow has
    not been imported (nothing is decided yet) or cannot say."""
    import sys

    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a TensorFlow build without the query
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def configure_onednn(setting: str = "auto") -> bool | None:
    """Ask TensorFlow for its oneDNN kernels on or off; returns what TensorFlow will use.

    Sets ``TF_ENABLE_ONEDNN_OPTS``, which TensorFlow reads once, when it starts. Call it before
    TensorFlow is imported (the command lines do).

    Args:
        setting: ``"on"``, ``"off"``, or ``"auto"``: a ``TF_ENABLE_ONEDNN_OPTS`` the user set
            wins, else on (faster on every host measured; see the module docstring).

    Returns:
        True / False: oneDNN on / off for this process (before TensorFlow starts: what it will
        be, as far as the variable decides; TensorFlow ignores it on builds without oneDNN).

    Raises:
        ValueError: an unknown setting, or an explicit ``"on"``/``"off"`` that TensorFlow, already
            started the other way, can no longer follow.
    """
    if setting not in ONEDNN:
        raise ValueError(f"Unknown oneDNN setting: {setting!r}. Valid values: "
                         + ", ".join(repr(s) for s in ONEDNN))
    started = onednn_enabled()
    if started is not None:
        if setting != "auto" and started != (setting == "on"):
            raise ValueError(
                f"Cannot turn oneDNN {setting}: TensorFlow has already started in this "
                f"process with it {'on' if started else 'off'}. Set "
                f"{ONEDNN_ENV}={int(setting == 'on')} in the environment before Python starts, "
                "or call configure_onednn() before anything imports TensorFlow (the dmr-* "
                "commands do; `python -m zoo.train` imports it first).")
        return started
    if setting == "auto":
        user = _env_onednn()
        if user is not None:
            return user
        setting = "on"
    os.environ[ONEDNN_ENV] = "1" if setting == "on" else "0"
    return setting == "on"


@contextlib.contextmanager
def fused_batchnorm(enabled: bool = True):
    """Within the block, every :class:`dmr_keras.layers.BatchNormalization` uses TensorFlow's
    fused kernel (``enabled``, the default outside it too) or Keras' own ops; restored after.
    Read when a step is traced: wrap the ``fit`` / ``predict`` (``dmr-train
    --no-fused-batchnorm`` does; ``zoo.export`` traces with Keras' ops)."""
    from dmr_keras.layers import BatchNormalization

    saved = BatchNormalization.fused
    BatchNormalization.fused = bool(enabled)
    try:
        yield
    finally:
        BatchNormalization.fused = saved
