"""Chaos with real worker processes (faults 1 and 4 of `python -m benchmarks.chaos`, at test size).

1. A pool kept by the real `Supervisor` while a chaos driver SIGKILLs a random worker every 2 s:
   every job has exactly one result, none is lost, and the re-executions are counted from the chaos
   runner's execution logs (at-least-once made visible).
4. A worker SIGSTOPped mid-batch: another worker reclaims its jobs after min-idle; woken with SIGCONT,
   its late results are refused by SET NX — no duplicate, nothing left pending.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import fault_sigstop, fault_worker_kills
from broker.embedded import EmbeddedRedis


@pytest.mark.slow
def test_sigkill_a_random_worker_every_2s_loses_nothing_and_duplicates_nothing(
    redis_server: EmbeddedRedis, zone: str, tmp_path: Path
) -> None:
    out = fault_worker_kills(redis_server.url, tmp_path, zone, 300, workers=3, ms=25, timeout_s=90)
    assert out["workers_killed"] >= 2 and out["restarts"] >= 2, out  # the driver killed, the supervisor restarted
    assert out["results"] == 300 and out["lost"] == 0, out
    assert out["duplicate_results"] == 0, out
    assert out["pending"] == 0 and out["left_in_stream"] == 0, out
    # every run is logged: executions = jobs + re-executions (at-least-once, visible)
    assert out["executions"] == 300 + out["re_executions"], out


@pytest.mark.slow
def test_a_sigstopped_worker_is_reclaimed_and_its_late_results_are_refused(
    redis_server: EmbeddedRedis, zone: str, tmp_path: Path
) -> None:
    out = fault_sigstop(redis_server.url, tmp_path, zone, 200, ms=20, min_idle_ms=1500, timeout_s=60)
    assert out["held_when_stopped"] > 0, out
    assert out["all_results_while_stopped"] is True, out  # reclaimed by the other worker after min-idle
    assert out["results"] == 200 and out["lost"] == 0 and out["duplicate_results"] == 0, out
    # the sleeper wakes, finishes its batch, and every result it then tries to store is refused
    assert out["late_results_refused"] >= 1, out
    assert out["re_executions"] >= 1, out
    assert out["victim_exit"] == 0 and out["pending"] == 0 and out["left_in_stream"] == 0, out
