"""Console-script launcher: the command lines start without importing Keras.

``import dmr_keras`` normally imports the layers (so that ``keras.saving.load_model`` finds
them after a plain ``import dmr_keras``), which imports Keras and TensorFlow: 5-10 s before
``--help`` could answer. The console scripts come through here instead: the package is imported
with its layers deferred, each command parses its arguments first and calls
:func:`dmr_keras.startup.start_backend` once there is work to do.
"""

from __future__ import annotations

import importlib
import os

_DEFER = "DMR_KERAS_DEFER_IMPORTS"


def _run(module: str):
    os.environ[_DEFER] = "1"
    try:
        importlib.import_module("dmr_keras")
    finally:
        os.environ.pop(_DEFER, None)  # not inherited by anything this process starts
    return importlib.import_module(module).main()


def train():
    return _run("zoo.train")


def evaluate():
    return _run("zoo.evaluate")


def zoo_cli():
    return _run("zoo.cli")


def demo():
    return _run("zoo.demo")


def tune():
    return _run("tuning.cli")
