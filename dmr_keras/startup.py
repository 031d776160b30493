"""Start-up of the command lines: Keras (and TensorFlow) only when work starts, and quietly.

``dmr-train --help``, ``dmr-zoo list`` and every argument error return before Keras is imported
(see ``dmr_cli.py``, the console scripts' launcher). When work starts, :func:`start_backend`
imports Keras with TensorFlow's start-up notices filtered out (the ``absl::InitializeLog``
banner, oneDNN and CUDA-driver notices and ``cuInit`` errors on a machine without a GPU), and
registers this package's layers for ``keras.saving.load_model``. Anything else TensorFlow writes
while starting (a real error) is passed through. ``verbose=True`` shows everything.

Keras-free: importing this module imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# What TensorFlow prints on every start on a CPU machine; nothing a user can act on.
_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard|cuda_\w+|gpu_device|"
    r"cuda_platform|cuda_executor|cuda_diagnostics|dso_loader)\.cc:\d+\]"
    r"|^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler"
    r"|^This TensorFlow binary is optimized to use available CPU instructions"
)


def is_noise(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's routine start-up notices."""
    return bool(_NOISE.search(line))


@contextlib.contextmanager
def filtered_stderr():
    """Capture file descriptor 2 (C++ logs bypass ``sys.stderr``), then replay all but noise."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # pytest capture, notebooks: leave alone
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            kept = [ln for ln in text.splitlines(keepends=True) if not is_noise(ln)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def start_backend(verbose: bool = False, onednn: str = "auto") -> None:
    """Import Keras (quietly unless ``verbose``) and register the package's layers.

    Called by each command line once its arguments are parsed. Without ``verbose`` it sets
    ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it (which then wins), so that TensorFlow's
    later notices (``cuInit`` on a CPU machine) stay hidden too. ``onednn`` goes to
    :func:`dmr_keras.performance.configure_onednn` before TensorFlow starts (``"auto"``: on,
    unless the user set ``TF_ENABLE_ONEDNN_OPTS``).
    """
    from dmr_keras.performance import configure_onednn

    configure_onednn(onednn)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" not in sys.modules:
        with contextlib.nullcontext() if verbose else filtered_stderr():
            import keras  # noqa: F401
            if keras.backend.backend() == "tensorflow":
                import tensorflow  # noqa: F401  (its remaining start-up logs land here too)
    import dmr_keras.layers  # noqa: F401  (registers the layers for load_model)
    import dmr_keras.models  # noqa: F401
    import dmr_keras.training  # noqa: F401  (the schedule and loss checkpoints are compiled with)


def lazy_exports(package: str, exports: dict, namespace: dict):
    """PEP 562 ``(__getattr__, __dir__)`` for ``package``: each name of ``exports`` (name ->
    module) is imported from its module on first use and then kept in ``namespace`` (the
    package's globals), so ``import package`` itself imports none of those modules."""
    import importlib

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


def run_command(prog: str, fn, *args, **kwargs) -> int:
    """``fn(*args, **kwargs)`` as a command's body: exit status 0, or, for a ``ValueError`` (a
    bad argument, file or input) or an ``ImportError`` (a missing optional package), one line
    ``prog: error: ...`` on stderr and exit status 2, as argparse does for its own errors."""
    try:
        fn(*args, **kwargs)
    except (ValueError, ImportError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
