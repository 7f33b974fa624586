"""Round trips over a real Redis: submit → consume → result, priorities, idempotence, waiting."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis

from broker import keys
from broker.client import Client, sealer_from_settings
from broker.codec import Codec, train_dictionary
from broker.consumer import Consumer
from broker.dead_letter import DeadLetters
from broker.envelope import Envelope
from broker.errors import DecodeError, PayloadTooLarge, ResultTimeout
from broker.keyring import LocalKeyring
from broker.message import BODY_FIELD, HEADER_FIELD, JobSpec, Sealer
from broker.producer import Producer
from broker.queues import queue_depth
from broker.settings import load_settings


def worker_sealer(keyring_path: Path, zone: str) -> Sealer:
    """The worker side has its own envelope (its own data keys), like a separate process."""
    return Sealer(Envelope(LocalKeyring(keyring_path, zones=[zone])))


def echo(jobs: list) -> list:
    return [{"echo": j.payload.inputs, "task": j.header.task} for j in jobs]


def test_round_trip(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    client = Client(r, sealer, zone)
    ids = client.submit_many(JobSpec(task="classify", inputs={"q": f"প্রশ্ন {i}"}) for i in range(50))
    assert len(set(ids)) == 50 and ids == sorted(ids)
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=16)
    stats = consumer.run(echo, burst=True)
    results = client.wait_all(ids, timeout=10)
    assert stats.completed == 50 and stats.duplicates == 0
    assert [results[i].output["echo"]["q"] for i in ids] == [f"প্রশ্ন {i}" for i in range(50)]
    assert all(res.ok and res.worker == "w1" for res in results.values())
    # acknowledged entries are gone: nothing waits, nothing pending
    assert [(d.length, d.pending, d.lag) for d in queue_depth(r, zone)] == [(0, 0, 0), (0, 0, 0)]


def test_stream_entry_holds_no_user_content(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    Client(r, sealer, zone).submit("grade", {"essay": "Rabindranath wrote Gitanjali"}, tenant="school-7")
    [(_, fields)] = r.xrange(keys.jobs_stream(zone, "interactive"))
    assert set(fields) == {b"h", b"b"}
    assert b"Gitanjali" not in fields[b"h"] + fields[b"b"]
    assert b"school-7" in fields[b"h"]  # the header is clear


def test_interactive_lane_is_served_first(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    client = Client(r, sealer, zone)
    batch_ids = client.submit_many(JobSpec(task="t", inputs={}, lane="batch") for _ in range(5))
    inter_ids = client.submit_many(JobSpec(task="t", inputs={}, lane="interactive") for _ in range(5))
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=5)
    first = consumer.fetch(block_ms=0)
    second = consumer.fetch(block_ms=0)
    assert [d.job.job_id for d in first] == inter_ids
    assert [d.job.job_id for d in second] == batch_ids


def _xreadgroup_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0))


def test_an_idle_interactive_lane_costs_no_extra_read(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    """While the interactive lane is empty, one XREADGROUP reads both lanes; jobs that reach it
    meanwhile still come first, and a busy interactive lane is read alone again. (Read-ahead, which
    sends one more read after a full one, is off here: tests/test_read_ahead.py has it.)"""
    client = Client(r, sealer, zone)
    batch_ids = client.submit_many(JobSpec(task="t", inputs={}, lane="batch") for _ in range(12))
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=4, read_ahead=False)
    before = _xreadgroup_calls(r)
    first = consumer.fetch(block_ms=0)  # lane by lane: interactive (empty), then batch
    assert _xreadgroup_calls(r) - before == 2
    before = _xreadgroup_calls(r)
    second = consumer.fetch(block_ms=0)  # interactive was idle: both lanes in one read
    assert _xreadgroup_calls(r) - before == 1
    assert [d.job.job_id for d in first + second] == batch_ids[:8]

    inter_ids = client.submit_many(JobSpec(task="t", inputs={}, lane="interactive") for _ in range(6))
    third = consumer.fetch(block_ms=0)  # one read of both lanes: 4 interactive first, the rest held
    assert [d.job.job_id for d in third] == inter_ids[:4]
    before = _xreadgroup_calls(r)
    fourth = consumer.fetch(block_ms=0)  # the 4 batch jobs held; interactive is busy: read alone
    assert [d.job.job_id for d in fourth] == inter_ids[4:] + batch_ids[8:10]
    assert _xreadgroup_calls(r) - before == 1  # interactive (2 of 4); the batch jobs came with the last read
    assert [d.job.job_id for d in consumer.fetch(block_ms=0)] == batch_ids[10:12]


def test_a_job_run_twice_has_exactly_one_result(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    client = Client(r, sealer, zone)
    job_id = client.submit("t", {"n": 1})
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1")
    [delivery] = consumer.fetch(block_ms=0)
    assert consumer.complete([(delivery, {"run": 1})]) == 1
    assert consumer.complete([(delivery, {"run": 2})]) == 0  # e.g. a reclaimed copy finishing late
    assert consumer.stats.duplicates == 1
    assert client.result(job_id, timeout=5).output == {"run": 1}
    notices = r.xrange(keys.reply_stream(zone, client.name))
    assert [f[b"jobs"] for _, f in notices] == [job_id.encode()]
    assert 0 < r.pttl(keys.result_key(zone, job_id)) <= 24 * 3600 * 1000


def test_handler_errors_become_error_results(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    client = Client(r, sealer, zone)
    ok_id, bad_id = client.submit_many([JobSpec(task="t", inputs={"x": 1}), JobSpec(task="t", inputs={"x": 0})])

    def divide(jobs: list) -> list:
        out: list = []
        for j in jobs:
            try:
                out.append({"y": 1 / j.payload.inputs["x"]})
            except ZeroDivisionError as exc:
                out.append(exc)
        return out

    Consumer(r, worker_sealer(keyring_path, zone), zone, "w1").run(divide, burst=True)
    results = client.wait_all([ok_id, bad_id], timeout=5)
    assert results[ok_id].ok and results[ok_id].output == {"y": 1.0}
    assert results[bad_id].status == "error" and "ZeroDivisionError" in (results[bad_id].error or "")


def test_waiting_client_is_woken_by_the_reply_stream(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    client = Client(r, sealer, zone, recheck_s=30)  # a recheck would not come within the test's time
    job_id = client.submit("t", {"a": 1})
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", block_ms=5000)
    worker = threading.Thread(
        target=consumer.run, args=(echo,), kwargs={"burst": False, "stop": (stop := threading.Event())}
    )
    worker.start()
    try:
        assert client.result(job_id, timeout=10).output["echo"] == {"a": 1}
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()


def test_results_of_jobs_submitted_elsewhere_are_found(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    submitter = Client(r, sealer, zone)
    ids = submitter.submit_many(JobSpec(task="t", inputs={"i": i}) for i in range(3))
    Consumer(r, worker_sealer(keyring_path, zone), zone, "w1").run(echo, burst=True)
    other = Client(r, worker_sealer(keyring_path, zone), zone, recheck_s=0.05)
    assert sorted(other.wait_all(ids, timeout=5)) == sorted(ids)


def test_result_timeout_names_the_missing_jobs(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    client = Client(r, sealer, zone, recheck_s=0.05)
    job_id = client.submit("t", {})
    with pytest.raises(ResultTimeout) as err:
        client.result(job_id, timeout=0.2)
    assert err.value.job_ids == [job_id]


def test_oversized_payload_is_refused_before_sending(r: redis.Redis, keyring: LocalKeyring, zone: str) -> None:
    producer = Producer(r, Sealer(Envelope(keyring), Codec(max_payload_bytes=1024)), zone, chunk=1)
    with pytest.raises(PayloadTooLarge):  # the good first job is not sent either: all or nothing
        producer.submit_many([JobSpec(task="t", inputs={"ok": 1}), JobSpec(task="t", inputs={"x": "y" * 5000})])
    assert r.xlen(keys.jobs_stream(zone, "interactive")) == 0


def test_caller_given_job_ids_are_kept(r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str) -> None:
    client = Client(r, sealer, zone)
    assert client.submit("t", {}, job_id="essay-2026-11-27-0001") == "essay-2026-11-27-0001"
    Consumer(r, worker_sealer(keyring_path, zone), zone, "w1").run(echo, burst=True)
    assert client.result("essay-2026-11-27-0001", timeout=5).ok


@pytest.mark.parametrize("bad", [{"tenant": ""}, {"task": "x" * 65}, {"trace_id": "t" * 65}, {"job_id": "a b"}])
def test_invalid_specs_are_refused_with_the_field_named(r: redis.Redis, sealer: Sealer, zone: str, bad: dict) -> None:
    spec = JobSpec(**{"task": "t", "inputs": {}, **bad})
    with pytest.raises(ValueError, match=next(iter(bad))):
        Client(r, sealer, zone).submit_many([spec])


def test_queue_depth_counts_backlog_pending_and_lag(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    client = Client(r, sealer, zone)
    client.submit_many(JobSpec(task="t", inputs={}, lane="batch") for _ in range(10))
    client.submit_many(JobSpec(task="t", inputs={}, lane="interactive") for _ in range(3))
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1", count=5)
    taken = consumer.fetch(block_ms=0)  # 3 interactive + 2 batch, now pending
    inter, batch = queue_depth(r, zone)
    assert (inter.lane, inter.length, inter.pending, inter.lag, inter.consumers) == ("interactive", 3, 3, 0, 1)
    assert (batch.lane, batch.length, batch.pending, batch.lag) == ("batch", 10, 2, 8)
    assert batch.oldest_age_ms >= 0
    consumer.complete([(d, {}) for d in taken])
    inter, batch = queue_depth(r, zone)
    assert (inter.length, inter.pending, batch.length, batch.pending, batch.lag) == (0, 0, 8, 0, 8)


def test_trained_dictionaries_from_settings(tmp_path: Path, keyring_path: Path, zone: str) -> None:
    dict_dir = tmp_path / "dicts"
    dict_dir.mkdir()
    samples = [
        {"inputs": {"q": f"Which river flows through district {i} of West Bengal?"}, "options": {}} for i in range(300)
    ]
    (dict_dir / "classify.zdict").write_bytes(train_dictionary(samples, 2048))
    settings = load_settings(zone=zone, keyring=str(keyring_path), zstd_dict_dir=str(dict_dir))
    sealer = sealer_from_settings(settings)
    _header, hb, body = sealer.seal_job(
        zone, JobSpec(task="classify", inputs={"q": "Which river flows through Kolkata?"})
    )
    assert sealer.open_job(zone, {HEADER_FIELD: hb, BODY_FIELD: body}).payload.inputs["q"].startswith("Which river")
    plain = Sealer(Envelope(LocalKeyring(keyring_path)))
    with pytest.raises(DecodeError, match="dictionary"):  # the frame names a dictionary this reader lacks
        plain.open_job(zone, {HEADER_FIELD: hb, BODY_FIELD: body})


def _copies_of_one_job(r: redis.Redis, sealer: Sealer, zone: str, job_id: str) -> tuple[Client, JobSpec]:
    return Client(r, sealer, zone), JobSpec(task="t", inputs={"n": 1}, lane="batch", job_id=job_id)


def test_a_copy_of_a_running_job_is_held_back_until_the_first_has_a_result(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    client, spec = _copies_of_one_job(r, sealer, zone, "essay-42")
    stream = keys.jobs_stream(zone, "batch")
    client.submit_many([spec])
    first = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1")
    [running] = first.fetch(block_ms=0)
    assert r.get(keys.claim_key(zone, "essay-42")) == stream.encode() + b"\n" + running.entry_id
    assert 0 < r.pttl(keys.claim_key(zone, "essay-42")) <= first.claim_ms == 360_000  # 60 s x (5 + 1)

    client.submit_many([spec])  # resubmitted while the first copy runs
    second = Consumer(r, worker_sealer(keyring_path, zone), zone, "w2")
    assert second.fetch(block_ms=0) == []  # not run twice at once ...
    assert second.stats.held_back == 1 and DeadLetters(r, zone).size() == 0  # ... and not thrown away
    assert r.xpending(stream, keys.GROUP)["pending"] == 2

    assert first.complete([(running, {"run": 1})]) == 1
    assert not r.exists(keys.claim_key(zone, "essay-42"))  # the result answers for the job id now
    later = Consumer(r, worker_sealer(keyring_path, zone), zone, "w3", min_idle_ms=0)  # reclaims at once
    assert later.fetch(block_ms=0) == []
    [letter] = DeadLetters(r, zone).list()
    assert letter.reason == "replayed" and "already has a result" in letter.detail
    assert client.result("essay-42", timeout=5).output == {"run": 1}
    assert r.xlen(stream) == 0 and r.xpending(stream, keys.GROUP)["pending"] == 0


def test_a_held_back_copy_runs_once_the_first_is_gone_without_a_result(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    client, spec = _copies_of_one_job(r, sealer, zone, "essay-43")
    client.submit_many([spec])
    first = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1")
    [dropped] = first.fetch(block_ms=0)
    client.submit_many([spec])
    second = Consumer(r, worker_sealer(keyring_path, zone), zone, "w2")
    assert second.fetch(block_ms=0) == [] and second.stats.held_back == 1

    first.ack([dropped])  # dropped on purpose: no result, and the claim goes with the entry
    assert not r.exists(keys.claim_key(zone, "essay-43"))
    later = Consumer(r, worker_sealer(keyring_path, zone), zone, "w3", min_idle_ms=0)
    [copy] = later.fetch(block_ms=0)
    assert copy.job.job_id == "essay-43" and copy.deliveries == 2 and copy.entry_id != dropped.entry_id
    assert later.complete([(copy, {"run": "copy"})]) == 1


def test_a_crashed_workers_job_is_taken_over_under_its_own_claim(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    client, spec = _copies_of_one_job(r, sealer, zone, "essay-44")
    client.submit_many([spec])
    [lost] = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1").fetch(block_ms=0)  # w1 then dies
    rescuer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w2", min_idle_ms=0)
    [taken] = rescuer.fetch(block_ms=0)
    assert taken.entry_id == lost.entry_id and taken.deliveries == 2 and rescuer.stats.held_back == 0
    assert rescuer.complete([(taken, {"run": 2})]) == 1


def test_a_claim_left_by_a_dead_lettered_entry_is_taken_over(
    r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    """The claim is made before the bodies are opened, so an entry whose body then fails holds one; it is
    stale once that entry is dead-lettered, and the next copy of the job id takes it over at once."""
    stream = keys.jobs_stream(zone, "batch")
    _, hb, body = sealer.seal_job(zone, JobSpec(task="t", inputs={"n": 1}, lane="batch", job_id="essay-45"))
    broken = bytearray(body)
    broken[-1] ^= 1
    bad_id = r.xadd(stream, {HEADER_FIELD: hb, BODY_FIELD: bytes(broken)})
    consumer = Consumer(r, worker_sealer(keyring_path, zone), zone, "w1")
    assert consumer.fetch(block_ms=0) == []
    assert DeadLetters(r, zone).list()[0].reason == "tampered"
    assert r.get(keys.claim_key(zone, "essay-45")) == stream.encode() + b"\n" + bad_id  # stale now

    Client(r, sealer, zone).submit_many([JobSpec(task="t", inputs={"n": 2}, lane="batch", job_id="essay-45")])
    [copy] = consumer.fetch(block_ms=0)
    assert copy.job.payload.inputs == {"n": 2} and consumer.stats.held_back == 0
    assert r.get(keys.claim_key(zone, "essay-45")) == stream.encode() + b"\n" + copy.entry_id
