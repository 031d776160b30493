"""Strategy choice for training: one device, MirroredStrategy, multi-worker, JAX data parallel.

- ``none``: the default strategy (one device).
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over all local GPUs, or over the logical CPU
  devices when there is no GPU (see :func:`configure_cpu_devices`; used by the tests).
- ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` from ``TF_CONFIG``, trained by
  :mod:`dmr_keras.multiworker`'s distributed step (Keras 3's ``fit`` fails under it on TF 2.21).
- ``auto``: ``mirrored`` when there is more than one GPU, else ``none``.

On the JAX backend, ``mirrored``/``auto`` with several devices use
``keras.distribution.DataParallel``; ``multiworker`` is TensorFlow only.
"""

from __future__ import annotations

import dataclasses

import keras

STRATEGIES = ("auto", "none", "mirrored", "multiworker")


@dataclasses.dataclass
class Plan:
    """How a run is distributed: ``strategy`` (TF, or None), replica count, a description, and
    on JAX the ``keras.distribution`` to use (or None).

    Nothing global is set: build, train and evaluate inside :meth:`scope`.
    """

    name: str
    strategy: object
    num_replicas: int
    description: str
    distribution: object = None

    def scope(self):
        import contextlib

        if self.strategy is not None:
            return self.strategy.scope()
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext()


def check_strategy_name(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"Unknown `strategy`: {name!r}. Valid values: {', '.join(STRATEGIES)}")
    if name == "multiworker":
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "`strategy='multiworker'` needs the TensorFlow backend (KERAS_BACKEND=tensorflow); "
                f"the backend is {keras.backend.backend()!r}."
            )
        from dmr_keras.multiworker import parse_tf_config  # no TensorFlow import

        parse_tf_config()
    return name


def configure_cpu_devices(n: int) -> None:
    """Split the CPU into ``n`` logical devices (before TensorFlow initialises its devices)."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError as err:
        if len(tf.config.list_logical_devices("CPU")) != n:
            raise ValueError(
                f"Cannot split the CPU into {n} devices: TensorFlow is already initialised "
                f"({err}). Set it up at the start of the process."
            ) from err


def make_plan(name: str, global_batch_size: int) -> Plan:
    """Create the strategy for ``name`` and check that the batch divides over the replicas."""
    check_strategy_name(name)
    if keras.backend.backend() == "jax":
        plan = _jax_plan(name)
    else:
        plan = _tf_plan(name)
    if global_batch_size % plan.num_replicas:
        raise ValueError(
            f"The global batch size {global_batch_size} does not divide over {plan.num_replicas} "
            f"replicas ({plan.description}). Use a multiple of {plan.num_replicas}, e.g. "
            f"{plan.num_replicas * max(1, round(global_batch_size / plan.num_replicas))}."
        )
    return plan


def _tf_plan(name: str) -> Plan:
    import tensorflow as tf

    if name == "multiworker":  # before anything that starts TF's context (device listing)
        from dmr_keras.multiworker import strategy_from_tf_config

        strategy = strategy_from_tf_config()
        return Plan("multiworker", strategy, strategy.num_replicas_in_sync,
                    f"MultiWorkerMirroredStrategy, {strategy.num_replicas_in_sync} replica(s)")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "none"
    if name == "none":
        return Plan("none", None, 1, "one device")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    cross = None if gpus else tf.distribute.ReductionToOneDevice()
    strategy = tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=cross)
    return Plan("mirrored", strategy, strategy.num_replicas_in_sync,
                f"MirroredStrategy over {len(devices)} device(s)")


def _jax_plan(name: str) -> Plan:
    import jax

    devices = jax.devices()
    if name in ("auto", "mirrored") and len(devices) > 1:
        return Plan("mirrored", None, len(devices), f"JAX DataParallel over {len(devices)}",
                    distribution=keras.distribution.DataParallel(devices=devices))
    return Plan("none", None, 1, "one device")
