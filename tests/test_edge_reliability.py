"""A broker that goes away and comes back: the reachability breaker's backoff and probe, and the outbox.

Each test runs a redis-server of its own (the same binary as the session's), so stopping it disturbs
no other test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.breaker import State
from broker.codec import unpack
from broker.connection import connect
from broker.embedded import EmbeddedRedis
from broker.keys import jobs_stream
from broker.message import HEADER_FIELD, Sealer
from edge_agent.agent import EdgeRequest
from tests import edge_support
from tests.conftest import redis_binary
from tests.edge_support import (
    make_agent,
    wait_for,
)

QUESTION = EdgeRequest(text="What is Newton's second law?", task="question-classification", sensitivity="personal")

edge_models = edge_support.edge_models  # the session's real built models (fixture)


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", binary=redis_binary()).start()
    try:
        yield server
    finally:
        server.cleanup()


def test_breaker_backs_off_then_probes(
    edge_models: Any, zone: str, tmp_path: Path, own_redis: EmbeddedRedis, sealer: Sealer
) -> None:
    clock = FakeClock()
    agent = make_agent(
        edge_models, zone, tmp_path / "state", sealer=sealer, redis_url=own_redis.url, utilization=0.95, clock=clock
    )
    assert agent.handle(QUESTION)["route"] == "cloud"  # the broker is up: offloaded (nobody answers: pending)
    own_redis.stop()

    out = agent.handle(QUESTION)
    assert out["route"] == "fallback" and out["fallback_reason"].startswith("unreachable")
    st = agent.breaker.snapshot()
    assert st.state is State.OPEN and st.trips == 1
    assert 500 <= st.until_ms - clock.ms <= 1000  # base 1 s with up to 50 % jitter

    clock.ms = st.until_ms - 1  # still cooling down: the engine routes to the fallback, nothing is tried
    out = agent.handle(QUESTION)
    assert out["route"] == "fallback" and any("unreachable" in r for r in out["decision"]["reasons"])
    assert agent.breaker.snapshot().trips == 1

    clock.ms = st.until_ms  # half-open: one probe goes out, fails, and the breaker waits longer
    assert agent.breaker_state() is State.HALF_OPEN
    assert agent.handle(QUESTION)["route"] == "fallback"
    st2 = agent.breaker.snapshot()
    assert st2.state is State.OPEN and st2.trips == 2
    assert 1000 <= st2.until_ms - clock.ms <= 2000

    own_redis.start()  # same port
    clock.ms = st2.until_ms
    out = agent.handle(QUESTION)  # the probe succeeds: closed again
    assert out["route"] == "cloud" and out["job_id"]
    assert agent.breaker.snapshot().state is State.CLOSED and agent.breaker.snapshot().trips == 0
    agent.close()


def test_outbox_drains_in_order_when_the_broker_returns(
    edge_models: Any, zone: str, tmp_path: Path, own_redis: EmbeddedRedis, sealer: Sealer
) -> None:
    agent = make_agent(edge_models, zone, tmp_path / "state", sealer=sealer, redis_url=own_redis.url).start()
    try:
        own_redis.stop()
        ids = [agent.handle(EdgeRequest(text=f"essay {i}", task="essay-grading"))["job_id"] for i in range(4)]
        assert all(agent.job(i)["status"] == "queued" for i in ids)  # type: ignore[index]
        assert len(agent.outbox) == 4
        own_redis.start()
        r = connect(own_redis.url)
        stream = jobs_stream(zone, "batch")
        wait_for(lambda: r.xlen(stream) == 4, timeout_s=15, what="the outbox to drain")
        entries: Any = r.xrange(stream)
        sent = [unpack(fields[HEADER_FIELD])["job_id"] for _, fields in entries]
        assert sent == ids
        wait_for(lambda: len(agent.outbox) == 0, what="the outbox to empty")
        assert (agent.job(ids[0]) or {}).get("status") == "pending"  # submitted, no result yet
        # a job sent after the outbox emptied goes straight out
        assert agent.handle(EdgeRequest(text="essay 5", task="essay-grading"))["status"] == "pending"
        r.close()
    finally:
        agent.close()
