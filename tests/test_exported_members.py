"""The public surface of each package is explicit and importable."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest


@pytest.mark.parametrize("package", ["broker", "policies", "gpu_worker"])
def test_all_names_exist(package: str) -> None:
    module = importlib.import_module(package)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize("package", ["broker", "policies"])
def test_foundation_packages_import_nothing_else_of_ours(package: str) -> None:
    root = Path(importlib.import_module(package).__file__).parent  # type: ignore[arg-type]
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                ours = {"broker", "policies", "edge_agent", "gpu_worker", "hybrid", "benchmarks"} - {package}
                assert top not in ours, f"{package}/{path.name} imports {name}"
