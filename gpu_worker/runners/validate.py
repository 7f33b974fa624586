"""Small schema helpers shared by the runners: each failure is an `InvalidInput` naming the field."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from gpu_worker.runners.base import InvalidInput


def require_mapping(inputs: Any, task: str) -> Mapping[str, Any]:
    if not isinstance(inputs, Mapping):
        raise InvalidInput(f"{task}: inputs must be a map, got {type(inputs).__name__}")
    return inputs


def reject_unknown(inputs: Mapping[str, Any], allowed: Collection[str], task: str) -> None:
    extra = sorted(str(k) for k in inputs if k not in allowed)
    if extra:
        raise InvalidInput(f"{task}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


def require_text(inputs: Mapping[str, Any], field: str, task: str, *, max_chars: int = 100_000) -> str:
    if field not in inputs:
        raise InvalidInput(f"{task}: missing field {field!r}")
    value = inputs[field]
    if not isinstance(value, str):
        raise InvalidInput(f"{task}: {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(f"{task}: {field!r} is empty")
    if len(value) > max_chars:
        raise InvalidInput(f"{task}: {field!r} is {len(value)} characters, over the limit of {max_chars}")
    return value


def optional_bool(inputs: Mapping[str, Any], field: str, task: str, default: bool = False) -> bool:
    value = inputs.get(field, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{task}: {field!r} must be true or false, got {type(value).__name__}")
    return value


def optional_int(inputs: Mapping[str, Any], field: str, task: str, default: int, lo: int, hi: int) -> int:
    value = inputs.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{task}: {field!r} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidInput(f"{task}: {field!r} must be between {lo} and {hi}, got {value}")
    return value


def optional_choice(inputs: Mapping[str, Any], field: str, task: str, choices: Collection[str], default: str) -> str:
    value = inputs.get(field, default)
    if value not in choices:
        raise InvalidInput(f"{task}: {field!r} must be one of {', '.join(sorted(choices))}, got {value!r}")
    return str(value)


def require_vector(value: Any, field: str, task: str, dim: int) -> list[float]:
    """A list of `dim` finite numbers."""
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"{task}: {field!r} must be a list of {dim} numbers, got {type(value).__name__}")
    if len(value) != dim:
        raise InvalidInput(f"{task}: {field!r} must have {dim} values, got {len(value)}")
    out: list[float] = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise InvalidInput(f"{task}: {field!r} must hold numbers only, found {type(x).__name__}")
        f = float(x)
        if not math.isfinite(f):
            raise InvalidInput(f"{task}: {field!r} holds a value that is not finite")
        out.append(f)
    return out


__all__ = [
    "optional_bool",
    "optional_choice",
    "optional_int",
    "reject_unknown",
    "require_mapping",
    "require_text",
    "require_vector",
]
