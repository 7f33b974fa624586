"""The public surface of each package is explicit and importable."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


@pytest.mark.parametrize("package", ["broker"])
def test_all_names_exist(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name


def test_broker_imports_nothing_of_ours() -> None:
    import ast

    root = Path(importlib.import_module("broker").__file__).parent  # type: ignore[arg-type]
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in {"policies", "edge_agent", "gpu_worker", "hybrid"}, f"{path.name} imports {name}"
