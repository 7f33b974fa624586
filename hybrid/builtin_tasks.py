"""Tiny CPU tasks the `hybrid worker` runs, for the broker's own round trip and benchmarks.

`noop` returns nothing, `echo` returns its inputs, `text_stats` counts characters and words of
`inputs["text"]` (Bengali and English alike). Unknown tasks fail that job with an error result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from broker.consumer import Outcome
from broker.message import Job


def _noop(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _echo(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return dict(inputs)


def _text_stats(inputs: Mapping[str, Any]) -> dict[str, Any]:
    text = inputs.get("text")
    if not isinstance(text, str):
        raise ValueError("text_stats needs inputs.text as a string")
    return {"chars": len(text), "words": len(text.split())}


BUILTIN_TASKS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "noop": _noop,
    "echo": _echo,
    "text_stats": _text_stats,
}


def run_builtin(jobs: list[Job]) -> Sequence[Outcome]:
    out: list[Outcome] = []
    for job in jobs:
        fn = BUILTIN_TASKS.get(job.header.task)
        try:
            if fn is None:
                raise LookupError(f"unknown task {job.header.task!r} (built-in: {', '.join(sorted(BUILTIN_TASKS))})")
            out.append(fn(job.payload.inputs))
        except Exception as exc:
            out.append(exc)
    return out


__all__ = ["BUILTIN_TASKS", "run_builtin"]
