"""The README's commands, CI and setup.py agree."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    main_cmd, test_cmd = _readme_commands()[:2]
    assert "pytest" in test_cmd and "python3 -m venv" in test_cmd and "pip install" in test_cmd
    assert "python3 -m venv" in main_cmd and "dmr-train" in main_cmd and "digits" in main_cmd
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci_lines


def test_setup_declares_every_third_party_import():
    setup = (ROOT / "setup.py").read_text()
    declared = {"keras", "numpy", "tensorflow", "tensorflow_datasets", "keras_tuner", "tensorboard",
                "sklearn", "jax", "pytest", "matplotlib", "h5py", "onnx",
                "onnxruntime", "tf2onnx", "PIL", "keras_hub"}
    for pkg in ("keras>=3", "tensorflow", "tensorflow-datasets", "keras-tuner>=1.4.8,<1.5",
                "tensorboard", "scikit-learn", "numpy", "matplotlib", "h5py", "pillow",
                "keras-hub>=0.32"):
        assert f'"{pkg}"' in setup
    # common: bench/common.py; conftest: tests/conftest.py
    own = {"dmr_keras", "zoo", "tuning", "tests", "common", "conftest"}
    stdlib = {"__future__"} | set(__import__("sys").stdlib_module_names)
    for path in [p for d in ("dmr_keras", "zoo", "tuning", "tests", "bench")
                 for p in ROOT.glob(f"{d}/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                # torch, ai_edge_litert: optional, code and tests fall back or skip without them
                if top not in own | stdlib | {"torch", "ai_edge_litert"}:
                    assert top in declared, f"{path}: undeclared dependency {top!r}"
