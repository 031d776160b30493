"""zoo.weights: manifest, resolution order, checked downloads, cache repair, locking."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from zoo import weights
from zoo.weights import WeightEntry

ROOT = Path(__file__).resolve().parents[1]
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class Dirs:
    def __init__(self, tmp_path):
        self.cache = tmp_path / "cache"
        self.mirror = tmp_path / "mirror"
        self.shipped = tmp_path / "shipped"
        self.origin = tmp_path / "origin"
        for d in (self.mirror, self.shipped, self.origin):
            d.mkdir()


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch):
    d = Dirs(tmp_path)
    monkeypatch.setenv("DMR_KERAS_HOME", str(d.cache))
    monkeypatch.setenv("DMR_KERAS_MIRROR", str(d.mirror))
    monkeypatch.delenv("DMR_KERAS_MANIFESTS", raising=False)
    monkeypatch.setattr(weights, "SHIPPED_DIR", d.shipped)
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return d


def _blob(n=4096):
    return os.urandom(n)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(data: bytes, origin, model="tinynet", tag="fake", sha=None, file_name=None):
    return WeightEntry(
        key=f"{model}.{tag}", model=model, tag=tag,
        file_name=file_name or f"{model}.{tag}.weights.h5",
        sha256=sha or _sha(data), origin=origin, dataset="digits", classes=10,
        input_shape=(8, 8, 1), preprocessing={"mean": [0.5], "std": [0.25], "scale": "0-1"},
        metrics={"test_accuracy": 0.99}, license="MIT", command="dmr-train tinynet",
        class_names=tuple(str(i) for i in range(10)),
    )


def _file_origin(dirs, data, name):
    path = dirs.origin / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _cached(dirs, entry):
    """The documented content-addressed cache layout: cache / sha256 / file name."""
    return dirs.cache / entry.sha256 / entry.file_name


def _tree(root):
    """Every file and directory under ``root``, relative, sorted (lock and temp files show)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def _write_manifest(path, entries):
    path.write_text(json.dumps({"format": 1, "weights": {e.key: e.to_json() for e in entries}}))
    return path


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests.append(self.path)
        time.sleep(server.delay)
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.files, server.requests, server.delay = {}, [], 0.0
    server.lock = threading.Lock()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_download_from_file_url_then_uses_cache(dirs):
    data = _blob()
    entry = _entry(data, None)
    src = _file_origin(dirs, data, entry.file_name)
    entry = _entry(data, src.as_uri())
    path = weights.resolve(entry)
    assert path == _cached(dirs, entry) == weights.cache_path(entry)
    assert weights.sha256_file(path) == entry.sha256 and path.read_bytes() == data
    # no temp or lock files
    assert _tree(dirs.cache) == [entry.sha256, f"{entry.sha256}/{entry.file_name}"]
    src.unlink()
    assert weights.resolve(entry) == path  # from the cache: the origin is gone


def test_download_over_http_once(dirs, http_server):
    data = _blob()
    entry = _entry(data, http_server.url + "/w/tiny.h5")
    http_server.files["/w/tiny.h5"] = data
    path = weights.resolve(entry)
    assert path == _cached(dirs, entry) and path.read_bytes() == data
    assert http_server.requests == ["/w/tiny.h5"]
    assert weights.resolve(entry) == path
    assert len(http_server.requests) == 1  # the second resolve used the cache


def test_resolution_order_shipped_cache_mirror_download(dirs):
    data = _blob()
    name = _entry(data, None).file_name
    entry = _entry(data, (dirs.origin / name).as_uri())  # the origin does not exist yet
    cached = _cached(dirs, entry)
    for path in (dirs.shipped / name, cached, dirs.mirror / name):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert weights.resolve(entry) == dirs.shipped / name
    (dirs.shipped / name).unlink()
    assert weights.resolve(entry) == cached
    cached.unlink()
    assert weights.resolve(entry) == dirs.mirror / name
    assert not cached.exists()  # a mirror copy is used in place
    assert os.listdir(dirs.cache) == []  # the emptied sha256 directory is pruned
    (dirs.mirror / name).unlink()
    with pytest.raises(ValueError, match="Could not download"):
        weights.resolve(entry)  # nothing left but the (missing) origin
    with pytest.raises(ValueError, match="download=False"):
        weights.resolve(entry, download=False)
    _file_origin(dirs, data, name)
    assert weights.resolve(entry) == cached
    assert cached.read_bytes() == data


def test_bad_shipped_and_mirror_copies_are_skipped(dirs):
    data = _blob()
    name = _entry(data, None).file_name
    entry = _entry(data, _file_origin(dirs, data, name).as_uri())
    (dirs.shipped / name).write_bytes(b"tampered")
    (dirs.mirror / name).write_bytes(data)
    with pytest.warns(UserWarning, match="shipped"):
        assert weights.resolve(entry) == dirs.mirror / name
    assert (dirs.shipped / name).read_bytes() == b"tampered"  # the package is left alone
    (dirs.mirror / name).write_bytes(b"tampered too")
    with pytest.warns(UserWarning, match="mirror"):
        assert weights.resolve(entry) == _cached(dirs, entry)
    assert _cached(dirs, entry).read_bytes() == data


def test_hash_mismatch_on_download_leaves_nothing(dirs, http_server):
    data = _blob()
    wrong = _sha(b"something else")
    url = http_server.url + "/bad.h5"
    http_server.files["/bad.h5"] = data
    entry = _entry(data, url, sha=wrong)
    with pytest.raises(ValueError) as err:
        weights.resolve(entry)
    msg = str(err.value)
    assert wrong in msg and _sha(data) in msg and url in msg
    assert os.listdir(dirs.cache) == []


def test_corrupted_cache_is_deleted_and_downloaded_again(dirs):
    data = _blob()
    name = _entry(data, None).file_name
    entry = _entry(data, _file_origin(dirs, data, name).as_uri())
    path = weights.resolve(entry)
    path.write_bytes(data[:-1] + b"\0")
    with pytest.warns(UserWarning, match="corrupted"):
        assert weights.resolve(entry) == path
    assert path.read_bytes() == data
    # Deleted even when no download follows.
    path.write_bytes(b"junk")
    with pytest.warns(UserWarning, match="corrupted"), pytest.raises(ValueError):
        weights.resolve(entry, download=False)
    assert os.listdir(dirs.cache) == []


WORKER = r"""
import sys, time, types
from pathlib import Path
root, key, shipped, ready, go = sys.argv[1:6]
for name in ("dmr_keras", "zoo"):  # bypass the package __init__s: zoo.weights is stdlib-only
    module = types.ModuleType(name)
    module.__path__ = [str(Path(root) / name)]
    sys.modules[name] = module
from zoo import weights
assert "keras" not in sys.modules and "tensorflow" not in sys.modules, "heavy import"
weights.SHIPPED_DIR = Path(shipped)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.002)
print(weights.fetch(key))
"""


def test_concurrent_fetch_downloads_once(dirs, http_server, tmp_path, monkeypatch):
    data = _blob(256 * 1024)
    entry = _entry(data, http_server.url + "/slow.h5")
    http_server.files["/slow.h5"] = data
    http_server.delay = 0.5
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(_write_manifest(tmp_path / "m.json", [entry])))
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ROOT), entry.key, str(dirs.shipped), str(r),
             str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        for r in ready
    ]
    try:
        deadline = time.monotonic() + 30
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()  # all four fetch at once
        outputs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * 4, outputs
    cached = _cached(dirs, entry)
    assert {Path(out.strip()) for out, _ in outputs} == {cached}
    # one file, no temp or lock files
    assert _tree(dirs.cache) == [entry.sha256, f"{entry.sha256}/{entry.file_name}"]
    assert weights.sha256_file(cached) == entry.sha256
    assert http_server.requests == ["/slow.h5"]  # the lock serialises: one download


def test_offline_error_says_where_to_put_the_file(dirs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is
    url = f"http://127.0.0.1:{port}/x.h5"
    entry = _entry(_blob(), url)
    with pytest.raises(ValueError) as err:
        weights.resolve(entry)
    msg = str(err.value)
    assert entry.file_name in msg and url in msg
    assert str(_cached(dirs, entry)) in msg and "DMR_KERAS_MIRROR" in msg
    assert os.listdir(dirs.cache) == []


def test_load_manifest_merges_extra_manifests(tmp_path, monkeypatch):
    a, b1, b2, c1, c2 = (_entry(_blob(16), None, model=m, tag="t") for m in "abbcc")
    base = _write_manifest(tmp_path / "base.json", [a, b1])
    one = _write_manifest(tmp_path / "one.json", [b2, c1])
    two = _write_manifest(tmp_path / "two.json", [c2])
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", os.pathsep.join([str(one), "", str(two)]))
    with pytest.warns(UserWarning, match="overrides"):  # b and c change their files
        assert weights.load_manifest(base) == {"a.t": a, "b.t": b2, "c.t": c2}
    with pytest.warns(UserWarning, match="overrides c.t"):
        assert weights.load_manifest()["c.t"] == c2  # the package manifest merges them too


@pytest.mark.parametrize("text, match", [
    ("{not json", "Malformed"),
    ('{"format": 1, "weights": []}', "Malformed"),
    ('{"format": 1, "weights": {"a.t": {"model": "a"}}}', "lacks field"),
    ('{"format": 99, "weights": {}}', "format 99"),
])
def test_malformed_manifest_names_the_file(tmp_path, monkeypatch, text, match):
    bad = tmp_path / "bad manifest.json"
    bad.write_text(text)
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(bad))
    with pytest.raises(ValueError, match=match) as err:
        weights.load_manifest()
    assert str(bad) in str(err.value)


def test_fetch_by_key_and_unknown_key_suggests(dirs, tmp_path, monkeypatch):
    data = _blob()
    name = _entry(data, None, model="dmrnet_8_tiny", tag="mine").file_name
    entry = _entry(data, _file_origin(dirs, data, name).as_uri(), "dmrnet_8_tiny", "mine")
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(_write_manifest(tmp_path / "m.json", [entry])))
    assert weights.fetch("dmrnet_8_tiny.mine") == _cached(dirs, entry)
    with pytest.raises(ValueError, match=r"Did you mean: .*dmrnet_8_tiny\.mine"):
        weights.fetch("dmrnet_8_tiny.mie")


def _same_name_pair(dirs, origin=True, name="model.weights.h5"):
    """Two entries (``a.t``, ``b.t``) naming one file with different bytes; each origin (if
    any) lives in its own directory."""
    pair = []
    for model in ("a", "b"):
        data = _blob()
        uri = _file_origin(dirs, data, f"{model}/{name}").as_uri() if origin else None
        pair.append((_entry(data, uri, model=model, tag="t", file_name=name), data))
    assert pair[0][0].file_name == pair[1][0].file_name
    assert pair[0][0].sha256 != pair[1][0].sha256
    return pair


def test_same_file_name_different_bytes_download_to_own_paths(dirs):
    (a, a_data), (b, b_data) = _same_name_pair(dirs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither sees the other's file as corrupted
        path_a = weights.resolve(a)
        path_b = weights.resolve(b)
    assert path_a == _cached(dirs, a) and path_b == _cached(dirs, b) and path_a != path_b
    assert path_a.read_bytes() == a_data and path_b.read_bytes() == b_data
    for entry, _ in ((a, a_data), (b, b_data)):  # the origins go: both come from the cache
        Path(urllib.parse.urlsplit(entry.origin).path).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert weights.resolve(b) == path_b and weights.resolve(a) == path_a
    assert path_a.read_bytes() == a_data and path_b.read_bytes() == b_data
    assert _tree(dirs.cache) == sorted([a.sha256, b.sha256, f"{a.sha256}/{a.file_name}",
                                        f"{b.sha256}/{b.file_name}"])


def test_same_file_name_different_bytes_from_mirror(dirs, tmp_path, monkeypatch):
    (a, a_data), (b, b_data) = _same_name_pair(dirs, origin=False)
    # One mirror in the cache's layout: <mirror>/<sha256>/<file name>.
    for entry, data in ((a, a_data), (b, b_data)):
        (dirs.mirror / entry.sha256).mkdir()
        (dirs.mirror / entry.sha256 / entry.file_name).write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert weights.resolve(a) == dirs.mirror / a.sha256 / a.file_name
        assert weights.resolve(b) == dirs.mirror / b.sha256 / b.file_name
    # Two flat mirrors, one file each: each entry finds its own (skipping the other's).
    flat_a, flat_b = tmp_path / "flat_a", tmp_path / "flat_b"
    for d, data in ((flat_a, a_data), (flat_b, b_data)):
        d.mkdir()
        (d / a.file_name).write_bytes(data)
    monkeypatch.setenv("DMR_KERAS_MIRROR", os.pathsep.join([str(flat_a), str(flat_b)]))
    assert weights.resolve(a) == flat_a / a.file_name
    with pytest.warns(UserWarning, match="mirror"):
        assert weights.resolve(b) == flat_b / b.file_name
    assert weights.resolve(a).read_bytes() == a_data
    assert (flat_a / a.file_name).read_bytes() == a_data  # mirrors are read, never written
    assert (flat_b / b.file_name).read_bytes() == b_data
    assert not dirs.cache.exists() or _tree(dirs.cache) == []


def test_flat_cache_file_of_earlier_versions_is_moved_into_place(dirs):
    (a, a_data), (b, _) = _same_name_pair(dirs, origin=False)
    flat = dirs.cache / a.file_name
    dirs.cache.mkdir()
    flat.write_bytes(a_data)
    # b names the same file with other bytes: the flat file is not b's, and is left alone.
    with pytest.raises(ValueError, match="no download origin"):
        weights.resolve(b)
    assert flat.read_bytes() == a_data and _tree(dirs.cache) == [a.file_name]
    assert weights.resolve(a) == _cached(dirs, a)
    assert _cached(dirs, a).read_bytes() == a_data
    assert _tree(dirs.cache) == [a.sha256, f"{a.sha256}/{a.file_name}"]  # moved, no locks


def _statuses(results, keys):
    return sorted((r.key, r.where, r.status) for r in results if r.key in keys)


def test_verify_cache_checks_each_key_against_its_own_sha(dirs, tmp_path, monkeypatch):
    (a, a_data), (b, b_data) = _same_name_pair(dirs)
    shipped_data = _blob()
    shipped = _entry(shipped_data, None, model="s", tag="t")
    (dirs.shipped / shipped.file_name).write_bytes(shipped_data)
    missing = _entry(_blob(), "https://example.invalid/m.h5", model="m", tag="t")
    entries = [a, b, shipped, missing]
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(_write_manifest(tmp_path / "m.json", entries)))
    keys = {e.key for e in entries}
    weights.resolve(a)
    weights.resolve(b)
    assert _statuses(weights.verify_cache(), keys) == [
        ("a.t", "cache", "OK"), ("b.t", "cache", "OK"), ("m.t", "-", "MISSING"),
        ("s.t", "shipped", "OK")]

    _cached(dirs, b).write_bytes(a_data)  # b's cached copy now holds a's bytes
    results = weights.verify_cache()
    assert _statuses(results, keys) == [
        ("a.t", "cache", "OK"), ("b.t", "cache", "BAD"), ("m.t", "-", "MISSING"),
        ("s.t", "shipped", "OK")]
    bad = next(r for r in results if r.status == "BAD" and r.key in keys)
    assert bad.path == _cached(dirs, b)
    assert bad.expected == b.sha256 and bad.actual == a.sha256

    (dirs.shipped / shipped.file_name).write_bytes(b"tampered")
    _cached(dirs, b).write_bytes(b_data)
    assert _statuses(weights.verify_cache(), keys) == [
        ("a.t", "cache", "OK"), ("b.t", "cache", "OK"), ("m.t", "-", "MISSING"),
        ("s.t", "shipped", "BAD")]


def test_verify_cache_flat_files_belong_to_the_entry_they_match(dirs, tmp_path, monkeypatch):
    (a, a_data), (b, _) = _same_name_pair(dirs, origin=False)
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(_write_manifest(tmp_path / "m.json", [a, b])))
    dirs.cache.mkdir()
    flat = dirs.cache / a.file_name
    flat.write_bytes(a_data)  # an old flat-layout copy of a: fine for a, none of b's business
    assert _statuses(weights.verify_cache(), {"a.t", "b.t"}) == [
        ("a.t", "cache (flat)", "OK"), ("b.t", "-", "MISSING")]
    flat.write_bytes(b"matches no entry")
    assert _statuses(weights.verify_cache(), {"a.t", "b.t"}) == [
        ("a.t", "cache (flat)", "BAD"), ("b.t", "cache (flat)", "BAD")]


def test_override_with_other_sha_warns_naming_key_and_manifests(tmp_path, monkeypatch):
    shipped = weights._parse_manifest(weights.MANIFEST_PATH)
    key, original = next(iter(shipped.items()))
    changed = WeightEntry.from_json(key, {**original.to_json(), "sha256": _sha(b"other")})
    one = _write_manifest(tmp_path / "one.json", [changed])
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(one))
    with pytest.warns(UserWarning) as record:
        assert weights.load_manifest()[key] == changed
    messages = [str(w.message) for w in record if key in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in record]
    assert str(weights.MANIFEST_PATH) in messages[0] and str(one) in messages[0]
    assert original.sha256 in messages[0] and changed.sha256 in messages[0]

    # Between two extra manifests too: the later one names the earlier.
    again = WeightEntry.from_json(key, {**original.to_json(), "sha256": _sha(b"third")})
    two = _write_manifest(tmp_path / "two.json", [again])
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", os.pathsep.join([str(one), str(two)]))
    with pytest.warns(UserWarning) as record:
        assert weights.load_manifest()[key] == again
    messages = [str(w.message) for w in record if f"{two} overrides {key}" in str(w.message)]
    assert len(messages) == 1 and f"from {one}" in messages[0]


def test_override_with_same_sha_is_silent(tmp_path, monkeypatch):
    shipped = weights._parse_manifest(weights.MANIFEST_PATH)
    key, original = next(iter(shipped.items()))
    same = WeightEntry.from_json(key, {**original.to_json(), "metrics": {"test_accuracy": 1.0}})
    one = _write_manifest(tmp_path / "one.json", [same])
    two = _write_manifest(tmp_path / "two.json", [same])
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", os.pathsep.join([str(one), str(two)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert weights.load_manifest()[key] == same


def test_add_entry_round_trip(tmp_path):
    manifest = tmp_path / "manifests" / "weights.json"
    dest = tmp_path / "shipped_out"
    data = _blob()
    src = tmp_path / "trained.weights.h5"
    src.write_bytes(data)
    entry = _entry(data, None)
    assert weights.add_entry(entry, manifest, weights_file=src, dest_dir=dest) == entry
    assert (dest / entry.file_name).read_bytes() == data
    assert weights.load_manifest(manifest) == {entry.key: entry}
    assert json.loads(manifest.read_text())["format"] == 1

    other = _entry(_blob(), "https://example.org/o.h5", model="other")
    weights.add_entry(other, manifest)
    replaced = _entry(data, None)
    replaced = WeightEntry.from_json(entry.key, {**replaced.to_json(), "metrics": {"acc": 1.0}})
    weights.add_entry(replaced, manifest)
    assert weights.load_manifest(manifest) == {entry.key: replaced, other.key: other}

    wrong = _entry(data, None, model="wrong", sha=_sha(b"other bytes"))
    before = manifest.read_text()
    with pytest.raises(ValueError, match="sha256"):
        weights.add_entry(wrong, manifest, weights_file=src, dest_dir=dest)
    assert manifest.read_text() == before
    assert sorted(os.listdir(dest)) == [entry.file_name]
    assert sorted(os.listdir(manifest.parent)) == ["weights.json"]  # no temp or lock files


@pytest.mark.parametrize("field, value", [
    ("key", "tinynet.other"), ("file_name", "../evil.h5"), ("sha256", "abc"),
    ("origin", "ftp://example.org/x.h5"),
])
def test_entry_validation(field, value):
    d = _entry(b"x", None).to_json()
    key = value if field == "key" else "tinynet.fake"
    if field != "key":
        d[field] = value
    with pytest.raises(ValueError):
        WeightEntry.from_json(key, d)


def test_cache_dir_follows_keras_home(monkeypatch, tmp_path):
    monkeypatch.delenv("DMR_KERAS_HOME")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert weights.cache_dir() == tmp_path / "kh" / "dmr_keras"
    monkeypatch.setenv("DMR_KERAS_HOME", str(tmp_path / "mine"))
    assert weights.cache_dir() == tmp_path / "mine"


def test_fingerprint_and_provenance_are_optional(tmp_path):
    old = _entry(b"x", None).to_json()
    assert "fingerprint" not in old and "provenance" not in old  # written as before
    entry = WeightEntry.from_json("tinynet.fake", old)
    assert entry.fingerprint is None and entry.provenance is None
    fingerprint = {"version": 1, "seed": 0, "count": 1, "output": "logits", "top": 2,
                   "indices": [[3, 1]], "values": [[2.5, 1.0]], "tolerance": 2.5e-4}
    new = WeightEntry.from_json("tinynet.fake", {**old, "fingerprint": fingerprint,
                                                 "provenance": {"wall_time_s": 1.5}})
    manifest = _write_manifest(tmp_path / "m.json", [new])
    assert weights.load_manifest(manifest)["tinynet.fake"] == new
    assert new.to_json()["fingerprint"] == fingerprint
    for bad in ({"fingerprint": [1, 2]}, {"fingerprint": {"values": []}},
                {"provenance": "yesterday"}):
        with pytest.raises(ValueError, match="fingerprint|provenance"):
            WeightEntry.from_json("tinynet.fake", {**old, **bad})
