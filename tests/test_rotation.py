"""Key rotation with old messages still in the stream: no downtime, nothing unreadable."""

from __future__ import annotations

from pathlib import Path

import redis

from broker import keys
from broker.client import Client
from broker.codec import unpack
from broker.consumer import Consumer
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import JobSpec, Sealer


def test_rotation_with_old_messages_in_the_stream(r: redis.Redis, keyring_path: Path, zone: str) -> None:
    producer_ring = LocalKeyring(keyring_path, reload_interval_s=0)
    worker = Consumer(r, Sealer(Envelope(LocalKeyring(keyring_path, zones=[zone]))), zone, "w1", count=100)
    worker.ensure_groups()  # the worker is up (its keyring loaded) before the rotation
    client = Client(r, Sealer(Envelope(producer_ring)), zone)

    old_ids = client.submit_many(JobSpec(task="t", inputs={"gen": 1}) for _ in range(10))
    LocalKeyring.rotate(keyring_path, zone)
    new_ids = client.submit_many(JobSpec(task="t", inputs={"gen": 2}) for _ in range(10))

    kids = [unpack(f[b"h"])["kid"] for _, f in r.xrange(keys.jobs_stream(zone, "interactive"))]
    assert kids == [f"{zone}/v1"] * 10 + [f"{zone}/v2"] * 10

    stats = worker.run(lambda jobs: [{"gen": j.payload.inputs["gen"]} for j in jobs], burst=True)
    assert stats.completed == 20 and not stats.dead_lettered
    results = client.wait_all(old_ids + new_ids, timeout=10)
    assert [results[i].output["gen"] for i in old_ids + new_ids] == [1] * 10 + [2] * 10
