"""Export a Keras model for serving: TF SavedModel, ONNX or TFLite; run the artifact back.

Needs the TensorFlow backend (``KERAS_BACKEND=tensorflow``). Every format traces the model's
inference forward pass (``training=False``: BatchNormalization uses its moving statistics).

* ``saved_model``: a SavedModel directory written by ``model.export(format="tf_saved_model")``,
  with one ``serving_default`` signature: input keyed by the model's input name (``input``),
  output ``output_0``. Serve it with TF Serving or ``tf.saved_model.load``.
* ``onnx``: an ``.onnx`` file from Keras's ONNX export (``tf2onnx`` under the TensorFlow
  backend), opset :data:`ONNX_OPSET`. The graph's input keeps the model's input name with a
  dynamic first dimension named ``batch``; the output is renamed ``output_0``. Needs the
  ``tf2onnx``, ``onnx`` and ``onnxruntime`` packages (``pip install 'dmr-keras[export]'``);
  when one is missing, :func:`export_model` raises one ``ImportError`` naming it before
  writing anything.
* ``tflite``: a ``.tflite`` flatbuffer from ``tf.lite.TFLiteConverter`` (still shipped with
  TensorFlow 2.21) converting the same SavedModel, float32, TFLite builtin ops only, so the
  standalone LiteRT runtime (``ai-edge-litert``) runs it without the Flex delegate. Dynamic
  dimensions stay dynamic (``shape_signature`` -1); resize the input before running.

Files are written to a temporary name beside the target and moved into place with
``os.replace``; the SavedModel directory is built in a temporary directory beside the target
and renamed into place (an existing target is moved aside first and deleted afterwards).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from dmr_keras.atomic import atomic_path

FORMATS = ("saved_model", "onnx", "tflite")
ONNX_OPSET = 17  # tf2onnx 1.17 writes opsets up to 18; onnxruntime >= 1.13 runs 17
SERVING_SIGNATURE = "serving_default"
OUTPUT_NAME = "output_0"  # the SavedModel signature's output key, reused for ONNX
#: The packages ONNX export needs: writing (tf2onnx, onnx) and running it back (onnxruntime);
#: all three are the ``export`` extra of setup.py.
ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")
EXPORT_EXTRA = "pip install 'dmr-keras[export]'"


def require_onnx_packages(packages=ONNX_PACKAGES) -> None:
    """Import ``packages``; one ``ImportError`` naming every missing one (and the install
    command) when any fails, e.g. ``ONNX export needs tf2onnx, onnx and onnxruntime: pip
    install 'dmr-keras[export]' (missing: onnxruntime)``."""
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError as err:
            # A package that is there but fails to import (a broken or mismatched install)
            # says why, on the same line.
            absent = isinstance(err, ModuleNotFoundError) and err.name == name
            reason = " ".join(str(err).split())
            missing.append(name if absent else f"{name} ({type(err).__name__}: {reason})")
    if missing:
        need = f"{', '.join(ONNX_PACKAGES[:-1])} and {ONNX_PACKAGES[-1]}"
        raise ImportError(f"ONNX export needs {need}: {EXPORT_EXTRA} "
                          f"(missing: {', '.join(missing)})")


def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}. Supported formats: {FORMATS}")
    return format


def _check_backend() -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"Export needs the TensorFlow backend (KERAS_BACKEND=tensorflow); the current "
            f"Keras backend is {keras.backend.backend()!r}."
        )


def _input_signature(model, batch_size: int | None):
    """One ``tf.TensorSpec`` for the model's single input; ``batch_size`` fixes dim 0."""
    import tensorflow as tf

    if len(model.inputs) != 1:
        raise ValueError(f"export_model supports single-input models; got {len(model.inputs)}")
    spec = model.inputs[0]
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}")
    shape = (batch_size, *tuple(spec.shape)[1:])
    name = spec.name.split(":")[0] if spec.name else "input"
    return [tf.TensorSpec(shape, dtype=spec.dtype, name=name)]


def _write_saved_model(model, directory, input_signature) -> None:
    """``model.export`` as a SavedModel into ``directory`` (must not exist or be empty)."""
    model.export(
        str(directory), format="tf_saved_model", input_signature=input_signature, verbose=False
    )


@contextlib.contextmanager
def _atomic_dir(path: Path):
    """Yield a fresh directory beside ``path``; on success rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        if path.exists() or path.is_symlink():
            if not path.is_dir() or path.is_symlink():
                raise FileExistsError(f"{path} exists and is not a directory")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)  # put the previous export back
                old = None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _rename_onnx_io(onnx_path: Path) -> None:
    """Name the dynamic batch dimension ``batch`` and a single output :data:`OUTPUT_NAME`."""
    import onnx

    proto = onnx.load(str(onnx_path))
    graph = proto.graph
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    if len(graph.output) == 1 and graph.output[0].name != OUTPUT_NAME:
        old = graph.output[0].name
        for node in graph.node:
            node.output[:] = [OUTPUT_NAME if n == old else n for n in node.output]
            node.input[:] = [OUTPUT_NAME if n == old else n for n in node.input]
        graph.output[0].name = OUTPUT_NAME
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))


def _export_onnx(model, path: Path, input_signature) -> None:
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        # Keras patches tf2onnx for NumPy 2 by probing np.object, which warns.
        warnings.filterwarnings("ignore", message=r".*np\.object.*", category=FutureWarning)
        model.export(
            str(tmp),
            format="onnx",
            input_signature=input_signature,
            opset_version=ONNX_OPSET,
            verbose=False,
        )
        _rename_onnx_io(tmp)


def _export_tflite(model, path: Path, input_signature) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp_dir:
        saved_model = Path(tmp_dir) / "saved_model"
        _write_saved_model(model, saved_model, input_signature)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved_model), signature_keys=[SERVING_SIGNATURE]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    with atomic_path(path, suffix=".tflite") as tmp:
        tmp.write_bytes(flatbuffer)


def export_model(model, path, format: str, *, batch_size: int | None = None) -> Path:
    """Export a Keras model (TensorFlow backend) for serving; returns the written path.

    Args:
        model: a built single-input Keras model (e.g. ``zoo.create_model("dmrnet_14")``).
        path: the target: a directory for ``saved_model``, a file for ``onnx`` / ``tflite``
            (written as given; ``.onnx`` / ``.tflite`` are the usual suffixes). An existing
            target is replaced only once the new export is complete.
        format: one of :data:`FORMATS`.
        batch_size: fix the batch dimension; ``None`` (default) keeps it dynamic. Other
            ``None`` dimensions (e.g. ``input_shape=(None, None, 3)``) stay dynamic.

    Raises:
        ValueError: unknown ``format``, or a Keras backend other than TensorFlow.
        ImportError: ``onnx`` without tf2onnx, onnx or onnxruntime (the ``export`` extra), one
            line naming the missing ones; raised before anything is written.

    Example:
    >>> path = export_model(create_model("dmrnet_8_tiny"), "m.onnx", "onnx")  # doctest: +SKIP
    >>> run_exported(path, "onnx", x).shape  # doctest: +SKIP
    (4, 10)
    """
    _check_format(format)
    _check_backend()
    if format == "onnx":
        require_onnx_packages()  # before any file or folder is made
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    input_signature = _input_signature(model, batch_size)
    from dmr_keras.performance import fused_batchnorm

    # Traced with Keras' BatchNorm ops, the graph every converter has always been given
    # (TensorFlow's fused kernel is this package's speed path, not part of the model).
    with fused_batchnorm(False):
        if format == "saved_model":
            with _atomic_dir(path) as tmp:
                _write_saved_model(model, tmp, input_signature)
        elif format == "onnx":
            _export_onnx(model, path, input_signature)
        else:
            _export_tflite(model, path, input_signature)
    return path


def _single_output(outputs) -> np.ndarray:
    if len(outputs) != 1:
        raise ValueError(f"Expected one output; the artifact has {len(outputs)}")
    return np.asarray(outputs[0])


def _run_saved_model(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures[SERVING_SIGNATURE]
    args, kwargs = fn.structured_input_signature
    if args or len(kwargs) != 1:
        raise ValueError(f"Expected one named input; the signature takes {args}, {kwargs}")
    (name,) = kwargs
    outputs = fn(**{name: tf.constant(x)})
    return _single_output([outputs[k].numpy() for k in sorted(outputs)])


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    require_onnx_packages(("onnxruntime",))
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    return _single_output(session.run(None, {inp.name: x}))


def tflite_interpreter(path):
    """A TFLite interpreter for ``path``: LiteRT's (``ai-edge-litert``) if installed, else
    TensorFlow's deprecated ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
            return tf.lite.Interpreter(model_path=str(path))
    return Interpreter(model_path=str(path))


def _run_tflite(path: Path, x: np.ndarray, interpreter=None) -> np.ndarray:
    interpreter = interpreter or tflite_interpreter(path)
    (inp,) = interpreter.get_input_details()
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], list(x.shape), strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    outputs = interpreter.get_output_details()
    return _single_output([interpreter.get_tensor(o["index"]).copy() for o in outputs])


def run_exported(path, format: str, x) -> np.ndarray:
    """Load an exported artifact in its own runtime (not Keras) and run it on ``x``.

    ``saved_model``: ``tf.saved_model.load`` and its ``serving_default`` signature;
    ``onnx``: ``onnxruntime.InferenceSession`` (CPU); ``tflite``: the LiteRT interpreter
    (:func:`tflite_interpreter`), its input resized to ``x``'s shape. Returns the single output
    as a NumPy array.
    """
    _check_format(format)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No exported {format} artifact at {path}")
    x = np.ascontiguousarray(x, dtype="float32")
    if format == "saved_model":
        return _run_saved_model(path, x)
    if format == "onnx":
        return _run_onnx(path, x)
    return _run_tflite(path, x)
