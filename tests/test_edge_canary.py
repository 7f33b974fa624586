"""The policy's canary split picks the classifier version the edge agent runs; rollback takes effect at once.

Real models: the session's built models are copied into a models dir of the test's own, where a second,
signed version of the classifier is installed (the same weights at another softmax temperature, so its
answers are told apart by confidence as well as by the version the agent reports).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from broker.registry import ModelRegistry, load_signing_key
from edge_agent.agent import EdgeRequest
from edge_agent.models import EdgeModels
from edge_agent.models.runtime import CLASSIFIER, EDGE_MODELS
from policies import Policy
from policies.model import ModelVersion
from tests.edge_fixtures import BuiltModels
from tests.edge_support import make_agent, policy_for_zone

CANARY = "9.9.0-canary"
QUESTION = "What is the derivative of x squared?"
N = 200


def canary_policy(zone: str, split: list[tuple[str, float]]) -> Policy:
    """The test zone's policy with a confident threshold and `split` as the edge model's versions."""
    policy = policy_for_zone(zone, question_classification=0.0)
    edge_model = policy.tasks["question-classification"].edge_model
    versions = tuple(ModelVersion(version=v, canary_percent=p) for v, p in split)
    models = tuple(m.model_copy(update={"versions": versions}) if m.name == edge_model else m for m in policy.models)
    return policy.model_copy(update={"models": models})


def models_with_canary(built: BuiltModels, root: Path) -> tuple[ModelRegistry, str]:
    """A copy of the built edge models plus classifier version CANARY (signed, not active)."""
    source = ModelRegistry(built.root)
    registry = ModelRegistry(root)
    for name in EDGE_MODELS:
        version = source.active_version(name)
        shutil.copytree(built.root / name / version, root / name / version)
        registry.activate(name, version)
    active = registry.active_version(CLASSIFIER)
    staged = root.parent / "staged-canary"
    shutil.copytree(root / CLASSIFIER / active, staged)
    for f in ("manifest.json", "manifest.sig"):
        (staged / f).unlink()
    meta_path = staged / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["metadata"]["temperature"] = float(meta["metadata"].get("temperature", 1.0)) * 3.0
    meta_path.write_text(json.dumps(meta))
    registry.install(CLASSIFIER, CANARY, staged, load_signing_key(built.signing_key), activate=False)
    return registry, active


def ask(agent: Any, request_id: str) -> dict[str, Any]:
    out: dict[str, Any] = agent.handle(
        EdgeRequest(text=QUESTION, task="question-classification", sensitivity="public", request_id=request_id)
    )
    assert out["route"] == "local" and out["status"] == "done"
    return out


def test_canary_split_then_rollback(built_models: BuiltModels, zone: str, tmp_path: Path) -> None:
    registry, active = models_with_canary(built_models, tmp_path / "models")
    models = EdgeModels.load(registry.root)
    assert models.versions[CLASSIFIER] == active
    agent = make_agent(models, zone, tmp_path / "state", policy=canary_policy(zone, [(active, 50.0), (CANARY, 50.0)]))
    try:
        ids = [f"req-{i:04d}" for i in range(N)]
        first = {rid: ask(agent, rid) for rid in ids}
        served = {rid: out["result"]["version"] for rid, out in first.items()}
        counts = Counter(served.values())
        assert set(counts) == {active, CANARY}
        # Binomial(200, 0.5): sd ≈ 7.1; ±4.5 sd
        assert 68 <= counts[CANARY] <= 132, counts
        # the version served is the one the policy decided, and the canary really is another model
        for out in first.values():
            assert out["result"]["version"] == out["decision"]["version"]
        conf = {out["result"]["version"]: out["result"]["confidence"] for out in first.values()}
        assert conf[CANARY] < conf[active]  # same weights, higher temperature: flatter softmax
        sample = agent.metrics.registry.get_sample_value
        assert (
            sample("hybrid_edge_local_model_versions_total", {"model": CLASSIFIER, "version": CANARY}) == counts[CANARY]
        )
        # sticky: the same request id gets the same version every time
        for rid in ids[:40]:
            assert ask(agent, rid)["result"]["version"] == served[rid]

        # promote the canary, then roll it back: it is retired, and its share goes to the active version
        registry.activate(CLASSIFIER, CANARY)
        # the policy still decides the split: both versions are installed and neither is retired
        assert all(ask(agent, rid)["result"]["version"] == served[rid] for rid in ids[:20])
        assert registry.rollback(CLASSIFIER) == (CANARY, active)
        after = {rid: ask(agent, rid) for rid in ids}
        assert {out["result"]["version"] for out in after.values()} == {active}
        canary_ids = [rid for rid, v in served.items() if v == CANARY]
        assert all(after[rid]["decision"]["version"] == CANARY for rid in canary_ids)  # the policy still asks
        assert all(after[rid]["result"]["confidence"] == conf[active] for rid in canary_ids)
    finally:
        agent.close()


def test_canary_that_fails_verification_is_not_served(built_models: BuiltModels, zone: str, tmp_path: Path) -> None:
    registry, active = models_with_canary(built_models, tmp_path / "models")
    with (registry.model_dir(CLASSIFIER, CANARY) / "weights.npz").open("ab") as fh:
        fh.write(b"tampered")
    agent = make_agent(
        EdgeModels.load(registry.root), zone, tmp_path / "state", policy=canary_policy(zone, [(CANARY, 100.0)])
    )
    try:
        outs = [ask(agent, f"req-{i}") for i in range(5)]
        assert {o["decision"]["version"] for o in outs} == {CANARY}
        assert {o["result"]["version"] for o in outs} == {active}
    finally:
        agent.close()
