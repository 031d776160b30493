"""`dmr-demo`: build a registered model, print its card, run it on a real digit image.

    dmr-demo [NAME[.TAG]]        (default: dmrnet_56)

Without a tag the network is freshly initialised, so its prediction is arbitrary: the point is
that the model builds, counts the paper's parameters and runs on real data. With a weights tag
(``dmr-demo dmrnet_8_tiny.digits``) it loads those weights and classifies held-out digits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dmr-demo", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="dmrnet_56",
                        help="registered model name, optionally with a weights tag "
                             "(e.g. dmrnet_8_tiny.digits)")
    args = parser.parse_args(argv)
    from dmr_keras.startup import start_backend

    start_backend()
    import keras
    import numpy as np

    import zoo
    from zoo.registry import split_name

    base, tag = split_name(args.name)
    try:
        info = zoo.model_info(base)
        if tag is not None and tag not in info["weights"]:
            raise ValueError(f"{base} has no weights {tag!r}; its tags: "
                             f"{', '.join(info['weights']) or 'none'} (dmr-zoo list).")
    except ValueError as err:
        print(f"dmr-demo: error: {err}", file=sys.stderr)
        return 2
    print(f"Model card: {base}")
    print(json.dumps(info, indent=2))
    keras.utils.set_random_seed(0)
    if tag is None:
        model = zoo.create_model(base, classes=10, input_shape=(32, 32, 3))
    else:
        model = zoo.create_model(base, weights=tag)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    paper = info["paper"].get("params")
    print(f"parameters: {trainable:,} trainable, {model.count_params():,} with BN statistics "
          f"(card: {info['params']:,}; paper: {f'{paper / 1e6:.1f}M' if paper else 'n/a'})")

    if tag is None:
        from dmr_keras.digits import load_digits_images

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
    return _classify(model, f"{base}.{tag}")


def _classify(model, key: str) -> int:
    """Pretrained weights: classify the held-out digits, or 4 noise images for other data."""
    import keras
    import numpy as np

    from zoo.applications import decode_predictions, digits_to_images
    from zoo.weights import load_manifest

    entry = load_manifest()[key]
    if entry.dataset == "digits":
        from sklearn.datasets import load_digits

        from dmr_keras.data import digits_split

        digits = load_digits()
        _, test = digits_split()
        pixels, labels = digits_to_images(digits.data[test]), digits.target[test]
        what = f"the {len(labels)} held-out digits"
    else:
        pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
        labels, what = None, "4 noise images (the weights' own test data is not bundled)"
    t = time.perf_counter()  # the model takes 0-255 pixels: its preprocessing is built in
    probs = keras.ops.convert_to_numpy(model.predict(pixels, verbose=0))
    dt = time.perf_counter() - t
    print(f"{key} (pretrained weights) on {what}, backend {keras.backend.backend()}: "
          f"{dt * 1e3:.0f} ms")
    first = decode_predictions(probs[:1], weights=key, top=3)[0]
    print("first image, top-3: " + ", ".join(f"{name} {p:.3f}" for _, name, p in first)
          + (f" (label {labels[0]})" if labels is not None else ""))
    if labels is not None:
        correct = int(np.sum(probs.argmax(axis=1) == labels))
        print(f"accuracy {correct / len(labels):.2%} ({correct} of {len(labels)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
