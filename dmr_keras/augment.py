"""The current recipe's data augmentation, drawn from stateless seeds (tf.data).

- :func:`randaugment`: RandAugment (Cubuk et al., 2020) on one image in [0, 1]: ``num_ops``
  operations drawn from the paper's 14 (identity, auto-contrast, equalize, rotate, solarize,
  colour, posterize, contrast, brightness, sharpness, shear x / y, translate x / y), each at
  ``magnitude`` on timm's 0-10 scale (rotate 30 degrees x m/10, shear 0.3 x m/10, translate
  0.45 x m/10 of the side, enhancements 1 +- 0.9 x m/10, solarize above 1 - m/10, posterize to
  8 - round(4 m/10) bits), with a random sign where the operation has one.
- :func:`mix_batch`: one-hot labels, then MixUp (Zhang et al., 2018) or CutMix (Yun et al.,
  2019) on a batch. The mixing itself is ``keras.layers.MixUp`` / ``keras.layers.CutMix``'s
  (``transform_images`` / ``transform_labels``); the random draws (the partner permutation, the
  weights, the boxes) are stateless, seeded by the caller.

Keras' own layers draw from a ``SeedGenerator``, whose state depends on how often the pipeline
ran; :mod:`dmr_keras.data` needs every epoch to be a function of ``(seed, epoch)`` so that a
resumed run sees the batches an uninterrupted one saw. Everything here is a function of its
``seed`` argument (a ``[2]`` int tensor) only. TensorFlow only.
"""

from __future__ import annotations

import math

import tensorflow as tf

RANDAUGMENT_OPS = ("identity", "auto_contrast", "equalize", "rotate", "solarize", "color",
                   "posterize", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
                   "translate_x", "translate_y")
MAX_MAGNITUDE = 10.0
_fold = tf.random.experimental.stateless_fold_in


# ---- RandAugment ------------------------------------------------------------------------------

def randaugment(image, seed, *, magnitude: float, num_ops: int = 2, fill=(0.5, 0.5, 0.5)):
    """RandAugment of one float image (H, W, 3) in [0, 1]; the result is in [0, 1].

    Args:
        image: float32 (H, W, 3), pixel values in [0, 1].
        seed: stateless seed, shape [2]: the same seed gives the same image.
        magnitude: strength on timm's scale, 0 < magnitude <= 10 (rand-m9 is 9).
        num_ops: operations applied one after the other (the paper's N; 2 as in timm).
        fill: the colour (per channel, in [0, 1]) that rotate, shear and translate move in;
            ``dmr_keras.data`` passes the dataset's mean pixel (the colour of its crop padding).
    """
    if not 0 < magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"`magnitude` must be in (0, {MAX_MAGNITUDE:g}]. "
                         f"Received: magnitude={magnitude!r}")
    level = float(magnitude) / MAX_MAGNITUDE
    image = tf.convert_to_tensor(image, tf.float32)
    fill = tf.constant(fill, tf.float32)
    for i in range(num_ops):
        op_seed, sign_seed = _fold(seed, 2 * i), _fold(seed, 2 * i + 1)
        index = tf.random.stateless_uniform([], op_seed, 0, len(RANDAUGMENT_OPS), tf.int32)
        sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
        branches = [_op(name, image, level, sign, fill) for name in RANDAUGMENT_OPS]
        image = tf.ensure_shape(tf.switch_case(index, branches), image.shape)
    return image


def _op(name, image, level, sign, fill):
    """The branch for ``tf.switch_case``: a callable applying operation ``name``."""
    enhance = 1.0 + 0.9 * level * sign  # PIL ImageEnhance factor (1: unchanged)

    def blend(degenerate):  # PIL's ImageEnhance: degenerate + factor * (image - degenerate)
        return tf.clip_by_value(degenerate + enhance * (image - degenerate), 0.0, 1.0)

    def gray():
        return tf.image.rgb_to_grayscale(image)

    affine = {
        "rotate": lambda h, w: _rotation(math.radians(30.0) * level * sign, h, w),
        "shear_x": lambda h, w: [1.0, 0.3 * level * sign, -0.3 * level * sign * (h - 1) / 2,
                                 0.0, 1.0, 0.0],
        "shear_y": lambda h, w: [1.0, 0.0, 0.0, 0.3 * level * sign, 1.0,
                                 -0.3 * level * sign * (w - 1) / 2],
        "translate_x": lambda h, w: [1.0, 0.0, 0.45 * level * sign * w, 0.0, 1.0, 0.0],
        "translate_y": lambda h, w: [1.0, 0.0, 0.0, 0.0, 1.0, 0.45 * level * sign * h],
    }
    if name in affine:
        return lambda: _transform(image, affine[name], fill)
    bits = 8 - int(round(4 * level))
    return {
        "identity": lambda: image,
        "auto_contrast": lambda: _auto_contrast(image),
        "equalize": lambda: _equalize(image),
        "solarize": lambda: tf.where(image >= 1.0 - level, 1.0 - image, image),
        "posterize": lambda: _posterize(image, bits),
        "color": lambda: blend(tf.image.grayscale_to_rgb(gray())),
        "contrast": lambda: blend(tf.fill(tf.shape(image), tf.reduce_mean(gray()))),
        "brightness": lambda: blend(tf.zeros_like(image)),
        "sharpness": lambda: blend(_smoothed(image)),
    }[name]


def _rotation(angle, h, w):
    """Output pixel (x, y) -> input pixel, rotating by ``angle`` about the image centre."""
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    return [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy]


def _transform(image, matrix, fill):
    """``image`` resampled (bilinear) through the affine map ``matrix(h, w)`` (6 numbers: output
    pixel -> input pixel); pixels from outside the image are ``fill``."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    row = tf.stack([tf.cast(v, tf.float32) for v in matrix(h, w)] + [0.0, 0.0])
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=(image - fill)[None], transforms=row[None], output_shape=shape[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    return tf.clip_by_value(moved + fill, 0.0, 1.0)


def _auto_contrast(image):
    """Each channel stretched to [0, 1] (a constant channel is left alone)."""
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    return tf.where(hi > lo, (image - lo) / tf.maximum(hi - lo, 1e-6), image)


def _levels(image):
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.int32)


def _equalize(image):
    """PIL's ``ImageOps.equalize`` per channel, on the 256 levels of the image."""
    levels = _levels(image)
    channels = []
    for c in range(3):
        v = levels[..., c]
        hist = tf.math.bincount(tf.reshape(v, [-1]), minlength=256, maxlength=256)
        last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)[:, 0]))
        step = (tf.reduce_sum(hist) - last) // 255
        lut = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
        channels.append(tf.where(step > 0, tf.gather(lut, v), v))
    return tf.cast(tf.stack(channels, -1), tf.float32) / 255.0


def _posterize(image, bits: int):
    shift = 8 - bits
    kept = tf.bitwise.left_shift(tf.bitwise.right_shift(_levels(image), shift), shift)
    return tf.cast(kept, tf.float32) / 255.0


def _smoothed(image):
    """PIL's SMOOTH filter (3x3, centre weight 5 of 13) inside; the border pixels unchanged."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    inner = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    padded = tf.pad(inner, [[1, 1], [1, 1], [0, 0]])
    mask = tf.pad(tf.ones_like(inner), [[1, 1], [1, 1], [0, 0]])
    return mask * padded + (1.0 - mask) * image


# ---- MixUp / CutMix ---------------------------------------------------------------------------

class BatchMixer:
    """One-hot labels, and MixUp or CutMix of each batch (see :func:`mix_batch`).

    Args:
        num_classes: classes of the one-hot labels.
        mixup: MixUp's alpha (weights drawn from Beta(alpha, alpha)); 0: no MixUp.
        cutmix: CutMix's alpha (the kept area fraction drawn from Beta(alpha, alpha)); 0: none.
            With both, each batch gets one of the two, chosen with probability 1/2 (timm's
            ``switch_prob``).

    Call it as ``mixer(images, int_labels, seed)`` -> ``(images, float32 (B, C) labels)``, each
    label row summing to 1. Built once, outside the tf.data function (it holds Keras layers).
    """

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0):
        import keras

        for name, value in (("mixup", mixup), ("cutmix", cutmix)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0 (0: off). "
                                 f"Received: {name}={value!r}")
        self.num_classes = int(num_classes)
        self.mixup = float(mixup)
        self.cutmix = float(cutmix)
        # float32 whatever the global dtype policy (a mixed-precision run sets one): the
        # pipeline's images stay float32.
        self._mixup = keras.layers.MixUp(alpha=self.mixup or 0.2, dtype="float32")
        self._cutmix = keras.layers.CutMix(dtype="float32")
        for layer in (self._mixup, self._cutmix):  # called inside tf.data, whatever the backend
            layer.backend.set_backend("tensorflow")

    def __call__(self, images, labels, seed):
        labels = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=tf.float32)
        if not (self.mixup or self.cutmix):
            return images, labels
        n = tf.shape(images)[0]
        perm = tf.random.experimental.stateless_shuffle(tf.range(n), seed=_fold(seed, 0))

        def mixup():
            weight = _beta(n, self.mixup, _fold(seed, 1))
            t = {"mix_weight": weight, "permutation_order": perm}
            return (self._mixup.transform_images(images, t),
                    self._mixup.transform_labels(labels, t))

        def cutmix():
            masks, weight = _boxes(tf.shape(images), _beta(n, self.cutmix, _fold(seed, 2)),
                                   _fold(seed, 3))
            t = {"permutation_order": perm, "batch_masks": masks, "mix_weight": weight}
            return (self._cutmix.transform_images(images, t),
                    self._cutmix.transform_labels(labels, t))

        if not self.cutmix:
            return mixup()
        if not self.mixup:
            return cutmix()
        use_cutmix = tf.random.stateless_uniform([], _fold(seed, 4)) < 0.5
        return tf.cond(use_cutmix, cutmix, mixup)


def mix_batch(images, labels, seed, *, num_classes: int, mixup: float = 0.0,
              cutmix: float = 0.0):
    """``BatchMixer(num_classes, mixup, cutmix)(images, labels, seed)``, for one-off use."""
    return BatchMixer(num_classes, mixup, cutmix)(images, labels, seed)


def _beta(n, alpha, seed):
    """``n`` draws from Beta(alpha, alpha) (as the ratio of two Gamma draws)."""
    a = tf.random.stateless_gamma([n], _fold(seed, 0), alpha=alpha)
    b = tf.random.stateless_gamma([n], _fold(seed, 1), alpha=alpha)
    total = a + b
    return tf.where(total > 0, a / tf.maximum(total, 1e-12), 0.5)


def _boxes(shape, keep, seed):
    """CutMix boxes as in its paper's code (and timm's ``rand_bbox``): side ratio
    ``sqrt(1 - keep)``, centre uniform, clipped to the image. Returns the boolean masks
    (B, H, W, C) of the pasted pixels and the weight of each image's own label: the fraction
    of its pixels left, after clipping."""
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    ratio = tf.sqrt(1.0 - keep)
    cut_h, cut_w = tf.floor(hf * ratio), tf.floor(wf * ratio)
    centre = tf.random.stateless_uniform([2, n], seed)
    cy, cx = tf.floor(centre[0] * hf), tf.floor(centre[1] * wf)
    y0 = tf.clip_by_value(cy - tf.floor(cut_h / 2), 0.0, hf)
    y1 = tf.clip_by_value(cy + tf.floor(cut_h / 2), 0.0, hf)
    x0 = tf.clip_by_value(cx - tf.floor(cut_w / 2), 0.0, wf)
    x1 = tf.clip_by_value(cx + tf.floor(cut_w / 2), 0.0, wf)
    rows = tf.range(hf)[None, :, None]
    cols = tf.range(wf)[None, None, :]
    inside = ((rows >= y0[:, None, None]) & (rows < y1[:, None, None])
              & (cols >= x0[:, None, None]) & (cols < x1[:, None, None]))
    masks = tf.tile(inside[..., None], [1, 1, 1, c])
    weight = 1.0 - (y1 - y0) * (x1 - x0) / (hf * wf)
    return masks, weight
