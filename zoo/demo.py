"""`dmr-demo`: build a registered model, print its card, run it on a real digit image.

    dmr-demo [NAME]        (default: dmrnet_56)

The network is freshly initialised (no pretrained weights yet), so its prediction is arbitrary;
the point is that the model builds, counts the paper's parameters and runs on real data.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dmr-demo", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="dmrnet_56", help="registered model name")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    import zoo
    from dmr_keras.digits import load_digits_images

    info = zoo.model_info(args.name)
    print(f"Model card: {args.name}")
    print(json.dumps(info, indent=2))
    keras.utils.set_random_seed(0)
    model = zoo.create_model(args.name, classes=10, input_shape=(32, 32, 3))
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    paper = info["paper"].get("params")
    print(f"parameters: {trainable:,} trainable, {model.count_params():,} with BN statistics "
          f"(card: {info['params']:,}; paper: {f'{paper / 1e6:.1f}M' if paper else 'n/a'})")

    images, labels = load_digits_images()
    t = time.perf_counter()
    probs = keras.ops.convert_to_numpy(model(images[:1], training=False))[0]
    dt = time.perf_counter() - t
    top = np.argsort(probs)[::-1][:3]
    print(f"forward pass on digit #0 (label {labels[0]}), input {images[:1].shape}, "
          f"backend {keras.backend.backend()}: {dt * 1e3:.0f} ms")
    print("top-3 classes (freshly initialised weights: the prediction is arbitrary): "
          + ", ".join(f"{c}: {probs[c]:.3f}" for c in top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
