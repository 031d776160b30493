"""A NumPy input pipeline for CIFAR-10 with no TensorFlow: what ``bench/gpu_train.py`` trains
from on a machine that has JAX but no TensorFlow (the GPU machine).

It reproduces :func:`dmr_keras.data.load` for ``cifar10`` read from a directory:

* Layout: ``train/<class>/`` + ``test/<class>/`` image folders, the 10 class folders named as
  ``CIFAR10_CLASSES`` (sorted = CIFAR-10's label order); in each class the image files below its
  folder in sorted path order; or a *pack* (:func:`write_pack`): the same files' bytes in one
  ``.npz``, small enough to travel with the working tree to the GPU machine.
* Decoding: every file once, with Pillow, into a uint8 array (optionally kept in a ``.npz``
  cache, written atomically). Pillow's JPEG decoder uses the accurate integer IDCT; TensorFlow's
  ``decode_image`` (what ``dmr_keras.data`` uses) uses the fast one by default, so a JPEG pixel
  can differ by a few levels (CIFAR-10 JPEG q75 copy: up to 5/255, in ~65 % of the values). A
  pack built with ``exact_splits=("test",)`` carries the per-pixel difference for the test
  split, so that the test images are exactly ``dmr_keras.data``'s (and a test accuracy measured
  here is the one ``dmr-eval`` measures on the CPU). PNG images decode identically either way.
* Normalisation: ``(x / 255 - mean) / std`` per channel in float32, with ``CIFAR10_MEAN`` /
  ``CIFAR10_STD`` (the same constants and the same float32 operations as the tf.data pipeline,
  so an unaugmented image is bit-identical to it for the same uint8 pixels).
* Augmentation (train): pad by 4 with zeros *after* normalisation (the mean pixel), random
  32x32 crop (offsets uniform in 0..8 each way), random horizontal flip (probability 1/2): the
  tf.data pipeline's augmentation, drawn from another random generator (the same distribution,
  not the same draws).
* Order: epoch ``e`` is a permutation of the train set, and every image's crop offsets and flip,
  drawn from ``numpy.random.default_rng([seed, e])``; batches of ``batch_size`` (the last
  partial batch is dropped). A batch is a function of ``(seed, epoch, index)`` only: a run
  resumed at epoch ``e`` sees exactly the batches of an uninterrupted one.

No module here imports TensorFlow, except :func:`write_pack` when asked for the exact test
pixels (which needs TensorFlow's decoder, and runs where it is installed).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import sys

import numpy as np

from dmr_keras.atomic import atomic_path
from dmr_keras.dataset_stats import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, IMAGE_EXTENSIONS

# CIFAR10_CLASSES, IMAGE_EXTENSIONS, the mean and std: dmr_keras.dataset_stats, as for
# dmr_keras.data.
PAD = 4
IMAGE_SIZE = 32
SPLITS = ("train", "test")
PACK_FORMAT = "dmr-keras cifar pack v1"
CACHE_FORMAT = "dmr-keras cifar uint8 v1"
SUBSET_SEED = 0


@dataclasses.dataclass(frozen=True)
class CifarArrays:
    """Decoded CIFAR-10: uint8 images (N, 32, 32, 3) and int64 labels per split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple
    source: str  # "folder" or "pack"
    sha256: str | None  # content hash of the source folder (data.content_sha256's definition)
    decoder: dict  # how the pixels were decoded, per split
    full_sizes: tuple = (0, 0)  # (train, test) examples before any subset was taken

    @property
    def mean(self):
        return CIFAR10_MEAN

    @property
    def std(self):
        return CIFAR10_STD


# ---- reading the source -------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan_split_folder(root) -> tuple[tuple, dict]:
    """``(class_names, {"train": [(path, label)], "test": [...]})`` of a ``train/<class>/`` +
    ``test/<class>/`` folder, in ``dmr_keras.data``'s order: classes sorted, in each class the
    image files below its folder (hidden ones skipped) in sorted path order."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    items, classes = {}, None
    for split in SPLITS:
        base = os.path.join(root, split)
        if not os.path.isdir(base):
            raise ValueError(f"{root} has no {split}/ folder: expected train/<class>/ + "
                             "test/<class>/ image folders (CIFAR-10's 10 class names) or a pack "
                             "file (dmr_keras.numpy_data.write_pack).")
        names = tuple(sorted(e for e in os.listdir(base)
                             if not e.startswith(".") and os.path.isdir(os.path.join(base, e))))
        if classes is None:
            classes = names
        elif names != classes:
            raise ValueError(f"The class folders of {base} ({', '.join(names)}) are not those of "
                             f"{os.path.join(root, 'train')} ({', '.join(classes)}).")
        split_items = []
        for label, name in enumerate(names):
            found = []
            for dirpath, dirnames, filenames in os.walk(os.path.join(base, name),
                                                        followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in filenames if _is_image(f)]
            if not found:
                raise ValueError(f"{os.path.join(base, name)} holds no image files.")
            split_items += [(p, label) for p in sorted(found)]
        items[split] = split_items
    if classes != CIFAR10_CLASSES:
        raise ValueError(f"{root} has the class folders {', '.join(classes)}; CIFAR-10's are "
                         f"{', '.join(CIFAR10_CLASSES)}.")
    return classes, items


def content_sha256(root) -> str:
    """The hash ``dmr_keras.data.content_sha256`` gives an image folder (sha256 of the lines
    ``"<sha256 of file>  <path relative to root>"``, paths in byte order), for the images of a
    ``train/`` + ``test/`` folder. The shared CIFAR-10 JPEG copy's README lists it."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    rel = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                for f in filenames if _is_image(f)]
    outer = hashlib.sha256()
    for path in sorted(rel, key=lambda p: p.encode()):
        with open(os.path.join(root, path), "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        outer.update(f"{digest}  {path}\n".encode())
    return outer.hexdigest()


def _decode_one(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        array = np.asarray(image, dtype=np.uint8)
    if array.shape != (size, size, 3):
        raise ValueError(f"an image of {array.shape[1]}x{array.shape[0]} pixels; this pipeline "
                         f"reads {size}x{size} images only")
    return array


def decode_bytes(blobs, threads: int | None = None, names=None) -> np.ndarray:
    """Decode encoded images (a sequence of ``bytes``) into uint8 ``(N, 32, 32, 3)``, in
    parallel threads (Pillow releases the GIL while decoding). Images that fail are listed in
    one ``ValueError``."""
    blobs = list(blobs)
    out = np.zeros((len(blobs), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    bad = []

    def work(start, stop):
        for i in range(start, stop):
            try:
                out[i] = _decode_one(blobs[i])
            except Exception as err:  # noqa: BLE001 - reported together below
                bad.append((i, str(err)))

    threads = threads or min(32, os.cpu_count() or 1)
    chunk = max(1, -(-len(blobs) // (threads * 4)))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda s: work(s, min(s + chunk, len(blobs))),
                      range(0, len(blobs), chunk)))
    if bad:
        label = (lambda i: names[i]) if names is not None else str
        listing = "\n  ".join(f"{label(i)}: {msg}" for i, msg in sorted(bad))
        raise ValueError(f"{len(bad)} unreadable or corrupt image(s):\n  {listing}")
    return out


def _read_files(paths) -> list:
    blobs = []
    for p in paths:
        with open(p, "rb") as fh:
            blobs.append(fh.read())
    return blobs


def subset_indices(n: int, limit: int | None, labels=None) -> np.ndarray:
    """The fixed subset of ``limit`` of ``n`` examples a toy run uses: the first ``limit`` of
    ``RandomState(0).permutation(n)``, in ascending order (all of them when ``limit`` is None or
    >= n). Independent of the training seed."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ValueError(f"An example limit must be >= 1. Received: {limit!r}")
    return np.sort(np.random.RandomState(SUBSET_SEED).permutation(n)[:limit])


# ---- the pack: the encoded files in one .npz ----------------------------------------------------


def write_pack(root, path, *, exact_splits=("test",)) -> dict:
    """Put the image files of a CIFAR-10 ``train/`` + ``test/`` folder into one compressed
    ``.npz`` (written atomically) and return a summary. The file bytes are stored unchanged, so
    decoding the pack gives what decoding the files gives; zlib shrinks the CIFAR-10 JPEG copy's
    52.7 MiB to about 17 MiB (the JPEG headers repeat).

    ``exact_splits``: for these splits the pack also stores, per pixel, TensorFlow's decode
    (``tf.io.decode_image``, as ``dmr_keras.data`` decodes) minus Pillow's, as int8, and the
    sha256 of TensorFlow's decoded array; :func:`load_cifar10` adds it back and checks the hash.
    This needs TensorFlow (imported here only). ``()``: no TensorFlow, Pillow's pixels.
    """
    classes, items = scan_split_folder(root)
    arrays = {"format": np.array(PACK_FORMAT), "class_names": np.array(classes),
              "sha256": np.array(content_sha256(root))}
    summary = {"path": str(path), "sha256": str(arrays["sha256"]), "splits": {}}
    root_abs = os.path.abspath(os.path.expanduser(str(root)))
    for split in SPLITS:
        paths = [p for p, _ in items[split]]
        blobs = _read_files(paths)
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        arrays[f"{split}_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = offsets
        arrays[f"{split}_labels"] = np.array([y for _, y in items[split]], dtype=np.int64)
        arrays[f"{split}_names"] = np.array(
            [os.path.relpath(p, root_abs).replace(os.sep, "/") for p in paths])
        info = {"images": len(blobs), "bytes": int(offsets[-1])}
        if split in exact_splits:
            pil = decode_bytes(blobs, names=paths)
            ref = _tf_decode(paths)
            delta = ref.astype(np.int16) - pil.astype(np.int16)
            if np.abs(delta).max(initial=0) > 127:
                raise ValueError(f"TensorFlow's and Pillow's decodes of {split}/ differ by more "
                                 "than 127 levels: not the same images")
            arrays[f"{split}_delta"] = delta.astype(np.int8)
            arrays[f"{split}_pil_sha256"] = np.array(hashlib.sha256(pil.tobytes()).hexdigest())
            arrays[f"{split}_exact_sha256"] = np.array(hashlib.sha256(ref.tobytes()).hexdigest())
            arrays[f"{split}_exact_decoder"] = np.array(_tf_decoder_name())
            info.update(pixels_differing=float((delta != 0).mean()),
                        max_difference=int(np.abs(delta).max(initial=0)))
        summary["splits"][split] = info
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    summary["file_bytes"] = os.path.getsize(path)
    return summary


def _tf_decoder_name() -> str:
    import tensorflow as tf

    return f"tensorflow {tf.__version__} tf.io.decode_image (dct_method default)"


def _tf_decode(paths) -> np.ndarray:
    """TensorFlow's decode of the files, as dmr_keras.data decodes 32x32 images."""
    import tensorflow as tf

    out = np.zeros((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        image = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
        out[i] = image.numpy()
    return out


def is_pack(path) -> bool:
    return str(path).endswith(".npz") and os.path.isfile(path)


def _load_pack(path, limits, threads):
    pack = np.load(path, allow_pickle=False)
    if "format" not in pack.files or str(pack["format"]) != PACK_FORMAT:
        raise ValueError(f"{path} is not a CIFAR pack written by dmr_keras.numpy_data.write_pack")
    out, decoder, full = {}, {}, []
    for split, limit in zip(SPLITS, limits):
        offsets = pack[f"{split}_offsets"]
        labels = pack[f"{split}_labels"]
        names = pack[f"{split}_names"]
        full.append(len(labels))
        keep = subset_indices(len(labels), limit)
        raw = pack[f"{split}_bytes"].tobytes()
        blobs = [raw[offsets[i]:offsets[i + 1]] for i in keep]
        x = decode_bytes(blobs, threads, names=[str(names[i]) for i in keep])
        how = {"decoder": _pil_decoder_name()}
        if f"{split}_delta" in pack.files:
            if len(keep) == len(labels):
                pil_ok = hashlib.sha256(x.tobytes()).hexdigest() == str(pack[f"{split}_pil_sha256"])
            else:
                pil_ok = None  # a subset: the whole-split hashes do not apply
            x = (x.astype(np.int16) + pack[f"{split}_delta"][keep]).clip(0, 255).astype(np.uint8)
            exact = (hashlib.sha256(x.tobytes()).hexdigest() == str(pack[f"{split}_exact_sha256"])
                     if pil_ok is not None else None)
            how = {"decoder": f"{_pil_decoder_name()} + stored difference to "
                              f"{pack[f'{split}_exact_decoder']}",
                   "pillow_matches_pack": pil_ok, "pixels_equal_tensorflow_decode": exact}
            if pil_ok is False:
                print(f"numpy_data: warning: this Pillow decodes {path} {split}/ differently from "
                      "the Pillow that wrote the pack; its stored difference does not give "
                      "TensorFlow's pixels exactly.", file=sys.stderr)
        out[split] = (x, labels[keep].astype(np.int64))
        decoder[split] = how
    classes = tuple(str(c) for c in pack["class_names"])
    return out, classes, str(pack["sha256"]), decoder, tuple(full)


def _pil_decoder_name() -> str:
    import PIL

    return f"Pillow {PIL.__version__}"


# ---- loading, with an optional uint8 cache -----------------------------------------------------


def _source_key(data_dir, limits) -> str:
    """Paths, sizes and modification times of the source (a changed file changes it)."""
    h = hashlib.sha256(repr(limits).encode())
    if is_pack(data_dir):
        files = [os.path.abspath(data_dir)]
    else:
        _, items = scan_split_folder(data_dir)
        files = [p for split in SPLITS for p, _ in items[split]]
    for p in files:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_cifar10(data_dir, *, cache=None, max_train: int | None = None,
                 max_test: int | None = None, threads: int | None = None) -> CifarArrays:
    """CIFAR-10 from a ``train/`` + ``test/`` folder or a pack, decoded into uint8 arrays.

    ``cache``: a ``.npz`` path; when it holds the arrays of the same source (paths, sizes,
    modification times and limits) they are read from it, else decoded and written there
    atomically. ``max_train`` / ``max_test``: keep a fixed subset (:func:`subset_indices`),
    decoding only those images (toy runs).
    """
    limits = (max_train, max_test)
    data_dir = str(data_dir)
    if not os.path.exists(data_dir):
        raise ValueError(f"CIFAR-10 data not found: {data_dir}")
    key = _source_key(data_dir, limits) if cache else None
    if cache and os.path.isfile(cache):
        with np.load(cache, allow_pickle=False) as f:
            if str(f["format"]) == CACHE_FORMAT and str(f["key"]) == key:
                import json

                meta = json.loads(str(f["meta"]))
                return CifarArrays(f["x_train"], f["y_train"], f["x_test"], f["y_test"],
                                   tuple(meta["class_names"]), meta["source"], meta["sha256"],
                                   meta["decoder"], tuple(meta["full_sizes"]))
    if is_pack(data_dir):
        out, classes, sha, decoder, full = _load_pack(data_dir, limits, threads)
        source = "pack"
    else:
        classes, items = scan_split_folder(data_dir)
        out, full = {}, []
        for split, limit in zip(SPLITS, limits):
            full.append(len(items[split]))
            chosen = [items[split][i] for i in subset_indices(len(items[split]), limit)]
            paths = [p for p, _ in chosen]
            out[split] = (decode_bytes(_read_files(paths), threads, names=paths),
                          np.array([y for _, y in chosen], dtype=np.int64))
        sha, source = content_sha256(data_dir), "folder"
        decoder = {split: {"decoder": _pil_decoder_name()} for split in SPLITS}
        full = tuple(full)
    arrays = CifarArrays(out["train"][0], out["train"][1], out["test"][0], out["test"][1],
                         tuple(classes), source, sha, decoder, full)
    if cache:
        import json

        meta = {"class_names": list(classes), "source": source, "sha256": sha,
                "decoder": decoder, "full_sizes": list(full)}
        with atomic_path(cache, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, format=np.array(CACHE_FORMAT), key=np.array(key),
                     meta=np.array(json.dumps(meta)), x_train=arrays.x_train,
                     y_train=arrays.y_train, x_test=arrays.x_test, y_test=arrays.y_test)
    return arrays


# ---- batches ------------------------------------------------------------------------------------


def normalise(images: np.ndarray, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> np.ndarray:
    """``(x / 255 - mean) / std`` in float32, as the tf.data pipeline computes it."""
    x = images.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


class TrainBatches:
    """The train set's batches, epoch by epoch, each a function of ``(seed, epoch, index)``.

    ``batch(epoch, i)`` -> ``(float32 (B, 32, 32, 3), int64 (B,))``: the ``i``-th batch of
    epoch ``epoch``; ``steps_per_epoch = N // batch_size`` (the partial batch is dropped).
    ``augment=False``: normalised images only (the shuffle stays).
    """

    def __init__(self, images, labels, *, batch_size: int, seed: int = 0, augment: bool = True,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD, pad: int = PAD, flip: bool = True):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"`images` must be uint8 (N, H, W, 3); got {images.dtype} "
                             f"{images.shape}")
        if int(seed) < 0:
            raise ValueError(f"`seed` must be >= 0. Received: {seed!r}")
        if batch_size < 1 or batch_size > len(images):
            raise ValueError(f"The batch size {batch_size} must be in 1..{len(images)} (the "
                             "training set's size).")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.pad = int(pad)
        self.flip = bool(flip)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.steps_per_epoch = len(images) // self.batch_size
        n, h, w, _ = images.shape
        self._h, self._w = h, w
        self._plans = {}
        if self.augment:
            p = self.pad
            # uint8 images padded with zeros; where the crop reaches the pad, the normalised value
            # is set to 0 (the mean pixel), as padding the normalised image with zeros does.
            self._padded = np.zeros((n, h + 2 * p, w + 2 * p, 3), dtype=np.uint8)
            self._padded[:, p:p + h, p:p + w] = images
            rows = np.arange(h + 2 * p)
            cols = np.arange(w + 2 * p)
            row_in = (rows >= p) & (rows < p + h)
            col_in = (cols >= p) & (cols < p + w)
            # outside[dy, dx]: the (h, w) pixels of the crop at (dy, dx) that are pad.
            self._outside = np.stack([np.stack([
                ~np.logical_and.outer(row_in[y0:y0 + h], col_in[x0:x0 + w])
                for x0 in range(2 * p + 1)]) for y0 in range(2 * p + 1)])

    def plan(self, epoch: int):
        """``(order, dy, dx, flip)`` of one epoch, from ``default_rng([seed, epoch])``: the
        permutation, each image's crop offsets (0..2*pad) and flips."""
        epoch = int(epoch)
        if epoch not in self._plans:
            if len(self._plans) >= 2:
                self._plans.pop(next(iter(self._plans)))
            rng = np.random.default_rng([self.seed, epoch])
            n = len(self.images)
            order = rng.permutation(n)
            offsets = rng.integers(0, 2 * self.pad + 1, size=(n, 2))
            flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
            self._plans[epoch] = (order, offsets[:, 0], offsets[:, 1], flips)
        return self._plans[epoch]

    def batch(self, epoch: int, index: int):
        return self._batch(self.plan(epoch), index)

    def _batch(self, plan, index):
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} of an epoch of {self.steps_per_epoch}")
        order, dy, dx, flips = plan
        chosen = order[index * self.batch_size:(index + 1) * self.batch_size]
        labels = self.labels[chosen]
        if not self.augment:
            return self._normalise(self.images[chosen]), labels
        h, w = self._h, self._w
        crops = np.empty((len(chosen), h, w, 3), dtype=np.uint8)
        outside = np.empty((len(chosen), h, w, 1), dtype=bool)
        for j, i in enumerate(chosen):
            y0, x0 = dy[i], dx[i]
            if flips[i]:
                crops[j] = self._padded[i, y0:y0 + h, x0:x0 + w][:, ::-1]
                outside[j, :, :, 0] = self._outside[y0, x0][:, ::-1]
            else:
                crops[j] = self._padded[i, y0:y0 + h, x0:x0 + w]
                outside[j, :, :, 0] = self._outside[y0, x0]
        x = self._normalise(crops)
        np.copyto(x, np.float32(0.0), where=outside)  # the pad: 0 after normalisation
        return x, labels

    def _normalise(self, images):
        x = images.astype(np.float32) / np.float32(255.0)
        return (x - self.mean) / self.std

    def epoch(self, epoch: int):
        """The batches of one epoch, in order."""
        plan = self.plan(epoch)
        for i in range(self.steps_per_epoch):
            yield self._batch(plan, i)

    def iterate(self, initial_epoch: int, epochs: int, workers: int = 0, prefetch: int = 8):
        """Epochs ``initial_epoch..epochs-1`` back to back (for ``fit(steps_per_epoch=...,
        initial_epoch=...)``). ``workers`` > 0 builds up to ``prefetch`` batches ahead in
        threads; the batches are the same either way."""
        keys = ((e, i) for e in range(initial_epoch, epochs) for i in range(self.steps_per_epoch))
        if workers <= 0:
            for e, i in keys:
                yield self.batch(e, i)
            return
        pending = []
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            try:
                for e, i in keys:
                    # plans are drawn here, in this thread, and handed to the workers
                    pending.append(pool.submit(self._batch, self.plan(e), i))
                    if len(pending) > prefetch:
                        yield pending.pop(0).result()
                while pending:
                    yield pending.pop(0).result()
            finally:
                for f in pending:
                    f.cancel()


def eval_batches(images, labels, batch_size: int, mean=CIFAR10_MEAN, std=CIFAR10_STD):
    """The eval set in order, normalised, the last partial batch kept."""
    for start in range(0, len(images), batch_size):
        yield (normalise(images[start:start + batch_size], mean, std),
               np.asarray(labels[start:start + batch_size], dtype=np.int64))


def main(argv=None) -> int:
    """``python -m dmr_keras.numpy_data pack SRC DEST.npz [--no-exact]``"""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m dmr_keras.numpy_data",
                                description="Write a CIFAR-10 pack (see write_pack).")
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("pack", help="a train/ + test/ folder -> one .npz")
    q.add_argument("src")
    q.add_argument("dest")
    q.add_argument("--no-exact", action="store_true",
                   help="no TensorFlow: do not store the test split's exact (tf.data) pixels")
    args = p.parse_args(argv)
    summary = write_pack(args.src, args.dest, exact_splits=() if args.no_exact else ("test",))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
