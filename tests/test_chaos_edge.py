"""Fault 3 of `python -m benchmarks.chaos` at test size: the edge agent (real built models) cut off from
Redis by a TCP proxy we control, while async essays (with PII) and interactive questions go on.

During the cut the outbox holds the essays and every interactive question gets the fallback answer;
after it every essay reaches the stream in submission order and gets its one result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from benchmarks.chaos import fault_edge_cut
from benchmarks.chaos_lib import TcpProxy
from broker.embedded import EmbeddedRedis
from edge_agent.pii import Roster
from tests import edge_support
from tests.edge_support import ROSTER, policy_for_zone

edge_models = edge_support.edge_models  # the session's real built models (fixture)


@pytest.mark.slow
def test_edge_cut_off_holds_falls_back_and_delivers_in_order(
    edge_models: Any, redis_server: EmbeddedRedis, zone: str, tmp_path: Path
) -> None:
    out = fault_edge_cut(redis_server.url, tmp_path, zone, edge_models, policy_for_zone(zone), cut_s=4.0,
                         before_s=1.0, after_s=1.0, rate_per_s=5.0, roster=Roster.load(ROSTER))  # fmt: skip
    assert out["max_outbox"] >= 10, out  # the outbox held the essays during the cut
    assert out["interactive_fallback_during_cut"] >= 10, out
    assert set(out["interactive_during_cut"]) == {"fallback:fallback"}, out  # every one answered by the fallback
    assert out["interactive_not_answered"] == 0, out
    assert out["drained"] and out["delivered_in_order"], out
    assert out["results"] == out["submitted"] and out["lost"] == 0 and out["duplicate_results"] == 0, out


def test_tcp_proxy_cuts_and_restores(redis_server: EmbeddedRedis) -> None:
    proxy = TcpProxy("127.0.0.1", redis_server.port).start()
    try:
        client = redis.Redis(port=proxy.port, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0))
        assert client.ping()
        proxy.cut()
        with pytest.raises(redis.ConnectionError):
            client.ping()  # the open connection is reset and a new one is refused
        proxy.restore()
        assert client.ping()
        assert proxy.connections >= 2
    finally:
        proxy.stop()
