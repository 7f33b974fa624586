"""Recovery with real processes: a consumer killed with SIGKILL, a Redis server restarted, too many
deliveries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from broker import keys
from broker.client import Client
from broker.connection import connect
from broker.consumer import Consumer
from broker.dead_letter import DeadLetters
from broker.embedded import EmbeddedRedis
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import JobSpec, Sealer
from tests.conftest import redis_binary

HOLDER = Path(__file__).with_name("hold_jobs.py")


def fresh_sealer(keyring_path: Path, zone: str) -> Sealer:
    return Sealer(Envelope(LocalKeyring(keyring_path, zones=[zone])))


def echo(jobs: list) -> list:
    return [{"i": j.payload.inputs["i"]} for j in jobs]


@pytest.mark.slow
def test_jobs_of_a_killed_consumer_are_reclaimed_and_run_once(
    redis_server: EmbeddedRedis, r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    client = Client(r, sealer, zone)
    ids = client.submit_many(JobSpec(task="t", inputs={"i": i}, lane="batch") for i in range(40))
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), redis_server.url, zone, str(keyring_path), "25"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "HOLDING 25"
    finally:
        holder.kill()  # SIGKILL: no cleanup, 25 jobs stay pending on "doomed"
        holder.wait()
    stream = keys.jobs_stream(zone, "batch")
    assert r.xpending(stream, keys.GROUP)["pending"] == 25

    survivor = Consumer(r, fresh_sealer(keyring_path, zone), zone, "survivor", count=10, min_idle_ms=0)
    stats = survivor.run(echo, burst=True)
    assert stats.reclaimed == 25 and stats.completed == 40 and stats.duplicates == 0

    results = client.wait_all(ids, timeout=10)
    assert sorted(res.output["i"] for res in results.values()) == list(range(40))
    assert all(res.worker == "survivor" for res in results.values())
    assert r.xpending(stream, keys.GROUP)["pending"] == 0 and r.xlen(stream) == 0
    assert len(r.keys(f"hyb:{{{zone}}}:result:*")) == 40  # exactly one result per job


def test_reclaimed_delivery_counts_come_from_xpending(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    Client(r, sealer, zone).submit("t", {"i": 1})
    first = Consumer(r, fresh_sealer(keyring_path, zone), zone, "first", min_idle_ms=0)
    assert [d.deliveries for d in first.fetch(block_ms=0)] == [1]
    second = Consumer(r, fresh_sealer(keyring_path, zone), zone, "second", min_idle_ms=0)
    assert [d.deliveries for d in second.fetch(block_ms=0)] == [2]
    third = Consumer(r, fresh_sealer(keyring_path, zone), zone, "third", min_idle_ms=0)
    assert [d.deliveries for d in third.fetch(block_ms=0)] == [3]


def test_a_job_delivered_too_often_is_dead_lettered(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    client = Client(r, sealer, zone)
    poison = client.submit("t", {"i": 0})

    def crash(jobs: list) -> list:
        raise RuntimeError("worker crashed mid-batch")

    for n in range(3):  # each run crashes: the job stays unacknowledged and is reclaimed by the next
        Consumer(r, fresh_sealer(keyring_path, zone), zone, f"w{n}", min_idle_ms=0, max_deliveries=3).run(
            crash, burst=True
        )
    last = Consumer(r, fresh_sealer(keyring_path, zone), zone, "w3", min_idle_ms=0, max_deliveries=3)
    assert last.fetch(block_ms=0) == []
    [letter] = DeadLetters(r, zone).list()
    assert (letter.reason, letter.deliveries, letter.job_id) == ("max_deliveries", 4, poison)
    assert r.xpending(keys.jobs_stream(zone, "interactive"), keys.GROUP)["pending"] == 0


@pytest.mark.slow
def test_nothing_is_lost_across_a_redis_restart(tmp_path: Path, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    with EmbeddedRedis(tmp_path / "aof", appendonly=True, binary=redis_binary()) as server:
        client = Client(connect(server.url), sealer, zone)
        ids = client.submit_many(
            JobSpec(task="t", inputs={"i": i}, lane="batch" if i % 2 else "interactive") for i in range(200)
        )
        consumer = Consumer(connect(server.url), fresh_sealer(keyring_path, zone), zone, "w1", count=50)
        half = consumer.fetch(block_ms=0)  # 50 delivered before the restart, not yet acknowledged
        assert len(half) == 50
        pid_before = server.pid
        server.restart()
        assert server.pid != pid_before
        after = Consumer(connect(server.url), fresh_sealer(keyring_path, zone), zone, "w2", count=50, min_idle_ms=0)
        stats = after.run(echo, burst=True)
        assert stats.completed == 200 and stats.reclaimed == 50
        results = Client(connect(server.url), sealer, zone).wait_all(ids, timeout=10)
        assert sorted(res.output["i"] for res in results.values()) == list(range(200))
