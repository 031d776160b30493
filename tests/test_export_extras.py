"""zoo.export without the ``export`` extra: a missing tf2onnx / onnx / onnxruntime is one
ImportError naming the package and ``pip install 'dmr-keras[export]'``, raised before anything is
written. The missing packages are simulated (``sys.modules[name] = None`` makes ``import name``
fail), so these tests run whether or not the packages are installed."""

import importlib
import re
import sys

import keras
import numpy as np
import pytest

import zoo
from zoo import cli, export

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="export needs KERAS_BACKEND=tensorflow"
)


@pytest.fixture(scope="module")
def model():
    return zoo.create_model("dmrnet_8_tiny")


def _hide(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _check_message(message, missing):
    assert "\n" not in message  # one line
    assert "pip install 'dmr-keras[export]'" in message
    assert f"(missing: {', '.join(missing)})" in message
    assert message.startswith("ONNX export needs tf2onnx, onnx and onnxruntime")


@pytest.mark.parametrize("missing", [("onnxruntime",), ("tf2onnx",), ("onnx",),
                                     ("tf2onnx", "onnxruntime")])
def test_missing_package_is_named_before_any_file_is_written(model, tmp_path, monkeypatch,
                                                             missing):
    _hide(monkeypatch, *missing)
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(ImportError) as err:
        export.export_model(model, target, "onnx")
    _check_message(str(err.value), missing)
    assert not target.exists() and not target.parent.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file either


def test_broken_install_says_why_on_the_same_line(monkeypatch):
    real_import = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime":  # installed, but its extension module does not load
            raise ImportError("DLL load failed while importing onnxruntime_pybind11_state:\n"
                              "the specified module could not be found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(ImportError) as err:
        export.require_onnx_packages(("onnxruntime",))
    message = str(err.value)
    assert "\n" not in message
    assert "(missing: onnxruntime (ImportError: DLL load failed" in message
    assert "could not be found)" in message


def test_running_an_onnx_file_without_onnxruntime(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\0")
    _hide(monkeypatch, "onnxruntime")
    with pytest.raises(ImportError) as err:
        export.run_exported(path, "onnx", np.zeros((1, 32, 32, 3), "float32"))
    _check_message(str(err.value), ("onnxruntime",))


def test_other_formats_do_not_need_the_extra(model, tmp_path, monkeypatch):
    _hide(monkeypatch, *export.ONNX_PACKAGES)
    path = export.export_model(model, tmp_path / "saved", "saved_model")
    assert (path / "saved_model.pb").exists()


def test_dmr_zoo_export_reports_one_line(tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "onnxruntime")
    target = tmp_path / "model.onnx"
    argv = ["export", "dmrnet_8_tiny", "--format", "onnx", "--output", str(target)]
    assert cli.main(argv) == 2  # the ImportError is one line, not a traceback
    err = capsys.readouterr().err.strip()
    prefix = "dmr-zoo: error: "
    assert err.startswith(prefix), err
    _check_message(err[len(prefix):], ("onnxruntime",))
    assert not target.exists()


def test_export_extra_declares_the_packages():
    from pathlib import Path

    setup = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    extra = re.search(r'"export":\s*\[([^\]]*)\]', setup).group(1)
    for name in export.ONNX_PACKAGES:
        assert f'"{name}' in extra, name


def test_installed_packages_pass_the_check():
    for name in export.ONNX_PACKAGES:
        pytest.importorskip(name)
    export.require_onnx_packages()
