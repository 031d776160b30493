"""Data-parallel training with a custom ``tf.distribute`` step (multi-worker or one machine).

Keras 3's ``model.fit`` fails under ``tf.distribute.MultiWorkerMirroredStrategy`` on TF 2.21
(``ValueError: Attempt to convert a value (PerReplica:{...}) with an unsupported type ... to a
Tensor``), so :func:`fit_distributed` runs its own step: ``strategy.run`` over
``strategy.experimental_distribute_dataset(...)``. The same engine works with
``tf.distribute.MirroredStrategy`` and with the default strategy (one device).
:func:`evaluate_distributed` replaces ``model.evaluate``, which fails in the same way.

How it works:

- **Gradients.** Each replica computes ``sum(per-example loss) / global_batch_size +
  sum(model.losses) / num_replicas`` on its slice of the global batch and calls
  ``optimizer.apply(grads, variables)`` in replica context. Keras 3's TensorFlow optimizer
  (``keras/src/backend/tensorflow/optimizer.py``) then all-reduces the gradients with
  ``ReduceOp.SUM`` across all replicas of all workers (``_all_reduce_sum_gradients``) and applies
  the same update to every copy of each variable (``merge_call`` + ``extended.update``), so the
  applied gradient is the mean over the global batch plus the gradient of the regularisation
  losses, once. Mixed precision: a ``LossScaleOptimizer`` is used through ``scale_loss``.
- **Loss scaling.** Keras 3's ``LossScaleOptimizer`` decides whether to apply or skip a step from
  the gradients it is given, which are each replica's *local* gradients: under a strategy it
  takes the first local replica's verdict (so with ``inf`` on another replica the all-reduced,
  non-finite gradients are applied), and across workers the verdicts can differ (one worker
  enters the gradient all-reduce, the other skips it: a hang). So the step all-reduces a
  "non-finite" flag (a logical OR over every replica of every worker) and, where it is set,
  makes every replica's local gradients non-finite before ``apply``: every replica then skips
  the step and halves its loss scale together, or all apply it.
- **Same start on every worker.** At the start :func:`fit_distributed` copies the chief's model
  and optimizer variables to every worker (:func:`broadcast_from_chief`), so workers that loaded
  (copies of) a checkpoint start from the chief's values, and it checks with
  :func:`agree_on_initial_epoch` that every worker resumes from the same epoch.
- **Data.** ``train_dataset`` yields ``(images, labels)`` batched by the *global* batch size
  (or is a callable ``epoch -> dataset``, so that each epoch's order can come from
  ``(seed, epoch)`` and a resumed run sees the same batches as an uninterrupted one). It
  is distributed with ``experimental_distribute_dataset``, which rebatches each global batch into
  per-replica slices. Sharding across workers is tf.data auto-sharding by ``DATA``: every worker
  runs the whole input pipeline and keeps only its replicas' slices of each global batch, so a
  step consumes exactly one global batch. This needs the same element order on every worker (no
  shuffle, or a shuffle with a fixed ``seed`` and the same global TF seed). A dataset whose
  ``auto_shard_policy`` is already set to anything but ``AUTO`` (``FILE``, or ``OFF`` after
  sharding it yourself) is left as it is. A training dataset without a static batch size is
  rebatched with ``drop_remainder=True``: every step is a full global batch, on every strategy
  (a partial last batch could give a replica an empty slice, whose BatchNorm statistics are
  NaN). The evaluation dataset is used whole, partial batches included.
- **BatchNorm.** ``training=True`` in the step. Keras 3 creates the moving statistics with
  ``aggregation="none"``, so each replica updates its own copy from its own slice; at the end of
  every epoch the floating-point non-trainable variables with that aggregation are replaced by
  their mean over all replicas (an all-reduce), so every worker holds the same weights before
  evaluation, checkpoints and ``on_epoch_end``.
- **Metrics.** Each replica returns its sums (loss times examples, correct predictions,
  examples); they are summed over replicas and workers with ``strategy.reduce(SUM)`` and divided
  at the end of the epoch, so ``loss``/``accuracy`` are exact means over the examples seen. As
  in Keras, ``loss`` and ``val_loss`` include the regularisation losses.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time

TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


# ---- cluster --------------------------------------------------------------------------------

def parse_tf_config(raw: str | None = None) -> dict:
    """Parse and check ``TF_CONFIG`` (from the environment unless ``raw`` is given).

    Raises ``ValueError`` saying what is wrong and what ``TF_CONFIG`` must look like.
    """
    if raw is None:
        raw = os.environ.get("TF_CONFIG")
    hint = (f"TF_CONFIG must be a JSON object like {TF_CONFIG_EXAMPLE}: the same cluster on "
            "every worker, each worker its own task index.")
    if raw is None or not raw.strip():
        raise ValueError(f"The TF_CONFIG environment variable is not set. {hint}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}): {raw!r}. {hint}") from err

    def bad(what):
        return ValueError(f"TF_CONFIG is malformed: {what}. Received {raw!r}. {hint}")

    if not isinstance(config, dict):
        raise bad("it is not a JSON object")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise bad('"cluster" must be an object mapping job names to lists of "host:port"')
    for job, addresses in cluster.items():
        if job not in ("chief", "worker"):
            raise bad(f'unsupported job {job!r} in "cluster" (only "chief" and "worker")')
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and ":" in a for a in addresses)):
            raise bad(f'cluster[{job!r}] must be a non-empty list of "host:port" strings')
    if not isinstance(task, dict):
        raise bad('"task" must be an object like {"type": "worker", "index": 0}')
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise bad(f'task type {task_type!r} is not a job of "cluster" ({", ".join(cluster)})')
    if isinstance(index, bool) or not isinstance(index, int):
        raise bad(f"task index {index!r} is not an integer")
    if not 0 <= index < len(cluster[task_type]):
        raise bad(f"task index {index} is outside cluster[{task_type!r}] "
                  f"({len(cluster[task_type])} address(es))")
    return config


def strategy_from_tf_config():
    """``tf.distribute.MultiWorkerMirroredStrategy`` for the cluster described by ``TF_CONFIG``.

    ``TF_CONFIG`` is checked first: a missing or malformed one raises ``ValueError`` (with an
    example of the expected form) before any strategy or server is created.
    """
    parse_tf_config()
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """True on the worker that writes checkpoints and logs.

    That is the ``chief`` task if the cluster has one, else worker 0; any single-machine
    strategy (default, ``MirroredStrategy``, ``None``) is its own chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    jobs = resolver.cluster_spec().jobs
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in jobs


def agree_on_initial_epoch(strategy, local_epoch: int) -> int:
    """The epoch to resume at, checked to be the same on every worker.

    Call it on every worker (it is a collective) with the epoch of the newest checkpoint this
    worker found (``0``: none), e.g. ``latest_checkpoint(dir)["epoch"]``. The epochs of all
    workers are gathered; if they all agree that epoch is returned, else every worker raises the
    same ``ValueError`` naming each worker's epoch (rather than training from different weights
    or hanging). A single-process strategy (default, ``MirroredStrategy``, ``None``) returns
    ``local_epoch``.
    """
    if isinstance(local_epoch, bool) or not isinstance(local_epoch, int) or local_epoch < 0:
        raise ValueError(f"`local_epoch` must be an integer >= 0 (0: no checkpoint). Received "
                         f"{local_epoch!r}")
    import tensorflow as tf

    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    names = _worker_names(strategy)
    if len(names) < 2:
        return local_epoch
    local_replicas = len(strategy.extended.worker_devices)

    @tf.function
    def gather():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            worker = tf.cast(ctx.replica_id_in_sync_group // local_replicas, tf.float64)
            mine = tf.stack([worker, tf.constant(local_epoch, tf.float64)])[tf.newaxis]
            return ctx.all_gather(mine, axis=0)

        return strategy.experimental_local_results(strategy.run(replica_fn))[0]

    epochs = {}
    for worker, epoch in gather().numpy().tolist():
        epochs[int(worker)] = int(epoch)
    if len(set(epochs.values())) == 1:
        return local_epoch
    seen = ", ".join(f"{names[w] if w < len(names) else f'worker #{w}'}: epoch {e}"
                     for w, e in sorted(epochs.items()))
    raise ValueError(
        f"The workers found different checkpoints to resume from ({seen}; 0 = none), so they "
        "would train from different weights. Every worker must see the same checkpoints: use a "
        "checkpoint directory shared by all workers (e.g. on a network file system), or give "
        "each worker an identical local copy of the chief's checkpoints (or delete them all to "
        "start from scratch).")


def broadcast_from_chief(strategy, variables) -> None:
    """Give every replica of every worker the chief's values of ``variables``.

    A collective: call it on every worker with the same variables in the same order (e.g.
    ``model.variables + optimizer.variables``), created under ``strategy.scope()``. The chief's
    copy (replica 0) is all-reduced with zeros from the other replicas, which reproduces it
    exactly; integer variables travel as float64 (exact below 2**53). Use it after each worker
    loaded a checkpoint of its own, so that all start from identical weights and optimizer
    state. Nothing is done for a strategy with one replica.
    """
    import keras
    import tensorflow as tf

    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    if int(strategy.num_replicas_in_sync) < 2:
        return
    tf_vars, seen = [], set()
    for var in variables:
        if isinstance(var, keras.Variable):
            var = var.value  # its tf (distributed) variable
        if id(var) in seen:
            continue
        seen.add(id(var))
        if not strategy.extended.variable_created_in_scope(var):
            raise ValueError(f"Variable {var.name!r} was not created under this strategy's "
                             "scope: it cannot be broadcast.")
        tf_vars.append(var)
    if not tf_vars:
        return
    wire = [v.dtype if v.dtype in (tf.float32, tf.float64) else tf.float64 for v in tf_vars]

    @tf.function
    def broadcast():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            first = tf.equal(ctx.replica_id_in_sync_group, 0)
            out = [None] * len(tf_vars)
            for dtype in sorted(set(wire), key=lambda d: d.name):  # one all-reduce per dtype
                group = [i for i, d in enumerate(wire) if d == dtype]
                masked = []
                for i in group:
                    value = tf.cast(tf.identity(tf_vars[i]), dtype)  # this replica's copy
                    masked.append(tf.where(first, value, tf.zeros_like(value)))
                for i, value in zip(group, ctx.all_reduce(tf.distribute.ReduceOp.SUM, masked)):
                    out[i] = value
            return out

        chief_values = strategy.run(replica_fn)
        for var, value in zip(tf_vars, chief_values):
            strategy.extended.update(
                var, lambda v, x: v.assign(tf.cast(x, v.dtype)), args=(value,), group=False)

    broadcast()


def _worker_names(strategy) -> list:
    """Names of the training tasks in the order of their replica ids (chief first)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return ["worker 0"]
    jobs = resolver.cluster_spec().as_dict()
    names = []
    for job in ("chief", "worker"):
        tasks = jobs.get(job, [])
        count = len(tasks) if isinstance(tasks, list) else len(tasks.keys())
        names += [f"{job} {i}" for i in range(count)]
    if names and "chief" not in jobs:
        names[0] += " (chief)"
    return names


# ---- training -------------------------------------------------------------------------------

def fit_distributed(model, *, optimizer, loss, train_dataset, epochs: int, strategy,
                    eval_dataset=None, initial_epoch: int = 0, global_batch_size: int,
                    steps_per_epoch: int | None = None, on_epoch_end=None,
                    verbose: int = 1) -> dict:
    """Train ``model`` data-parallel with a custom distributed step (see the module docstring).

    Args:
        model: a built Keras model whose variables were created under ``strategy.scope()``.
        optimizer: a Keras optimizer created under ``strategy.scope()`` (it is built here if
            needed). A ``LossScaleOptimizer`` (mixed precision) works too: a step with
            non-finite gradients on any replica is skipped on all of them.
        loss: a Keras loss object or loss function, e.g.
            ``keras.losses.SparseCategoricalCrossentropy()``. Its reduction is ignored: the
            per-example losses are summed per replica and divided by ``global_batch_size``.
        train_dataset: ``tf.data.Dataset`` of ``(images, labels)`` batched by
            ``global_batch_size``; auto-sharded by ``DATA`` over the workers (every worker must
            produce the same element order), a partial last batch is dropped. Or a callable
            ``epoch -> tf.data.Dataset`` (0-based epoch), called once per epoch run, all with
            the same element spec: seed each epoch's shuffle from ``(seed, epoch)`` so a resumed
            run sees the same batches as an uninterrupted one (a dataset reshuffled on each
            iteration restarts its sequence of orders in a new process).
        epochs: index of the last epoch to run (like ``fit``): runs ``initial_epoch..epochs-1``.
        strategy: the ``tf.distribute`` strategy (``None``: the current/default one).
        eval_dataset: optional ``(images, labels)`` dataset evaluated after every epoch.
        initial_epoch: the epoch to start at (when resuming); checked to be the same on every
            worker (:func:`agree_on_initial_epoch`). The chief's model and optimizer variables
            are copied to all workers before the first step (:func:`broadcast_from_chief`).
        global_batch_size: examples per step over all replicas and workers.
        steps_per_epoch: with a dataset (not a callable), one iterator runs through it and each
            epoch takes this many global batches from it (as ``fit`` does): for a dataset that
            holds epochs ``initial_epoch..epochs-1`` back to back
            (``dmr_keras.data.load(..., epochs=..., initial_epoch=...)``). None: each epoch is
            one full pass over the dataset.
        on_epoch_end: ``callable(epoch, logs)``, called on every worker after each epoch
            (0-based ``epoch``, ``logs`` of python floats). Use :func:`is_chief` to decide who
            writes files.
        verbose: print one line per epoch on the chief when true.

    Returns:
        The history ``{"loss": [...], "accuracy": [...], "val_loss": [...],
        "val_accuracy": [...]}`` of the epochs run (the same on every worker).
    """
    import tensorflow as tf

    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    replicas = int(strategy.num_replicas_in_sync)
    _check_arguments(epochs, initial_epoch, global_batch_size, replicas)
    _check_model_and_optimizer(model, optimizer, strategy)
    sum_loss = _summed_loss(loss)
    trainable = list(model.trainable_variables)
    with strategy.scope():
        if not optimizer.built:
            optimizer.build(trainable)
    if replicas > 1:
        agree_on_initial_epoch(strategy, initial_epoch)
        broadcast_from_chief(strategy, list(model.variables) + list(optimizer.variables))
    if initial_epoch == epochs:
        return {}

    def distributed_train_data(epoch):
        data = train_dataset(epoch) if callable(train_dataset) else train_dataset
        return strategy.experimental_distribute_dataset(
            _prepare_dataset(data, global_batch_size, train=True))

    train_dist = distributed_train_data(initial_epoch)
    eval_dist = eval_step = None
    if eval_dataset is not None:
        eval_dist = strategy.experimental_distribute_dataset(
            _prepare_dataset(eval_dataset, global_batch_size, train=False))
        eval_step = _eval_step(model, strategy, sum_loss, eval_dist)

    agree_on_finite = replicas > 1 and _is_loss_scale_optimizer(optimizer)

    def replica_train_step(images, labels):
        with tf.GradientTape() as tape:
            preds = model(images, training=True)
            data_sum = sum_loss(labels, preds)
            reg = _regularisation(model)
            total = data_sum / global_batch_size + reg / replicas
            scaled = optimizer.scale_loss(total)
        grads = tape.gradient(scaled, trainable)
        if agree_on_finite:
            grads = _agree_on_finite(grads)
        # Replica context: Keras's TF optimizer all-reduces (SUM) the gradients over every
        # replica of every worker before the update.
        optimizer.apply(grads, trainable)
        return _sums(data_sum, reg, labels, preds)

    @tf.function(input_signature=[train_dist.element_spec])
    def train_step(batch):
        return _reduced(strategy, strategy.run(replica_train_step, args=tuple(batch)))

    sync_vars = _replica_local_state(model) if replicas > 1 else []

    @tf.function
    def sync_state():
        def replica_sync():
            ctx = tf.distribute.get_replica_context()
            local = [tf.identity(v.value) for v in sync_vars]  # this replica's copies
            means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, local)
            for var, mean in zip(sync_vars, means):
                var.assign(mean)

        strategy.run(replica_sync)

    chief = is_chief(strategy)
    history: dict = {}
    stream = iter(train_dist) if steps_per_epoch and not callable(train_dataset) else None
    for epoch in range(initial_epoch, epochs):
        start = time.perf_counter()
        if epoch > initial_epoch and callable(train_dataset):
            train_dist = distributed_train_data(epoch)
        batches = _take(stream, steps_per_epoch) if stream is not None else train_dist
        logs = _run_epoch(train_step, batches, "")
        if sync_vars:
            sync_state()
        if eval_step is not None:
            logs.update(_run_epoch(eval_step, eval_dist, "val_"))
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        if verbose and chief:
            metrics = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            print(f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - start:.1f}s - {metrics}",
                  flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch, dict(logs))
    return history


def evaluate_distributed(model, *, loss, dataset, strategy=None) -> dict:
    """``{"loss": ..., "accuracy": ...}`` of ``model`` on ``dataset`` (``(images, labels)``
    batches, partial ones included), as python floats, the same on every worker.

    Each worker evaluates its ``DATA`` shard and the sums are reduced over all replicas and
    workers. For ``MultiWorkerMirroredStrategy``, where Keras 3's ``model.evaluate`` fails on
    TF 2.21 just as ``fit`` does. ``loss`` includes the regularisation losses, as in Keras.
    """
    import tensorflow as tf

    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    dist = strategy.experimental_distribute_dataset(_prepare_dataset(dataset, None, train=False))
    return _run_epoch(_eval_step(model, strategy, _summed_loss(loss), dist), dist, "")


def _eval_step(model, strategy, sum_loss, dist_dataset):
    import tensorflow as tf

    def replica_eval_step(images, labels):
        preds = model(images, training=False)
        return _sums(sum_loss(labels, preds), _regularisation(model), labels, preds)

    @tf.function(input_signature=[dist_dataset.element_spec])
    def eval_step(batch):
        return _reduced(strategy, strategy.run(replica_eval_step, args=tuple(batch)))

    return eval_step


def _is_loss_scale_optimizer(optimizer) -> bool:
    import keras

    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def _agree_on_finite(grads):
    """This replica's gradients, made non-finite if any replica's gradients are (replica context).

    ``LossScaleOptimizer.apply`` judges finiteness from the local gradients; after this every
    replica of every worker reaches the same verdict, so all skip the step (and halve the loss
    scale) or all apply it. The flag is a logical OR by an all-reduce (SUM) of 0/1.
    """
    import tensorflow as tf

    present = [g for g in grads if g is not None]
    if not present:
        return grads
    local_bad = tf.logical_not(tf.reduce_all(
        [tf.reduce_all(tf.math.is_finite(_dense_values(g))) for g in present]))
    ctx = tf.distribute.get_replica_context()
    any_bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(local_bad, tf.float32)) > 0

    def poison(g):
        if g is None:
            return None
        if isinstance(g, tf.IndexedSlices):
            return tf.IndexedSlices(poison(g.values), g.indices, g.dense_shape)
        return tf.where(any_bad, tf.fill(tf.shape(g), tf.constant(math.nan, g.dtype)), g)

    return [poison(g) for g in grads]


def _dense_values(g):
    import tensorflow as tf

    return g.values if isinstance(g, tf.IndexedSlices) else g


def _reduced(strategy, per_replica):
    """Sum over all replicas of all workers, in float64 for the per-epoch accumulation."""
    import tensorflow as tf

    return [tf.cast(strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None), tf.float64)
            for v in per_replica]


def _take(iterator, steps: int):
    for _ in range(steps):
        try:
            yield next(iterator)
        except StopIteration:
            raise ValueError(f"The training dataset ran out before the epoch's {steps} steps: "
                             "it must hold steps_per_epoch batches for every epoch run.") from None


def _run_epoch(step, dist_dataset, prefix: str) -> dict:
    totals = None
    for batch in dist_dataset:
        out = step(batch)
        totals = out if totals is None else [a + b for a, b in zip(totals, out)]
    if totals is None:
        raise ValueError(f"The {'evaluation' if prefix else 'training'} dataset is empty "
                         "(with drop_remainder, it needs at least one full global batch).")
    loss_sum, correct, count = (float(t.numpy()) for t in totals)
    if count == 0:
        return {f"{prefix}loss": math.nan, f"{prefix}accuracy": math.nan}
    return {f"{prefix}loss": loss_sum / count, f"{prefix}accuracy": correct / count}


def _sums(data_sum, reg, labels, preds):
    """Per-replica (loss * examples, correct predictions, examples) as float32 scalars."""
    import tensorflow as tf

    n = tf.cast(tf.shape(preds)[0], tf.float32)
    predicted = tf.argmax(preds, axis=-1)
    labels = tf.convert_to_tensor(labels)
    one_hot = (labels.shape.rank == preds.shape.rank and preds.shape[-1] not in (None, 1)
               and labels.shape[-1] != 1)
    if one_hot:
        labels = tf.argmax(labels, axis=-1)
    labels = tf.reshape(labels, tf.shape(predicted))
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.cast(labels, predicted.dtype), predicted),
                                    tf.float32))
    loss_sum = tf.cast(data_sum, tf.float32) + tf.cast(reg, tf.float32) * n
    return loss_sum, correct, n


def _regularisation(model):
    import tensorflow as tf

    losses = [tf.cast(x, tf.float32) for x in model.losses]
    return tf.add_n(losses) if losses else tf.constant(0.0)


def _summed_loss(loss):
    """``fn(y_true, y_pred) -> float32 sum of the per-example losses`` of this replica."""
    import keras
    import tensorflow as tf

    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        summed = copy.copy(loss)  # keeps from_logits, dtype, masks; only the reduction changes
        summed.reduction = "sum"

        def fn(y_true, y_pred):
            return tf.cast(summed(y_true, y_pred), tf.float32)

        return fn
    if callable(loss):
        def fn(y_true, y_pred):
            return tf.reduce_sum(tf.cast(loss(y_true, y_pred), tf.float32))

        return fn
    raise ValueError(
        f"`loss` must be a Keras loss object, loss function or name. Received {loss!r}"
    )


def _replica_local_state(model) -> list:
    """Non-trainable float variables that each replica updates on its own (BN statistics)."""
    import tensorflow as tf

    out = []
    for var in model.non_trainable_variables:
        if getattr(var, "aggregation", "none") != "none":
            continue
        if not tf.as_dtype(var.dtype).is_floating:
            continue
        out.append(var)
    return out


def _check_arguments(epochs, initial_epoch, global_batch_size, replicas):
    for name, value in (("epochs", epochs), ("initial_epoch", initial_epoch),
                        ("global_batch_size", global_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{name}` must be an integer. Received {value!r}")
    if initial_epoch < 0 or epochs < initial_epoch:
        raise ValueError(f"Expected 0 <= initial_epoch <= epochs. Received "
                         f"initial_epoch={initial_epoch}, epochs={epochs}")
    if global_batch_size < 1 or global_batch_size % replicas:
        raise ValueError(
            f"`global_batch_size` must be a positive multiple of the {replicas} replica(s) in "
            f"sync. Received {global_batch_size}")


def _check_model_and_optimizer(model, optimizer, strategy):
    if not getattr(model, "built", False) or not model.variables:
        raise ValueError("Build the model (under `strategy.scope()`) before `fit_distributed`, "
                         "e.g. call it once on a batch or give it an Input.")
    outside = [v.path for v in model.variables
               if not strategy.extended.variable_created_in_scope(getattr(v, "value", v))]
    if outside:
        raise ValueError(
            f"{len(outside)} model variable(s) were not created under this strategy's "
            f"scope (e.g. {outside[0]!r}): create the model inside `strategy.scope()`.")
    owner = getattr(optimizer, "_distribution_strategy", strategy)
    if owner is not strategy:
        raise ValueError("The optimizer was not created under this strategy's scope: create it "
                         "(or compile the model) inside `strategy.scope()`.")


def _prepare_dataset(dataset, global_batch_size: int | None, train: bool):
    import tensorflow as tf

    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError("The datasets must yield `(images, labels)` pairs. Received elements "
                         f"of spec {spec}")
    batch = tf.nest.flatten(spec[0])[0].shape
    batch = batch[0] if batch.rank else None
    if train:
        if batch is not None and batch != global_batch_size:
            raise ValueError(f"The training dataset is batched by {batch}, not by the global "
                             f"batch size {global_batch_size}.")
        if batch is None:
            dataset = dataset.rebatch(global_batch_size, drop_remainder=True)
    options = tf.data.Options()
    policy = dataset.options().experimental_distribute.auto_shard_policy
    if policy == tf.data.experimental.AutoShardPolicy.AUTO:
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        dataset = dataset.with_options(options)
    return dataset


__all__ = [
    "agree_on_initial_epoch",
    "broadcast_from_chief",
    "evaluate_distributed",
    "fit_distributed",
    "is_chief",
    "parse_tf_config",
    "strategy_from_tf_config",
]
