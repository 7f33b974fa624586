"""The edge request path with the real built models, the real Redis and a worker thread for the cloud."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from broker.admission import AdmissionPolicy, TenantLimits
from broker.breaker import State
from broker.embedded import EmbeddedRedis
from broker.keys import jobs_stream
from broker.ledger import CostBreaker, Ledger
from broker.message import Sealer
from edge_agent.agent import BadRequest, EdgeRequest, ServiceUnavailable, refine
from tests import edge_support
from tests.edge_support import (
    closed_port_url,
    cloud_worker,
    make_agent,
    policy_for_zone,
    wait_for,
)

QUESTION = "What is the derivative of x squared?"
PII_TEXT = "Summarize: Rahim Uddin (rahim.uddin@example.com, 01712-345678) missed the physics class."

edge_models = edge_support.edge_models  # the session's real built models (fixture)


def metric(agent: Any, name: str, **labels: str) -> float:
    value = agent.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


def test_local_answer_when_confident(edge_models: Any, zone: str, tmp_path: Path) -> None:
    agent = make_agent(edge_models, zone, tmp_path, policy=policy_for_zone(zone, question_classification=0.0))
    out = agent.handle(EdgeRequest(text=QUESTION, task="question-classification", sensitivity="public"))
    assert out["route"] == "local" and out["status"] == "done" and not out["provisional"]
    assert out["result"]["label"] in edge_models.labels and 0 < out["result"]["confidence"] <= 1
    assert out["decision"]["route"] == "local"
    assert any("measured local latency" in r for r in out["decision"]["reasons"])
    assert agent.totals["offload_bytes"] == 0 and "job_id" not in out
    bn = agent.handle(EdgeRequest(text="পরীক্ষা কবে শুরু হবে?", task="question-classification"))
    assert bn["route"] == "local" and bn["sensitivity"] == {"level": "public", "source": "detected"}
    assert (
        metric(agent, "hybrid_edge_requests_total", task="question-classification", route="local", outcome="done") == 2
    )


def test_untagged_text_with_pii_is_personal(edge_models: Any, zone: str, tmp_path: Path) -> None:
    agent = make_agent(edge_models, zone, tmp_path, policy=policy_for_zone(zone, question_classification=0.0))
    out = agent.handle(EdgeRequest(text="Karim asks: when is the exam?", task="question-classification"))
    assert out["sensitivity"] == {"level": "personal", "source": "detected"}
    assert out["route"] == "local"  # personal data is fine on the device


def test_cascade_interactive_gets_provisional_answer_then_cloud_result(
    edge_models: Any, zone: str, tmp_path: Path, r: redis.Redis, redis_server: EmbeddedRedis, sealer: Sealer
) -> None:
    policy = policy_for_zone(zone, question_classification=1.01)  # every local answer is under it
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url, policy=policy)
    with cloud_worker(r, sealer, zone) as worker:
        out = agent.handle(EdgeRequest(text="Karim asks: " + QUESTION, task="question-classification"))
        assert out["route"] == "local" and out["provisional"] is True and out["status"] == "provisional"
        assert out["result"]["label"] in edge_models.labels
        assert out["decision"]["then"]["route"] == "cloud" and out["decision"]["then"]["transform"] == "embed"
        job_id = out["job_id"]
        wait_for(lambda: (agent.job(job_id) or {}).get("status") == "done", what="the cloud result")
        job = agent.job(job_id)
        assert job is not None and job["result"]["label"] == "cloud-from-embedding"
        assert job["local_result"]["label"] == out["result"]["label"]
        # only an embedding left the device: no text, 384 half floats
        (seen,) = worker.seen
        assert "text" not in seen.payload.inputs and len(seen.payload.inputs["embedding_f16"]) == 768
        assert seen.header.sensitivity == "personal" and seen.header.zone == zone
    assert metric(agent, "hybrid_edge_cascades_total", task="question-classification") == 1
    assert 0 < agent.totals["offload_bytes"] < 3072 and agent.totals["pii_values_left"] == 0


def test_cloud_tokenizes_pii_and_detokenizes_the_result(
    edge_models: Any, zone: str, tmp_path: Path, r: redis.Redis, redis_server: EmbeddedRedis, sealer: Sealer
) -> None:
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url)
    with cloud_worker(r, sealer, zone) as worker:
        out = agent.handle(EdgeRequest(text=PII_TEXT, task="summarization", mode="sync"))
    assert out["route"] == "cloud" and out["status"] == "done", out
    assert out["decision"]["transform"] == "tokenize" and out["decision"]["zone"] == zone
    assert out["result"]["echo"] == PII_TEXT  # the cloud's answer, detokenized on the device
    sent = worker.seen[0].payload.inputs["text"]
    for value in ("Rahim Uddin", "rahim.uddin@example.com", "01712-345678"):
        assert value not in sent
    assert sent.count("⟨PII:") == 3
    assert agent.totals["pii_tokenized"] == 3 and agent.totals["pii_values_left"] == 0
    assert metric(agent, "hybrid_edge_pii_tokenized_total", type="EMAIL") == 1
    assert metric(agent, "hybrid_edge_offload_bytes_total", zone=zone, transform="tokenize") > len(sent)


def test_public_raw_offload_counts_pii_that_left(
    edge_models: Any, zone: str, tmp_path: Path, r: redis.Redis, redis_server: EmbeddedRedis, sealer: Sealer
) -> None:
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url)
    with cloud_worker(r, sealer, zone) as worker:
        out = agent.handle(EdgeRequest(text=PII_TEXT, task="summarization", sensitivity="public", mode="sync"))
    assert out["decision"]["transform"] == "raw" and out["status"] == "done"
    assert worker.seen[0].payload.inputs["text"] == PII_TEXT  # the caller said public: sent as is
    assert agent.totals["pii_values_left"] == 3
    assert metric(agent, "hybrid_edge_pii_values_left_device_total", type="PHONE") == 1


def test_busy_device_offloads_the_embedding(
    edge_models: Any, zone: str, tmp_path: Path, r: redis.Redis, redis_server: EmbeddedRedis, sealer: Sealer
) -> None:
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url, utilization=0.95)
    with cloud_worker(r, sealer, zone):
        out = agent.handle(EdgeRequest(text=QUESTION, task="question-classification", sensitivity="personal"))
    assert out["route"] == "cloud" and out["result"]["label"] == "cloud-from-embedding"
    assert any("utilization 0.95" in reason for reason in out["decision"]["reasons"])


def test_unreachable_broker_falls_back_and_opens_the_breaker(
    edge_models: Any, zone: str, tmp_path: Path, sealer: Sealer
) -> None:
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=closed_port_url(), utilization=0.95)
    first = agent.handle(EdgeRequest(text=QUESTION, task="question-classification", sensitivity="personal"))
    assert first["route"] == "fallback" and first["fallback"] is True and first["status"] == "fallback"
    assert first["result"]["label"] in edge_models.labels and first["fallback_reason"].startswith("unreachable")
    assert agent.breaker_state() is State.OPEN
    second = agent.handle(EdgeRequest(text=QUESTION, task="question-classification", sensitivity="personal"))
    assert second["route"] == "fallback"
    assert any("unreachable" in reason for reason in second["decision"]["reasons"])  # the engine knew
    assert metric(agent, "hybrid_edge_fallbacks_total", reason="unreachable") == 2
    assert metric(agent, "hybrid_edge_breaker_state") == 2
    with pytest.raises(ServiceUnavailable, match="no local model"):
        agent.handle(EdgeRequest(text=PII_TEXT, task="summarization", mode="sync"))


def test_async_jobs_wait_in_the_outbox_and_replay_in_order_after_restart(
    edge_models: Any, zone: str, tmp_path: Path, r: redis.Redis, redis_server: EmbeddedRedis, sealer: Sealer
) -> None:
    down = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=closed_port_url())
    texts = [f"Essay {i} by Fatema Khatun about rivers of Bengal." for i in range(3)]
    ids = []
    for text in texts:
        out = down.handle(EdgeRequest(text=text, task="essay-grading"))
        assert out["status"] == "queued" and out["route"] == "cloud", out
        ids.append(out["job_id"])
    assert len(down.outbox) == 3 and down.job(ids[0])["status"] == "queued"  # type: ignore[index]
    assert r.xlen(jobs_stream(zone, "batch")) == 0
    down.close()  # the agent stops; the broker comes back; a new agent process starts on the same state

    up = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url).start()
    try:
        with cloud_worker(r, sealer, zone) as worker:
            wait_for(lambda: len(worker.seen) == 3, what="the replayed jobs")
            assert [j.job_id for j in worker.seen] == ids  # in order
            assert all("Fatema" not in j.payload.inputs["text"] for j in worker.seen)
            wait_for(lambda: all((up.job(i) or {}).get("status") == "done" for i in ids), what="results")
        done = up.job(ids[1])
        assert done is not None and done["result"]["echo"] == texts[1]  # detokenized with the vault on disk
        assert len(up.outbox) == 0 and metric(up, "hybrid_edge_outbox_replayed_total") == 3
    finally:
        up.close()


def test_full_outbox_refuses_clearly(edge_models: Any, zone: str, tmp_path: Path, sealer: Sealer) -> None:
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=closed_port_url(), outbox_max_items=1)
    agent.handle(EdgeRequest(text="essay one", task="essay-grading"))
    with pytest.raises(ServiceUnavailable, match="outbox full"):
        agent.handle(EdgeRequest(text="essay two", task="essay-grading"))
    assert metric(agent, "hybrid_edge_outbox_refused_total") == 1 and len(agent.outbox) == 1


def test_backpressure_gives_the_fallback(
    edge_models: Any, zone: str, tmp_path: Path, redis_server: EmbeddedRedis, sealer: Sealer
) -> None:
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url, utilization=0.95)
    agent.admission_policy = AdmissionPolicy(default_tenant=TenantLimits(max_in_flight=1))
    req = EdgeRequest(text=QUESTION, task="question-classification", sensitivity="personal", mode="async")
    assert agent.handle(req)["status"] == "pending"  # admitted, nobody works on it: in flight
    sync = EdgeRequest(text=QUESTION, task="question-classification", sensitivity="personal")
    out = agent.handle(sync)
    assert out["route"] == "fallback" and out["fallback_reason"].startswith("backpressure")
    assert agent.breaker_state() is State.CLOSED  # the broker answered: reachable


def test_spent_budget_gives_the_fallback(
    edge_models: Any, zone: str, tmp_path: Path, r: redis.Redis, redis_server: EmbeddedRedis, sealer: Sealer
) -> None:
    CostBreaker(Ledger(r, zone)).force("global", State.OPEN)
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url, utilization=0.95)
    agent.budget_gate = True
    agent.admission_policy = AdmissionPolicy()
    req = EdgeRequest(text=QUESTION, task="question-classification", sensitivity="personal")
    out = agent.handle(req)
    assert out["route"] == "fallback" and out["fallback_reason"].startswith("budget")
    again = agent.handle(req)  # the device now knows: the engine routes to the fallback itself
    assert any("cost breaker is open" in reason for reason in again["decision"]["reasons"])


def test_bad_requests(edge_models: Any, zone: str, tmp_path: Path) -> None:
    agent = make_agent(edge_models, zone, tmp_path, max_text_chars=100)
    with pytest.raises(BadRequest, match="empty"):
        agent.handle(EdgeRequest(text="   ", task="question-classification"))
    with pytest.raises(BadRequest, match="over the limit of 100") as exc:
        agent.handle(EdgeRequest(text="x" * 101, task="question-classification"))
    assert exc.value.status == 413
    with pytest.raises(BadRequest, match="unknown task 'poetry'"):
        agent.handle(EdgeRequest(text="hi", task="poetry"))
    assert agent.handle(EdgeRequest(text=QUESTION, task="question-classification"))["status"] in ("done", "fallback")


def test_async_cascade_answers_at_once(
    edge_models: Any, zone: str, tmp_path: Path, r: redis.Redis, redis_server: EmbeddedRedis, sealer: Sealer
) -> None:
    policy = policy_for_zone(zone, question_classification=1.01)
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url, policy=policy)
    req = EdgeRequest(text=QUESTION, task="question-classification", mode="async", interactive=False)
    out = agent.handle(req)
    assert out["status"] == "pending" and out["provisional"] is True and out["result"]["label"] in edge_models.labels
    assert r.xlen(jobs_stream(zone, "batch")) == 1  # the cascade went to the batch lane, nobody waited for it
    assert agent.job(out["job_id"])["status"] == "pending"  # type: ignore[index]


def test_concurrent_requests_share_one_agent(
    edge_models: Any, zone: str, tmp_path: Path, r: redis.Redis, redis_server: EmbeddedRedis, sealer: Sealer
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url)
    reqs = [
        EdgeRequest(text=f"Student {i}: {QUESTION}", task="question-classification", sensitivity="public")
        if i % 2
        else EdgeRequest(text=f"Notes of Karim Hossain, page {i}", task="summarization", mode="sync")
        for i in range(24)
    ]
    with cloud_worker(r, sealer, zone), ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(agent.handle, reqs))
    for req, out in zip(reqs, outs, strict=True):
        if req.task == "summarization":
            assert out["status"] == "done" and out["result"]["echo"] == req.text  # each its own, detokenized
        else:
            assert out["route"] in ("local", "cloud") and out["status"] in ("done", "provisional")
    assert agent.totals["pii_tokenized"] == 12 and len(agent.vault) == 1  # one name, one token


def test_a_zone_without_a_key_on_the_device_falls_back(
    edge_models: Any, zone: str, tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    from broker.envelope import Envelope
    from broker.keyring import LocalKeyring

    LocalKeyring.init_zone(tmp_path / "k.json", "elsewhere")
    foreign = Sealer(Envelope(LocalKeyring(tmp_path / "k.json", zones=["elsewhere"])))
    agent = make_agent(edge_models, zone, tmp_path / "s", sealer=foreign, redis_url=redis_server.url, utilization=0.95)
    out = agent.handle(EdgeRequest(text=QUESTION, task="question-classification", sensitivity="personal"))
    assert out["route"] == "fallback" and out["fallback_reason"].startswith("no_key: cannot seal for zone")
    with pytest.raises(ServiceUnavailable, match="no local model"):
        agent.handle(EdgeRequest(text="essay", task="essay-grading"))  # async, but nothing can seal it
    assert agent.breaker_state() is State.CLOSED and len(agent.outbox) == 0


@pytest.mark.parametrize(("cloud_confidence", "answered_by"), [(0.0, "local"), (1.0, "cloud")])
def test_a_cascade_from_an_embedding_keeps_the_more_confident_answer(
    edge_models: Any, zone: str, tmp_path: Path, r: redis.Redis, redis_server: EmbeddedRedis, sealer: Sealer,
    cloud_confidence: float, answered_by: str,
) -> None:  # fmt: skip
    """The cloud's head saw only an embedding of a question with PII: it replaces the device's answer
    only when it is more confident (`edge_agent.agent.refine`)."""
    policy = policy_for_zone(zone, question_classification=1.01)  # every local answer cascades
    agent = make_agent(edge_models, zone, tmp_path, sealer=sealer, redis_url=redis_server.url, policy=policy)
    with cloud_worker(r, sealer, zone, embedding_confidence=cloud_confidence):
        out = agent.handle(EdgeRequest(text="Karim asks: " + QUESTION, task="question-classification"))
        assert out["decision"]["then"]["transform"] == "embed" and out["status"] == "provisional"
        local = out["result"]
        wait_for(lambda: (agent.job(out["job_id"]) or {}).get("status") == "done", what="the cloud result")
        job = agent.job(out["job_id"])
    assert job is not None and job["answered_by"] == answered_by
    assert job["local_result"] == local and job["cloud_result"]["label"] == "cloud-from-embedding"
    assert job["result"] == (local if answered_by == "local" else job["cloud_result"])


def test_refine_trusts_the_cloud_unless_it_saw_only_an_embedding_and_is_less_sure() -> None:
    local, cloud = {"label": "math", "confidence": 0.6}, {"label": "science", "confidence": 0.4}
    assert refine(local, cloud, "embed") == (local, "local")
    assert refine(local, {**cloud, "confidence": 0.9}, "embed") == ({**cloud, "confidence": 0.9}, "cloud")
    assert refine(local, cloud, "tokenize") == (cloud, "cloud")  # the cloud read the (tokenized) text
    assert refine(local, cloud, "raw") == (cloud, "cloud")
    assert refine(local, {"label": "science"}, "embed") == ({"label": "science"}, "cloud")  # nothing to compare
    assert refine(None, cloud, "embed") == (cloud, "cloud")
