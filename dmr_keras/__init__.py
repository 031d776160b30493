"""dmr-keras: Deep Merge-and-Run Neural Networks (Zhao et al., arXiv 1611.07718) for Keras 3.

Layers and models use ``keras.ops`` only and import without TensorFlow; the data and training
modules (tf.data) are imported on demand.
"""

from dmr_keras.layers import (
    MergeAndRun,
    MergeAndRunBlock,
    ProjectionShortcut,
    ResidualBranch,
    merge_and_run_matrix,
)
from dmr_keras.models import DILNet, DMRNet, ResNet, build_model, stage_outputs

__version__ = "0.1.0"

__all__ = [
    "DILNet",
    "DMRNet",
    "MergeAndRun",
    "MergeAndRunBlock",
    "ProjectionShortcut",
    "ResNet",
    "ResidualBranch",
    "build_model",
    "merge_and_run_matrix",
    "stage_outputs",
]
