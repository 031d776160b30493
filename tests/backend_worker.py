"""Run under a chosen KERAS_BACKEND by tests/test_backends.py (a separate process per backend).

    python tests/backend_worker.py save DIR    build dmrnet_14, randomise, save weights + outputs
    python tests/backend_worker.py load DIR    rebuild, load those weights, compare outputs
"""

import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build():
    import zoo

    return zoo.create_model("dmrnet_14", classes=5, classifier_activation=None)


def main(mode, directory):
    import keras

    model = build()
    if mode == "save":
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        # Non-trivial BN statistics, so inference really depends on every weight.
        for w in model.weights:
            if "moving_variance" in w.path or "gamma" in w.path:
                w.assign(rng.uniform(0.5, 1.5, tuple(w.shape)).astype("float32"))
            elif "moving_mean" in w.path or "beta" in w.path:
                w.assign(rng.normal(0, 0.2, tuple(w.shape)).astype("float32"))
        x = rng.random((4, 32, 32, 3)).astype("float32")
        y = keras.ops.convert_to_numpy(model(x, training=False))
        model.save_weights(os.path.join(directory, "model.weights.h5"))
        np.save(os.path.join(directory, "x.npy"), x)
        np.save(os.path.join(directory, "y.npy"), y)
        print(f"saved on {keras.backend.backend()}")
        return 0
    model.load_weights(os.path.join(directory, "model.weights.h5"))
    x = np.load(os.path.join(directory, "x.npy"))
    y = np.load(os.path.join(directory, "y.npy"))
    got = keras.ops.convert_to_numpy(model(x, training=False))
    diff = float(np.max(np.abs(got - y)))
    scale = float(np.max(np.abs(y)))
    print(f"loaded on {keras.backend.backend()}: max abs diff {diff:.3g} "
          f"(output scale {scale:.3g})")
    return 0 if diff <= 1e-4 * max(1.0, scale) else 1


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
