"""Pretrained weights: a JSON manifest, a local cache, a mirror directory and checked downloads.

Pure Python (no TensorFlow or Keras import): the manifest lists, for each ``model.tag`` key,
the weight file's name, its sha256, where to get it and how it was made. :func:`resolve` finds
a file in this order, checking the sha256 of every candidate before use:

1. ``SHIPPED_DIR`` (files shipped inside the package),
2. the cache, :func:`cache_dir` (``$DMR_KERAS_HOME``, else ``$KERAS_HOME/dmr_keras`` or
   ``~/.keras/dmr_keras``),
3. the mirror directory ``$DMR_KERAS_MIRROR`` (for machines without internet access),
4. a download from the entry's ``origin`` (``https://``, ``http://`` or ``file://``).

The cache is content-addressed: an entry's file lives at
``cache_dir() / <sha256> / <file_name>`` (:func:`cache_path`; the full 64-digit hex sha256,
then the manifest's file name, so Keras still sees the ``.weights.h5`` extension). Two entries
that name the same file with different bytes therefore never share a cached copy. A mirror
directory may use the same layout (a copy of a cache works as a mirror) or be flat
(``<mirror>/<file_name>``); the first is tried first. A file left in the flat cache layout of
earlier versions (``cache_dir() / <file_name>``) whose sha256 matches is moved into its
content-addressed place the first time the entry is resolved; one that does not match is left
alone, as it may belong to another entry with the same file name.

A download goes to a temporary name in the cache, is hashed and only then renamed into place,
under an exclusive lock file, so concurrent processes end with one good copy.

Extra manifests (for weights trained locally) are listed in ``$DMR_KERAS_MANIFESTS``, separated
by ``os.pathsep``; a later manifest's entry replaces an earlier one with the same key. A
replacement with a different sha256 warns (``UserWarning`` naming the key and both manifests);
one with the same sha256 (new metadata for the same file) is silent.

:func:`verify_cache` (``dmr-zoo verify``) re-hashes, for every key, the shipped file and the
cached file against that key's own sha256 and reports each key as OK, MISSING or BAD.

An entry may also hold a ``fingerprint`` (the published network's outputs on fixed reference
inputs, :mod:`zoo.fingerprint`), checked whenever the weights are loaded by tag and by
``dmr-zoo verify --deep``, and a ``provenance`` (package versions, wall time, epochs, the data's
sha256). Both are optional: manifests without them load as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from dmr_keras.atomic import atomic_path, write_json

try:  # POSIX; elsewhere downloads are unlocked (the atomic rename still prevents torn files)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

MANIFEST_PATH = Path(__file__).resolve().parent / "weights.json"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"

HOME_ENV = "DMR_KERAS_HOME"
MIRROR_ENV = "DMR_KERAS_MIRROR"
MANIFESTS_ENV = "DMR_KERAS_MANIFESTS"
MANIFEST_FORMAT = 1
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ORIGIN_SCHEMES = ("https", "http", "file")
_FINGERPRINT_KEYS = frozenset({"seed", "count", "output", "indices", "values", "tolerance"})

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WeightEntry:
    """One weight file in the manifest; ``key`` is ``f"{model}.{tag}"``."""

    key: str
    model: str
    tag: str
    file_name: str
    sha256: str
    origin: str | None
    dataset: str
    classes: int
    input_shape: tuple
    preprocessing: dict
    metrics: dict
    license: str
    command: str
    class_names: tuple | None = None
    #: The published network's outputs on fixed reference inputs (:mod:`zoo.fingerprint`),
    #: checked when the weights are loaded; ``None`` in entries published before fingerprints.
    fingerprint: dict | None = None
    #: How the weights were made beyond ``command``: package versions, backend, wall time,
    #: epochs, the data's sha256 (:func:`zoo.cli.publish`); ``None`` when not recorded.
    provenance: dict | None = None

    def __post_init__(self):
        if self.key != f"{self.model}.{self.tag}":
            raise ValueError(f"Weight key {self.key!r} is not model.tag "
                             f"({self.model!r}.{self.tag!r})")
        name = self.file_name
        if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{self.key}: file_name must be a plain file name, got {name!r}")
        if not isinstance(self.sha256, str) or not _SHA256_RE.fullmatch(self.sha256.lower()):
            raise ValueError(f"{self.key}: sha256 must be 64 hex digits, got {self.sha256!r}")
        object.__setattr__(self, "sha256", self.sha256.lower())
        if self.origin is not None:
            scheme = urllib.parse.urlsplit(self.origin).scheme
            if scheme not in _ORIGIN_SCHEMES:
                raise ValueError(f"{self.key}: origin must be an https://, http:// or file:// "
                                 f"URL or null, got {self.origin!r}")
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        fp = self.fingerprint
        if fp is not None and not (isinstance(fp, dict) and _FINGERPRINT_KEYS <= set(fp)):
            raise ValueError(f"{self.key}: fingerprint must be null or an object with "
                             f"{', '.join(sorted(_FINGERPRINT_KEYS))}")
        if self.provenance is not None and not isinstance(self.provenance, dict):
            raise ValueError(f"{self.key}: provenance must be null or an object")

    def to_json(self) -> dict:
        """The manifest record (the key is the record's name in the manifest, not a field).
        ``fingerprint`` and ``provenance`` are left out when ``None``, so entries without
        them read the same as before those fields existed."""
        d = dataclasses.asdict(self)
        del d["key"]
        d["input_shape"] = list(self.input_shape)
        d["class_names"] = None if self.class_names is None else list(self.class_names)
        for optional in ("fingerprint", "provenance"):
            if d[optional] is None:
                del d[optional]
        return d

    @classmethod
    def from_json(cls, key: str, d: dict) -> WeightEntry:
        if not isinstance(d, dict):
            raise ValueError(f"Weight entry {key!r} must be a JSON object, got {type(d).__name__}")
        fields = [f for f in dataclasses.fields(cls) if f.name != "key"]
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise ValueError(f"Weight entry {key!r} lacks field(s): {', '.join(missing)}")
        known = {f.name for f in fields}
        return cls(key=key, **{k: v for k, v in d.items() if k in known})


def _read_manifest_json(path: Path) -> dict:
    """The raw ``{"format": 1, "weights": {...}}`` object; ``ValueError`` naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"Weights manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Malformed weights manifest {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("weights"), dict):
        raise ValueError(f"Malformed weights manifest {path}: expected an object with a "
                         f'"weights" object, e.g. {{"format": 1, "weights": {{}}}}')
    if data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise ValueError(f"Weights manifest {path} has format {data.get('format')!r}; "
                         f"this version reads format {MANIFEST_FORMAT}")
    return data


def _parse_manifest(path: Path) -> dict[str, WeightEntry]:
    entries = {}
    for key, d in _read_manifest_json(path)["weights"].items():
        try:
            entries[key] = WeightEntry.from_json(key, d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"Malformed weights manifest {path}: {e}") from e
    return entries


def extra_manifests() -> list[Path]:
    """The manifest files listed in ``$DMR_KERAS_MANIFESTS``, in order."""
    value = os.environ.get(MANIFESTS_ENV, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def _manifest_layers(path=None) -> list[tuple[Path, dict[str, WeightEntry]]]:
    """``[(manifest path, its entries), ...]``: the package manifest (or ``path``), then the
    manifests in ``$DMR_KERAS_MANIFESTS``, in order and unmerged."""
    base = Path(path) if path is not None else MANIFEST_PATH
    layers = []
    if path is not None or base.exists():
        layers.append((base, _parse_manifest(base)))
    for extra in extra_manifests():
        layers.append((extra, _parse_manifest(extra)))
    return layers


def _merge(layers) -> dict[str, WeightEntry]:
    """Later layers win; replacing a key with a different sha256 warns, naming both files."""
    entries, source = {}, {}
    for manifest, layer in layers:
        for key, entry in layer.items():
            old = entries.get(key)
            if old is not None and old.sha256 != entry.sha256:
                warnings.warn(f"Weights manifest {manifest} overrides {key} from {source[key]} "
                              f"with a different file: sha256 {entry.sha256} replaces "
                              f"{old.sha256}", UserWarning, stacklevel=3)
            entries[key], source[key] = entry, manifest
    return entries


def load_manifest(path=None) -> dict[str, WeightEntry]:
    """The package manifest (or ``path``) merged with ``$DMR_KERAS_MANIFESTS``; later wins.

    A missing package manifest reads as empty; a listed extra manifest that is missing or
    malformed raises ``ValueError`` naming the file. A later manifest that gives a key a
    different sha256 than an earlier one (or the package manifest) emits a ``UserWarning``
    naming the key and both manifest paths; the same sha256 again is silent.
    """
    return _merge(_manifest_layers(path))


def cache_dir() -> Path:
    """``$DMR_KERAS_HOME`` if set, else Keras's cache dir (``$KERAS_HOME`` or ``~/.keras``)
    followed by ``dmr_keras``. Same rules as ``keras.utils.get_file``, without importing Keras:
    an unwritable home falls back to ``/tmp/.keras``."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    if "KERAS_HOME" in os.environ:
        base = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        user = Path("~").expanduser()
        base = (user if os.access(user, os.W_OK) else Path("/tmp")) / ".keras"
    probe = base if base.exists() else base.parent
    if not os.access(probe, os.W_OK):
        base = Path("/tmp") / ".keras"
    return base / "dmr_keras"


def mirror_dirs() -> list[Path]:
    """The directories in ``$DMR_KERAS_MIRROR`` (one, or several separated by ``os.pathsep``)."""
    value = os.environ.get(MIRROR_ENV, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def cache_path(entry: WeightEntry) -> Path:
    """Where ``entry``'s file lives in the cache: ``cache_dir() / sha256 / file_name``."""
    return cache_dir() / entry.sha256 / entry.file_name


def _flat_cache_path(entry: WeightEntry) -> Path:
    """The cache location of earlier versions, keyed by file name only."""
    return cache_dir() / entry.file_name


def _remove_if_empty(directory: Path) -> None:
    """Remove a content-addressed cache directory left empty (a failed download, a deleted
    corrupted copy). Lock holders keep their lock file in it, so it is never removed under
    them; :func:`_locked` re-creates it if it goes between its ``mkdir`` and ``open``."""
    with contextlib.suppress(OSError):
        directory.rmdir()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(target: Path):
    """Hold an exclusive ``flock`` on ``.<name>.lock`` beside ``target``; remove it afterwards.

    The lock file is unlinked while still locked. A waiter that then gets the lock on the
    unlinked inode sees that the path no longer names its file and starts again, so two
    processes never both believe they hold the lock.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock_path = target.parent / f".{target.name}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # an empty cache directory was just pruned: make it again
            target.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)  # releases the lock


def _check(path: Path, expected: str, where: str) -> bool:
    """True when ``path`` is a file with the expected sha256; a mismatch warns."""
    if not path.is_file():
        return False
    actual = sha256_file(path)
    if actual == expected:
        return True
    warnings.warn(f"Ignoring {where} weight file {path}: sha256 {actual}, expected {expected}",
                  stacklevel=3)
    return False


def _check_cached(cached: Path, expected: str) -> bool:
    """True when the cached copy is good; a bad one is deleted (under the lock, after a
    re-check, so a good copy another process has just written is never removed)."""
    if not cached.is_file():
        return False
    if sha256_file(cached) == expected:
        return True
    with _locked(cached):
        if not cached.is_file():
            return False
        actual = sha256_file(cached)
        if actual == expected:
            return True
        warnings.warn(f"Deleting corrupted cached weight file {cached}: sha256 {actual}, "
                      f"expected {expected}", stacklevel=3)
        cached.unlink()
    return False


def _where_to_put(entry: WeightEntry, cached: Path) -> str:
    return (f"Put {entry.file_name} (sha256 {entry.sha256}) at {cached}, or in a directory "
            f"named by ${MIRROR_ENV}, and retry.")


def _download(entry: WeightEntry, cached: Path) -> None:
    """Download ``entry.origin`` into ``cached``: temp file, sha256 check, then rename."""
    url = entry.origin
    log.info("Downloading %s from %s", entry.file_name, url)
    with atomic_path(cached) as tmp:
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                    open(tmp, "wb") as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise ValueError(f"Could not download weight file {entry.file_name} from {url} "
                             f"({reason}). {_where_to_put(entry, cached)}") from e
        actual = h.hexdigest()
        if actual != entry.sha256:
            raise ValueError(f"sha256 mismatch for {entry.file_name} downloaded from {url}: "
                             f"expected {entry.sha256}, got {actual}. The file was discarded.")


def _migrate_flat(entry: WeightEntry, cached: Path) -> bool:
    """Move a good copy from the flat cache layout of earlier versions to ``cached``.

    True when ``cached`` then holds the file. A flat copy with another sha256 is left alone:
    it may be the file of another entry with the same file name.
    """
    flat = _flat_cache_path(entry)
    if not flat.is_file():
        return False
    with _locked(cached), _locked(flat):
        if cached.is_file() and sha256_file(cached) == entry.sha256:
            return True  # another process migrated or downloaded it meanwhile
        if not flat.is_file() or sha256_file(flat) != entry.sha256:
            return False
        os.replace(flat, cached)
    log.info("Moved cached weight file %s to %s", flat, cached)
    return True


def resolve(entry: WeightEntry, *, download: bool = True) -> Path:
    """The local path of ``entry``'s weight file, downloading it if needed.

    Order: a file shipped in ``SHIPPED_DIR``, then the cache (:func:`cache_path`, or a good
    copy in the old flat layout, which is moved there), then the mirror directories
    ``$DMR_KERAS_MIRROR`` (``<mirror>/<sha256>/<file_name>``, then ``<mirror>/<file_name>``),
    then a download from ``entry.origin`` (https, http or file URL).
    Every candidate is sha256-checked before use; a shipped, cached or mirror file with a
    wrong hash is skipped with a warning (a cached one is deleted). A download goes to a
    temporary name in the cache, is hashed, and only then renamed into place; a mismatch
    raises ``ValueError`` naming both hashes and the URL and leaves nothing in the cache.
    Concurrent downloads of one file are serialised by an exclusive lock file; the processes
    that waited find the cached copy. With no copy anywhere and the origin unreachable (or
    ``download=False``, or no origin) a ``ValueError`` says where to put the file.
    """
    expected = entry.sha256
    shipped = Path(SHIPPED_DIR) / entry.file_name
    if _check(shipped, expected, "shipped"):
        return shipped
    cached = cache_path(entry)
    try:
        return _resolve_uncached(entry, cached, download)
    finally:
        _remove_if_empty(cached.parent)


def _resolve_uncached(entry: WeightEntry, cached: Path, download: bool) -> Path:
    expected = entry.sha256
    if _check_cached(cached, expected) or _migrate_flat(entry, cached):
        return cached
    for mirror in mirror_dirs():
        for candidate in (mirror / expected / entry.file_name, mirror / entry.file_name):
            if _check(candidate, expected, "mirror"):
                return candidate
    if entry.origin is None or not download:
        why = "it has no download origin" if entry.origin is None else "download=False"
        raise ValueError(f"Weight file {entry.file_name} for {entry.key} was not found in "
                         f"the package, the cache or the mirror, and {why} "
                         f"(origin: {entry.origin}). {_where_to_put(entry, cached)}")
    with _locked(cached):
        # Another process may have finished the download while this one waited.
        if cached.is_file():
            actual = sha256_file(cached)
            if actual == expected:
                return cached
            warnings.warn(f"Deleting corrupted cached weight file {cached}: sha256 {actual}, "
                          f"expected {expected}", stacklevel=3)
            cached.unlink()
        _download(entry, cached)
    return cached


def fetch(key: str) -> Path:
    """:func:`resolve` the manifest entry ``key`` (``"model.tag"``); ``ValueError`` with close
    matches for an unknown key."""
    entries = load_manifest()
    if key in entries:
        return resolve(entries[key])
    close = difflib.get_close_matches(str(key), entries, n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    known = ", ".join(sorted(entries)) or "none"
    raise ValueError(f"Unknown weights key {key!r}.{hint} Known keys: {known}")


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One line of :func:`verify_cache`: ``status`` is ``"OK"``, ``"MISSING"`` or ``"BAD"``;
    ``where`` is ``"shipped"``, ``"cache"`` or ``"cache (flat)"`` (``"-"`` when missing);
    ``actual`` is the sha256 of a BAD file."""

    key: str
    status: str
    where: str
    path: Path
    expected: str
    actual: str | None = None


def verify_cache() -> list[CheckResult]:
    """Re-hash, for every manifest key, its shipped file and its cached file.

    Each is checked against the key's own sha256. A content-addressed cache file
    (:func:`cache_path`) that does not match is BAD. A file in a directory keyed by file name
    only (``SHIPPED_DIR``, the old flat cache layout) may be another entry's file with the
    same name, so it is BAD only when it matches no entry that names it, in any manifest
    (an overridden entry included). A key with no local copy is MISSING (it may still be in
    a mirror or downloadable). Sorted by key; a key may have a line for each location.
    """
    layers = _manifest_layers()
    entries = _merge(layers)
    known_shas = {}
    for _, layer in layers:
        for entry in layer.values():
            known_shas.setdefault(entry.file_name, set()).add(entry.sha256)
    hashes = {}

    def digest(path):
        if path not in hashes:
            hashes[path] = sha256_file(path)
        return hashes[path]

    results = []
    for key in sorted(entries):
        entry = entries[key]
        places = [("shipped", Path(SHIPPED_DIR) / entry.file_name, False),
                  ("cache", cache_path(entry), True),
                  ("cache (flat)", _flat_cache_path(entry), False)]
        found = []
        for where, path, content_addressed in places:
            if not path.is_file():
                continue
            actual = digest(path)
            if actual == entry.sha256:
                found.append(CheckResult(key, "OK", where, path, entry.sha256))
            elif content_addressed or actual not in known_shas[entry.file_name]:
                found.append(CheckResult(key, "BAD", where, path, entry.sha256, actual))
        results.extend(found or [CheckResult(key, "MISSING", "-", cache_path(entry),
                                             entry.sha256)])
    return results


def add_entry(entry: WeightEntry, manifest_path, weights_file=None, dest_dir=None) -> WeightEntry:
    """Write or replace ``entry`` in the JSON manifest at ``manifest_path`` (atomically).

    If ``weights_file`` is given it is first copied, atomically, to
    ``dest_dir / entry.file_name`` (``dest_dir`` defaults to ``weights/`` beside the manifest,
    which is ``SHIPPED_DIR`` for the package manifest); its sha256 must equal ``entry.sha256``
    or ``ValueError`` is raised and nothing is written. Other entries are kept as they are.
    """
    manifest_path = Path(manifest_path)
    if weights_file is not None:
        dest_dir = Path(dest_dir) if dest_dir is not None else manifest_path.parent / "weights"
        actual = sha256_file(weights_file)
        if actual != entry.sha256:
            raise ValueError(f"sha256 of {weights_file} is {actual}, but the entry {entry.key} "
                             f"says {entry.sha256}")
        dest = dest_dir / entry.file_name
        if Path(weights_file).resolve() != dest.resolve():
            with atomic_path(dest) as tmp:
                shutil.copyfile(weights_file, tmp)
                copied = sha256_file(tmp)
                if copied != entry.sha256:
                    raise ValueError(f"sha256 of the copy of {weights_file} is {copied}, "
                                     f"expected {entry.sha256}")
    with _locked(manifest_path):
        if manifest_path.exists():
            data = _read_manifest_json(manifest_path)
        else:
            data = {"format": MANIFEST_FORMAT, "weights": {}}
        data["format"] = MANIFEST_FORMAT
        data["weights"][entry.key] = entry.to_json()
        write_json(manifest_path, data)
    return entry
