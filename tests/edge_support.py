"""Helpers for the edge agent tests: a policy for the test's zone, a cloud worker thread, a pinned monitor."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from broker.consumer import Consumer, Outcome
from broker.message import Job, Sealer
from edge_agent.agent import AgentConfig, EdgeAgent
from edge_agent.device import FixedMonitor
from edge_agent.pii import Roster
from policies import Policy, default_policy_text, parse_policy

ROOT = Path(__file__).resolve().parents[1]
ROSTER = ROOT / "data" / "pii" / "roster.yaml"


def policy_for_zone(zone: str, **thresholds: float) -> Policy:
    """The default policy with its `in-wb` zone renamed to the test's zone; `thresholds` per task
    (underscores for dashes) override confidence thresholds."""
    policy = parse_policy(default_policy_text().replace("in-wb", zone))
    tasks = dict(policy.tasks)
    for name, value in thresholds.items():
        key = name.replace("_", "-")
        tasks[key] = tasks[key].model_copy(update={"confidence_threshold": value})
    return policy.model_copy(update={"tasks": tasks})


@dataclass
class CloudWorker:
    """What the GPU side would do, in a thread: open jobs, record what arrived, answer."""

    seen: list[Job] = field(default_factory=list)
    embedding_confidence: float | None = None  # None: the embedding head's answers carry no confidence

    def handle(self, jobs: list[Job]) -> Sequence[Outcome]:
        out: list[Outcome] = []
        for job in jobs:
            self.seen.append(job)
            inputs = job.payload.inputs
            if "text" in inputs:
                out.append({"label": "cloud:" + job.header.task, "echo": inputs["text"], "model": job.header.model})
            else:
                answer = {"label": "cloud-from-embedding", "dim": inputs.get("dim"), "model": job.header.model}
                if self.embedding_confidence is not None:
                    answer["confidence"] = self.embedding_confidence
                out.append(answer)
        return out


@contextmanager
def cloud_worker(
    client: redis.Redis, sealer: Sealer, zone: str, *, embedding_confidence: float | None = None
) -> Iterator[CloudWorker]:
    worker = CloudWorker(embedding_confidence=embedding_confidence)
    consumer = Consumer(client, sealer, zone, "gpu-test", block_ms=50)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(worker.handle,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(timeout=10)


def make_agent(
    models: Any,
    zone: str,
    state_dir: Path,
    *,
    sealer: Sealer | None = None,
    redis_url: str | None = None,
    policy: Policy | None = None,
    utilization: float = 0.1,
    clock: Any = None,
    **config: Any,
) -> EdgeAgent:
    cfg = AgentConfig(device_id="pi-test", zone=zone, replay_interval_s=0.05, **config)
    return EdgeAgent(
        models,
        policy or policy_for_zone(zone),
        cfg,
        state_dir=state_dir,
        sealer=sealer,
        redis_url=redis_url,
        roster=Roster.load(ROSTER),
        monitor=FixedMonitor(utilization),
        bench={"classifier": {"p50_ms": 5.0, "p95_ms": 8.0}},
        clock=clock,
    )


def wait_for(predicate: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def closed_port_url() -> str:
    """A Redis URL on a loopback port nothing listens on (connection refused at once)."""
    from broker.embedded import free_port

    return f"redis://127.0.0.1:{free_port()}/0"


__all__ = [
    "CloudWorker",
    "closed_port_url",
    "cloud_worker",
    "make_agent",
    "policy_for_zone",
    "wait_for",
]


# --------------------------------------------------------------------------------- the real models


@pytest.fixture(scope="session")
def edge_models(built_models_dir: Path) -> Any:
    """The edge models built for this session (`tests/edge_fixtures.py`), verified and loaded as the agent does."""
    from edge_agent.models import EdgeModels

    return EdgeModels.load(built_models_dir)
