"""scikit-learn's handwritten digits as 32x32x3 images: the offline real dataset.

1,797 8x8 grey images with values 0..16 (bundled with scikit-learn, no download). Each is
upsampled 4x by pixel repetition to 32x32, scaled to [0, 1] and repeated over 3 channels, so the
CIFAR-form networks take it unchanged. NumPy only: the tf.data pipeline wraps this.

For a pretrained model (``zoo.applications.preprocess_input`` takes 0-255 pixels), use
``zoo.applications.digits_to_images``: the same conversion to 0-255 pixels
(``digits_to_images(digits, max_value=255)``).
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 32


DIGITS_MAX = 16  # scikit-learn's digits: integer grey levels 0..16


def digits_to_images(flat: np.ndarray, max_value: float = 1.0) -> np.ndarray:
    """8x8 digits in 0..16 -> 32x32x3 float32 images in ``[0, max_value]``.

    Args:
        flat: ``(N, 64)`` (``sklearn.datasets.load_digits().data``) or ``(N, 8, 8)``
            (``.images``) grey levels 0..16.
        max_value: what grey level 16 becomes: 1.0 (default; the ``digits`` training
            pipeline's [0, 1] images) or 255 (pixels for ``zoo.applications.preprocess_input``).

    Returns:
        ``(N, 32, 32, 3)`` float32: each value scaled by ``max_value / 16``, each pixel
        repeated 4x4 (nearest-neighbour upsampling, not interpolation) and over 3 channels.
    """
    flat = np.asarray(flat, dtype="float32")
    if flat.ndim == 3 and flat.shape[1:] == (8, 8):
        flat = flat.reshape(len(flat), 64)
    if flat.ndim != 2 or flat.shape[1] != 64:
        raise ValueError("Expected digits of shape (N, 64) or (N, 8, 8). Received shape "
                         f"{flat.shape}")
    if flat.size and (flat.min() < 0 or flat.max() > DIGITS_MAX):
        raise ValueError(f"Expected digits with grey levels 0..{DIGITS_MAX} (scikit-learn's "
                         f"load_digits). Received values {flat.min():g}..{flat.max():g}: pass "
                         "the digits as loaded, not already scaled.")
    images = flat.reshape(-1, 8, 8) * np.float32(max_value / DIGITS_MAX)
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
    return np.repeat(images[..., None], 3, axis=-1)


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(images (N, 32, 32, 3) float32, labels (N,) int64)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return digits_to_images(data.data), data.target.astype("int64")
