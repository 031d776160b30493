"""Subprocess for tests/test_multiworker.py: trains with dmr_keras.multiworker.fit_distributed.

    python tests/multiworker_worker.py multiworker OUT_DIR   # one worker; TF_CONFIG from env
    python tests/multiworker_worker.py mirrored OUT_DIR      # 2 logical CPUs + reference runs

Two models: ``A``, a small convolutional net with BatchNorm, trained with a seeded shuffle;
``B``, a tiny convolutional net without BatchNorm, started from fixed NumPy weights, whose
result after one epoch does not depend on how the global batch is split: a run on one device is
the reference that the distributed runs must match. Results go to OUT_DIR as .npz / .json files.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

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


def _model_b(strategy):
    import keras

    with strategy.scope():
        model = keras.Sequential([
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(4, 4, strides=4, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ])
        optimizer = keras.optimizers.SGD(0.5)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32")
                       for w in model.get_weights()])
    return model, optimizer


def _train_b(strategy, x, y):
    import keras

    from dmr_keras.multiworker import fit_distributed

    model, optimizer = _model_b(strategy)
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
    weights_b, history_b = _train_b(strategy, x, y)
    _save(out, f"b_{index}.npz", weights_b)
    with open(os.path.join(out, f"history_{index}.json"), "w") as f:
        json.dump({"a": history, "b": history_b, "chief": is_chief(strategy),
                   "evaluation": evaluation,
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
    with open(os.path.join(out, "history_mirrored.json"), "w") as f:
        json.dump({"a": history, "b_mirrored": history_b_mirrored,
                   "b_default": history_b_default, "replicas": strategy.num_replicas_in_sync,
                   "chief": is_chief(strategy), "evaluation": evaluation}, f)


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], sys.argv[2]
    {"multiworker": multiworker, "mirrored": mirrored}[mode](out_dir)
    print(f"{mode} done", flush=True)
