"""zoo.export: SavedModel, ONNX and TFLite artifacts run in their own runtimes match Keras.

The model has random weights and random BatchNormalization moving statistics, so an artifact
traced in training mode (batch statistics) or with default statistics would not match.
Tolerance: atol 1e-5 on softmax probabilities for every format (measured: ~1e-7).
"""

import sys
import warnings

import keras
import numpy as np
import pytest

import zoo
from dmr_keras.digits import load_digits_images
from zoo.export import (
    FORMATS,
    _atomic_dir,
    _run_tflite,
    export_model,
    run_exported,
    tflite_interpreter,
)

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="export needs KERAS_BACKEND=tensorflow"
)

ATOL = {"saved_model": 1e-5, "onnx": 1e-5, "tflite": 1e-5}


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.path.endswith("moving_mean"):
            v.assign(rng.normal(0.0, 0.5, v.shape).astype("float32"))
        elif v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))
        elif v.path.endswith("gamma") or v.path.endswith("beta"):
            v.assign(rng.normal(v.numpy(), 0.2).astype("float32"))


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _runtime_for(fmt):
    if fmt == "onnx":
        pytest.importorskip("tf2onnx", reason="ONNX export needs tf2onnx")
        pytest.importorskip("onnx", reason="ONNX export needs onnx")
        pytest.importorskip("onnxruntime", reason="running ONNX needs onnxruntime")
    elif fmt == "tflite":
        tf = pytest.importorskip("tensorflow")
        if not hasattr(tf, "lite"):
            pytest.skip(f"tensorflow {tf.__version__} ships no tf.lite converter")


@pytest.fixture(scope="module")
def digits():
    return load_digits_images()[0][:4]


@pytest.fixture(scope="module")
def model(digits):
    keras.utils.set_random_seed(0)
    m = zoo.create_model("dmrnet_8_tiny", classes=10)
    _randomize_bn(m)
    # The check can fail: training-mode BN (batch statistics) gives clearly different outputs.
    # A clone runs in training mode, since that updates the moving statistics it uses.
    clone = keras.models.clone_model(m)
    clone.set_weights(m.get_weights())
    train_out = keras.ops.convert_to_numpy(clone(digits, training=True))
    assert np.max(np.abs(train_out - _predict(m, digits))) > 1e-2
    return m


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """Export once per format for the module; ``exported(fmt)`` -> path."""
    root = tmp_path_factory.mktemp("export")
    cache = {}

    def get(fmt):
        if fmt not in cache:
            _runtime_for(fmt)
            suffix = {"saved_model": "", "onnx": ".onnx", "tflite": ".tflite"}[fmt]
            cache[fmt] = export_model(model, root / f"dmrnet_8_tiny{suffix}", fmt)
        return cache[fmt]

    return get


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_matches_keras(fmt, model, digits, exported):
    path = exported(fmt)
    assert path.is_dir() if fmt == "saved_model" else path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    want = _predict(model, digits)
    got = run_exported(path, fmt, digits)
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL[fmt])
    assert (got.argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_exported_dynamic_batch(fmt, model, digits, exported):
    path = exported(fmt)
    for batch in (1, 3):
        got = run_exported(path, fmt, digits[:batch])
        np.testing.assert_allclose(got, _predict(model, digits[:batch]), rtol=0, atol=ATOL[fmt])


def test_saved_model_serving_signature(model, digits, exported):
    tf = pytest.importorskip("tensorflow")
    fn = tf.saved_model.load(str(exported("saved_model"))).signatures["serving_default"]
    args, kwargs = fn.structured_input_signature
    assert args == () and list(kwargs) == ["input"]
    assert kwargs["input"].shape.as_list() == [None, 32, 32, 3]  # (TF does not enforce it)
    for batch in (1, 4):
        out = fn(input=tf.constant(digits[:batch]))
        assert list(out) == ["output_0"]
        np.testing.assert_allclose(out["output_0"].numpy(), _predict(model, digits[:batch]),
                                   rtol=0, atol=1e-5)


def test_tflite_runs_in_tf_lite_and_litert_interpreters(model, digits, exported):
    path = exported("tflite")
    want = _predict(model, digits)
    interpreters = []
    tf = pytest.importorskip("tensorflow")
    if hasattr(tf.lite, "Interpreter"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
            interpreters.append(tf.lite.Interpreter(model_path=str(path)))
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        pass
    else:
        interpreters.append(Interpreter(model_path=str(path)))
    if not interpreters:
        pytest.skip("neither tf.lite.Interpreter nor ai_edge_litert is available")
    for interpreter in interpreters:
        (inp,) = interpreter.get_input_details()
        assert list(inp["shape_signature"]) == [-1, 32, 32, 3]
        assert interpreter.get_signature_list() == {
            "serving_default": {"inputs": ["input"], "outputs": ["output_0"]}
        }
        np.testing.assert_allclose(_run_tflite(path, digits, interpreter), want, atol=1e-5)


def test_tflite_falls_back_to_tf_lite_without_litert(model, digits, exported, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    if not hasattr(tf.lite, "Interpreter"):
        pytest.skip(f"tensorflow {tf.__version__} ships no tf.lite.Interpreter")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    path = exported("tflite")
    assert isinstance(tflite_interpreter(path), tf.lite.Interpreter)
    np.testing.assert_allclose(run_exported(path, "tflite", digits), _predict(model, digits),
                               atol=1e-5)


def test_onnx_input_named_with_dynamic_batch(model, digits, exported):
    ort = pytest.importorskip("onnxruntime")
    path = exported("onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert inp.name == "input" and out.name == "output_0"
    assert inp.shape == ["batch", 32, 32, 3] and out.shape == ["batch", 10]
    for batch in (1, 4):
        (got,) = session.run(["output_0"], {"input": digits[:batch]})
        np.testing.assert_allclose(got, _predict(model, digits[:batch]), rtol=0, atol=1e-5)


def test_onnx_dynamic_spatial_dims_and_fixed_batch(tmp_path):
    _runtime_for("onnx")
    ort = pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(1)
    m = zoo.create_model("dmrnet_8_tiny", classes=10, input_shape=(None, None, 3))
    _randomize_bn(m, seed=1)
    x = np.random.default_rng(1).random((2, 40, 24, 3)).astype("float32")
    dynamic = export_model(m, tmp_path / "dyn.onnx", "onnx")
    np.testing.assert_allclose(run_exported(dynamic, "onnx", x), _predict(m, x), atol=1e-5)
    np.testing.assert_allclose(
        run_exported(dynamic, "onnx", x[:1, :16, :16]), _predict(m, x[:1, :16, :16]), atol=1e-5
    )
    fixed = export_model(m, tmp_path / "fixed.onnx", "onnx", batch_size=2)
    shape = ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"]).get_inputs()[0]
    assert shape.shape[0] == 2 and isinstance(shape.shape[1], str)
    np.testing.assert_allclose(run_exported(fixed, "onnx", x), _predict(m, x), atol=1e-5)


def test_export_replaces_existing_file(model, digits, tmp_path):
    _runtime_for("onnx")
    path = tmp_path / "m.onnx"
    path.write_bytes(b"stale")
    assert export_model(model, path, "onnx") == path
    np.testing.assert_allclose(run_exported(path, "onnx", digits), _predict(model, digits),
                               atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_atomic_dir_replaces_or_keeps_the_old_directory(tmp_path):
    target = tmp_path / "sm"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), _atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("export failed")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with _atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["sm"]  # no temp or backup left


def test_unknown_format_lists_formats(model, tmp_path):
    for call in (lambda: export_model(model, tmp_path / "m", "torchscript"),
                 lambda: run_exported(tmp_path / "m", "pb", np.zeros((1, 32, 32, 3)))):
        with pytest.raises(ValueError, match="saved_model") as err:
            call()
        assert all(f in str(err.value) for f in FORMATS)
    assert not list(tmp_path.iterdir())


def test_non_tensorflow_backend_is_refused(model, tmp_path, monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        export_model(model, tmp_path / "m.onnx", "onnx")
    assert not list(tmp_path.iterdir())
