"""`Consumer.ack(wait=False)`: the acknowledgement is sent at once and confirmed by the consumer's next
`fetch`, by `flush()` or by `release()`; an error in it is raised by the call that reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from broker import keys
from broker.client import Client
from broker.consumer import Consumer
from broker.message import JobSpec, Sealer
from tests.test_broker_roundtrip import worker_sealer


def _consumer_of(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str, n: int) -> Consumer:
    Client(r, sealer, zone).submit_many(JobSpec(task="t", inputs={"i": i}, lane="batch") for i in range(n))
    return Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=4, read_ahead=False)


def test_the_next_fetch_confirms_a_pipelined_ack(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    consumer = _consumer_of(r, sealer, keyring_path, zone, 8)
    stream = keys.jobs_stream(zone, "batch")
    first = consumer.fetch(block_ms=0)
    consumer.ack(first, wait=False)
    second = consumer.fetch(block_ms=0)
    assert r.xlen(stream) == 4 and r.xpending(stream, keys.GROUP)["pending"] == 4  # only the second read is left
    consumer.ack(second, wait=False)
    consumer.flush()
    assert r.xlen(stream) == 0 and not any(r.exists(keys.claim_key(zone, d.job.job_id)) for d in first + second)


def test_release_confirms_a_pipelined_ack(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    consumer = _consumer_of(r, sealer, keyring_path, zone, 4)
    consumer.ack(consumer.fetch(block_ms=0), wait=False)
    consumer.release()
    assert r.xlen(keys.jobs_stream(zone, "batch")) == 0


def test_an_error_in_a_pipelined_ack_is_raised_by_flush(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    consumer = _consumer_of(r, sealer, keyring_path, zone, 4)
    batch = consumer.fetch(block_ms=0)
    stream = keys.jobs_stream(zone, "batch")
    r.delete(stream)
    r.set(stream, b"not a stream")  # the acknowledgement will fail in Redis
    consumer.ack(batch, wait=False)  # sent: nothing read yet, nothing raised
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        consumer.flush()
    consumer.flush()  # the failed reply was read: nothing is left to confirm


def test_a_pipelined_ack_survives_a_redis_that_forgot_the_script(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    consumer = _consumer_of(r, sealer, keyring_path, zone, 4)
    batch = consumer.fetch(block_ms=0)
    r.script_flush()
    consumer.ack(batch, wait=False)
    consumer.flush()  # NOSCRIPT: loaded and run again
    assert r.xlen(keys.jobs_stream(zone, "batch")) == 0
