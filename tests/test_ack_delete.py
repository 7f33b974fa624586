"""Acknowledged entries leave the job stream (`ack_delete` in broker/scripts.py): by one XTRIM MINID
below the oldest pending entry where it can, by XDEL where it cannot. Either way exactly the
acknowledged entries go — never a pending one, never one not yet delivered."""

from __future__ import annotations

from pathlib import Path

import redis

from broker import keys
from broker.admission import Admission, AdmissionPolicy, TenantLimits
from broker.client import Client
from broker.consumer import Consumer
from broker.message import JobSpec, Sealer
from tests.test_broker_roundtrip import worker_sealer


def _left(r: redis.Redis, stream: str) -> list[bytes]:
    return [eid for eid, _ in r.xrange(stream)]


def _batch_lane_of(r: redis.Redis, sealer: Sealer, zone: str, n: int) -> tuple[str, list[bytes]]:
    """`n` jobs submitted to the batch lane: its stream and their entry ids, oldest first."""
    Client(r, sealer, zone).submit_many(JobSpec(task="t", inputs={"i": i}, lane="batch") for i in range(n))
    stream = keys.jobs_stream(zone, "batch")
    return stream, _left(r, stream)


def test_acknowledged_heads_go_and_the_backlog_stays(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    stream, everything = _batch_lane_of(r, sealer, zone, 30)
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=10, read_ahead=False)
    first = consumer.fetch(block_ms=0)
    consumer.ack(first)  # nothing pending after it: trimmed up to the last delivered entry, which goes too
    assert _left(r, stream) == everything[10:]
    second = consumer.fetch(block_ms=0)
    consumer.complete([(d, {}) for d in second])
    assert _left(r, stream) == everything[20:]  # the ten not delivered yet are all there
    assert r.xpending(stream, keys.GROUP)["pending"] == 0


def test_an_older_pending_entry_stops_the_trim_and_newer_ones_are_deleted_one_by_one(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    stream, everything = _batch_lane_of(r, sealer, zone, 12)
    slow = Consumer(r, worker_sealer(keyring_path, zone), zone, "slow", count=2, read_ahead=False)
    fast = Consumer(r, worker_sealer(keyring_path, zone), zone, "fast", count=4, read_ahead=False)
    held = slow.fetch(block_ms=0)  # entries 0 and 1, pending with `slow`
    done = fast.fetch(block_ms=0)  # entries 2..5
    fast.complete([(d, {}) for d in done[1:]])  # 3, 4, 5 first: 2 is still pending, and 0 and 1
    assert _left(r, stream) == everything[:3] + everything[6:]
    fast.complete([(done[0], {})])
    assert _left(r, stream) == everything[:2] + everything[6:]
    slow.ack(held[1:])  # 1 while 0 is pending
    assert _left(r, stream) == everything[:1] + everything[6:]
    slow.complete([(held[0], {})])  # the oldest: nothing pending any more
    assert _left(r, stream) == everything[6:]
    assert r.xlen(stream) == 6 and r.xpending(stream, keys.GROUP)["pending"] == 0


def test_one_complete_call_over_both_lanes_and_tenants(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    """COMPLETE groups its XACK/XTRIM, ZREM and DEL calls per stream, per tenant and for all claims."""
    policy = AdmissionPolicy(tenants={"a": TenantLimits(max_in_flight=100), "b": TenantLimits(max_in_flight=100)})
    client = Client(r, sealer, zone, admission=Admission(r, zone, policy))
    ids = client.submit_many(
        JobSpec(task="t", inputs={"i": i}, lane=("interactive", "batch")[i % 2], tenant="ab"[i % 3 % 2])
        for i in range(12)
    )
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=20)
    batch = consumer.fetch(block_ms=0)
    assert len(batch) == 12 and r.zcard(keys.inflight_set(zone, "a")) + r.zcard(keys.inflight_set(zone, "b")) == 12
    assert all(r.exists(keys.claim_key(zone, j)) for j in ids)
    assert consumer.complete([(d, {"n": 1}) for d in batch]) == 12
    for lane in ("interactive", "batch"):
        stream = keys.jobs_stream(zone, lane)
        assert r.xlen(stream) == 0 and r.xpending(stream, keys.GROUP)["pending"] == 0
    assert r.zcard(keys.inflight_set(zone, "a")) == r.zcard(keys.inflight_set(zone, "b")) == 0
    assert not any(r.exists(keys.claim_key(zone, j)) for j in ids)
    assert all(res.ok for res in client.wait_all(ids, timeout=5).values())
