"""Admission against a real Redis: watermarks with hysteresis, token buckets, in-flight caps, races.

Time is driven through the admission clock (`now_ms` passed to the script), never slept.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from broker import keys
from broker.admission import Admission, AdmissionPolicy, LaneLimits, TenantLimits, submit_paced
from broker.breaker import State
from broker.client import Client
from broker.consumer import Consumer
from broker.embedded import EmbeddedRedis
from broker.errors import AdmissionRefused, Backpressure, BudgetExceeded, ConfigError
from broker.message import JobSpec, Sealer
from broker.producer import Producer


class FakeClock:
    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


def specs(n: int, *, tenant: str = "default", lane: str = "batch") -> list[JobSpec]:
    return [JobSpec(task="noop", inputs={"i": i}, tenant=tenant, lane=lane) for i in range(n)]  # type: ignore[arg-type]


def policy(**kw: object) -> AdmissionPolicy:
    return AdmissionPolicy.model_validate(kw)


def drain(r: redis.Redis, sealer: Sealer, zone: str, n: int) -> int:
    """Complete up to `n` jobs the way a worker does (result stored, entry acked and deleted)."""
    consumer = Consumer(r, sealer, zone, "drainer", count=n, block_ms=0)
    done = consumer.fetch(count=n, block_ms=0)
    consumer.complete([(d, {}) for d in done])
    return len(done)


def backlog(r: redis.Redis, zone: str, lane: str = "batch") -> int:
    return int(r.xlen(keys.jobs_stream(zone, lane)))


def test_watermarks_pause_at_high_and_resume_only_at_low(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    adm = Admission(r, zone, policy(lanes={"batch": {"high": 10, "low": 4}}), clock=FakeClock())
    producer = Producer(r, sealer, zone, admission=adm, chunk=5)
    producer.submit_many(specs(5))
    producer.submit_many(specs(5))  # backlog 5 < 10 before the batch: admitted, reaches 10
    assert backlog(r, zone) == 10
    with pytest.raises(Backpressure) as refused:
        producer.submit_many(specs(1))
    assert refused.value.reason == "watermark" and refused.value.limit == "batch"
    assert refused.value.retry_after_s == 0.5
    assert drain(r, sealer, zone, 3) == 3  # backlog 7: under high, but paused until ≤ low
    with pytest.raises(Backpressure):
        producer.submit_many(specs(1))
    assert [s.paused for s in adm.lane_states() if s.lane == "batch"] == [True]
    drain(r, sealer, zone, 3)  # backlog 4 = low: open again
    producer.submit_many(specs(5))
    producer.submit_many(specs(1))  # 9 < 10: still open (no pause below high)
    assert backlog(r, zone) == 10
    assert adm.peak_backlog == 10
    # the other lane has its own watermarks
    producer.submit_many(specs(3, lane="interactive"))


def test_a_batch_may_overshoot_high_by_less_than_itself(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    adm = Admission(r, zone, policy(lanes={"batch": {"high": 10, "low": 2}}), clock=FakeClock())
    producer = Producer(r, sealer, zone, admission=adm, chunk=8)
    producer.submit_many(specs(8))
    producer.submit_many(specs(8))  # 8 < 10 before: admitted → 16 = high + batch - 2
    assert backlog(r, zone) == 16 <= 10 + 8 - 1
    with pytest.raises(Backpressure):
        producer.submit_many(specs(1))


def test_token_bucket_refills_with_time(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    clock = FakeClock()
    pol = policy(tenants={"acme": {"rate_per_s": 10, "burst": 5}})
    producer = Producer(r, sealer, zone, admission=Admission(r, zone, pol, clock=clock))
    producer.submit_many(specs(5, tenant="acme"))  # the full bucket
    with pytest.raises(Backpressure) as refused:
        producer.submit_many(specs(1, tenant="acme"))
    assert refused.value.reason == "rate" and refused.value.limit == "acme"
    assert refused.value.retry_after_s == pytest.approx(0.1)
    producer.submit_many(specs(3, tenant="other"))  # other tenants are not limited by acme's bucket
    clock.advance(100)  # one token back
    producer.submit_many(specs(1, tenant="acme"))
    clock.advance(250)  # 2.5 tokens: a batch of 3 is refused without spending any
    with pytest.raises(Backpressure) as refused:
        producer.submit_many(specs(3, tenant="acme"))
    assert refused.value.retry_after_s == pytest.approx(0.05)
    producer.submit_many(specs(2, tenant="acme"))
    clock.advance(60_000)  # a long pause refills to the burst, no further
    producer.submit_many(specs(5, tenant="acme"))
    with pytest.raises(Backpressure):
        producer.submit_many(specs(1, tenant="acme"))
    assert backlog(r, zone) == 5 + 3 + 1 + 2 + 5


def test_in_flight_cap_frees_on_completion_and_on_lease_expiry(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    clock = FakeClock()
    pol = policy(tenants={"acme": {"max_in_flight": 3}}, lease_s=600)
    adm = Admission(r, zone, pol, clock=clock)
    producer = Producer(r, sealer, zone, admission=adm)
    producer.submit_many(specs(3, tenant="acme"))
    with pytest.raises(Backpressure) as refused:
        producer.submit_many(specs(1, tenant="acme"))
    assert refused.value.reason == "in_flight" and adm.in_flight("acme") == 3
    assert drain(r, sealer, zone, 2) == 2  # the completion script takes them out of the set
    assert adm.in_flight("acme") == 1
    producer.submit_many(specs(2, tenant="acme"))
    # a job that never completes (dead-lettered, say) stops counting once its lease expires
    r.delete(keys.jobs_stream(zone, "batch"))
    clock.advance(600_001)
    producer.submit_many(specs(3, tenant="acme"))
    assert adm.in_flight("acme") == 3


def test_refusal_loses_nothing_the_caller_still_holds_it(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    adm = Admission(r, zone, policy(lanes={"batch": {"high": 25, "low": 5}}), clock=FakeClock())
    producer = Producer(r, sealer, zone, admission=adm, chunk=10)
    wanted = specs(50)
    with pytest.raises(Backpressure) as refused:
        producer.submit_many(wanted)
    exc = refused.value
    assert len(exc.submitted) == 30 and len(exc.unsent) == 20  # 0, 10, 20 < 25 admitted; then paused
    assert [s.inputs for s in exc.unsent] == [s.inputs for s in wanted[30:]]
    assert all(s.job_id for s in exc.unsent)  # each keeps the id it was sealed with: retrying is idempotent
    drain(r, sealer, zone, 30)
    retried = producer.submit_many(exc.unsent)
    assert retried == [s.job_id for s in exc.unsent]
    consumer = Consumer(r, sealer, zone, "check", count=100, block_ms=0)
    seen = [d.job for d in consumer.fetch(count=100, block_ms=0)]
    assert [j.payload.inputs["i"] for j in seen] == list(range(30, 50))


def test_client_gets_backpressure_with_retry_after(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    pol = policy(lanes={"interactive": {"high": 1, "low": 0}}, retry_after_s=2)
    client = Client(r, sealer, zone, admission=Admission(r, zone, pol, clock=FakeClock()))
    client.submit("noop", {"x": 1})
    with pytest.raises(Backpressure) as refused:
        client.submit("noop", {"x": 2})
    assert isinstance(refused.value, AdmissionRefused) and refused.value.retry_after_s == 2
    assert "interactive" in str(refused.value) and "retry after 2 s" in str(refused.value)
    assert [s.inputs for s in refused.value.unsent] == [{"x": 2}]


def test_without_a_policy_nothing_is_limited(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    producer = Producer(r, sealer, zone, chunk=7)
    assert len(producer.submit_many(specs(100))) == 100
    assert backlog(r, zone) == 100
    assert not r.exists(keys.admission_state(zone))


def test_paced_submit_pauses_resumes_below_low_and_drops_nothing(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    adm = Admission(r, zone, policy(lanes={"batch": {"high": 20, "low": 6}}), clock=FakeClock())
    producer = Producer(r, sealer, zone, admission=adm, chunk=5)
    events: list[str] = []

    def on_pause(exc: AdmissionRefused | None) -> None:
        events.append("resumed" if exc is None else f"paused:{exc.reason}")

    def worker_runs_while_we_wait(seconds: float) -> None:  # the "sleep": meanwhile a worker completes 4 jobs
        assert seconds == 0.5
        drain(r, sealer, zone, 4)
        events.append(f"backlog {backlog(r, zone)}")

    ids = submit_paced(producer, specs(60), on_pause=on_pause, sleep=worker_runs_while_we_wait, slice_size=10)
    # 20 admitted (the last batch at 15 < high), then paused; 16, 12 and 8 are above low: still paused
    assert events[:6] == ["paused:watermark", "backlog 16", "backlog 12", "backlog 8", "backlog 4", "resumed"]
    assert events.count("paused:watermark") == events.count("resumed") >= 2
    assert len(ids) == len(set(ids)) == 60
    drain(r, sealer, zone, 100)
    assert len(r.keys(f"{keys.zone_prefix(zone)}:result:*")) == 60  # every item ran, none was dropped


RACER = textwrap.dedent(
    """
    import sys
    from broker.admission import Admission, AdmissionPolicy
    from broker.connection import connect
    from broker.envelope import Envelope
    from broker.errors import Backpressure
    from broker.keyring import LocalKeyring
    from broker.message import JobSpec, Sealer
    from broker.producer import Producer

    url, ring, zone, batch, tries = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    r = connect(url)
    pol = AdmissionPolicy.model_validate(
        {"lanes": {"batch": {"high": 200, "low": 100}}, "tenants": {"capped": {"max_in_flight": 100}}}
    )
    producer = Producer(r, Sealer(Envelope(LocalKeyring(ring, zones=[zone]))), zone, admission=Admission(r, zone, pol))
    admitted = 0
    for i in range(tries):
        tenant = "capped" if batch == 1 else "free"
        lane = "interactive" if batch == 1 else "batch"
        try:
            spec = JobSpec(task="t", inputs={"i": i}, tenant=tenant, lane=lane)
            admitted += len(producer.submit_many([spec] * batch))
        except Backpressure:
            pass
    print(admitted)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "tries"), [(10, 40), (1, 40)], ids=["watermark", "in_flight"])
def test_eight_producer_processes_never_overshoot(
    redis_server: object, r: redis.Redis, zone: str, keyring_path: Path, batch: int, tries: int
) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, url, str(keyring_path), zone, str(batch), str(tries)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        )
        for _ in range(8)
    ]
    admitted = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    if batch == 1:  # 320 single-job tries against an in-flight cap of 100: exactly 100 get in
        assert sum(admitted) == r.xlen(keys.jobs_stream(zone, "interactive")) == 100
        assert r.zcard(keys.inflight_set(zone, "capped")) == 100
    else:  # 320 batches of 10 against high = 200: admitted only while under 200
        length = int(r.xlen(keys.jobs_stream(zone, "batch")))
        assert sum(admitted) == length
        assert 200 <= length <= 200 + batch - 1


def test_policy_file_errors_name_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "admission.toml"
    bad.write_text("[lanes.batch]\nhigh = 10\nlow = 20\n")
    with pytest.raises(ConfigError, match=r"admission\.toml: field lanes\.batch: .*low \(20\) must be below high"):
        AdmissionPolicy.load(bad)
    bad.write_text("[tenants.acme]\nrate_per_s = -3\n")
    with pytest.raises(ConfigError, match=r"field tenants\.acme\.rate_per_s"):
        AdmissionPolicy.load(bad)
    bad.write_text("[tenants.acme]\nrate = 3\n")
    with pytest.raises(ConfigError, match=r"field tenants\.acme\.rate: Extra inputs"):
        AdmissionPolicy.load(bad)
    bad.write_text("[default_tenant]\nburst = 3\n")
    with pytest.raises(ConfigError, match=r"field default_tenant: .*give rate_per_s too"):
        AdmissionPolicy.load(bad)
    bad.write_text("[lanes\n")
    with pytest.raises(ConfigError, match=r"admission\.toml: does not parse"):
        AdmissionPolicy.load(bad)
    good = tmp_path / "admission.yaml"
    good.write_text("lanes:\n  batch: {high: 100, low: 50}\ntenants:\n  acme: {rate_per_s: 5}\n")
    loaded = AdmissionPolicy.load(good)
    assert loaded.tenant("acme").bucket_size == 5 and loaded.tenant("x") == TenantLimits()
    assert loaded.lanes == {"batch": LaneLimits(high=100, low=50)}  # lanes not named are not limited
    assert loaded.max_batch(500) == 5


def test_a_mixed_batch_keeps_its_order_and_counts_each_tenant(r: redis.Redis, sealer: Sealer, zone: str) -> None:
    pol = policy(tenants={"a": {"max_in_flight": 10}, "b": {"max_in_flight": 2}})
    adm = Admission(r, zone, pol, clock=FakeClock())
    producer = Producer(r, sealer, zone, admission=adm)
    mixed = [JobSpec(task="noop", inputs={"i": i}, tenant="ab"[i % 2], lane="batch") for i in range(4)]
    ids = producer.submit_many(mixed)
    entries = r.xrange(keys.jobs_stream(zone, "batch"))
    assert [sealer.read_job_header(zone, f).job_id for _, f in entries] == ids
    assert (adm.in_flight("a"), adm.in_flight("b")) == (2, 2)
    with pytest.raises(Backpressure, match="tenant b has too many jobs in flight"):
        producer.submit_many(mixed[:2])  # a would fit, b would not: the whole batch waits
    assert adm.in_flight("a") == 2


def test_settings_turn_admission_on_and_refusals_are_counted(
    redis_server: EmbeddedRedis, keyring_path: Path, zone: str, tmp_path: Path
) -> None:
    from prometheus_client import REGISTRY

    from broker.ledger import CostBreaker, Ledger
    from broker.settings import load_settings

    limits = tmp_path / "limits.yaml"
    limits.write_text("lanes:\n  interactive: {high: 3, low: 1}\n")
    base = {"redis_url": redis_server.url, "zone": zone, "keyring": keyring_path}
    assert Client.from_settings(load_settings(**base)).producer.admission is None  # off unless asked for
    client = Client.from_settings(load_settings(**base, admission_policy=limits, budget_gate=True))
    assert client.producer.admission is not None and client.producer.admission.gate is not None

    def refused(reason: str) -> float:
        return REGISTRY.get_sample_value("hybrid_admission_refused_jobs_total", {"zone": zone, "reason": reason}) or 0

    client.submit_many(JobSpec(task="echo", inputs={}) for _ in range(3))
    with pytest.raises(Backpressure):
        client.submit_many(JobSpec(task="echo", inputs={}) for _ in range(2))
    assert refused("watermark") == 2
    CostBreaker(Ledger(client.redis, zone)).force("global", State.OPEN)
    with pytest.raises(BudgetExceeded):
        client.submit("echo", {}, lane="batch")
    assert refused("budget") == 1
