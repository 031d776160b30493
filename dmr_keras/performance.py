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
"""

from __future__ import annotations

import os

CPU_THREADS = ("auto", "default", "intra", "inter")


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
