"""What every benchmark reports the same way: the machine it ran on, and its JSON result file."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import redis


def machine() -> dict[str, str]:
    """The `config` fields describing where a run happened."""
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "redis_py": redis.__version__,
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


__all__ = ["machine", "write_result"]
