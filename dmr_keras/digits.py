"""scikit-learn's handwritten digits as 32x32x3 images: the offline real dataset.

1,797 8x8 grey images with values 0..16 (bundled with scikit-learn, no download). Each is
upsampled 4x by pixel repetition to 32x32, scaled to [0, 1] and repeated over 3 channels, so the
CIFAR-form networks take it unchanged. NumPy only: the tf.data pipeline wraps this.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 32


def digits_to_images(flat: np.ndarray) -> np.ndarray:
    """(N, 64) digits in 0..16 -> (N, 32, 32, 3) float32 in [0, 1]."""
    flat = np.asarray(flat, dtype="float32")
    if flat.ndim != 2 or flat.shape[1] != 64:
        raise ValueError(f"Expected digits of shape (N, 64). Received shape {flat.shape}")
    images = flat.reshape(-1, 8, 8) / 16.0
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
    return np.repeat(images[..., None], 3, axis=-1)


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(images (N, 32, 32, 3) float32, labels (N,) int64)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return digits_to_images(data.data), data.target.astype("int64")
