"""Fault 5 of `python -m benchmarks.chaos` at test size: the pipeline on a 3-master Redis Cluster
(loopback, Redis 7), one master SIGKILLed mid-run and started again on its data directory.

What the system does: the zone whose hash-tag slot lived on that master is unavailable while it is down
(its producers get `RedisUnavailable` and keep the jobs, its worker exits and is restarted by the
supervisor); the other zone's producers are not refused and its jobs complete during the outage; once the
master is back (AOF, `appendfsync always`) every acknowledged job of both zones has exactly one result."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import fault_cluster
from benchmarks.chaos_lib import redis7_binaries


@pytest.mark.slow
@pytest.mark.skipif(redis7_binaries() is None, reason="needs /usr/bin/redis-server and redis-cli >= 7")
def test_a_killed_master_stops_its_zone_only_and_nothing_is_lost(tmp_path: Path) -> None:
    out = fault_cluster(tmp_path, 200, pace_s=6.0, outage_s=5.0, timeout_s=90)
    victim = next(z for z, v in out["zones"].items() if v["role"] == "its master killed")
    other = next(z for z in out["zones"] if z != victim)
    assert out["zones"][victim]["submits_refused"] > 0, out  # its producer saw the outage
    # the other zone's producer is not refused for its zone being down (in the recorded runs: never at all;
    # under heavy load a slot-map refresh through the dead node may fail once, and is retried)
    assert out["zones"][other]["submits_refused"] < out["zones"][victim]["submits_refused"], out
    assert out["other_zone_results_during_outage"] > 0, out  # and its jobs went on being done
    for z in (victim, other):
        assert out["zones"][z]["results"] == 200 and out["zones"][z]["lost"] == 0, out
        assert out["zones"][z]["duplicate_results"] == 0, out
