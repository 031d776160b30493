"""Subprocess for tests/test_multiworker.py: trains with dmr_keras.multiworker.fit_distributed.

    python tests/multiworker_worker.py multiworker OUT_DIR   # one worker; TF_CONFIG from env
    python tests/multiworker_worker.py mirrored OUT_DIR      # 2 logical CPUs + reference runs
    python tests/multiworker_worker.py resume OUT_DIR EPOCHS PAUSE_AFTER  # one worker, resumable

Three models: ``A``, a small convolutional net with BatchNorm, trained with a seeded shuffle;
``B``, a tiny convolutional net without BatchNorm, started from fixed NumPy weights, whose
result after one epoch does not depend on how the global batch is split: a run on one device is
the reference that the distributed runs must match (under MultiWorkerMirroredStrategy worker 1
starts ``B`` from other weights: fit_distributed must broadcast the chief's); ``C``, one Dense
layer under a ``LossScaleOptimizer``, first fed a global batch with ``inf`` in the second
replica's half only, then a finite batch. Results go to OUT_DIR as .npz / .json files.

``resume`` trains a small DMRNet for EPOCHS epochs, checkpointing every epoch into its own
``OUT_DIR/ckpt_<index>`` (dmr_keras.training.EpochCheckpoint) and resuming from the newest
checkpoint it finds. After epoch PAUSE_AFTER (0-based; -1: never) of the first attempt it writes
``OUT_DIR/paused_<index>`` and sleeps, to be killed; run again, it does not pause.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

T0 = time.perf_counter()

N_EXAMPLES = 136  # not a multiple of the batch: the partial last batch is dropped
GLOBAL_BATCH = 32


def _data():
    from dmr_keras.digits import load_digits_images

    x, y = load_digits_images()
    return x[:N_EXAMPLES], y[:N_EXAMPLES]


def _dataset(x, y):
    import tensorflow as tf

    tf.random.set_seed(0)  # same global seed on every worker: same shuffle order (DATA sharding)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=7)
    return ds.batch(GLOBAL_BATCH)


def _model_a(strategy, seed):
    """A small convolutional net with BatchNorm (cheap to trace; the DMRNet blocks use the same
    Conv/BatchNorm layers)."""
    import keras

    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, strides=2, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(16, 3, strides=2, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ])
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    return model, optimizer


def _model_b(strategy, seed=0):
    import keras

    with strategy.scope():
        model = keras.Sequential([
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 4, strides=4, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ])
        optimizer = keras.optimizers.SGD(0.5)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32")
                       for w in model.get_weights()])
    return model, optimizer


def _train_b(strategy, x, y, seed=0, out=None, name=None):
    import keras

    from dmr_keras.multiworker import fit_distributed

    model, optimizer = _model_b(strategy, seed)
    if out is not None:
        _save(out, name, model.get_weights())
    history = fit_distributed(
        model, optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
        train_dataset=_dataset(x, y), epochs=1, strategy=strategy,
        global_batch_size=GLOBAL_BATCH, verbose=0)
    return model.get_weights(), history


def _evaluation(model, strategy, x, y):
    """evaluate_distributed on all of (x, y) (a partial last batch included), and the same
    computed with a direct call of the model on one device, for comparison."""
    import keras

    from dmr_keras.multiworker import evaluate_distributed

    dataset = _dataset(x, y)
    result = evaluate_distributed(model, loss=keras.losses.SparseCategoricalCrossentropy(),
                                  dataset=dataset, strategy=strategy)
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    direct = {"loss": float(keras.losses.SparseCategoricalCrossentropy()(y, probs)),
              "accuracy": float(np.mean(np.argmax(probs, axis=-1) == y))}
    return {"distributed": result, "direct": direct}


def _save(out, name, weights):
    np.savez(os.path.join(out, name), *weights)


C_BATCH = 8  # global batch of model C: rows 0-3 go to the first replica, 4-7 to the second


def _c_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2 * C_BATCH, 4)).astype("float32")
    y = rng.integers(0, 3, size=(2 * C_BATCH,)).astype("int64")
    x_bad = x[:C_BATCH].copy()
    x_bad[C_BATCH - 2, 0] = np.inf  # only in the second replica's half
    return (x_bad, y[:C_BATCH]), (x[C_BATCH:], y[C_BATCH:])


def _model_c(strategy, loss_scale):
    import keras

    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        optimizer = keras.optimizers.SGD(0.1)
        if loss_scale:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=1024.0)
    rng = np.random.default_rng(4)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32")
                       for w in model.get_weights()])
    return model, optimizer


def _local_copies(variable):
    """This process's copies (one per local replica) of a variable, as python numbers."""
    value = variable.value
    return [float(np.asarray(c.numpy())) for c in getattr(value, "values", (value,))]


def _c_fit(model, optimizer, strategy, data):
    import keras
    import tensorflow as tf

    from dmr_keras.multiworker import fit_distributed

    return fit_distributed(
        model, optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        train_dataset=tf.data.Dataset.from_tensor_slices(data).batch(C_BATCH), epochs=1,
        strategy=strategy, global_batch_size=C_BATCH, verbose=0)


def _train_c(strategy, out, suffix):
    """Model C: a step with inf on one replica is skipped on every replica, then a finite step
    is applied. Saves weights (c_init, c_skip, c_final) and returns the optimizer state."""
    bad, good = _c_data()
    model, optimizer = _model_c(strategy, loss_scale=True)
    _save(out, f"c_init_{suffix}.npz", model.get_weights())
    history_bad = _c_fit(model, optimizer, strategy, bad)
    _save(out, f"c_skip_{suffix}.npz", model.get_weights())
    after_skip = {"scale": _local_copies(optimizer.dynamic_scale),
                  "step_counter": _local_copies(optimizer.step_counter),
                  "iterations": _local_copies(optimizer.iterations)}
    _c_fit(model, optimizer, strategy, good)
    _save(out, f"c_final_{suffix}.npz", model.get_weights())
    after_good = {"scale": _local_copies(optimizer.dynamic_scale),
                  "step_counter": _local_copies(optimizer.step_counter),
                  "iterations": _local_copies(optimizer.iterations)}
    return {"after_skip": after_skip, "after_good": after_good,
            "loss_bad": history_bad["loss"][0]}


def _reference_c(out):
    """Model C's expected final weights: plain SGD, one device, the finite batch only."""
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    model, optimizer = _model_c(strategy, loss_scale=False)
    _c_fit(model, optimizer, strategy, _c_data()[1])
    _save(out, "c_reference.npz", model.get_weights())


def _probe_agreement(strategy, index):
    """agree_on_initial_epoch when the workers agree, and when they do not."""
    from dmr_keras.multiworker import agree_on_initial_epoch

    agreed = agree_on_initial_epoch(strategy, 2)
    try:
        agree_on_initial_epoch(strategy, 3 + index)
        error = None
    except ValueError as err:
        error = str(err)
    return {"agreed": agreed, "mismatch_error": error}


def multiworker(out):
    import keras

    from dmr_keras.multiworker import fit_distributed, is_chief, strategy_from_tf_config

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = strategy_from_tf_config()
    x, y = _data()
    # A different seed on each worker: MultiWorkerMirroredStrategy broadcasts worker 0's
    # initial values, so the workers still start (and end) equal.
    model, optimizer = _model_a(strategy, seed=1 + index)
    _save(out, f"a_init_{index}.npz", model.get_weights())
    epochs_seen = []
    history = fit_distributed(
        model, optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
        train_dataset=_dataset(x, y), eval_dataset=_dataset(x, y).take(2), epochs=2,
        strategy=strategy, global_batch_size=GLOBAL_BATCH,
        on_epoch_end=lambda epoch, logs: epochs_seen.append((epoch, sorted(logs))))
    _save(out, f"a_{index}.npz", model.get_weights())
    evaluation = _evaluation(model, strategy, x, y)
    # Worker 1 starts B from other weights: fit_distributed broadcasts the chief's.
    weights_b, history_b = _train_b(strategy, x, y, seed=index, out=out,
                                    name=f"b_start_{index}.npz")
    _save(out, f"b_{index}.npz", weights_b)
    c = _train_c(strategy, out, str(index))
    agreement = _probe_agreement(strategy, index)
    with open(os.path.join(out, f"history_{index}.json"), "w") as f:
        json.dump({"a": history, "b": history_b, "c": c, "agreement": agreement,
                   "chief": is_chief(strategy), "evaluation": evaluation,
                   "replicas": strategy.num_replicas_in_sync, "epochs_seen": epochs_seen}, f)


def mirrored(out):
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from dmr_keras.multiworker import fit_distributed, is_chief

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(
        devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    x, y = _data()
    model, optimizer = _model_a(strategy, seed=1)
    history = fit_distributed(
        model, optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
        train_dataset=_dataset(x, y), eval_dataset=_dataset(x, y).take(2), epochs=1,
        strategy=strategy, global_batch_size=GLOBAL_BATCH)
    evaluation = _evaluation(model, strategy, x, y)
    weights_mirrored, history_b_mirrored = _train_b(strategy, x, y)
    weights_default, history_b_default = _train_b(tf.distribute.get_strategy(), x, y)
    _save(out, "b_mirrored.npz", weights_mirrored)
    _save(out, "b_default.npz", weights_default)
    c = _train_c(strategy, out, "mirrored")
    _reference_c(out)
    with open(os.path.join(out, "history_mirrored.json"), "w") as f:
        json.dump({"a": history, "b_mirrored": history_b_mirrored, "c": c,
                   "b_default": history_b_default, "replicas": strategy.num_replicas_in_sync,
                   "chief": is_chief(strategy), "evaluation": evaluation}, f)


def _log(what):
    print(f"{time.perf_counter() - T0:.1f}s {what}", flush=True)


RESUME_BATCH = 16  # global batch; 48 examples: 3 steps per epoch


def resume(out, epochs, pause_after):
    import keras
    import tensorflow as tf

    from dmr_keras import build_model
    from dmr_keras.multiworker import (
        agree_on_initial_epoch,
        fit_distributed,
        strategy_from_tf_config,
    )
    from dmr_keras.training import EpochCheckpoint, latest_checkpoint

    epochs, pause_after = int(epochs), int(pause_after)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    _log("imported")
    strategy = strategy_from_tf_config()
    _log("strategy")
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3 * RESUME_BATCH, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 4, size=(3 * RESUME_BATCH,)).astype("int64")

    def epoch_data(epoch):  # each epoch's order from (seed, epoch), not from earlier passes
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        return ds.shuffle(len(x), seed=1000 + epoch).batch(RESUME_BATCH)

    # Each worker keeps its own copy of the checkpoints (identical files).
    ckpt_dir = Path(out) / f"ckpt_{index}"
    found = latest_checkpoint(ckpt_dir)
    initial_epoch = agree_on_initial_epoch(strategy, found["epoch"] if found else 0)
    _log(f"agreed on initial epoch {initial_epoch}")
    with strategy.scope():
        if found:
            model = keras.saving.load_model(found["path"])
        else:
            model = build_model(depth=8, width=0.5, input_shape=(8, 8, 3), classes=4)
            model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy())
    _log("model")
    checkpoint = EpochCheckpoint(ckpt_dir, history=found["history"] if found else None)
    checkpoint.set_model(model)

    def on_epoch_end(epoch, logs):
        checkpoint.on_epoch_end(epoch, logs)
        _log(f"epoch {epoch} saved")
        marker = Path(out) / f"paused_{index}"
        if epoch == pause_after and not marker.exists():
            marker.write_text(f"{epoch}\n")
            print(f"paused after epoch {epoch}", flush=True)
            time.sleep(600)  # the test SIGKILLs this process here

    fit_distributed(
        model, optimizer=model.optimizer, loss=model.loss, train_dataset=epoch_data,
        epochs=epochs, initial_epoch=initial_epoch, strategy=strategy,
        global_batch_size=RESUME_BATCH, on_epoch_end=on_epoch_end, verbose=0)
    _save(out, f"final_{index}.npz", model.get_weights())
    _save(out, f"final_optimizer_{index}.npz", [v.numpy() for v in model.optimizer.variables])
    with open(os.path.join(out, f"resume_{index}.json"), "w") as f:
        json.dump({"initial_epoch": initial_epoch, "history": checkpoint.history}, f)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"multiworker": multiworker, "mirrored": mirrored, "resume": resume}[mode](*args)
    print(f"{mode} done", flush=True)
