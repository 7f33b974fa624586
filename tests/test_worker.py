"""The worker's consumer loop on a real Redis with a real (tiny) torch model: lanes, deadlines,
poison isolation, bad input, drain on SIGTERM, reclaim after SIGKILL, the health endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from prometheus_client import CollectorRegistry, generate_latest

from broker import keys
from broker.client import Client
from broker.consumer import Consumer
from broker.dead_letter import DeadLetters
from broker.embedded import EmbeddedRedis
from broker.message import JobSpec, Sealer, now_ms
from gpu_worker.batcher import BatchPolicy
from gpu_worker.health import HealthServer
from gpu_worker.runners.base import InvalidInput, ModelRunner, RunnerInfo
from gpu_worker.runners.builtin import builtin_runners
from gpu_worker.worker import Worker


class TinyTextModel(ModelRunner):
    """A real torch model built here: byte embeddings → mean → linear. `poison` in a text makes it raise."""

    task, model = "tiny", "tiny-v1"

    def __init__(self, max_chars: int = 200) -> None:
        self.max_chars = max_chars
        self.batches: list[list[str]] = []
        self.net: torch.nn.Module | None = None

    def load(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.EmbeddingBag(256, 16, mode="mean"), torch.nn.Linear(16, 4)).eval()

    def info(self) -> RunnerInfo:
        return RunnerInfo(
            self.task, self.model, "cpu", "float32", max_batch_size=8, preferred_min=8, max_queue_delay_ms=20
        )

    def check(self, inputs: Mapping[str, Any]) -> None:
        text = inputs.get("text")
        if not isinstance(text, str) or not text:
            raise InvalidInput("tiny needs a non-empty inputs.text")
        if len(text) > self.max_chars:
            raise InvalidInput(f"text is {len(text)} characters, over the model's context of {self.max_chars}")

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        texts = [x["text"] for x in inputs]
        self.batches.append(texts)
        if any("poison" in t for t in texts):
            raise RuntimeError("poisoned input")
        data = [list(t.encode()) for t in texts]
        flat = torch.tensor([b for d in data for b in d])
        offsets = torch.tensor([0, *torch.tensor([len(d) for d in data]).cumsum(0)[:-1].tolist()])
        assert self.net is not None
        with torch.no_grad():
            logits = self.net[1](self.net[0](flat, offsets))
        return [{"label": int(row.argmax()), "n": len(t)} for row, t in zip(logits, texts, strict=True)]


def make_worker(r: redis.Redis, sealer: Sealer, zone: str, runners: list[ModelRunner], **kw: Any) -> Worker:
    consumer = Consumer(r, sealer, zone, kw.pop("name", "w1"), count=kw.pop("count", 32), block_ms=50,
                        min_idle_ms=kw.pop("min_idle_ms", 60_000))  # fmt: skip
    return Worker(consumer, runners, **kw)


def test_jobs_are_batched_per_model_and_results_stored(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    model = TinyTextModel()
    client = Client(r, sealer, zone)
    ids = client.submit_many(JobSpec(task="tiny", inputs={"text": f"প্রশ্ন {i} question"}) for i in range(24))
    registry = CollectorRegistry()
    worker = make_worker(r, sealer, zone, [model], registry=registry)
    stats = worker.run(burst=True)
    results = client.wait_all(ids, timeout=10)
    assert {res.status for res in results.values()} == {"ok"}
    assert results[ids[0]].output["n"] == len("প্রশ্ন 0 question")
    assert [len(b) for b in model.batches] == [8, 8, 8]  # max_batch_size 8, preferred_min 8: full batches only
    assert stats.completed == 24 and stats.batch_sizes[8] == 3
    text = generate_latest(registry).decode()
    assert 'hybrid_worker_batch_size_count{model="tiny-v1",task="tiny"} 3.0' in text
    assert 'hybrid_worker_jobs_total{outcome="ok",task="tiny",zone="' + zone + '"} 24.0' in text
    assert "hybrid_worker_gpu_seconds_total" in text


def test_interactive_lane_is_served_before_batch(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    model = TinyTextModel()
    client = Client(r, sealer, zone)
    client.submit_many(JobSpec(task="tiny", inputs={"text": f"batch {i}"}, lane="batch") for i in range(16))
    client.submit_many(JobSpec(task="tiny", inputs={"text": f"interactive {i}"}) for i in range(8))
    worker = make_worker(r, sealer, zone, [model], count=8, max_in_flight=8)
    worker.run(burst=True)
    assert all(t.startswith("interactive") for t in model.batches[0])
    assert sum(len(b) for b in model.batches) == 24


def test_expired_jobs_are_not_run_and_get_an_expired_result(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    model = TinyTextModel()
    client = Client(r, sealer, zone)
    late = client.submit("tiny", {"text": "too late"}, deadline_ms=now_ms() - 1)
    fresh = [client.submit("tiny", {"text": f"in time {i}"}, deadline_ms=now_ms() + 60_000) for i in range(8)]
    make_worker(r, sealer, zone, [model]).run(burst=True)
    results = client.wait_all([late, *fresh], timeout=10)
    assert results[late].status == "expired"
    assert "deadline passed" in (results[late].error or "")
    assert all(results[j].status == "ok" for j in fresh)
    assert not any("too late" in t for b in model.batches for t in b)


def test_a_poison_job_fails_alone_and_bad_input_never_stops_the_loop(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    model = TinyTextModel()
    client = Client(r, sealer, zone)
    good = [client.submit("tiny", {"text": f"fine {i}"}) for i in range(7)]
    poison = client.submit("tiny", {"text": "poison pill"})
    unknown = client.submit("translate", {"text": "x"})
    wrong_model = client.submit("tiny", {"text": "x"}, model="tiny-v9")
    too_long = client.submit("tiny", {"text": "x" * 500})
    missing = client.submit("tiny", {"txt": "typo"})
    _, hb, body = sealer.seal_job(zone, JobSpec(task="tiny", inputs={"text": "tampered"}))
    r.xadd(keys.jobs_stream(zone, "interactive"), {b"h": hb, b"b": body[:-1] + bytes([body[-1] ^ 1])})
    after = [client.submit("tiny", {"text": f"after {i}"}) for i in range(8)]

    stats = make_worker(r, sealer, zone, [model]).run(burst=True)
    results = client.wait_all([*good, poison, unknown, wrong_model, too_long, missing, *after], timeout=10)
    assert all(results[j].status == "ok" for j in good + after)
    assert results[poison].status == "error" and "poisoned input" in (results[poison].error or "")
    assert "no runner for task 'translate'" in (results[unknown].error or "")
    assert "tiny-v9" in (results[wrong_model].error or "")
    assert "over the model's context" in (results[too_long].error or "")
    assert "non-empty inputs.text" in (results[missing].error or "")
    assert stats.rejected == 4 and stats.failed == 1
    letters = DeadLetters(r, zone).list()
    assert [d.reason for d in letters] == ["tampered"]
    assert r.xpending(keys.jobs_stream(zone, "interactive"), keys.GROUP)["pending"] == 0


def test_ledger_is_charged_per_tenant(r: redis.Redis, sealer: Sealer, zone: str, tmp_path: Path) -> None:
    from broker.ledger import Ledger, PriceTable

    prices = tmp_path / "prices.yaml"
    prices.write_text(
        f"zones:\n  {zone}:\n    egress_usd_per_gb: 0.05\n    classes:\n"
        "      cpu: {on_demand_usd_per_gpu_hour: 900, spot_usd_per_gpu_hour: 300}\n"
    )
    ledger = Ledger(r, zone, PriceTable.load(prices))
    ledger.register_worker("w1", "cpu", "on_demand")
    client = Client(r, sealer, zone)
    ids = [client.submit("sleep", {"ms": 20}, tenant="school-a") for _ in range(4)]
    worker = make_worker(r, sealer, zone, builtin_runners(), ledger=ledger)
    worker.run(burst=True)
    client.wait_all(ids, timeout=10)
    spent = ledger.spend("tenant:school-a")["hour"]
    # 4 jobs x 20 ms at $0.25 per second: at least $0.02, and the worker's own busy time priced.
    assert spent >= 0.0199
    assert spent == pytest.approx(worker.stats.busy_s * 0.25, rel=0.02, abs=1e-5)
    assert ledger.spend("tenant:other")["hour"] == 0


def _worker_proc(
    redis_server: EmbeddedRedis, keyring_path: Path, zone: str, name: str, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hybrid", "worker", "run", "--redis-url", redis_server.url, "--zone", zone,
         "--keyring", str(keyring_path), "--name", name, "--tasks", "builtin", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "HYB_LOG_LEVEL": "WARNING"},
    )  # fmt: skip


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigterm_drains_and_leaves_no_pending_entries(
    redis_server: EmbeddedRedis, r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    client = Client(r, sealer, zone)
    ids = client.submit_many(JobSpec(task="sleep", inputs={"ms": 50}, lane="batch") for _ in range(200))
    proc = _worker_proc(redis_server, keyring_path, zone, "drainer", "--count", "16", "--max-in-flight", "16")
    stream = keys.jobs_stream(zone, "batch")
    _wait_for(lambda: r.exists(keys.result_key(zone, ids[0])) or r.exists(keys.result_key(zone, ids[1])), 30, "work")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # nothing it ran is left pending; what it had read ahead and not taken is given back as never delivered
    # (Redis cannot undo a delivery), for the next reclaim of any worker to take at once
    left = r.xpending_range(stream, keys.GROUP, "-", "+", 1000)
    assert all(p["times_delivered"] == 0 and p["time_since_delivered"] >= 3_600_000 for p in left), left
    done = sum(1 for j in ids if r.exists(keys.result_key(zone, j)))
    assert 0 < done < 200
    assert r.xlen(stream) == 200 - done  # every job has a result or is still waiting: none lost


@pytest.mark.slow
def test_sigkill_mid_batch_then_reclaim_gives_one_result_per_job(
    redis_server: EmbeddedRedis, r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    client = Client(r, sealer, zone)
    ids = client.submit_many(JobSpec(task="sleep", inputs={"ms": 30}, lane="batch") for _ in range(120))
    proc = _worker_proc(redis_server, keyring_path, zone, "victim", "--count", "32", "--max-in-flight", "64")
    stream = keys.jobs_stream(zone, "batch")
    _wait_for(lambda: int(r.xpending(stream, keys.GROUP)["pending"]) >= 32, 30, "the victim to hold jobs")
    proc.kill()
    proc.wait()
    held = int(r.xpending(stream, keys.GROUP)["pending"])
    assert held > 0
    rescuer = make_worker(r, sealer, zone, builtin_runners(), name="rescuer", min_idle_ms=200)
    rescuer.consumer.reclaim_interval_s = 0.1
    stop = threading.Event()
    thread = threading.Thread(target=rescuer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        results = client.wait_all(ids, timeout=60)
    finally:
        stop.set()
        thread.join(30)
    assert len(results) == 120 and {x.status for x in results.values()} == {"ok"}
    assert rescuer.consumer.stats.reclaimed >= held
    assert r.xpending(stream, keys.GROUP)["pending"] == 0 and r.xlen(stream) == 0
    # The rescuer keeps its own queued jobs alive (XCLAIM JUSTID), so none of them is reclaimed
    # from under it and run twice, though they wait in its queue longer than min-idle.
    assert rescuer.consumer.stats.duplicates == 0
    assert rescuer.stats.completed == rescuer.stats.fetched


def test_health_ready_only_after_models_load(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    gate = threading.Event()

    class SlowLoad(TinyTextModel):
        def load(self) -> None:
            gate.wait(10)
            super().load()

    worker = make_worker(r, sealer, zone, [SlowLoad()])
    registry = CollectorRegistry()
    server = HealthServer(lambda: worker.ready.is_set() and not worker.draining.is_set(), lambda: {}, registry).start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        loader = threading.Thread(target=worker.load)
        loader.start()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/ready", timeout=5)
        assert err.value.code == 503
        assert json.loads(urllib.request.urlopen(url + "/live", timeout=5).read()) == {"live": True}
        gate.set()
        loader.join(10)
        assert json.loads(urllib.request.urlopen(url + "/ready", timeout=5).read())["ready"] is True
        worker.drain(1.0)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url + "/ready", timeout=5)
    finally:
        server.stop()


def test_policy_names_reach_their_runner_through_aliases(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    class Aliased(TinyTextModel):
        aliases = (("question-classification", "qclf-xlmr-large"), ("tiny-task", "*"))

    client = Client(r, sealer, zone)
    by_policy = client.submit("question-classification", {"text": "কবে পরীক্ষা?"}, model="qclf-xlmr-large")
    any_model = client.submit("tiny-task", {"text": "hello"}, model="whatever")
    wrong = client.submit("question-classification", {"text": "x"}, model="qclf-other")
    make_worker(r, sealer, zone, [Aliased()]).run(burst=True)
    res = client.wait_all([by_policy, any_model, wrong], timeout=10)
    assert res[by_policy].status == "ok" and res[any_model].status == "ok"
    assert res[wrong].status == "error" and "qclf-other" in (res[wrong].error or "")


def test_batch_policy_override_flushes_partial_batches(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    model = TinyTextModel()
    client = Client(r, sealer, zone)
    ids = [client.submit("tiny", {"text": f"few {i}"}) for i in range(3)]
    policy = BatchPolicy(max_batch_size=32, preferred_min=8, max_queue_delay_ms=5)
    make_worker(r, sealer, zone, [model], policies={("tiny", "tiny-v1"): policy}).run(burst=True)
    assert {res.status for res in client.wait_all(ids, timeout=10).values()} == {"ok"}
    assert [len(b) for b in model.batches] == [3]  # fewer than preferred_min, flushed by the delay
