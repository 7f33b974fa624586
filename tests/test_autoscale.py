"""Autoscaler decisions (table-driven), the budget cap, and the supervisor with real worker processes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import redis

from broker import keys
from broker.breaker import State
from broker.client import Client
from broker.embedded import EmbeddedRedis
from broker.ledger import CostBreaker, Ledger
from broker.message import JobSpec, Sealer
from gpu_worker.autoscale import Autoscaler, Observation, ScalePolicy, budget_cap, measured_rate, observe
from gpu_worker.supervisor import Supervisor

POLICY = ScalePolicy(min_replicas=1, max_replicas=8, target_latency_s=10, scale_down_delay_s=60)


@pytest.mark.parametrize(
    ("backlog", "replicas", "rate", "cap", "expected", "why"),
    [
        (0, 1, None, None, 1, "kept at min"),
        (0, 0, None, None, 1, "kept at min"),
        (80, 1, None, None, 1, "needs 1"),  # assumed 8 jobs/s x 10 s = 80 per worker
        (81, 1, None, None, 2, "needs 2"),
        (400, 1, 10.0, None, 4, "needs 4"),  # measured 10 jobs/s: 100 per worker
        (10_000, 2, 10.0, None, 8, "capped at max 8"),
        (10_000, 2, 10.0, 3, 3, "budget allows 3"),
        (500, 2, 10.0, 0, 1, "1 kept while a backlog exists"),  # breaker open: never zero with work left
        (0, 2, 10.0, None, 2, "scale-down waits"),  # lower wanted, but the delay has not passed
        (0, 2, 10.0, 0, 0, "down at once"),  # breaker open, nothing waiting: spend stops now, below min
    ],
)
def test_decisions(backlog: int, replicas: int, rate: float | None, cap: int | None, expected: int, why: str) -> None:
    d = Autoscaler(POLICY).decide(Observation(backlog, replicas, rate, cap, now_s=100.0))
    assert d.replicas == expected
    assert why in d.reason


def test_zero_min_scales_to_zero_only_without_backlog() -> None:
    scaler = Autoscaler(ScalePolicy(min_replicas=0, max_replicas=4, scale_down_delay_s=0))
    assert scaler.decide(Observation(0, 3, None, None, 0.0)).replicas == 0
    assert scaler.decide(Observation(1, 0, None, None, 1.0)).replicas == 1


def test_scale_down_waits_for_the_delay_and_resets_on_a_new_peak() -> None:
    scaler = Autoscaler(POLICY)
    assert scaler.decide(Observation(0, 4, 10.0, None, now_s=0)).replicas == 4
    assert scaler.decide(Observation(0, 4, 10.0, None, now_s=59)).replicas == 4
    assert scaler.decide(Observation(900, 4, 10.0, None, now_s=60)).replicas == 8  # up at once, resets the timer
    assert scaler.decide(Observation(0, 8, 10.0, None, now_s=61)).replicas == 8
    assert scaler.decide(Observation(0, 8, 10.0, None, now_s=120)).replicas == 8
    down = scaler.decide(Observation(0, 8, 10.0, None, now_s=121.5))
    assert down.replicas == 1 and "lower for 60s" in down.reason


def test_policy_rejects_nonsense_and_gives_keda_lag_count() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        ScalePolicy(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError, match="positive"):
        ScalePolicy(target_latency_s=0)
    assert ScalePolicy(target_latency_s=30, assumed_rate_per_worker=8).lag_per_replica == 240


def test_budget_cap_from_the_cost_breaker(r: redis.Redis, zone: str) -> None:
    breaker = CostBreaker(Ledger(r, zone))
    assert budget_cap(breaker, 2.0) is None  # no global budget: no cap
    breaker.ledger.set_budget("global", "hour", 7.0)
    assert budget_cap(breaker, 2.0) == 3  # $7 left buys three $2 worker-hours
    breaker.force("global", State.OPEN)
    assert budget_cap(breaker, 2.0) == 0


def test_observe_reads_backlog_and_measured_rate(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    Client(r, sealer, zone).submit_many(JobSpec(task="echo", inputs={}, lane="batch") for _ in range(30))
    r.hset(keys.worker_heartbeats(zone), "a", json.dumps({"ready": True, "completed": 100, "busy_s": 4.0}))
    r.hset(keys.worker_heartbeats(zone), "b", json.dumps({"ready": False, "completed": 20, "busy_s": 1.0}))
    assert measured_rate(r, zone) == (pytest.approx(24.0), 1)
    obs = observe(r, zone, replicas=2, now_s=5.0)
    assert obs.backlog == 30 and obs.rate_per_worker == pytest.approx(24.0) and obs.budget_cap is None


@pytest.mark.slow
def test_supervisor_starts_stops_and_restarts_real_workers(
    redis_server: EmbeddedRedis, r: redis.Redis, keyring_path: Path, zone: str, tmp_path: Path
) -> None:
    wanted = {"n": 2}

    def command(name: str) -> list[str]:
        return [sys.executable, "-m", "hybrid", "worker", "run", "--redis-url", redis_server.url, "--zone", zone,
                "--keyring", str(keyring_path), "--name", name, "--tasks", "builtin", "--grace", "5"]  # fmt: skip

    def observe_fake(replicas: int, now: float) -> Observation:
        return Observation(backlog=wanted["n"] * 80, replicas=replicas, now_s=now)

    sup = Supervisor(
        command, Autoscaler(ScalePolicy(min_replicas=1, max_replicas=4, target_latency_s=10, scale_down_delay_s=0)),
        observe_fake, prefix="t", grace_s=10, log_dir=str(tmp_path), env={**os.environ, "HYB_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    try:
        assert sup.step().replicas == 2
        assert sorted(sup.running) == ["t-1", "t-2"]
        _wait(lambda: r.hlen(keys.worker_heartbeats(zone)) == 2, 60, "two workers to report ready")

        os.kill(sup.pids()["t-1"], signal.SIGKILL)
        _wait(lambda: sup._procs[0].popen.poll() is not None, 10, "the killed worker to die")
        sup.step()
        assert sup.stats.restarted == 1 and sorted(sup.running) == ["t-1", "t-2"]

        wanted["n"] = 1
        sup.step()
        assert sup.running == ["t-2"]  # the newest goes first: t-1 was restarted after t-2 started
    finally:
        sup.shutdown()
    assert sup.stats.killed == 0  # every worker drained on SIGTERM within the grace period
    assert sup.stats.started == 3 and not sup.pids()


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_pool_command_scales_reports_and_drains_on_ctrl_c(
    redis_server: EmbeddedRedis, r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str, tmp_path: Path
) -> None:
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Client(r, sealer, zone).submit_many(JobSpec(task="sleep", inputs={"ms": 5}, lane="batch") for _ in range(400))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybrid", "worker", "pool", "--redis-url", redis_server.url, "--zone", zone,
         "--keyring", str(keyring_path), "--tasks", "builtin", "--min", "1", "--max", "3", "--target-latency", "1",
         "--interval", "0.3", "--scale-down-delay", "0", "--metrics-port", str(port), "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HYB_LOG_LEVEL": "WARNING"},
    )  # fmt: skip

    def metric(name: str) -> float | None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(f'{name}{{zone="{zone}"}}'):
                return float(line.split()[-1])
        return None

    try:
        # 400 jobs at an assumed 8/s per worker and a 1 s target: the pool goes to its max of 3 ...
        _wait(lambda: metric("hybrid_autoscaler_desired_replicas") == 3, 60, "the pool to want 3 workers")
        _wait(lambda: metric("hybrid_autoscaler_running_replicas") == 3, 30, "3 running workers")
        # ... and once the backlog is gone, back to its min of 1 (no scale-down delay here).
        _wait(lambda: r.xlen(keys.jobs_stream(zone, "batch")) == 0, 90, "the backlog to drain")
        _wait(lambda: metric("hybrid_autoscaler_desired_replicas") == 1, 30, "the pool to scale down")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "0 killed" in err  # every worker drained within its grace period
    assert r.hlen(keys.worker_heartbeats(zone)) == 0  # and took its heartbeat with it


def _sleeper_pool() -> tuple[Supervisor, dict[str, object]]:
    """A supervisor of `sleep`-like processes whose observation can be held up by a test."""
    import threading

    gate = {"hold": threading.Event(), "entered": threading.Event()}
    gate["hold"].set()  # type: ignore[attr-defined]

    def observe_gated(replicas: int, now: float) -> Observation:
        gate["entered"].set()  # type: ignore[attr-defined]
        assert gate["hold"].wait(30)  # type: ignore[attr-defined]
        return Observation(backlog=2 * 80, replicas=replicas, now_s=now)

    def command(name: str) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    policy = ScalePolicy(min_replicas=2, max_replicas=2, target_latency_s=10, scale_down_delay_s=0)
    return Supervisor(command, Autoscaler(policy), observe_gated, prefix="s", grace_s=5), gate


def test_no_worker_outlives_a_shutdown_that_races_a_scaling_step() -> None:
    """`hybrid up` steps its pool from a thread while Ctrl-C shuts it down from the main thread: a
    worker the step starts meanwhile must be stopped with the rest, and none may start after."""
    import threading

    sup, gate = _sleeper_pool()
    gate["hold"].clear()  # type: ignore[attr-defined]
    stepping = threading.Thread(target=sup.step)
    stepping.start()
    assert gate["entered"].wait(10)  # type: ignore[attr-defined]  # the step is observing, nothing started yet
    stopping = threading.Thread(target=sup.shutdown)
    stopping.start()
    stopping.join(timeout=0.5)
    assert stopping.is_alive()  # the shutdown waits for the step instead of running past it
    gate["hold"].set()  # type: ignore[attr-defined]  # the step goes on and starts its two workers
    stepping.join(10)
    stopping.join(20)
    assert not stepping.is_alive() and not stopping.is_alive()
    assert sup.stats.started == 2 and sup.stats.stopped + sup.stats.killed == 2
    assert sup.pids() == {}

    sup.step()  # a late step of a shut pool starts nothing
    assert sup.stats.started == 2 and sup.pids() == {}


def test_a_ctrl_c_while_a_worker_starts_waits_until_it_is_recorded() -> None:
    import signal as sig

    from gpu_worker.supervisor import deferred_interrupts

    steps: list[str] = []
    before = sig.getsignal(sig.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            sig.raise_signal(sig.SIGINT)  # lands while the child is being started ...
            steps.append("started and recorded")  # ... and does not cut this short
        steps.append("not reached")
    assert steps == ["started and recorded"]
    assert sig.getsignal(sig.SIGINT) is before
    with deferred_interrupts():  # no signal: nothing happens afterwards
        steps.append("quiet")
    assert steps[-1] == "quiet"
