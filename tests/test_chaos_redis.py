"""Fault 2 of `python -m benchmarks.chaos` at test size: Redis SIGKILLed and restarted on the same data
directory twice while a producer submits and a supervised pool works, for both AOF fsync policies.

The producer notes every submit that raised `RedisUnavailable` and resubmits it with the same job ids;
every acknowledged job ends with exactly one result. (`everysec` may lose up to ~1 s of acknowledged
writes on a machine crash; a process kill leaves the written AOF in the page cache, so it loses
nothing here either — the benchmark reports what it measures.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import fault_redis_restarts
from broker.embedded import EmbeddedRedis
from tests.conftest import redis_binary


@pytest.mark.slow
@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_redis_killed_twice_loses_no_acknowledged_job(appendfsync: str, zone: str, tmp_path: Path) -> None:
    out = fault_redis_restarts(tmp_path, zone, 300, appendfsync, workers=2, pace_s=6.0, timeout_s=90,
                               binary=redis_binary())  # fmt: skip
    assert out["redis_kills"] == 2, out
    assert out["unacknowledged_submits"] > 0, out  # the producer saw the outages …
    assert out["resubmitted"] == out["unacknowledged_submits"] and out["never_acknowledged"] == 0, out  # … and resent
    assert out["results"] == 300 and out["lost"] == 0 and out["duplicate_results"] == 0, out
    assert out["worker_restarts"] == 0, out  # the workers rode out each 1 s outage instead of exiting


def test_embedded_redis_kill_is_a_crash_and_start_reloads_the_aof(tmp_path: Path) -> None:
    import redis

    server = EmbeddedRedis(tmp_path / "d", appendonly=True, appendfsync="everysec", binary=redis_binary()).start()
    try:
        r = redis.Redis(port=server.port)
        r.set("k", "v")
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        pid = server.pid
        server.kill()
        assert server.pid is None
        with pytest.raises(redis.ConnectionError):
            redis.Redis(port=server.port, socket_connect_timeout=0.5).ping()
        server.start()
        assert server.pid != pid and redis.Redis(port=server.port).get("k") == b"v"
    finally:
        server.cleanup()
    with pytest.raises(Exception, match="appendfsync"):
        EmbeddedRedis(tmp_path / "x", appendfsync="sometimes")
