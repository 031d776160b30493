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
    include_package_data=True,
    install_requires=[
        "keras>=3",
        "numpy",
        "tensorflow",
        "tensorflow-datasets",
        "keras-tuner",
        "tensorboard",
        "scikit-learn",
        "matplotlib",
        "h5py",
    ],
    extras_require={
        "jax": ["jax"],
        "dev": ["pytest", "pytest-timeout", "jax"],
    },
    entry_points={
        "console_scripts": ["dmr-demo=zoo.demo:main", "dmr-train=zoo.train:main"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
