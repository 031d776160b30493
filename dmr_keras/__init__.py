"""dmr-keras: Deep Merge-and-Run Neural Networks (Zhao et al., arXiv 1611.07718) for Keras 3.

Layers and models use ``keras.ops`` only and import without TensorFlow; the data and training
modules (tf.data) are imported on demand. ``import dmr_keras`` imports the layers (registering
them for ``keras.saving.load_model``); the console scripts defer that until their arguments are
parsed (``dmr_cli.py``, :mod:`dmr_keras.startup`), so ``--help`` answers without Keras.
"""

from __future__ import annotations

import importlib
import os

from dmr_keras.startup import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "MergeAndRun": "dmr_keras.layers",
    "MergeAndRunBlock": "dmr_keras.layers",
    "ProjectionShortcut": "dmr_keras.layers",
    "ResidualBranch": "dmr_keras.layers",
    "merge_and_run_matrix": "dmr_keras.layers",
    "DILNet": "dmr_keras.models",
    "DMRNet": "dmr_keras.models",
    "ResNet": "dmr_keras.models",
    "build_model": "dmr_keras.models",
    "stage_outputs": "dmr_keras.models",
    "feature_info": "dmr_keras.features",
    "features_model": "dmr_keras.features",
    "pyramid_outputs": "dmr_keras.features",
}

__all__ = sorted(_EXPORTS)

if os.environ.get("DMR_KERAS_DEFER_IMPORTS") != "1":
    for _name, _module in _EXPORTS.items():
        globals()[_name] = getattr(importlib.import_module(_module), _name)
    del _name, _module
    # The learning-rate schedule and loss that training checkpoints are compiled with, so that
    # `keras.saving.load_model` reads a checkpoint after a plain `import dmr_keras`.
    importlib.import_module("dmr_keras.training")

__getattr__, __dir__ = lazy_exports("dmr_keras", _EXPORTS, globals())
