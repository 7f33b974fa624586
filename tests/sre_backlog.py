"""A backlog the SRE tests look at: jobs waiting in both lanes, some delivered and unacknowledged, and
one tampered message a real consumer dead-lettered (reason `tampered`)."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from broker import keys
from broker.consumer import Consumer
from broker.dead_letter import DeadLetters
from broker.message import BODY_FIELD, HEADER_FIELD, JobSpec, Sealer
from broker.producer import Producer


@dataclass(frozen=True)
class Backlog:
    zone: str
    batch: int  # jobs waiting in the batch lane (none delivered)
    interactive: int  # jobs in the interactive lane
    delivered: int  # of those, delivered to consumer `w1` and not acknowledged


def make_backlog(r: redis.Redis, sealer: Sealer, zone: str, *, batch: int = 7, interactive: int = 4) -> Backlog:
    producer = Producer(r, sealer, zone)
    # a tampered message first in the interactive lane: the consumer reads it first and dead-letters it
    _, hb, body = sealer.seal_job(zone, JobSpec(task="classify", inputs={"q": "tampered"}))
    flipped = bytearray(body)
    flipped[-5] ^= 0x01
    stream = keys.jobs_stream(zone, "interactive")
    producer.submit(JobSpec(task="classify", inputs={"q": "warm-up"}))  # creates the stream and group
    Consumer(r, sealer, zone, "w0", count=1).fetch(block_ms=0)  # the warm-up job: delivered, pending
    r.xadd(stream, {HEADER_FIELD: hb, BODY_FIELD: bytes(flipped)})
    producer.submit_many([JobSpec(task="classify", inputs={"q": i}) for i in range(interactive - 1)])
    producer.submit_many([JobSpec(task="classify", inputs={"q": i}, lane="batch") for i in range(batch)])
    delivered = Consumer(r, sealer, zone, "w1", count=2, lanes=[keys.Lane.INTERACTIVE]).fetch(block_ms=0)
    assert len(delivered) == 1, delivered  # the tampered one went to the DLQ, one good one is pending
    [letter] = DeadLetters(r, zone).list()
    assert letter.reason == "tampered"
    return Backlog(zone, batch, interactive, 2)
