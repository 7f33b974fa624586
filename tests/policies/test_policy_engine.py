"""Table-driven: every branch of the decision map, and of the confidence cascade."""

from __future__ import annotations

from typing import Any

import pytest

from policies import (
    DeviceState,
    LocalResult,
    Policy,
    Request,
    Route,
    Sensitivity,
    Transform,
    cloud_inference_usd,
    decide,
    default_policy_text,
    escalate,
    load_default_policy,
    parse_policy,
)

DEFAULT = load_default_policy()
TEXT = default_policy_text()


def policy_with(*edits: tuple[str, str]) -> Policy:
    text = TEXT
    for old, new in edits:
        assert text.count(old) >= 1, old
        text = text.replace(old, new)
    return parse_policy(text, source="edited")


NO_QCLF_FALLBACK = policy_with(("    fallback: qclf-bn-distil\n", ""))
NO_ESSAY_FALLBACK = policy_with(("    fallback: essay-grader-distil\n", ""))
OPS_UNSUPPORTED = policy_with(
    (
        "    runtime: onnx\n    ops_supported_locally: true\n    edge_eligible: true\n    local_latency_ms: 38",
        "    runtime: onnx\n    ops_supported_locally: false\n    edge_eligible: true\n    local_latency_ms: 38",
    )
)
PERSONAL_EMBED_ONLY = policy_with(
    (
        "  personal:                     # names, roll numbers, a student's own writing\n    transform: tokenize",
        "  personal:\n    transform: embed",
    ),
    (
        "  sensitive:                    # health, family, caste or religion details, "
        "minors' records\n    transform: tokenize",
        "  sensitive:\n    transform: embed",
    ),
)
SENSITIVE_STAYS = policy_with(
    (
        "    in_zone_only: true\n    require_enclave: true",
        "    in_zone_only: true\n    never_leave_device: true\n    require_enclave: true",
    )
)
NO_ENCLAVES = policy_with(("        enclave: true", "        enclave: false"))
INTERACTIVE_ONLY = policy_with(("        lanes: [interactive, batch]", "        lanes: [interactive]"))


def device(**overrides: Any) -> DeviceState:
    state: dict[str, Any] = {"zone": "in-wb", "utilization": 0.1, "model_memory_available_mb": 600.0}
    return DeviceState.model_validate(state | overrides)


def request(task: str = "question-classification", sensitivity: str | None = "public", **extra: Any) -> Request:
    return Request.model_validate({"id": "req-1", "task": task, "sensitivity": sensitivity} | extra)


Q, S, E = "question-classification", "summarization", "essay-grading"

# (policy, request, device overrides, route, transform, model, zone, degraded, a reason that must be given)
DECIDE = [
    pytest.param(
        DEFAULT,
        request(Q),
        {},
        Route.LOCAL,
        Transform.RAW,
        "qclf-bn-distil",
        None,
        False,
        "local utilization 0.10 < threshold 0.70",
        id="local-all-conditions-met",
    ),
    pytest.param(
        DEFAULT,
        request("translation"),
        {},
        Route.REJECT,
        Transform.RAW,
        None,
        None,
        False,
        "task 'translation' is not defined",
        id="unknown-task-rejected",
    ),
    pytest.param(
        DEFAULT,
        request(E),
        {},
        Route.CLOUD,
        Transform.RAW,
        "essay-grader-large",
        "in-wb",
        False,
        "'essay-grader-large' is not edge-eligible (3400 MB, torch)",
        id="model-not-edge-eligible",
    ),
    pytest.param(
        OPS_UNSUPPORTED,
        request(Q),
        {},
        Route.CLOUD,
        Transform.RAW,
        "qclf-xlmr-large",
        "in-wb",
        False,
        "uses operators the edge runtime does not support",
        id="ops-not-supported-locally",
    ),
    pytest.param(
        DEFAULT,
        request(Q),
        {"model_memory_available_mb": 50.0},
        Route.CLOUD,
        Transform.RAW,
        "qclf-xlmr-large",
        "in-wb",
        False,
        "needs 68 MB, the device has 50 MB available",
        id="device-memory-too-small-now",
    ),
    pytest.param(
        DEFAULT,
        request(Q),
        {"utilization": 0.85},
        Route.CLOUD,
        Transform.RAW,
        "qclf-xlmr-large",
        "in-wb",
        False,
        "local utilization 0.85 ≥ threshold 0.70",
        id="utilization-over-threshold",
    ),
    pytest.param(
        DEFAULT,
        request(Q),
        {"utilization": 0.7},
        Route.CLOUD,
        Transform.RAW,
        "qclf-xlmr-large",
        "in-wb",
        False,
        "0.70 ≥ threshold 0.70",
        id="utilization-at-threshold-is-over",
    ),
    pytest.param(
        DEFAULT,
        request(Q),
        {"local_latency_ms": {"qclf-bn-distil": 140.0}},
        Route.CLOUD,
        Transform.RAW,
        "qclf-xlmr-large",
        "in-wb",
        False,
        "measured local latency of 'qclf-bn-distil' 140 ms > SLO 100 ms",
        id="measured-latency-misses-slo",
    ),
    pytest.param(
        DEFAULT,
        request(Q),
        {"local_latency_ms": {"qclf-bn-distil": 100.0}},
        Route.LOCAL,
        Transform.RAW,
        "qclf-bn-distil",
        None,
        False,
        "100 ms ≤ SLO 100 ms",
        id="latency-equal-to-slo-is-met",
    ),
    pytest.param(
        DEFAULT,
        request(Q, max_latency_ms=20),
        {},
        Route.CLOUD,
        Transform.RAW,
        "qclf-xlmr-large",
        "in-wb",
        False,
        "asks for 20 ms, tighter than the task SLO 100 ms",
        id="request-tighter-than-slo",
    ),
    pytest.param(
        DEFAULT,
        request(Q, sensitivity=None),
        {"utilization": 0.9},
        Route.CLOUD,
        Transform.EMBED,
        "qclf-xlmr-large",
        "in-wb",
        False,
        "no sensitivity tag: treated as 'sensitive'",
        id="missing-tag-is-most-sensitive",
    ),
    pytest.param(
        DEFAULT,
        request(Q, "personal"),
        {"utilization": 0.9},
        Route.CLOUD,
        Transform.EMBED,
        "qclf-xlmr-large",
        "in-wb",
        False,
        "takes an embedding instead",
        id="personal-embedding-if-task-allows",
    ),
    pytest.param(
        DEFAULT,
        request(S, "personal"),
        {"utilization": 0.9},
        Route.CLOUD,
        Transform.TOKENIZE,
        "summarizer-large",
        "in-wb",
        False,
        "'personal' data may leave the device as 'tokenize'",
        id="personal-tokenized",
    ),
    pytest.param(
        DEFAULT,
        request(E, "personal"),
        {"zone": "bd-dhaka"},
        Route.CLOUD,
        Transform.TOKENIZE,
        "essay-grader-large",
        "bd-dhaka",
        False,
        "'personal' data stays in zone: target 'bd-dhaka'",
        id="personal-stays-in-device-zone",
    ),
    pytest.param(
        DEFAULT,
        request(E, "public"),
        {"zone": "bd-dhaka"},
        Route.CLOUD,
        Transform.RAW,
        "essay-grader-large",
        "in-wb",
        False,
        "'in-wb' is the cheapest with an endpoint for lane 'batch'",
        id="public-goes-to-cheapest-zone",
    ),
    pytest.param(
        PERSONAL_EMBED_ONLY,
        request(S, "personal"),
        {"utilization": 0.9},
        Route.FALLBACK,
        Transform.RAW,
        "summarizer-bn-small",
        None,
        True,
        "may leave only as an embedding, and task 'summarization'",
        id="embed-only-but-task-needs-text",
    ),
    pytest.param(
        PERSONAL_EMBED_ONLY,
        request(Q, "personal"),
        {"utilization": 0.9},
        Route.CLOUD,
        Transform.EMBED,
        "qclf-xlmr-large",
        "in-wb",
        False,
        "'personal' data may leave the device as 'embed'",
        id="embed-only-and-task-accepts",
    ),
    pytest.param(
        SENSITIVE_STAYS,
        request(E, "sensitive"),
        {},
        Route.FALLBACK,
        Transform.RAW,
        "essay-grader-distil",
        None,
        True,
        "'sensitive' data never leaves the device",
        id="never-leave-device",
    ),
    pytest.param(
        DEFAULT,
        request(E, "personal"),
        {"zone": "np-ktm"},
        Route.FALLBACK,
        Transform.RAW,
        "essay-grader-distil",
        None,
        True,
        "zone 'np-ktm' is not defined",
        id="device-zone-unknown",
    ),
    pytest.param(
        NO_ENCLAVES,
        request(E, "sensitive"),
        {},
        Route.FALLBACK,
        Transform.RAW,
        "essay-grader-distil",
        None,
        True,
        "no endpoint with an enclave serves lane 'batch' in zone(s) in-wb",
        id="enclave-required-none-available",
    ),
    pytest.param(
        NO_ENCLAVES,
        request(E, "personal"),
        {},
        Route.CLOUD,
        Transform.TOKENIZE,
        "essay-grader-large",
        "in-wb",
        False,
        "stays in zone",
        id="personal-needs-no-enclave",
    ),
    pytest.param(
        INTERACTIVE_ONLY,
        request(E, "public"),
        {},
        Route.FALLBACK,
        Transform.RAW,
        "essay-grader-distil",
        None,
        True,
        "no endpoint serves lane 'batch' in zone(s) in-wb, bd-dhaka",
        id="no-endpoint-for-lane",
    ),
    pytest.param(
        DEFAULT,
        request(E),
        {"cloud_reachable": False},
        Route.FALLBACK,
        Transform.RAW,
        "essay-grader-distil",
        None,
        True,
        "the cloud is unreachable",
        id="cloud-unreachable-fallback",
    ),
    pytest.param(
        DEFAULT,
        request(E),
        {"breaker_open": True},
        Route.FALLBACK,
        Transform.RAW,
        "essay-grader-distil",
        None,
        True,
        "cost breaker is open",
        id="breaker-open-fallback",
    ),
    pytest.param(
        NO_QCLF_FALLBACK,
        request(Q),
        {"utilization": 0.9, "cloud_reachable": False},
        Route.LOCAL,
        Transform.RAW,
        "qclf-bn-distil",
        None,
        True,
        "locally although it is over its threshold",
        id="no-fallback-local-over-threshold",
    ),
    pytest.param(
        DEFAULT,
        request(E),
        {"cloud_reachable": False, "model_memory_available_mb": 100.0},
        Route.REJECT,
        Transform.RAW,
        None,
        None,
        False,
        "'essay-grader-distil' needs 380 MB, the device has 100 MB",
        id="fallback-does-not-fit-rejected",
    ),
    pytest.param(
        NO_ESSAY_FALLBACK,
        request(E),
        {"cloud_reachable": False},
        Route.REJECT,
        Transform.RAW,
        None,
        None,
        False,
        "'essay-grader-large' has no distilled fallback",
        id="no-fallback-no-local-rejected",
    ),
]


@pytest.mark.parametrize(("policy", "req", "dev", "route", "transform", "model", "zone", "degraded", "reason"), DECIDE)
def test_decide(
    policy: Policy,
    req: Request,
    dev: dict[str, Any],
    route: Route,
    transform: Transform,
    model: str | None,
    zone: str | None,
    degraded: bool,
    reason: str,
) -> None:
    d = decide(req, device(**dev), policy)
    assert (d.route, d.transform, d.model, d.zone, d.degraded) == (route, transform, model, zone, degraded), d.reasons
    assert any(reason in r for r in d.reasons), d.reasons
    assert d.request_id == req.id
    if route is Route.CLOUD:
        assert d.endpoint is not None
        assert any(e.name == d.endpoint for e in policy.zones[d.zone].endpoints)  # type: ignore[index]
    else:
        assert d.endpoint is None
    assert (d.version is None) == (route is Route.REJECT)


def test_cheapest_zone_really_is_cheapest_by_the_cost_model() -> None:
    d = decide(request(E, "public"), device(zone="bd-dhaka"), DEFAULT)
    model = DEFAULT.model("essay-grader-large")
    costs = {z: cloud_inference_usd(model, z, d.lane, DEFAULT).total_usd for z in DEFAULT.zones}
    assert d.zone == min(costs, key=costs.__getitem__)


def test_lane_comes_from_the_task_unless_the_request_names_one() -> None:
    assert decide(request(E), device(), DEFAULT).lane.value == "batch"
    assert decide(request(E, lane="interactive"), device(), DEFAULT).lane.value == "interactive"


def test_unknown_task_keeps_the_missing_tag_as_most_sensitive() -> None:
    d = decide(request("nope", sensitivity=None), device(), DEFAULT)
    assert d.route is Route.REJECT and d.sensitivity is Sensitivity.SENSITIVE


# --------------------------------------------------------------------------------------------- cascade

ONLY_FULL_SUMMARIZER = policy_with(
    ("    model: summarizer-large\n    edge_model: summarizer-bn-small\n", "    model: summarizer-bn-small\n")
)


def result(
    model: str = "qclf-bn-distil",
    confidence: float = 0.9,
    task: str = Q,
    sensitivity: str | None = "public",
    route: Route = Route.LOCAL,
    **dev: Any,
) -> LocalResult:
    return LocalResult(
        request=request(task, sensitivity), device=device(**dev), model=model, confidence=confidence, route=route
    )


# (policy, result, route, transform, model, degraded, reason)
ESCALATE = [
    pytest.param(
        DEFAULT,
        result(confidence=0.9),
        Route.LOCAL,
        Transform.RAW,
        "qclf-bn-distil",
        False,
        "confidence 0.90 ≥ threshold 0.70",
        id="confident-keep",
    ),
    pytest.param(
        DEFAULT,
        result(confidence=0.7),
        Route.LOCAL,
        Transform.RAW,
        "qclf-bn-distil",
        False,
        "confidence 0.70 ≥ threshold 0.70",
        id="at-threshold-keep",
    ),
    pytest.param(
        DEFAULT,
        result(confidence=0.4),
        Route.CLOUD,
        Transform.RAW,
        "qclf-xlmr-large",
        False,
        "confidence 0.40 < threshold 0.70",
        id="low-confidence-escalates",
    ),
    pytest.param(
        DEFAULT,
        result(confidence=0.4, sensitivity="sensitive"),
        Route.CLOUD,
        Transform.EMBED,
        "qclf-xlmr-large",
        False,
        "stays in zone",
        id="escalation-minimizes-payload",
    ),
    pytest.param(
        DEFAULT,
        result(confidence=0.4, cloud_reachable=False),
        Route.LOCAL,
        Transform.RAW,
        "qclf-bn-distil",
        True,
        "keeping the low-confidence local answer",
        id="cannot-escalate-keep-degraded",
    ),
    pytest.param(
        DEFAULT,
        result(model="summarizer-bn-small", confidence=0.3, task=S, route=Route.FALLBACK, breaker_open=True),
        Route.FALLBACK,
        Transform.RAW,
        "summarizer-bn-small",
        True,
        "cost breaker is open",
        id="fallback-result-stays-fallback",
    ),
    pytest.param(
        ONLY_FULL_SUMMARIZER,
        result(model="summarizer-bn-small", confidence=0.3, task=S),
        Route.LOCAL,
        Transform.RAW,
        "summarizer-bn-small",
        True,
        "already the task's full model",
        id="nothing-larger-to-escalate-to",
    ),
    pytest.param(
        DEFAULT,
        result(model="gpt-9"),
        Route.REJECT,
        Transform.RAW,
        None,
        False,
        "'gpt-9' of the result is not defined",
        id="unknown-model-rejected",
    ),
    pytest.param(
        DEFAULT,
        result(route=Route.CLOUD),
        Route.REJECT,
        Transform.RAW,
        None,
        False,
        "only local or fallback results",
        id="cloud-result-rejected",
    ),
    pytest.param(
        DEFAULT,
        result(task="translation"),
        Route.REJECT,
        Transform.RAW,
        None,
        False,
        "task 'translation' is not defined",
        id="unknown-task-rejected",
    ),
]


@pytest.mark.parametrize(("policy", "res", "route", "transform", "model", "degraded", "reason"), ESCALATE)
def test_escalate(
    policy: Policy, res: LocalResult, route: Route, transform: Transform, model: str | None, degraded: bool, reason: str
) -> None:
    d = escalate(res, policy)
    assert (d.route, d.transform, d.model, d.degraded) == (route, transform, model, degraded), d.reasons
    assert any(reason in r for r in d.reasons), d.reasons


def test_decisions_are_deterministic_and_versions_follow_the_request_id() -> None:
    first = decide(request(E), device(), DEFAULT)
    assert decide(request(E), device(), DEFAULT) == first
    versions = {decide(request(E, id=f"r{i}"), device(), DEFAULT).version for i in range(400)}
    assert versions == {"3.0.0", "3.1.0"}  # both canary versions are reachable, none other
