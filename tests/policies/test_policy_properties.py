"""Properties that must hold for any request, device state and valid policy."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import (
    SENSITIVITY_ORDER,
    DeviceState,
    LocalResult,
    Policy,
    Request,
    Route,
    Runtime,
    Sensitivity,
    Transform,
    choose_version,
    decide,
    default_policy_text,
    dump_policy,
    escalate,
    load_default_policy,
    parse_policy,
)
from policies.model import ModelSpec, ModelVersion

DEFAULT = load_default_policy()
BASE: dict[str, Any] = yaml.safe_load(default_policy_text())

RULE_FIELDS = {
    "transform": st.sampled_from(list(Transform)),
    "in_zone_only": st.booleans(),
    "never_leave_device": st.booleans(),
    "require_enclave": st.booleans(),
}


@st.composite
def data_classes(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """Rules for the three levels, each field non-decreasing in strictness as a valid policy needs."""
    order = list(Transform)
    columns: dict[str, list[Any]] = {}
    for field, strategy in RULE_FIELDS.items():
        values = [draw(strategy) for _ in SENSITIVITY_ORDER]
        columns[field] = sorted(values, key=order.index) if field == "transform" else sorted(values)
    levels = {level.value: {f: columns[f][i] for f in RULE_FIELDS} for i, level in enumerate(SENSITIVITY_ORDER)}
    sensitive = levels["sensitive"]
    if sensitive["transform"] is Transform.RAW and not sensitive["never_leave_device"]:
        sensitive["transform"] = draw(st.sampled_from([Transform.TOKENIZE, Transform.EMBED]))
    for rule in levels.values():
        rule["transform"] = rule["transform"].value
    return levels


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    """Valid variations of the default policy: data rules, thresholds, endpoints."""
    data: dict[str, Any] = copy.deepcopy(BASE)
    data["data_classes"] = draw(data_classes())
    data["routing"]["utilization_threshold"] = draw(st.floats(0.0, 1.0))
    for task in data["tasks"].values():
        task["accepts_embedding"] = draw(st.booleans())
        task["confidence_threshold"] = draw(st.floats(0.0, 1.0))
    for zone in data["zones"].values():
        zone["endpoints"][0]["enclave"] = draw(st.booleans())
    return Policy.model_validate(data)


requests = st.builds(
    Request,
    id=st.text(min_size=1, max_size=20),
    task=st.sampled_from([*DEFAULT.tasks, "unknown-task"]),
    sensitivity=st.sampled_from([None, *SENSITIVITY_ORDER]),
    lane=st.sampled_from([None, "interactive", "batch"]),
    input_bytes=st.integers(0, 100_000),
    max_latency_ms=st.one_of(st.none(), st.floats(1.0, 10_000.0)),
)

devices = st.builds(
    DeviceState,
    zone=st.sampled_from(["in-wb", "bd-dhaka", "np-ktm"]),
    utilization=st.floats(0.0, 1.0),
    local_latency_ms=st.dictionaries(st.sampled_from([m.name for m in DEFAULT.models]), st.floats(1.0, 5000.0)),
    cloud_reachable=st.booleans(),
    breaker_open=st.booleans(),
    model_memory_available_mb=st.floats(0.0, 2000.0),
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _leaves_raw(route: Route, transform: Transform) -> bool:
    return route is Route.CLOUD and transform is Transform.RAW


@SETTINGS
@given(policies(), requests, devices, st.floats(0.0, 1.0))
def test_sensitive_or_untagged_data_never_goes_to_the_cloud_raw(
    policy: Policy, req: Request, dev: DeviceState, confidence: float
) -> None:
    d = decide(req, dev, policy)
    if req.sensitivity in (None, Sensitivity.SENSITIVE):
        assert d.sensitivity is Sensitivity.SENSITIVE
        assert not _leaves_raw(d.route, d.transform), d.reasons
    if d.route in (Route.LOCAL, Route.FALLBACK) and d.model is not None:
        follow = escalate(
            LocalResult(request=req, device=dev, model=d.model, confidence=confidence, route=d.route), policy
        )
        if req.sensitivity in (None, Sensitivity.SENSITIVE):
            assert not _leaves_raw(follow.route, follow.transform), follow.reasons


@SETTINGS
@given(policies(), requests, devices)
def test_cloud_decisions_obey_the_data_rule(policy: Policy, req: Request, dev: DeviceState) -> None:
    d = decide(req, dev, policy)
    if d.route is not Route.CLOUD:
        return
    rule = policy.data_classes[d.sensitivity]
    assert not rule.never_leave_device
    if rule.in_zone_only:
        assert d.zone == dev.zone
    if rule.require_enclave:
        assert any(e.enclave for e in policy.zones[d.zone].endpoints if e.name == d.endpoint)  # type: ignore[index]
    order = list(Transform)
    assert order.index(d.transform) >= order.index(rule.transform)
    assert dev.cloud_reachable and not dev.breaker_open


@settings(max_examples=200, deadline=None)
@given(requests, devices)
def test_a_missing_tag_is_routed_exactly_like_sensitive(req: Request, dev: DeviceState) -> None:
    untagged = decide(req.model_copy(update={"sensitivity": None}), dev, DEFAULT)
    sensitive = decide(req.model_copy(update={"sensitivity": Sensitivity.SENSITIVE}), dev, DEFAULT)
    same = ("route", "transform", "model", "version", "zone", "endpoint", "sensitivity", "degraded")
    assert [getattr(untagged, f) for f in same] == [getattr(sensitive, f) for f in same]


@settings(max_examples=200, deadline=None)
@given(requests, devices)
def test_decide_is_deterministic(req: Request, dev: DeviceState) -> None:
    assert decide(req, dev, DEFAULT) == decide(req, dev, DEFAULT)


@pytest.mark.parametrize("split", [(90, 10), (50, 50), (95, 5), (70, 20, 10), (33.3, 33.3, 33.4), (99, 1)])
def test_canary_split_within_two_percent_over_10k_ids(split: tuple[float, ...]) -> None:
    model = ModelSpec(
        name="m",
        task="t",
        size_mb=1,
        runtime=Runtime.ONNX,
        ops_supported_locally=True,
        edge_eligible=False,
        versions=tuple(ModelVersion(version=f"v{i}", canary_percent=p) for i, p in enumerate(split)),
    )
    counts = dict.fromkeys((f"v{i}" for i in range(len(split))), 0)
    for i in range(10_000):
        version, _ = choose_version(model, f"req-{i:05d}")
        counts[version] += 1
    for i, share in enumerate(split):
        assert abs(counts[f"v{i}"] / 100.0 - share) <= 2.0, counts


def test_a_zero_share_version_never_serves() -> None:
    model = ModelSpec(
        name="m",
        task="t",
        size_mb=1,
        runtime=Runtime.ONNX,
        ops_supported_locally=True,
        edge_eligible=False,
        versions=(ModelVersion(version="old", canary_percent=100), ModelVersion(version="next", canary_percent=0)),
    )
    assert {choose_version(model, f"id-{i}")[0] for i in range(5000)} == {"old"}


def test_canary_choice_is_stable_across_processes() -> None:
    # blake2b, not hash(): a fresh interpreter with another hash seed must choose the same version.
    import os
    import subprocess
    import sys

    ids = [f"student-{i}" for i in range(50)]
    here = [choose_version(DEFAULT.model("essay-grader-large"), i)[1] for i in ids]
    code = (
        "import sys; from policies import load_default_policy, choose_version; "
        "m = load_default_policy().model('essay-grader-large'); "
        "print(','.join(str(choose_version(m, i)[1]) for i in sys.argv[1:]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code, *ids], capture_output=True, text=True, env=env, check=True)
    assert [int(b) for b in out.stdout.strip().split(",")] == here


@settings(max_examples=60, deadline=None)
@given(policies(), st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4))
def test_policy_round_trip_load_dump_load(policy: Policy, weights: list[float]) -> None:
    total = sum(weights)
    if total <= 0:
        return
    shares = [round(w * 100.0 / total, 2) for w in weights]
    shares[-1] = round(100.0 - sum(shares[:-1]), 10)
    if shares[-1] < 0:
        return
    first = policy.models[0]
    versions = tuple(ModelVersion(version=f"1.{i}.0", canary_percent=s) for i, s in enumerate(shares))
    varied = policy.model_copy(update={"models": (first.model_copy(update={"versions": versions}), *policy.models[1:])})
    text = dump_policy(varied)
    again = parse_policy(text)
    assert again == varied
    assert parse_policy(dump_policy(again)) == again
