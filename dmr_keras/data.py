"""Input pipelines (tf.data) for training and evaluation: CIFAR-10/100, SVHN, ImageNet, the
offline scikit-learn digits and a folder of images.

``load(spec, batch_size=...)`` returns ``(train, eval, info)``: two ``tf.data.Dataset`` of
``(float32 images (B, H, W, 3) normalised per channel, int64 labels (B,))`` and a ``DataInfo``.
The train set is shuffled, augmented and batched with ``drop_remainder=True``; it is not repeated,
so one pass is one epoch (each new pass is reshuffled and re-augmented). The eval set is neither
shuffled nor augmented and keeps its last partial batch. ``batch_size`` is the global batch.

Datasets (``spec``):

* ``cifar10``, ``cifar100`` (TFDS, train / test). The paper's recipe: per-channel mean/std
  normalisation, 4-pixel pad with the mean pixel, random 32x32 crop, random horizontal flip.
  Offline, ``data_dir`` may instead hold (checked in this order): ``train/<class>/`` +
  ``test/<class>/`` image folders (CIFAR-10's class folders must carry its 10 names, which sort
  into its label order); the official python files (``cifar-10-batches-py/`` or
  ``cifar-100-python/``, in ``data_dir`` or as ``data_dir`` itself) or their ``.tar.gz``, read by
  an allow-list unpickler that resolves only what a pickled NumPy array needs and refuses any
  other global; otherwise ``data_dir`` is the TFDS data dir. ``info.source`` says which
  (``folder``, ``cifar-python``, ``tfds``).
* ``svhn`` (TFDS ``svhn_cropped``): train = ``train`` + ``extra`` (604,388 images, as in the
  paper), eval = ``test``. No augmentation (as in the paper), mean/std normalisation only.
* ``imagenet2012`` (TFDS, train / validation). TFDS cannot download ImageNet: put
  ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` in ``DATA_DIR/downloads/manual``
  (or directly in ``DATA_DIR``) and pass ``data_dir=DATA_DIR``; the first ``load`` builds the
  TFDS records in ``DATA_DIR`` (hours). Train: Inception-style random crop (area 8%-100% of the
  image, aspect ratio 3/4-4/3, ``tf.image.stateless_sample_distorted_bounding_box``) resized to
  224, random horizontal flip. Eval: shorter side resized to 256, centre 224 crop. The paper's
  colour augmentation is not applied. ``image_size`` changes 224 (eval resize: size * 256 / 224).
* ``digits`` (offline, the default): scikit-learn's 1,797 8x8 digits as 32x32x3 images (see
  ``dmr_keras.digits``). A fixed split, independent of ``seed``: the permutation
  ``numpy.random.RandomState(0).permutation(1797)``; its first 1,437 indices are the train set,
  its last 360 the eval (test) set. Mean and std per channel are computed at load time from the
  1,437 train images (the 3 channels are equal): mean 0.30540, std 0.37586. Augmentation: 4-pixel
  pad + random 32x32 crop, no flip (digits are not mirror-invariant).
* ``folder:PATH``: one sub-folder of ``PATH`` per class (sorted folder names give the class
  indices; hidden folders are ignored), images ``.jpg .jpeg .png .bmp .gif`` anywhere below each
  class folder. Each image is decoded with ``tf.io.decode_image(channels=3,
  expand_animations=False)``, resized (bilinear, aspect ratio not kept) to
  ``image_size`` x ``image_size`` (default 32) and scaled to [0, 1]; ``image_size="keep"``
  keeps the images' own size instead (they must all have one size, which may be non-square; a
  folder of mixed sizes is refused, naming them). Eval set: in each class, the
  sorted paths are permuted with ``numpy.random.RandomState(0)`` (independent of ``seed``) and
  the last ``round(validation_split * n)`` (at most ``n - 1``) are held out. Mean and std per
  channel are computed from the train images (in the same pass that checks every file).
  Augmentation: pad by a 1/8 of the side + random crop, no flip (the folder's content is
  unknown: text and digits are not mirror-invariant). Every file is decoded once before
  training: unreadable or corrupt images raise a ``ValueError`` listing all their paths
  (``load(..., skip_corrupt=True)``, ``dmr-train --skip-corrupt``: they are left out with one
  warning naming them, and ``info.skipped`` lists them).

``validation_split`` is used by ``folder:`` only (the other datasets have a fixed test split).

Model selection without the test split: ``load(..., holdout_fraction=F)`` (default 0: off) carves
a fixed, per-class part out of the train split and returns it as the eval dataset
(``info.eval_split == "val"``; ``info.train_examples`` / ``info.eval_examples`` count the two
parts): in each class the train indices are permuted with ``numpy.random.RandomState(0)``
(independent of ``seed``) and the last ``round(F * n)`` (at most ``n - 1``) are held out
(:func:`holdout_split`). The normalisation statistics stay those of the whole train split, so a
model selected on the held-out part is evaluated on the test split (``load`` without
``holdout_fraction``) with the same preprocessing. The in-memory datasets (``digits``, CIFAR from
``data_dir`` files or folders, ``folder:``) only; the TFDS datasets raise a ``ValueError``.
A ``folder:PATH`` whose top level is ``train/`` plus ``test/`` and/or ``val/`` (``validation/``)
uses those as its splits instead (the eval set: ``val`` when present, else ``test``; choose with
``eval_split``); ``info.eval_split`` says which split the eval set is.

Image files (folders, CIFAR folders) are decoded once per process into uint8 arrays
(:func:`decode_images`, keyed by the files' paths, sizes and modification times): an epoch, the
precise-BN pass or a second ``load`` never decodes again. Folders too big for memory
(``_CACHE_BYTES``) are decoded every epoch instead.

Normalisation constants (per channel, pixel values in [0, 1]), from the datasets' train splits:
CIFAR-10 mean (0.4914, 0.4822, 0.4465) std (0.2470, 0.2435, 0.2616); CIFAR-100 mean
(0.5071, 0.4865, 0.4409) std (0.2673, 0.2564, 0.2762); SVHN mean (0.4377, 0.4438, 0.4728)
std (0.1980, 0.2010, 0.1970); ImageNet mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225).
The crop's padding is applied after normalisation, with zeros: the pad is the mean pixel, as in
the reference code.

The current recipe's augmentation, off by default (:mod:`dmr_keras.augment`): ``randaugment=M``
applies RandAugment (2 operations at magnitude M of 10) to every train image in [0, 1], before
normalisation and the crop (rotate, shear and translate move in the mean pixel);
``mixup=ALPHA`` / ``cutmix=ALPHA`` mix every train batch (MixUp / CutMix, one of the two per
batch when both are given). With mixing the train labels are one-hot float32 ``(B, classes)``,
each row summing to 1; the eval labels stay int64. ``augment=False`` turns all three off.

Reproducibility: with ``load(..., epochs=N, initial_epoch=E)`` the train dataset runs epochs
``E..N-1``; epoch ``e`` is permuted by a stateless shuffle seeded with ``(seed, e)`` (the whole
set for the in-memory datasets; windows of the shuffle buffer for SVHN and ImageNet) and its
i-th element is augmented by stateless random ops seeded with
``fold_in(fold_in((seed, offset), e), i)`` (RandAugment from a third stream of that seed, MixUp
/ CutMix of batch ``b`` of epoch ``e`` from ``fold_in(fold_in((seed, offset2), e), b)``), with
``options.deterministic = True``. Nothing
depends on the global random seed or on how often the pipeline was iterated: epoch ``e`` is the
same whether the run started at 0 or resumed at ``e``, as resuming a killed run exactly needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import pickle
import warnings

import numpy as np
import tensorflow as tf

from dmr_keras import checks
from dmr_keras.dataset_stats import (  # noqa: F401  (re-exported: data.CIFAR10_MEAN, ...)
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SVHN_MEAN,
    SVHN_STD,
)

DATASETS = ("cifar10", "cifar100", "svhn", "imagenet2012", "digits")
FOLDER_PREFIX = "folder:"


DIGITS_TEST_EXAMPLES = 360
DIGITS_SPLIT_SEED = 0
FOLDER_SPLIT_SEED = 0
HOLDOUT_SPLIT_SEED = 0
DEFAULT_FOLDER_IMAGE_SIZE = 32
IMAGENET_IMAGE_SIZE = 224

# Decoded datasets up to this size are cached in memory (decoded once, not every epoch).
_CACHE_BYTES = 1 << 30
# Seed offset of the augmentation stream, so it differs from the shuffle's.
_AUGMENT_SEED_OFFSET = 1_000_003
# Seed offset of the MixUp / CutMix stream (per batch).
_MIX_SEED_OFFSET = 2_000_003
KEEP = "keep"  # image_size: a folder's images keep their own size
# The skip_corrupt warning names at most this many files (DataInfo.skipped holds them all).
_SKIPPED_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model and a training loop need to know about a loaded dataset."""

    name: str  # "cifar10", ..., "folder:/abs/path"
    num_classes: int
    image_shape: tuple  # (H, W, 3) of what the model receives
    train_examples: int
    eval_examples: int
    class_names: tuple | None
    mean: tuple  # per channel, in [0, 1] pixel units, applied by the pipeline
    std: tuple
    eval_split: str = "test"  # what the eval set is: "test" or "val" (held out from training)
    source: str = ""  # where the images came from: "tfds", "folder", "cifar-python", ...
    #: Image files left out as unreadable or corrupt by ``load(..., skip_corrupt=True)`` (their
    #: paths, sorted); empty when none was (or without ``skip_corrupt``, which raises instead).
    skipped: tuple = ()


@dataclasses.dataclass(frozen=True)
class _TFDSSpec:
    tfds_name: str
    train_splits: tuple
    eval_split: str
    mean: tuple
    std: tuple
    augment: str  # "pad_crop_flip", "none" or "inception"
    shuffle_buffer: int
    cache_train: bool  # small enough to keep decoded in memory (then a full shuffle)


_TFDS = {
    "cifar10": _TFDSSpec("cifar10", ("train",), "test", CIFAR10_MEAN, CIFAR10_STD,
                         "pad_crop_flip", 50_000, True),
    "cifar100": _TFDSSpec("cifar100", ("train",), "test", CIFAR100_MEAN, CIFAR100_STD,
                          "pad_crop_flip", 50_000, True),
    "svhn": _TFDSSpec("svhn_cropped", ("train", "extra"), "test", SVHN_MEAN, SVHN_STD,
                      "none", 100_000, False),
    "imagenet2012": _TFDSSpec("imagenet2012", ("train",), "validation", IMAGENET_MEAN,
                              IMAGENET_STD, "inception", 10_000, False),
}
_ALIASES = {"svhn_cropped": "svhn", "cifar-10": "cifar10", "cifar-100": "cifar100"}


# ---- validation ---------------------------------------------------------------------------------


def check_dataset(spec: str) -> str:
    """Cheap validation of a dataset spec, before anything heavy; returns the normalised spec.

    A name is matched case-insensitively; an unknown one raises a ``ValueError`` listing the valid
    names (and close matches). ``folder:PATH`` is normalised to an absolute path and checked: the
    folder exists, has at least 2 class sub-folders, each holding at least one image file. Image
    contents are checked by ``load``.
    """
    if not isinstance(spec, str):
        raise TypeError(f"A dataset must be a string. Received: {spec!r}")
    if spec.strip().lower().startswith(FOLDER_PREFIX):
        root = _folder_root(spec)
        _scan_folder(root)
        return FOLDER_PREFIX + root
    name = spec.strip().lower()
    name = _ALIASES.get(name, name)
    if name in DATASETS:
        return name
    valid = ", ".join(DATASETS + ("folder:PATH",))
    close = difflib.get_close_matches(name, DATASETS, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown dataset {spec!r}.{hint} Valid datasets: {valid}.")


def _folder_root(spec):
    path = spec.strip()[len(FOLDER_PREFIX):].strip()
    if not path:
        raise ValueError(f"Dataset {spec!r} names no folder: use folder:PATH, with PATH a folder "
                         "holding one sub-folder of images per class.")
    return os.path.abspath(os.path.expanduser(path))


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _scan_folder(root):
    """``(class_names, [sorted image paths per class])``; ValueError for a bad layout."""
    layout = ("Expected one sub-folder per class (at least 2), each holding image files "
              f"({', '.join(IMAGE_EXTENSIONS)}).")
    if not os.path.exists(root):
        raise ValueError(f"Dataset folder not found: {root}. {layout}")
    if not os.path.isdir(root):
        raise ValueError(f"Dataset path {root} is a file, not a folder. {layout}")
    entries = sorted(os.listdir(root))
    classes = [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(root, e))]
    if not classes:
        loose = [e for e in entries if _is_image(e)]
        what = (f"holds {len(loose)} image(s) but no class sub-folders: move them into one "
                "sub-folder per class" if loose else "is empty (no class sub-folders)")
        raise ValueError(f"Dataset folder {root} {what}. {layout}")
    if len(classes) < 2:
        raise ValueError(f"Dataset folder {root} has only one class sub-folder "
                         f"({classes[0]!r}); a classifier needs at least 2. Add one sub-folder "
                         "of images per class.")
    files, empty = [], []
    for name in classes:
        class_dir = os.path.join(root, name)
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in filenames
                      if _is_image(f) and not f.startswith(".")]
        if not found:
            empty.append(class_dir)
        files.append(sorted(found))
    if empty:
        raise ValueError(f"Class folder(s) with no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                         f"in {root}: {', '.join(empty)}. Add images to each, or remove it.")
    return tuple(classes), files


def _check_args(batch_size, validation_split):
    checks.integer("batch_size", batch_size, 1)
    if isinstance(validation_split, bool) or not isinstance(
            validation_split, (int, float, np.floating)) or not 0 < validation_split < 1:
        raise ValueError("`validation_split` must be a number strictly between 0 and 1. "
                         f"Received: validation_split={validation_split!r}")


def check_image_size(spec: str, image_size):
    """``image_size`` checked against the dataset ``spec`` (a :func:`check_dataset` result):
    None (the dataset's size), an integer >= 8, or ``"keep"``. ``folder:`` and
    ``imagenet2012`` take any size, ``"keep"`` is for folders (their images' own size) and the
    32x32 datasets (where it is 32); the 32x32 datasets take only 32. A folder also takes
    ``(H, W)`` (a model's input, e.g. of a ``"keep"`` run of non-square images). Returns it
    (32 for the 32x32 datasets' ``"keep"``; a tuple for a pair)."""
    if isinstance(image_size, (tuple, list)) and spec.startswith(FOLDER_PREFIX):
        if len(image_size) != 2 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 8
                for v in image_size):
            raise ValueError("`image_size` as a pair must be (H, W), integers >= 8. "
                             f"Received: image_size={image_size!r}")
        return int(image_size[0]), int(image_size[1])
    if image_size == KEEP:
        if spec == "imagenet2012":
            raise ValueError("imagenet2012's images are of many sizes, so `image_size='keep'` "
                             f"cannot apply: pass a size (default {IMAGENET_IMAGE_SIZE}).")
        return image_size if spec.startswith(FOLDER_PREFIX) else 32
    if isinstance(image_size, bool) or not (
            image_size is None or isinstance(image_size, (int, np.integer)) and image_size >= 8):
        raise ValueError("`image_size` must be an integer >= 8, 'keep' (a folder's own size) "
                         f"or None (the dataset's size). Received: image_size={image_size!r}")
    if image_size not in (None, 32) and not (spec.startswith(FOLDER_PREFIX)
                                             or spec == "imagenet2012"):
        raise ValueError(f"{spec} images are 32x32: `image_size` must be None, 32 or 'keep'. "
                         f"Received: {image_size!r}. Other sizes are for folder:PATH and "
                         "imagenet2012.")
    return image_size


def check_recipe(randaugment=0.0, mixup=0.0, cutmix=0.0):
    """The augmentation strengths of :func:`load`: ``randaugment`` 0 (off) or a magnitude in
    (0, 10]; ``mixup``, ``cutmix`` 0 (off) or a Beta alpha > 0."""
    from dmr_keras.augment import MAX_MAGNITUDE

    checks.number("randaugment", randaugment, 0)
    if randaugment > MAX_MAGNITUDE:
        raise ValueError(f"`randaugment` is a magnitude in (0, {MAX_MAGNITUDE:g}] (0: off; "
                         f"timm's rand-m9 is 9). Received: randaugment={randaugment!r}")
    checks.number("mixup", mixup, 0)
    checks.number("cutmix", cutmix, 0)


# ---- public entry point -------------------------------------------------------------------------


def load(spec: str, *, batch_size: int, seed: int = 0, data_dir: str | None = None,
         validation_split: float = 0.1, augment: bool = True,
         image_size: int | str | None = None, epochs: int | None = None,
         initial_epoch: int = 0, eval_split: str | None = None, skip_corrupt: bool = False,
         randaugment: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0,
         holdout_fraction: float = 0.0, epoch_examples: int | None = None,
         ) -> tuple[tf.data.Dataset, tf.data.Dataset, DataInfo]:
    """``(train, eval, info)`` for ``spec`` (see the module docstring).

    Args:
        spec: a name in ``DATASETS`` or ``"folder:PATH"``.
        batch_size: global batch size, >= 1.
        seed: seeds the train shuffle and augmentation (not the digits / folder split).
        data_dir: for ``cifar10`` / ``cifar100``, a folder holding ``train/<class>/`` +
            ``test/<class>/`` images, the official python files (``cifar-10-batches-py/`` or
            the ``.tar.gz``), or a TFDS data dir; for the other TFDS datasets the TFDS
            ``data_dir`` (ImageNet: where its manual files are, see above).
        validation_split: fraction of each class held out for eval (``folder:`` only).
        augment: augment the train set (False: train images are only normalised).
        image_size: side of the model's input; ``folder:`` (default 32) and ``imagenet2012``
            (default 224) only; ``"keep"``: a folder's images keep their (common) size, and a
            folder also takes ``(H, W)``; the 32x32 datasets accept None, 32 or ``"keep"``.
        epochs, initial_epoch: with ``epochs``, the train dataset holds epochs
            ``initial_epoch..epochs-1`` back to back, each ``train_examples // batch_size``
            batches whose order and augmentation depend only on ``(seed, epoch)``: pass it to
            ``fit(..., epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=...)`` and a
            resumed run sees exactly the batches of an uninterrupted one. Without ``epochs``,
            one pass over the train dataset is one epoch, reshuffled at random on every pass.
        eval_split: which split the eval dataset is: ``"test"`` or ``"val"``. None: ``val``
            for a folder with a ``val/`` split or no split layout (the held-out fraction),
            ``test`` otherwise. ``info.eval_split`` says which it is.
        skip_corrupt: image folders (``folder:``, CIFAR ``train/`` + ``test/`` folders) only.
            False (default): an unreadable or corrupt image file (truncated JPEG, a text file
            named ``.png``, zero bytes) raises a ``ValueError`` listing every such file. True:
            those files are left out (labels stay aligned), one ``UserWarning`` says how many
            and names them (the first 20), and ``info.skipped`` lists them all. In a folder
            without splits they are left out before the held-out split is drawn, so the split
            is the one of the folder without them. A class (of any split) left with no image
            still raises.
        randaugment: RandAugment magnitude (0 < M <= 10, 2 operations per image) on the train
            images; 0: none.
        mixup, cutmix: Beta alpha of MixUp / CutMix on the train batches; 0: none. With
            either, the train labels are one-hot float32 ``(B, num_classes)``.
        holdout_fraction: 0 (default) or a fraction in (0, 1): the eval dataset is then this
            part of each class of the train split (fixed, see :func:`holdout_split`) and the
            train dataset the rest; for model selection that never looks at the test split.
        epoch_examples: None (default: all) or N: each epoch trains on the first N images of
            its shuffled order (``N // batch_size`` batches), a different part of the train
            split every epoch, for quick runs (``dmr-tune --max-train-examples``). The images
            left out of an epoch are not augmented at all.

    Returns:
        train and eval datasets of ``(float32 (B, H, W, 3), int64 (B,))`` (train labels
        one-hot float32 with mixing) and a ``DataInfo``.
    """
    spec = check_dataset(spec)
    _check_args(batch_size, validation_split)
    image_size = check_image_size(spec, image_size)
    check_recipe(randaugment, mixup, cutmix)
    checks.choice("eval_split", eval_split, ("test", "val"), allow_none=True)
    _check_epochs(epochs, initial_epoch)
    _check_holdout(holdout_fraction)
    checks.integer("epoch_examples", epoch_examples, batch_size, allow_none=True)
    seed = int(seed)
    run = dict(batch_size=batch_size, seed=seed, augment=augment, epochs=epochs,
               initial_epoch=initial_epoch, randaugment=float(randaugment) if augment else 0.0,
               holdout=float(holdout_fraction), epoch_examples=epoch_examples)
    result = _load(spec, data_dir, validation_split, image_size, eval_split, skip_corrupt, run)
    if augment and (mixup or cutmix):
        train, test, info = result
        train = _mix_batches(train, info, float(mixup), float(cutmix), **run)
        result = train, test, info
    return result


def _load(spec, data_dir, validation_split, image_size, eval_split, skip_corrupt, run):
    if spec.startswith(FOLDER_PREFIX):
        size = DEFAULT_FOLDER_IMAGE_SIZE if image_size is None else image_size
        return _warn_skipped(_load_folder(
            spec[len(FOLDER_PREFIX):], validation_split, size, eval_split=eval_split,
            skip_corrupt=bool(skip_corrupt), **run))
    if eval_split not in (None, "test"):
        raise ValueError(f"{spec} has no validation split: `eval_split` must be 'test' (or None). "
                         f"Received: {eval_split!r}. To hold images out, train on a folder:PATH "
                         "with train/ and val/ sub-folders.")
    if spec == "digits":
        return _load_digits(**run)
    if spec in _CIFAR_CLASSES and data_dir is not None:
        skipped = []
        arrays = _cifar_from_dir(spec, data_dir, skip_corrupt=bool(skip_corrupt), skipped=skipped)
        if arrays is not None:
            return _warn_skipped(_load_cifar_arrays(spec, arrays, skipped=tuple(skipped), **run))
    return _load_tfds(spec, data_dir, image_size, **run)


def _mix_batches(train, info, mixup, cutmix, *, batch_size, seed, epochs, initial_epoch,
                 epoch_examples=None, **_):
    """``train`` with one-hot labels and every batch mixed (:class:`augment.BatchMixer`).

    Batch ``b`` of epoch ``e`` is mixed with the seed ``fold_in(fold_in((seed, offset), e),
    b)``: with ``epochs``, the train dataset holds ``train_examples // batch_size`` batches per
    epoch from ``initial_epoch`` on, so the k-th batch it yields is batch ``k % steps`` of epoch
    ``initial_epoch + k // steps``. Without ``epochs``, each pass draws fresh seeds."""
    from dmr_keras.augment import BatchMixer

    mixer = BatchMixer(info.num_classes, mixup, cutmix)
    fold = tf.random.experimental.stateless_fold_in
    base = tf.constant([seed, _MIX_SEED_OFFSET], tf.int64)
    if epochs is None:
        keys = tf.data.Dataset.random(seed=seed + _MIX_SEED_OFFSET,
                                      rerandomize_each_iteration=True)
        mixed = tf.data.Dataset.zip((train, keys)).map(
            lambda batch, key: mixer(batch[0], batch[1], fold(base, key)),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        steps = max((epoch_examples or info.train_examples) // batch_size, 1)

        def fn(k, batch):
            g = tf.cast(initial_epoch * steps, tf.int64) + k
            return mixer(batch[0], batch[1], fold(fold(base, g // steps), g % steps))

        mixed = train.enumerate().map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    return _options(mixed.prefetch(tf.data.AUTOTUNE))


def _check_epochs(epochs, initial_epoch):
    checks.integer("epochs", epochs, 1, allow_none=True)
    checks.integer("initial_epoch", initial_epoch, 0)
    if epochs is not None and initial_epoch > epochs:
        raise ValueError("`initial_epoch` must be <= `epochs`. Received: "
                         f"initial_epoch={initial_epoch!r}, epochs={epochs!r}")


# ---- shared pipeline pieces ---------------------------------------------------------------------


def check_holdout_fraction(fraction, name: str = "holdout_fraction") -> float:
    """``fraction`` if it is 0 (off) or a number strictly between 0 and 1; else a ValueError
    naming ``name``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or \
            not 0 <= fraction < 1:
        raise ValueError(f"`{name}` must be 0 (off) or a number strictly between 0 and 1 (the "
                         f"part of each class of the training split held out). Received: "
                         f"{name}={fraction!r}")
    return float(fraction)


def _check_holdout(fraction):
    check_holdout_fraction(fraction)


def holdout_split(labels, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held_out)``: sorted indices into ``labels`` (a train split's labels). In each
    class, its indices are permuted with ``RandomState(HOLDOUT_SPLIT_SEED)`` (fixed, independent
    of any training seed) and the last ``round(fraction * n)`` (at most ``n - 1``) are held out.

    >>> holdout_split([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], 0.5)[1].tolist()
    [0, 1, 4, 7, 8]
    """
    labels = np.asarray(labels).reshape(-1)
    kept, held = [np.zeros(0, "int64")], [np.zeros(0, "int64")]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        n_out = min(round(fraction * n), n - 1)
        perm = np.random.RandomState(HOLDOUT_SPLIT_SEED).permutation(n)
        kept.append(idx[perm[:n - n_out]])
        held.append(idx[perm[n - n_out:]])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def _carve(x, y, fraction):
    """``(x_kept, y_kept, x_held_out, y_held_out)`` of in-memory arrays (:func:`holdout_split`)."""
    kept, held = holdout_split(y, fraction)
    return x[kept], y[kept], x[held], y[held]


def _options(ds):
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def _normalise(mean, std):
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)

    def fn(image):
        return (tf.cast(image, tf.float32) - mean) / std

    return fn


def _element_seeds(seed):
    """Two independent stateless seeds (shape [2]) from one element's seed (shape [2])."""
    fold = tf.random.experimental.stateless_fold_in
    return fold(seed, 0), fold(seed, 1)


def _pad_crop(image, seed, pad):
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, shape, seed=seed)


def _epoch_keys(seed, epochs, initial_epoch):
    """The epochs a train dataset runs: ``initial_epoch..epochs-1``, or (``epochs=None``) one
    random key per pass, so that each pass is a fresh epoch."""
    if epochs is None:
        return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return tf.data.Dataset.range(initial_epoch, epochs)


def _stateless_shuffle(ds, window, seed):
    """Shuffle ``ds`` (of ``(x, y)``) within consecutive windows of ``window`` elements, each by
    a permutation that is a function of ``seed`` ([2] int64) and the window's index only.

    With ``window`` >= the dataset size (the in-memory datasets) this is a uniform random
    permutation of the whole set. Unlike ``Dataset.shuffle``, nothing depends on the global seed
    or on how often the pipeline was iterated.
    """
    fold = tf.random.experimental.stateless_fold_in

    def permute(index, batch):
        x, y = batch
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(y)[0]),
                                                         seed=fold(seed, index))
        return tf.data.Dataset.from_tensor_slices((tf.gather(x, order), tf.gather(y, order)))

    return ds.batch(window).enumerate().flat_map(permute)


def _finish_train(ds, batch_size, seed, shuffle_buffer, transform, epochs, initial_epoch,
                  epoch_examples=None):
    """Per epoch: shuffle -> ``transform(x, element_seed)`` -> batch(drop_remainder); epochs
    concatenated; prefetch.

    Epoch ``e``'s order and augmentation are functions of ``(seed, e)`` only: its shuffle is a
    stateless permutation seeded with ``fold_in((seed, 0), e)`` and its i-th element gets the
    stateless seed ``fold_in(fold_in((seed, offset), e), i)``. So a run resumed at epoch ``e``
    sees exactly the batches the uninterrupted run saw, however often the pipeline was iterated
    before. ``transform`` returns the normalised float32 image. ``epoch_examples``: only the
    first that many of each epoch's shuffled examples are transformed and batched.
    """
    fold = tf.random.experimental.stateless_fold_in
    shuffle_seed = tf.constant([seed, 0], tf.int64)
    augment_seed = tf.constant([seed, _AUGMENT_SEED_OFFSET], tf.int64)

    def one_epoch(epoch):
        epoch = tf.cast(epoch, tf.int64)
        epoch_seed = fold(augment_seed, epoch)
        shuffled = _stateless_shuffle(ds, shuffle_buffer, fold(shuffle_seed, epoch))
        if epoch_examples is not None:
            shuffled = shuffled.take(epoch_examples)

        def fn(i, example):
            x, y = example
            return transform(x, fold(epoch_seed, i)), tf.cast(y, tf.int64)

        mapped = shuffled.enumerate().map(fn, num_parallel_calls=tf.data.AUTOTUNE)
        return mapped.batch(batch_size, drop_remainder=True)

    train = _epoch_keys(seed, epochs, initial_epoch).flat_map(one_epoch)
    return _options(train.prefetch(tf.data.AUTOTUNE))


def _finish_eval(ds, batch_size, eval_fn):
    ds = ds.map(lambda x, y: (eval_fn(x), tf.cast(y, tf.int64)),
                num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=False)
    return _options(ds.prefetch(tf.data.AUTOTUNE))


def _pad_crop_augment(pad, flip):
    """Pad by ``pad`` with zeros, random crop back, optional random flip. Applied to normalised
    images, so the pad is the mean pixel, as in the reference code."""
    def fn(image, seed):
        crop_seed, flip_seed = _element_seeds(seed)
        image = _pad_crop(image, crop_seed, pad)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return image

    return fn


def _train_transform(prepare, normalise, augment, randaugment=None):
    """``(x, seed) -> normalise(prepare(x))`` then ``augment`` (pad-crop-flip) if given;
    ``randaugment(image, seed)`` (:func:`_randaugment`) on the [0, 1] image before normalising,
    from a seed stream of its own (so the crop and flip draws are those of a run without it)."""
    def fn(x, seed):
        image = prepare(x)
        if randaugment is not None:
            image = randaugment(image, tf.random.experimental.stateless_fold_in(seed, 2))
        image = normalise(image)
        return augment(image, seed) if augment is not None else image

    return fn


def _randaugment(magnitude, mean):
    """``(image, seed) -> RandAugment(image)`` at ``magnitude`` (None for 0), moving in the
    ``mean`` pixel (after normalising: 0, the crop padding's colour)."""
    if not magnitude:
        return None
    from dmr_keras.augment import randaugment

    def fn(image, seed):
        return randaugment(image, seed, magnitude=magnitude, fill=tuple(mean))

    return fn


# ---- digits -------------------------------------------------------------------------------------


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train (1437,), test (360,))`` into ``load_digits_images()``: the fixed split."""
    from dmr_keras.digits import load_digits_images

    n = len(load_digits_images()[1])
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(n)
    return perm[:n - DIGITS_TEST_EXAMPLES], perm[n - DIGITS_TEST_EXAMPLES:]


def _load_digits(batch_size, seed, augment, epochs, initial_epoch, randaugment=0.0, holdout=0.0,
                 epoch_examples=None):
    from dmr_keras.digits import load_digits_images

    images, labels = load_digits_images()
    train_idx, test_idx = digits_split()
    x_train, y_train = images[train_idx], labels[train_idx]
    x_test, y_test = images[test_idx], labels[test_idx]
    mean = tuple(float(m) for m in x_train.mean(axis=(0, 1, 2), dtype="float64"))
    std = tuple(float(s) for s in x_train.std(axis=(0, 1, 2), dtype="float64"))
    if holdout:  # statistics of the whole train split (see the module docstring)
        x_train, y_train, x_test, y_test = _carve(x_train, y_train, holdout)
    normalise = _normalise(mean, std)
    transform = _train_transform(tf.identity, normalise,
                                 _pad_crop_augment(4, flip=False) if augment else None,
                                 _randaugment(randaugment, mean))
    train = _finish_train(tf.data.Dataset.from_tensor_slices((x_train, y_train)), batch_size,
                          seed, len(x_train), transform, epochs, initial_epoch, epoch_examples)
    test = _finish_eval(tf.data.Dataset.from_tensor_slices((x_test, y_test)), batch_size,
                        normalise)
    info = DataInfo("digits", 10, tuple(x_train.shape[1:]), len(x_train), len(x_test),
                    tuple(str(i) for i in range(10)), mean, std, "val" if holdout else "test",
                    "sklearn")
    return train, test, info


# ---- content hash -----------------------------------------------------------------------------


def content_sha256(data_dir, patterns=None) -> str:
    """A hash of a dataset directory's content: the sha256 of the lines
    ``"<sha256 of file>  <path relative to data_dir>"`` for every image (and CIFAR python) file
    below it, in byte order of the paths. The same as running
    ``find train test -type f | LC_ALL=C sort | xargs sha256sum | sha256sum`` inside it (as
    ``shared/data/README.md`` does for the CIFAR-10 JPEG copy), so the two can be compared.
    Recorded with published weights: which exact images a metric was measured on.
    """
    root = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.isdir(root):
        raise ValueError(f"`data_dir` not found: {root}")
    wanted = tuple(patterns) if patterns else IMAGE_EXTENSIONS
    names = set()
    for value in _CIFAR_PYTHON.values():
        names.update(value[1] + value[2] + (value[3],))
    rel = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.startswith("."):
                continue
            if f.lower().endswith(wanted) or f in names or f.endswith(".tar.gz"):
                rel.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    if not rel:
        raise ValueError(f"{root} holds no image or CIFAR files to hash.")
    outer = hashlib.sha256()
    for path in sorted(rel, key=lambda p: p.encode()):
        h = hashlib.sha256()
        with open(os.path.join(root, path), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        outer.update(f"{h.hexdigest()}  {path}\n".encode())
    return outer.hexdigest()


# ---- CIFAR from a directory (no download) ------------------------------------------------------

_CIFAR_PYTHON = {  # name -> (folder, train files, test files, meta file, label key, names key)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                ("test_batch",), "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta", b"fine_labels",
                 b"fine_label_names"),
}
_CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
_CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


def _latin1_bytes(text, encoding="latin1"):
    """``_codecs.encode`` as a protocol 0-2 pickle written by Python 3 uses it: bytes (a NumPy
    array's buffer too) are stored as ``encode(text, 'latin1')``. Nothing else is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only latin-1 text "
            "(pickled bytes) is allowed")
    return text.encode("latin-1")


def _empty_bytes(*args):
    """``bytes()``, as a protocol 0-2 pickle written by Python 3 stores ``b""``."""
    if args:
        raise pickle.UnpicklingError("refused bytes(...) with arguments: only bytes() is allowed")
    return b""


class _ArraysUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR python files without running arbitrary code: the only
    globals it resolves are what a pickled NumPy array needs (``_reconstruct``, ``ndarray``,
    ``dtype``, ``_frombuffer``) and, for bytes in protocol 0-2 pickles written by Python 3,
    restricted stand-ins for ``_codecs.encode`` (latin-1 only) and ``bytes()``; any other
    (``os.system``, ...) raises ``UnpicklingError``. Dicts, lists, strings and numbers need no
    globals."""

    def find_class(self, module, name):
        from numpy._core import multiarray, numeric

        allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("_codecs", "encode"): _latin1_bytes, ("__builtin__", "bytes"): _empty_bytes,
                   ("builtins", "bytes"): _empty_bytes}
        for package in ("numpy.core", "numpy._core"):
            allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
            allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(
            f"refused to load the global {module}.{name}: a CIFAR python file holds only "
            "dicts, lists and NumPy arrays")


def _read_cifar_pickle(data: bytes, what: str) -> dict:
    import io

    try:
        return _ArraysUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any failure means "not a CIFAR python file"
        raise ValueError(f"{what} is not a CIFAR python batch file: {err}") from None


def _cifar_batches(name, reader, where):
    """``(x_train, y_train, x_test, y_test, class_names)`` from the CIFAR python files read by
    ``reader(file name) -> bytes``."""
    _, train_files, test_files, meta_file, label_key, names_key = _CIFAR_PYTHON[name]
    num_classes = _CIFAR_CLASSES[name]

    def arrays(files):
        xs, ys = [], []
        for f in files:
            what = f"{where}/{f}"
            batch = _read_cifar_pickle(reader(f), what)
            try:
                x = np.asarray(batch[b"data"])
                y = np.asarray(batch[label_key])
            except (KeyError, TypeError, IndexError, ValueError) as err:
                raise ValueError(f"{what} lacks the CIFAR keys b'data' and {label_key!r} "
                                 f"({err!r}).") from None
            if x.ndim != 2 or x.shape[1] != 3072 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"{what}: data of shape {x.shape} with labels of shape "
                                 f"{y.shape}; expected (N, 3072) and N labels.")
            if x.dtype != np.uint8 and (x.dtype.kind not in "iu" or (
                    x.size and (x.min() < 0 or x.max() > 255))):
                raise ValueError(f"{what}: data of dtype {x.dtype}; expected uint8 pixels.")
            if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= num_classes)):
                shown = f"{y.min()}..{y.max()}" if y.dtype.kind in "iuf" and y.size else y.dtype
                raise ValueError(f"{what}: labels {shown}; {name} labels are integers in "
                                 f"0..{num_classes - 1}.")
            xs.append(x.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(y.astype(np.int64))
        return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)

    x_train, y_train = arrays(train_files)
    x_test, y_test = arrays(test_files)
    what = f"{where}/{meta_file}"
    meta = _read_cifar_pickle(reader(meta_file), what)
    try:
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key])
    except (KeyError, TypeError, IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} lacks the CIFAR key {names_key!r} ({err!r}).") from None
    if len(names) != num_classes:
        raise ValueError(f"{what}: {len(names)} class names; {name} has {num_classes}.")
    return x_train, y_train, x_test, y_test, names


def _cifar_from_dir(name, data_dir, skip_corrupt=False, skipped=None):
    """CIFAR arrays from ``data_dir`` when it holds one of the offline layouts, else None (then
    TFDS is asked, with ``data_dir`` as its data_dir). Returns ``(x_train, y_train, x_test,
    y_test, class_names, source)`` with uint8 images. Image folders: unreadable files raise, or
    with ``skip_corrupt`` are left out and their paths appended to the list ``skipped``."""
    root = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.isdir(root):
        raise ValueError(f"`data_dir` not found: {root}. Pass a folder holding train/<class>/ + "
                         f"test/<class>/ images, the official {_CIFAR_PYTHON[name][0]} files, "
                         f"{_CIFAR_ARCHIVES[name]}, or a TFDS data dir (to let TFDS download "
                         "into a new folder, create it first).")
    splits = split_folders(root)
    if splits is not None and "test" not in splits:
        raise ValueError(f"{root} has train/ and val/ but no test/: {name}'s eval set is its "
                         "test split. Add test/<class>/ images, or train on "
                         f"folder:{root} (its val/ split is then the eval set).")
    if splits is not None:
        names = CIFAR10_CLASSES if name == "cifar10" else None
        classes, train_items, test_items = _split_items(splits, names, "test")
        if len(classes) != _CIFAR_CLASSES[name]:
            raise ValueError(f"{root}: {len(classes)} class folders; {name} has "
                             f"{_CIFAR_CLASSES[name]}. For another image set use "
                             f"folder:{root}.")
        x_train, y_train, bad_train = _decode_items(train_items, 32)
        x_test, y_test, bad_test = _decode_items(test_items, 32)
        left_out = _left_out(root, bad_train + bad_test, skip_corrupt)
        if left_out:
            _check_splits_left(root, splits, "test", classes, y_train, y_test, left_out)
            if skipped is not None:
                skipped.extend(left_out)
        return x_train, y_train, x_test, y_test, classes, "folder"
    folder = _CIFAR_PYTHON[name][0]
    for candidate in (os.path.join(root, folder), root):
        first = _CIFAR_PYTHON[name][1][0]
        if os.path.isfile(os.path.join(candidate, first)):
            def reader(f, base=candidate):
                path = os.path.join(base, f)
                if not os.path.isfile(path):
                    raise ValueError(f"{base} lacks the CIFAR file {f}.")
                with open(path, "rb") as fh:
                    return fh.read()

            return (*_cifar_batches(name, reader, candidate), "cifar-python")
    archive = os.path.join(root, _CIFAR_ARCHIVES[name])
    if os.path.isfile(archive):
        import tarfile

        with tarfile.open(archive, "r:gz") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}

            def reader(f):
                if f not in members:
                    raise ValueError(f"{archive} lacks the CIFAR file {f}.")
                return tar.extractfile(members[f]).read()

            return (*_cifar_batches(name, reader, archive), "cifar-python")
    return None


def _load_cifar_arrays(name, arrays, batch_size, seed, augment, epochs, initial_epoch,
                       skipped=(), randaugment=0.0, holdout=0.0, epoch_examples=None):
    x_train, y_train, x_test, y_test, classes, source = arrays
    if holdout:
        x_train, y_train, x_test, y_test = _carve(x_train, y_train, holdout)
    spec = _TFDS[name]
    train, test = _array_datasets(
        x_train, y_train, x_test, y_test, mean=spec.mean, std=spec.std, pad=4, flip=True,
        batch_size=batch_size, seed=seed, augment=augment, epochs=epochs,
        initial_epoch=initial_epoch, randaugment=randaugment, epoch_examples=epoch_examples)
    info = DataInfo(name, _CIFAR_CLASSES[name], (32, 32, 3), len(y_train), len(y_test),
                    tuple(classes), tuple(spec.mean), tuple(spec.std),
                    "val" if holdout else "test", source, tuple(skipped))
    return train, test, info


# ---- TFDS ---------------------------------------------------------------------------------------


def _split_examples(info, splits, dataset):
    """Exact example count from the builder info; the dataset's cardinality if info has none."""
    try:
        return sum(int(info.splits[s].num_examples) for s in splits)
    except (KeyError, ValueError):
        n = int(dataset.cardinality())
        if n < 0:
            raise ValueError(f"TFDS has no example count for {info.name} {'+'.join(splits)}: "
                             "prepare the dataset (tfds build) and try again.") from None
        return n


def _imagenet_train_fn(size, normalise, randaugment=None):
    def fn(encoded, seed):
        box_seed, flip_seed = _element_seeds(seed)
        shape = tf.image.extract_jpeg_shape(encoded)
        begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            seed=box_seed, min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
        image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
        image = tf.image.resize(image, [size, size], antialias=True) / 255.0
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        if randaugment is not None:
            image = randaugment(image, tf.random.experimental.stateless_fold_in(seed, 2))
        return normalise(image)

    return fn


def _imagenet_eval_image(encoded, size):
    """Shorter side to size * 256 / 224, centre crop size x size, in [0, 1]."""
    image = tf.io.decode_jpeg(encoded, channels=3)
    resize = round(size * 256 / 224)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(hw)
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), resize)
    image = tf.image.resize(image, new_hw, antialias=True)
    top = (new_hw[0] - size) // 2
    left = (new_hw[1] - size) // 2
    return image[top:top + size, left:left + size, :] / 255.0


def _imagenet_download_config(data_dir):
    import tensorflow_datasets as tfds

    if data_dir is None:
        return tfds.download.DownloadConfig()
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    if os.path.exists(os.path.join(data_dir, "ILSVRC2012_img_train.tar")):
        manual = data_dir
    else:
        manual = os.path.join(data_dir, "downloads", "manual")
    return tfds.download.DownloadConfig(manual_dir=manual)


def _load_tfds(name, data_dir, image_size, batch_size, seed, augment, epochs, initial_epoch,
               randaugment=0.0, holdout=0.0, epoch_examples=None):
    if holdout:
        raise ValueError(f"`holdout_fraction` needs the train split in memory; {name} from TFDS "
                         "is streamed. For CIFAR pass data_dir= with the python files or "
                         "train/ + test/ folders; or use a folder:PATH dataset.")
    import tensorflow_datasets as tfds

    spec = _TFDS[name]
    imagenet = name == "imagenet2012"
    kwargs = {"as_supervised": True, "data_dir": data_dir, "with_info": True}
    if imagenet:
        # Keep the JPEG bytes: shuffle before decoding, and decode only the random crop.
        kwargs["decoders"] = {"image": tfds.decode.SkipDecoding()}
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": _imagenet_download_config(data_dir)}
    train_split = "+".join(spec.train_splits)
    train, tinfo = tfds.load(
        spec.tfds_name, split=train_split, shuffle_files=not spec.cache_train,
        read_config=tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False,
                                    try_autocache=False), **kwargs)
    test, _ = tfds.load(spec.tfds_name, split=spec.eval_split, shuffle_files=False,
                        read_config=tfds.ReadConfig(try_autocache=False), **kwargs)
    train_examples = _split_examples(tinfo, spec.train_splits, train)
    eval_examples = _split_examples(tinfo, (spec.eval_split,), test)
    label = tinfo.features["label"]
    normalise = _normalise(spec.mean, spec.std)

    if imagenet:
        size = image_size or IMAGENET_IMAGE_SIZE

        def to_float(encoded):
            return _imagenet_eval_image(encoded, size)

        if augment:
            transform = _imagenet_train_fn(size, normalise, _randaugment(randaugment, spec.mean))
        else:
            transform = _train_transform(to_float, normalise, None)
    else:
        size = 32

        def to_float(image):
            return tf.cast(image, tf.float32) / 255.0

        pad_crop = None
        if augment and spec.augment == "pad_crop_flip":
            pad_crop = _pad_crop_augment(4, flip=True)
        transform = _train_transform(to_float, normalise, pad_crop,
                                     _randaugment(randaugment if augment else 0, spec.mean))
        if spec.cache_train:
            train = train.cache()
        test = test.cache()
    shape = (size, size, 3)
    buffer = min(spec.shuffle_buffer, train_examples)
    train = _finish_train(train, batch_size, seed, max(buffer, 1), transform, epochs,
                          initial_epoch, epoch_examples)
    test = _finish_eval(test, batch_size, lambda x: normalise(to_float(x)))
    names = tuple(label.names) if getattr(label, "names", None) else None
    info = DataInfo(name, int(label.num_classes), shape, train_examples, eval_examples, names,
                    tuple(spec.mean), tuple(spec.std), "test", "tfds")
    return train, test, info


# ---- decoded images (uint8, decoded once per process) -------------------------------------------


_DECODED: dict = {}  # (fingerprint, size) -> (uint8 images, bad paths); at most a few entries
_DECODED_ENTRIES = 4


def _fingerprint(paths) -> str:
    """Paths, sizes and modification times: a changed, added or removed file changes it."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def decode_images(paths, size) -> tuple[np.ndarray, list]:
    """Every file of ``paths`` decoded once, in parallel, into ``(uint8 (N, H, W, 3), bad
    paths)`` (``size``: ``H = W = size``, or ``(H, W)``); images of another size are resized
    (bilinear, antialiased). A file that fails to read or decode is listed in ``bad`` (its row
    is zeros).

    Kept in memory for the process, keyed by the files' paths, sizes and modification times, so
    that the precise-BN pass, evaluation and a second ``load`` do not decode again (CIFAR-10:
    60,000 JPEGs in about 3 s on 2 cores, 180 MB of uint8).
    """
    paths = [str(p) for p in paths]
    h, w = _hw(size)
    key = (_fingerprint(paths), (h, w))
    if key in _DECODED:
        return _DECODED[key]

    def decode(index, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        resized = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
            tf.cast(image, tf.float32), [h, w], antialias=True)), 0, 255), tf.uint8)
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [h, w]))
        return index, tf.cond(same, lambda: tf.ensure_shape(image, [h, w, 3]),
                              lambda: resized)

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype="int64"), paths))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors(log_warning=False).batch(1024).prefetch(tf.data.AUTOTUNE)
    images = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
    good = np.zeros(len(paths), dtype=bool)
    for index, batch in ds.as_numpy_iterator():
        images[index] = batch
        good[index] = True
    result = images, [p for p, ok in zip(paths, good) if not ok]
    if len(_DECODED) >= _DECODED_ENTRIES:
        _DECODED.pop(next(iter(_DECODED)))
    _DECODED[key] = result
    return result


def _channel_stats(images: np.ndarray) -> tuple[tuple, tuple]:
    """Per-channel mean and std, in [0, 1] units, of uint8 images (float64 sums)."""
    x = images.reshape(-1, 3)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(x), 1 << 22):
        chunk = x[start:start + (1 << 22)].astype("float64") / 255.0
        total += chunk.sum(0)
        total_sq += (chunk * chunk).sum(0)
    mean = total / max(len(x), 1)
    std = np.sqrt(np.maximum(total_sq / max(len(x), 1) - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def _left_out(root, bad, skip_corrupt) -> tuple:
    """The unreadable files ``bad`` (sorted) when ``skip_corrupt``; else a ``ValueError`` that
    lists them all (nothing when there are none)."""
    bad = tuple(sorted(set(bad)))
    if bad and not skip_corrupt:
        listing = "\n  ".join(bad)
        raise ValueError(f"{len(bad)} unreadable or corrupt image file(s) in {root} (fix or "
                         "remove them, or leave them out with dmr-train --skip-corrupt / "
                         f"data.load(..., skip_corrupt=True)):\n  {listing}")
    return bad


def _require_each_class(where, class_names, labels, skipped):
    """After leaving out ``skipped``: a ``ValueError`` when no image, or no image of a class, is
    left in the split folder ``where`` (``labels``: what is left)."""
    if len(labels) == 0:
        raise ValueError(f"Every image file in {where} is unreadable or corrupt "
                         f"({len(skipped)} left out by skip_corrupt, e.g. {skipped[0]}): no image "
                         "is left to load. Check the files (are they really images?).")
    counts = np.bincount(np.asarray(labels, dtype="int64"), minlength=len(class_names))
    empty = [os.path.join(where, n) for n, c in zip(class_names, counts) if c == 0]
    if empty:
        raise ValueError(f"Every image file of {len(empty)} class folder(s) is unreadable or "
                         f"corrupt, so skip_corrupt leaves no image of them: {', '.join(empty)}. "
                         "Fix or replace their files, or remove the class folder(s).")


def _warn_skipped(result):
    """``load``'s result, after one ``UserWarning`` naming the files ``skip_corrupt`` left out."""
    info = result[2]
    skipped = info.skipped
    if skipped:
        shown = "\n  ".join(skipped[:_SKIPPED_SHOWN])
        more = (f"\n  ... and {len(skipped) - _SKIPPED_SHOWN} more (DataInfo.skipped lists "
                "them all)" if len(skipped) > _SKIPPED_SHOWN else "")
        warnings.warn(f"skip_corrupt: left out {len(skipped)} unreadable or corrupt image "
                      f"file(s) of {info.name}:\n  {shown}{more}", UserWarning, stacklevel=3)
    return result


def _array_datasets(x_train, y_train, x_eval, y_eval, *, mean, std, pad, flip, batch_size, seed,
                    augment, epochs, initial_epoch, randaugment=0.0, epoch_examples=None):
    """Train and eval pipelines over in-memory uint8 images (the whole train set shuffled)."""
    normalise = _normalise(mean, std)

    def to_float(x):
        return tf.cast(x, tf.float32) / 255.0

    def eval_fn(x):
        return normalise(to_float(x))

    transform = _train_transform(to_float, normalise,
                                 _pad_crop_augment(pad, flip) if augment else None,
                                 _randaugment(randaugment, mean))
    train = _finish_train(tf.data.Dataset.from_tensor_slices((x_train, y_train)), batch_size,
                          seed, max(len(y_train), 1), transform, epochs, initial_epoch,
                          epoch_examples)
    test = _finish_eval(tf.data.Dataset.from_tensor_slices((x_eval, y_eval)), batch_size, eval_fn)
    return train, test


# ---- folder -------------------------------------------------------------------------------------


def split_folders(root) -> dict | None:
    """``{"train": path, "test": path, "val": path}`` (those present) when ``root``'s top level
    is ``train/`` plus ``test/`` and/or ``val/`` (or ``validation/``), else None."""
    found = {}
    for split, names in (("train", ("train",)), ("val", ("val", "validation")),
                         ("test", ("test",))):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isdir(path):
                found.setdefault(split, path)
    if "train" in found and ("test" in found or "val" in found):
        return found
    return None


def eval_split_of(splits: dict, eval_split: str | None) -> str:
    """The split a split-layout folder evaluates on: ``eval_split``, or ``val`` when there is
    one (the test split is then kept for the final measurement), else ``test``."""
    if eval_split is None:
        return "val" if "val" in splits else "test"
    if eval_split not in splits or eval_split == "train":
        have = ", ".join(sorted(k for k in splits if k != "train"))
        raise ValueError(f"`eval_split={eval_split!r}` is not a split of this dataset; it has: "
                         f"{have}.")
    return eval_split


def folder_split(files_per_class, validation_split):
    """``(train, eval)`` lists of ``(path, label)``: in each class, a fixed permutation
    (``RandomState(0)``, independent of the training seed) of the sorted paths; the last
    ``round(validation_split * n)`` (at most ``n - 1``) are held out."""
    train, held_out = [], []
    for label, paths in enumerate(files_per_class):
        paths = sorted(paths)
        n = len(paths)
        n_eval = min(round(validation_split * n), n - 1)
        perm = np.random.RandomState(FOLDER_SPLIT_SEED).permutation(n)
        train += [(paths[i], label) for i in perm[:n - n_eval]]
        held_out += [(paths[i], label) for i in perm[n - n_eval:]]
    return train, held_out


def _split_items(splits, names, eval_name):
    """``(class_names, train items, eval items)`` of a split-layout folder; the class folders of
    every split must be the same."""
    train_classes, train_files = _scan_folder(splits["train"])
    classes, eval_files = _scan_folder(splits[eval_name])
    if classes != train_classes:
        raise ValueError(f"The class folders of {splits[eval_name]} ({', '.join(classes)}) are "
                         f"not those of {splits['train']} ({', '.join(train_classes)}): every "
                         "split needs the same class sub-folders.")
    if names is not None and tuple(classes) != tuple(names):
        root = os.path.dirname(splits["train"])
        raise ValueError(f"{root} has the class folders {', '.join(classes)}; expected "
                         f"{', '.join(names)}. For another image set use folder:{root}.")

    def items(files):
        return [(p, label) for label, paths in enumerate(files) for p in paths]

    return tuple(classes), items(train_files), items(eval_files)


def _decode_items(items, size, decoded=None):
    """``(uint8 images, int64 labels, bad paths)`` of ``(path, label)`` items, without the rows
    of the bad (unreadable) files. ``decoded``: ``({path: row}, images)`` already decoded (and
    all readable), to take the rows from instead of decoding."""
    labels = np.array([y for _, y in items], dtype="int64")
    if decoded is not None:
        rows, images = decoded
        return images[[rows[p] for p, _ in items]], labels, []
    images, bad = decode_images([p for p, _ in items], size)
    if bad:
        drop = set(bad)
        keep = np.array([p not in drop for p, _ in items], dtype=bool)
        images, labels = images[keep], labels[keep]  # a copy: the cached arrays stay whole
    return images, labels, bad


def _drop_unreadable(root, class_names, files, size, in_memory):
    """``(files without the unreadable ones, their paths, decoded)`` for a folder without
    splits: every file decoded once (in memory: ``decoded`` is ``({path: row}, images)`` for
    :func:`_decode_items`; else a checking pass, and ``decoded`` is None)."""
    paths = [p for class_files in files for p in class_files]
    if in_memory:
        images, bad = decode_images(paths, size)
        decoded = ({p: i for i, p in enumerate(paths)}, images)
    else:
        bad = _scan_images(paths, [False] * len(paths), size)[0]
        decoded = None
    skipped = _left_out(root, bad, True)
    if skipped:
        drop = set(skipped)
        files = [[p for p in class_files if p not in drop] for class_files in files]
        _require_each_class(root, class_names,
                            [c for c, class_files in enumerate(files) for _ in class_files],
                            skipped)
    return files, skipped, decoded


def _hw(size) -> tuple[int, int]:
    """``(H, W)`` of an image size: an integer (square) or a pair."""
    if isinstance(size, (tuple, list)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _decode_resize(path, size):
    h, w = _hw(size)
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    image = tf.cast(image, tf.float32) / 255.0
    same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [h, w]))
    return tf.cond(same, lambda: tf.ensure_shape(image, [h, w, 3]), lambda: tf.clip_by_value(
        tf.image.resize(image, [h, w], antialias=True), 0.0, 1.0))


def folder_image_size(root, paths) -> tuple[int, int]:
    """``(H, W)`` shared by the image files ``paths`` of the folder ``root`` (read from their
    headers with Pillow; unreadable files are left to the decoding, which reports them). A
    folder of several sizes raises a ``ValueError`` naming the most common sizes and the fix
    (``image_size=N``)."""
    import collections
    import concurrent.futures

    from PIL import Image

    def size_of(path):
        try:
            with Image.open(path) as im:
                return im.size[1], im.size[0]
        except Exception:  # noqa: BLE001 - any unreadable file is reported by the decoding
            return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(size_of, paths))
    counts = collections.Counter(s for s in sizes if s is not None)
    if not counts:  # nothing readable: the decoding reports every file
        return DEFAULT_FOLDER_IMAGE_SIZE, DEFAULT_FOLDER_IMAGE_SIZE
    if len(counts) > 1:
        example = {s: p for p, s in zip(paths, sizes) if s is not None}
        shown = "; ".join(f"{h}x{w} (H x W): {n} file(s), e.g. {example[(h, w)]}"
                          for (h, w), n in counts.most_common(3))
        more = f"; and {len(counts) - 3} more sizes" if len(counts) > 3 else ""
        raise ValueError(f"`image_size='keep'`: the images of {root} are not all one size "
                         f"({len(counts)} sizes: {shown}{more}). Pass an image size "
                         "(dmr-train --image-size N, load(..., image_size=N)) to resize them "
                         "all to N x N.")
    return next(iter(counts))


def _scan_images(paths, is_train, size):
    """Decode every file once (tf.data, in parallel): ``(bad paths, mean, std)``, the statistics
    per channel over the readable train images. A file that fails to read or decode is dropped by
    ``ignore_errors``; the bad ones are those missing from what comes out."""

    def stats(index, path, train):
        image = _decode_resize(path, size)
        flat = tf.reshape(image, [-1, 3])
        weight = tf.cast(train, tf.float32)
        return (index, weight * tf.reduce_sum(flat, 0), weight * tf.reduce_sum(flat * flat, 0),
                weight * tf.cast(tf.shape(flat)[0], tf.float32))

    ds = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(paths), dtype="int64"), list(paths), np.asarray(is_train, dtype=bool)))
    ds = ds.map(stats, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors(log_warning=False).batch(1024).prefetch(tf.data.AUTOTUNE)
    good = np.zeros(len(paths), dtype=bool)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0.0
    for index, s, sq, c in ds.as_numpy_iterator():
        good[index] = True
        total += s.sum(0, dtype="float64")
        total_sq += sq.sum(0, dtype="float64")
        count += float(c.sum(dtype="float64"))
    bad = [p for p, ok in zip(paths, good) if not ok]
    if count == 0:
        return bad, (0.5,) * 3, (0.25,) * 3
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return bad, tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def _load_folder(root, validation_split, size, batch_size, seed, augment, epochs, initial_epoch,
                 eval_split=None, skip_corrupt=False, randaugment=0.0, holdout=0.0,
                 epoch_examples=None):
    splits = split_folders(root)
    skipped, decoded = (), None
    if splits is not None:
        eval_name = eval_split_of(splits, eval_split)
        class_names, train_items, eval_items = _split_items(splits, None, eval_name)
        if size == KEEP:
            size = folder_image_size(root, [p for p, _ in train_items + eval_items])
        in_memory = _fits_in_memory(len(train_items) + len(eval_items), size)
    else:
        if eval_split not in (None, "val"):
            raise ValueError(f"`eval_split={eval_split!r}`: the folder {root} has no train/ + "
                             "test/ layout; its eval set is the held-out `validation_split` "
                             "of each class ('val').")
        eval_name = "val"
        class_names, files = _scan_folder(root)
        if size == KEEP:
            size = folder_image_size(root, [p for class_files in files for p in class_files])
        in_memory = _fits_in_memory(sum(len(f) for f in files), size)
        if skip_corrupt:
            # Left out before the split: the split is the folder's without those files.
            files, skipped, decoded = _drop_unreadable(root, class_names, files, size, in_memory)
        train_items, eval_items = folder_split(files, validation_split)
        if not eval_items:
            raise ValueError(f"Dataset folder {root}: `validation_split={validation_split}` "
                             f"holds out no image ({len(train_items)} images). Raise it or add "
                             "images.")
    h, w = _hw(size)
    pad = max(min(h, w) // 8, 1)
    if in_memory:
        # Decoded once into uint8 (and kept for the process): no epoch decodes again.
        x_train, y_train, bad_train = _decode_items(train_items, size, decoded)
        x_eval, y_eval, bad_eval = _decode_items(eval_items, size, decoded)
        left_out = _left_out(root, bad_train + bad_eval, skip_corrupt)
        if left_out:  # a split layout (a folder without splits left them out before)
            _check_splits_left(root, splits, eval_name, class_names, y_train, y_eval, left_out)
            skipped = tuple(sorted(set(skipped) | set(left_out)))
        mean, std = _channel_stats(x_train)
        if holdout:  # statistics of the whole train split (see the module docstring)
            x_train, y_train, x_eval, y_eval = _carve(x_train, y_train, holdout)
            eval_name = "val"
        n_train, n_eval = len(y_train), len(y_eval)
        train, test = _array_datasets(
            x_train, y_train, x_eval, y_eval, mean=mean, std=std, pad=pad, flip=False,
            batch_size=batch_size, seed=seed, augment=augment, epochs=epochs,
            initial_epoch=initial_epoch, randaugment=randaugment if augment else 0.0,
            epoch_examples=epoch_examples)
    else:
        # Too big for memory: every file is checked once, then decoded every epoch after the
        # shuffle (which holds paths, not images).
        paths = [p for p, _ in train_items] + [p for p, _ in eval_items]
        is_train = [True] * len(train_items) + [False] * len(eval_items)
        bad, mean, std = _scan_images(paths, is_train, size)
        left_out = _left_out(root, bad, skip_corrupt)
        if left_out:  # the statistics are those of the readable train files already
            drop = set(left_out)
            train_items = [(p, y) for p, y in train_items if p not in drop]
            eval_items = [(p, y) for p, y in eval_items if p not in drop]
            _check_splits_left(root, splits, eval_name, class_names,
                               [y for _, y in train_items], [y for _, y in eval_items], left_out)
            skipped = tuple(sorted(set(skipped) | drop))
        if holdout:  # statistics of the whole train split (see the module docstring)
            kept, held = holdout_split([y for _, y in train_items], holdout)
            train_items, eval_items = [train_items[i] for i in kept], \
                [train_items[i] for i in held]
            eval_name = "val"
        n_train, n_eval = len(train_items), len(eval_items)
        normalise = _normalise(mean, std)

        def decode(path):
            return _decode_resize(path, size)

        def items_dataset(items):
            return tf.data.Dataset.from_tensor_slices(
                ([p for p, _ in items], np.array([y for _, y in items], dtype="int64")))

        pad_crop = _pad_crop_augment(pad, flip=False) if augment else None
        transform = _train_transform(decode, normalise, pad_crop,
                                     _randaugment(randaugment if augment else 0, mean))
        train = _finish_train(items_dataset(train_items), batch_size, seed, len(train_items),
                              transform, epochs, initial_epoch, epoch_examples)
        test = _finish_eval(items_dataset(eval_items), batch_size,
                            lambda p: normalise(decode(p)))
    info = DataInfo(FOLDER_PREFIX + root, len(class_names), (h, w, 3), n_train, n_eval,
                    class_names, mean, std, eval_name, "folder", skipped)
    return train, test, info


def _check_splits_left(root, splits, eval_name, class_names, y_train, y_eval, left_out):
    """Every class keeps a train image, and (a split layout) an eval image."""
    if splits is None:  # a held-out split may hold no image of a small class
        _require_each_class(root, class_names, y_train, left_out)
    else:
        _require_each_class(splits["train"], class_names, y_train, left_out)
        _require_each_class(splits[eval_name], class_names, y_eval, left_out)


def _fits_in_memory(n, size):
    """Whether ``n`` decoded images of ``size`` (a side or ``(H, W)``) are kept in memory (else
    streamed)."""
    h, w = _hw(size)
    return n * h * w * 3 <= _CACHE_BYTES
