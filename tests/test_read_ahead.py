"""Read-ahead: a full read of all lanes sends the next one at once (see `Consumer.fetch`).

What it must not change: every job is handed out once and in lane order, interactive jobs are not
queued behind held batch jobs for long, an entry another consumer took over is never served by the
consumer that held it, and a stopping consumer gives back what it read ahead.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from broker import keys
from broker.client import Client
from broker.consumer import Consumer
from broker.message import JobSpec, Sealer
from tests.test_broker_roundtrip import worker_sealer


def _submit(r: redis.Redis, sealer: Sealer, zone: str, n: int, lane: str = "batch") -> list[str]:
    return Client(r, sealer, zone).submit_many(JobSpec(task="t", inputs={"i": i}, lane=lane) for i in range(n))


def _ids(deliveries: list) -> list[str]:
    return [d.job.job_id for d in deliveries]


def test_every_job_is_handed_out_once_and_in_order(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    ids = _submit(r, sealer, zone, 30)
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=4)
    got: list[str] = []
    while batch := consumer.fetch(block_ms=0):
        assert len(batch) <= 4
        got += _ids(batch)
        consumer.ack(batch)
    assert got == ids
    assert r.xpending(keys.jobs_stream(zone, "batch"), keys.GROUP)["pending"] == 0


def test_a_full_read_sends_the_next_and_release_gives_it_back(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    ids = _submit(r, sealer, zone, 12)
    first = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=4)
    taken = first.fetch(block_ms=0) + first.fetch(block_ms=0)  # the second read of both lanes was full
    assert _ids(taken) == ids[:8]
    assert first.release() == 4  # the read sent ahead, never handed out
    stream = keys.jobs_stream(zone, "batch")
    given_back = [p for p in r.xpending_range(stream, keys.GROUP, "-", "+", 100) if p["times_delivered"] == 0]
    assert len(given_back) == 4
    second = Consumer(r, worker_sealer(keyring_path, zone), zone, "w2", count=4)
    again = second.fetch(block_ms=0)  # taken over at once (not after min_idle_ms), as a first delivery
    assert _ids(again) == ids[8:12] and [d.deliveries for d in again] == [1, 1, 1, 1]


def test_a_backlog_is_read_ahead_at_every_fetch(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    """A fetch served from a full read sent ahead sends the next one too (not only every other fetch)."""
    _submit(r, sealer, zone, 24)
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=4)
    stream = keys.jobs_stream(zone, "batch")
    consumer.ack(consumer.fetch(block_ms=0))  # lane by lane: the interactive lane is found empty
    for _ in range(4):
        consumer.ack(consumer.fetch(block_ms=0))  # the next read is sent before this fetch returns
        assert r.xpending(stream, keys.GROUP)["pending"] == 4
    assert len(consumer.fetch(block_ms=0)) == 4 and not consumer.fetch(block_ms=0)


def test_held_batch_jobs_give_way_to_interactive_ones(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    batch_ids = _submit(r, sealer, zone, 12)
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=4, read_ahead_max_age_ms=0)
    assert _ids(consumer.fetch(block_ms=0) + consumer.fetch(block_ms=0)) == batch_ids[:8]  # 4 more read ahead
    inter_ids = _submit(r, sealer, zone, 2, lane="interactive")  # reached Redis after the read ahead
    assert _ids(consumer.fetch(block_ms=0)) == inter_ids + batch_ids[8:10]  # the lane was looked at first
    assert _ids(consumer.fetch(block_ms=0)) == batch_ids[10:12]


def test_fresh_held_jobs_are_served_without_another_read(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    """The other side of the bound: held entries younger than `read_ahead_max_age_ms` go out as they
    are, and an interactive job that came after they were read waits for the next fetch."""
    batch_ids = _submit(r, sealer, zone, 12)
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=4, read_ahead_max_age_ms=60_000)
    assert _ids(consumer.fetch(block_ms=0) + consumer.fetch(block_ms=0)) == batch_ids[:8]
    inter_ids = _submit(r, sealer, zone, 2, lane="interactive")
    assert _ids(consumer.fetch(block_ms=0)) == batch_ids[8:12]
    assert _ids(consumer.fetch(block_ms=0)) == inter_ids


def _hold_two(consumer: Consumer) -> list[str]:
    """Fetch 4, 4 (the read sent ahead brings 4 more) and 2: two entries are held. Ack what was handed
    out and return its job ids."""
    handed = consumer.fetch(block_ms=0) + consumer.fetch(block_ms=0) + consumer.fetch(count=2, block_ms=0)
    consumer.ack(handed)
    return _ids(handed)


def test_an_entry_taken_over_while_held_is_not_served(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    ids = _submit(r, sealer, zone, 12)
    holder = Consumer(r, worker_sealer(keyring_path, zone), zone, "holder", count=4, min_idle_ms=200)
    assert _hold_two(holder) == ids[:10]
    held = ids[10:12]
    time.sleep(0.25)  # past min_idle_ms: the held entries may now be taken over
    other = Consumer(r, worker_sealer(keyring_path, zone), zone, "other", count=2, min_idle_ms=200)
    taken_over = other.fetch(block_ms=0)
    assert _ids(taken_over) == held and [d.deliveries for d in taken_over] == [2, 2]
    assert not set(_ids(holder.fetch(block_ms=0))) & set(held)  # checked, and left to the other consumer


def test_entries_held_a_while_are_still_served_when_nobody_took_them(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    ids = _submit(r, sealer, zone, 12)
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=4, min_idle_ms=400)
    handed = _hold_two(consumer)
    assert handed == ids[:10]
    time.sleep(0.25)  # past min_idle_ms / 2: held entries are checked before they are served
    rest: list[str] = []
    while batch := consumer.fetch(block_ms=0):
        rest += _ids(batch)
        consumer.ack(batch)
    assert sorted(handed + rest) == sorted(ids) and len(handed + rest) == len(ids)


def test_run_gives_back_what_it_read_ahead_when_stopped(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    _submit(r, sealer, zone, 12)
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=4)
    stop = threading.Event()
    batches: list[int] = []

    def handler(jobs: list) -> list:
        batches.append(len(jobs))
        if len(batches) == 2:  # the second read of both lanes was full: 4 more were read ahead
            stop.set()
        return [{} for _ in jobs]

    consumer.run(handler, stop=stop)
    assert batches == [4, 4]
    pending = r.xpending_range(keys.jobs_stream(zone, "batch"), keys.GROUP, "-", "+", 100)
    assert [p["times_delivered"] for p in pending] == [0, 0, 0, 0]  # given back, as never delivered
