"""`chaos`: the task of the fault-injection harness (`benchmarks/chaos.py`), which makes re-execution visible.

A chaos job's inputs are `{"id": <job id>, "i": <int>, "ms": <milliseconds of work per job>}`. Every
execution of a batch first appends one line per job, `<id>`, to this process's execution log
`$HYB_CHAOS_EXEC_DIR/<pid>.execs` (one `os.write` on an `O_APPEND` descriptor: once written, a line
survives a SIGKILL of the process), then works `ms` per job and returns `{"i": i, "pid": pid}`.
Counting lines per id over all logs gives how often each job ran; the broker's SET NX keeps one result.
Without `HYB_CHAOS_EXEC_DIR` nothing is logged. No model and no torch: `hybrid worker run --tasks chaos`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpu_worker.runners.base import InvalidInput, ModelRunner, RunnerInfo

EXEC_DIR_ENV = "HYB_CHAOS_EXEC_DIR"


class ChaosRunner(ModelRunner):
    task = "chaos"
    model = "builtin"

    def __init__(self, exec_dir: str | None = None) -> None:
        self.exec_dir = exec_dir if exec_dir is not None else os.environ.get(EXEC_DIR_ENV)
        self._fd: int | None = None

    def load(self) -> None:
        if self.exec_dir:
            Path(self.exec_dir).mkdir(parents=True, exist_ok=True)
            path = os.path.join(self.exec_dir, f"{os.getpid()}.execs")
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def info(self) -> RunnerInfo:
        return RunnerInfo(self.task, self.model, device="cpu", dtype="-", max_batch_size=32, preferred_min=1,
                          max_queue_delay_ms=0.0)  # fmt: skip

    def check(self, inputs: Mapping[str, Any]) -> None:
        ms, i, jid = inputs.get("ms"), inputs.get("i"), inputs.get("id")
        if not isinstance(jid, str) or "\n" in jid or not isinstance(i, int) or isinstance(i, bool):
            raise InvalidInput("chaos needs inputs.id (a job id) and inputs.i (an integer)")
        if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms <= 10_000:
            raise InvalidInput("chaos needs inputs.ms, a number of milliseconds from 0 to 10000")

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if self._fd is not None:
            os.write(self._fd, "".join(f"{x['id']}\n" for x in inputs).encode())
        pid = os.getpid()
        out = []
        for x in inputs:
            if x["ms"]:
                time.sleep(x["ms"] / 1000)
            out.append({"i": x["i"], "pid": pid})
        return out


def read_exec_counts(exec_dir: str | os.PathLike[str]) -> dict[str, int]:
    """How many times each job id was executed, over every process's log in `exec_dir`."""
    counts: dict[str, int] = {}
    for path in Path(exec_dir).glob("*.execs"):
        for line in path.read_text().splitlines():
            if line:
                counts[line] = counts.get(line, 0) + 1
    return counts


__all__ = ["EXEC_DIR_ENV", "ChaosRunner", "read_exec_counts"]
