import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "dmr_keras" / "__init__.py").read_text())

setup(
    name="dmr-keras",
    version=version.group(1),
    description="Deep Merge-and-Run Neural Networks (DMRNet, DILNet, ResNet) for Keras 3",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dmr_keras", "dmr_keras.*", "zoo", "zoo.*", "tuning",
                                    "tuning.*"]),
    py_modules=["dmr_cli"],
    include_package_data=True,
    package_data={"zoo": ["weights.json", "weights/*.weights.h5"]},
    install_requires=[
        "keras>=3",
        "numpy",
        "tensorflow",
        "tensorflow-datasets",
        "keras-tuner>=1.4.8,<1.5",  # tested: tests/test_tuning_contract.py checks its internals
        "tensorboard",
        "scikit-learn",
        "matplotlib",
        "h5py",
        "pillow",  # dmr_keras.numpy_data decodes images without TensorFlow
    ],
    extras_require={
        "jax": ["jax"],
        "export": ["tf2onnx>=1.17", "onnx>=1.14", "onnxruntime>=1.13"],
        "hub": ["keras-hub>=0.32"],
        # bench/peer_torch.py's PyTorch peer (bench only; tests/test_peer_torch.py skips
        # without it). Not in dev: an unpinned torch resolves to a CUDA build of several GB.
        "bench": ["torch"],
        "dev": ["pytest", "pytest-timeout", "jax", "tf2onnx>=1.17", "onnx>=1.14",
                "onnxruntime>=1.13", "keras-hub>=0.32"],
    },
    entry_points={
        "console_scripts": [
            "dmr-demo=dmr_cli:demo",
            "dmr-train=dmr_cli:train",
            "dmr-eval=dmr_cli:evaluate",
            "dmr-zoo=dmr_cli:zoo_cli",
            "dmr-tune=dmr_cli:tune",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
