"""Session fixtures with the real edge models, built once per test session (import them from here).

    from tests.edge_fixtures import built_models, built_models_dir   # registered in tests/conftest.py

`built_models_dir` is a models directory built by `edge_agent.models.build.build_models` with a
signing key made for the session. The fixture points HYB_MODEL_SIGNING_KEY / HYB_MODEL_VERIFY_KEY at
that key (for this process and the subprocesses it starts), so `EdgeModels.load(built_models_dir)`
and `hybrid edge serve --models-dir ...` verify against it with the default trust.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["BuiltModels", "built_models", "built_models_dir"]


@dataclass(frozen=True)
class BuiltModels:
    root: Path
    signing_key: Path
    verify_key: Path
    report: object  # edge_agent.models.build.BuildReport


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltModels]:
    from edge_agent.models.build import build_models

    base = tmp_path_factory.mktemp("edge-models")
    key = base / "keys" / "model-signing.pem"
    saved = {k: os.environ.get(k) for k in ("HYB_MODEL_SIGNING_KEY", "HYB_MODEL_VERIFY_KEY")}
    os.environ["HYB_MODEL_SIGNING_KEY"] = str(key)
    os.environ["HYB_MODEL_VERIFY_KEY"] = str(key) + ".pub"
    try:
        report = build_models(base / "models", signing_key=key)
        yield BuiltModels(base / "models", key, Path(str(key) + ".pub"), report)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def built_models_dir(built_models: BuiltModels) -> Path:
    return built_models.root
