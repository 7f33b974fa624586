"""Runners that need no model: the broker's own round-trip tasks, and a wrapper for plain functions.

`noop` returns nothing, `echo` returns its inputs, `text_stats` counts characters and words of
`inputs["text"]` (Bengali and English alike), `sleep` waits `inputs["ms"]` (drain and chaos tests).
They let `hybrid worker run` work without torch (the demo, the broker benchmarks) through the same
loop, batcher and metrics as the model runners.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gpu_worker.runners.base import InvalidInput, ModelRunner, RunnerInfo

ItemFn = Callable[[Mapping[str, Any]], dict[str, Any]]


def _noop(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _echo(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return dict(inputs)


def _text_stats(inputs: Mapping[str, Any]) -> dict[str, Any]:
    text = inputs["text"]
    return {"chars": len(text), "words": len(text.split())}


def _sleep(inputs: Mapping[str, Any]) -> dict[str, Any]:
    time.sleep(inputs["ms"] / 1000)
    return {"slept_ms": inputs["ms"]}


def _needs_ms(inputs: Mapping[str, Any]) -> None:
    ms = inputs.get("ms")
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms <= 10_000:
        raise InvalidInput("sleep needs inputs.ms, a number of milliseconds from 0 to 10000")


def _needs_text(inputs: Mapping[str, Any]) -> None:
    if not isinstance(inputs.get("text"), str):
        raise InvalidInput("text_stats needs inputs.text as a string")


class FunctionRunner(ModelRunner):
    """Runs a per-item function over a batch; `checker` validates one job's inputs."""

    def __init__(
        self,
        task: str,
        fn: ItemFn,
        *,
        checker: Callable[[Mapping[str, Any]], None] | None = None,
        model: str = "builtin",
    ) -> None:
        self.task, self.model = task, model
        self._fn = fn
        self._checker = checker

    def load(self) -> None:
        return None

    def info(self) -> RunnerInfo:
        return RunnerInfo(self.task, self.model, device="cpu", dtype="-", preferred_min=1, max_queue_delay_ms=0.0)

    def check(self, inputs: Mapping[str, Any]) -> None:
        if self._checker is not None:
            self._checker(inputs)

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [self._fn(x) for x in inputs]


def builtin_runners() -> list[ModelRunner]:
    return [
        FunctionRunner("noop", _noop),
        FunctionRunner("echo", _echo),
        FunctionRunner("text_stats", _text_stats, checker=_needs_text),
        FunctionRunner("sleep", _sleep, checker=_needs_ms),
    ]


__all__ = ["FunctionRunner", "builtin_runners"]
