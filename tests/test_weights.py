"""zoo.weights: manifest, resolution order, checked downloads, cache repair, locking."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
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


def _entry(data: bytes, origin, model="tinynet", tag="fake", sha=None):
    return WeightEntry(
        key=f"{model}.{tag}", model=model, tag=tag, file_name=f"{model}.{tag}.weights.h5",
        sha256=sha or _sha(data), origin=origin, dataset="digits", classes=10,
        input_shape=(8, 8, 1), preprocessing={"mean": [0.5], "std": [0.25], "scale": "0-1"},
        metrics={"test_accuracy": 0.99}, license="MIT", command="dmr-train tinynet",
        class_names=tuple(str(i) for i in range(10)),
    )


def _file_origin(dirs, data, name):
    path = dirs.origin / name
    path.write_bytes(data)
    return path


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
    assert path == dirs.cache / entry.file_name
    assert weights.sha256_file(path) == entry.sha256 and path.read_bytes() == data
    assert sorted(os.listdir(dirs.cache)) == [entry.file_name]  # no temp or lock files
    src.unlink()
    assert weights.resolve(entry) == path  # from the cache: the origin is gone


def test_download_over_http_once(dirs, http_server):
    data = _blob()
    entry = _entry(data, http_server.url + "/w/tiny.h5")
    http_server.files["/w/tiny.h5"] = data
    path = weights.resolve(entry)
    assert path == dirs.cache / entry.file_name and path.read_bytes() == data
    assert http_server.requests == ["/w/tiny.h5"]
    assert weights.resolve(entry) == path
    assert len(http_server.requests) == 1  # the second resolve used the cache


def test_resolution_order_shipped_cache_mirror_download(dirs):
    data = _blob()
    name = _entry(data, None).file_name
    entry = _entry(data, (dirs.origin / name).as_uri())  # the origin does not exist yet
    for d in (dirs.shipped, dirs.cache, dirs.mirror):
        d.mkdir(exist_ok=True)
        (d / name).write_bytes(data)
    assert weights.resolve(entry) == dirs.shipped / name
    (dirs.shipped / name).unlink()
    assert weights.resolve(entry) == dirs.cache / name
    (dirs.cache / name).unlink()
    assert weights.resolve(entry) == dirs.mirror / name
    assert not (dirs.cache / name).exists()  # a mirror copy is used in place
    (dirs.mirror / name).unlink()
    with pytest.raises(ValueError, match="Could not download"):
        weights.resolve(entry)  # nothing left but the (missing) origin
    with pytest.raises(ValueError, match="download=False"):
        weights.resolve(entry, download=False)
    _file_origin(dirs, data, name)
    assert weights.resolve(entry) == dirs.cache / name
    assert (dirs.cache / name).read_bytes() == data


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
        assert weights.resolve(entry) == dirs.cache / name
    assert (dirs.cache / name).read_bytes() == data


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
    cached = dirs.cache / entry.file_name
    assert {Path(out.strip()) for out, _ in outputs} == {cached}
    assert os.listdir(dirs.cache) == [entry.file_name]  # one file, no temp or lock files
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
    assert str(dirs.cache / entry.file_name) in msg and "DMR_KERAS_MIRROR" in msg
    assert os.listdir(dirs.cache) == []


def test_load_manifest_merges_extra_manifests(tmp_path, monkeypatch):
    a, b1, b2, c1, c2 = (_entry(_blob(16), None, model=m, tag="t") for m in "abbcc")
    base = _write_manifest(tmp_path / "base.json", [a, b1])
    one = _write_manifest(tmp_path / "one.json", [b2, c1])
    two = _write_manifest(tmp_path / "two.json", [c2])
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", os.pathsep.join([str(one), "", str(two)]))
    assert weights.load_manifest(base) == {"a.t": a, "b.t": b2, "c.t": c2}
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
    name = _entry(data, None, model="dmrnet_8_tiny", tag="digits").file_name
    entry = _entry(data, _file_origin(dirs, data, name).as_uri(), "dmrnet_8_tiny", "digits")
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(_write_manifest(tmp_path / "m.json", [entry])))
    assert weights.fetch("dmrnet_8_tiny.digits") == dirs.cache / name
    with pytest.raises(ValueError, match=r"Did you mean: .*dmrnet_8_tiny\.digits"):
        weights.fetch("dmrnet_8_tiny.digit")


def test_verify_cache_reports_tampered_file(dirs, tmp_path, monkeypatch):
    good, bad = _blob(), _blob()
    entries = []
    for model, data in (("good", good), ("bad", bad)):
        name = _entry(data, None, model=model).file_name
        entries.append(_entry(data, _file_origin(dirs, data, name).as_uri(), model=model))
    monkeypatch.setenv("DMR_KERAS_MANIFESTS", str(_write_manifest(tmp_path / "m.json", entries)))
    for e in entries:
        weights.resolve(e)
    (dirs.cache / "unknown.h5").write_bytes(b"not in the manifest")
    assert weights.verify_cache() == [(entries[1].file_name, True), (entries[0].file_name, True)]
    (dirs.cache / entries[1].file_name).write_bytes(b"tampered")
    assert weights.verify_cache() == [(entries[1].file_name, False), (entries[0].file_name, True)]


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
