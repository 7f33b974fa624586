"""The contract between the worker's consumer loop and a model runner.

A runner serves one (task, model) pair. The loop opens jobs, groups them per (task, model) into a
dynamic batcher, and calls `run_batch` with the jobs' `inputs` dicts (already validated against
the runner's schema with `check`). A runner never sees headers, keys or Redis.

- `check(inputs)` raises `InvalidInput` (an error result for that job only) when the payload does
  not fit the task: missing fields, wrong types, text over the model's context.
- `run_batch(inputs)` returns one output dict per input, in order. It may raise: the batcher then
  retries the jobs singly to isolate a poison job, so one bad input fails only itself.
- `load()` is called once per process before the worker reports ready; it is where weights are
  read (and verified against the signed registry where a manifest exists).

Threads: `check` runs on the worker's reader thread while `run_batch` runs on the runner's batcher
thread, and runners that share a model (embed, classify and grade share one encoder) run their
batches on different threads. Whatever is shared — a tokenizer, a model — must be locked by its
owner (HF fast tokenizers change padding state per call and fail when used concurrently).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.errors import HybridError


class InvalidInput(HybridError, ValueError):
    """The job's inputs do not fit the task's schema; the job gets an error result, not a retry."""

    reason = "invalid_input"


class UnknownTask(HybridError, LookupError):
    """No runner serves this (task, model); the job gets an error result."""

    reason = "unknown_task"


@dataclass(frozen=True)
class RunnerInfo:
    task: str
    model: str
    device: str  # "cuda:0", "cpu"
    dtype: str  # "float32", "float16", "bfloat16", "int8", "-"
    max_batch_size: int = 32
    preferred_min: int = 8
    max_queue_delay_ms: float = 5.0


class ModelRunner(ABC):
    task: str
    model: str
    aliases: tuple[tuple[str, str], ...] = ()
    """Other (task, model) names this runner answers to — the routing policy's names, e.g.
    ("question-classification", "qclf-xlmr-large") for the `classify` runner. A model of "*" means
    any model name of that task."""

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def info(self) -> RunnerInfo: ...

    @abstractmethod
    def check(self, inputs: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...


__all__ = ["InvalidInput", "ModelRunner", "RunnerInfo", "UnknownTask"]
