"""The cost model's formulas, the e-learning trace generator, and simulation of traces."""

from __future__ import annotations

import math

import pytest

from policies import (
    Lane,
    Route,
    SimulationOptions,
    TraceError,
    Transform,
    bytes_leaving_device,
    cloud_inference_usd,
    default_policy_text,
    dump_trace_jsonl,
    edge_usd_per_hour,
    elearning_trace,
    load_default_policy,
    local_inference_usd,
    parse_policy,
    parse_trace_jsonl,
    parse_trace_spec,
    simulate,
)

DEFAULT = load_default_policy()


def edited(*edits: tuple[str, str]):  # type: ignore[no-untyped-def]
    text = default_policy_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    return parse_policy(text)


# ------------------------------------------------------------------------------------------- cost


def test_edge_hourly_cost_adds_amortization_maintenance_and_power() -> None:
    # 876 $ over 12 months of 730 h = 0.1 $/h; 73 $/month = 0.1 $/h; 1 kW at 0.1 $/kWh = 0.1 $/h.
    policy = edited(
        ("hardware_usd: 210", "hardware_usd: 876"),
        ("amortization_months: 36", "amortization_months: 12"),
        ("maintenance_usd_per_month: 1.5", "maintenance_usd_per_month: 73"),
        ("power_watts: 9", "power_watts: 1000"),
    )
    assert edge_usd_per_hour(policy) == pytest.approx(0.3)
    model = policy.model("qclf-bn-distil")
    assert local_inference_usd(model, policy, latency_ms=3_600_000) == pytest.approx(0.3)
    assert local_inference_usd(model, policy) == pytest.approx(0.3 * 38 / 3_600_000)


def test_cloud_cost_depends_on_capacity_class_utilization_and_egress() -> None:
    model = DEFAULT.model("essay-grader-large")
    batch = cloud_inference_usd(model, "in-wb", Lane.BATCH, DEFAULT)
    interactive = cloud_inference_usd(model, "in-wb", Lane.INTERACTIVE, DEFAULT)
    price = DEFAULT.cost.cloud["in-wb"]
    # spot $/h at 90 % busy vs on-demand $/h at 35 % busy, for 110 ms of GPU per essay
    assert batch.gpu_usd == pytest.approx(price.spot_usd_per_hour * 0.110 / 0.9 / 3600)
    assert interactive.gpu_usd == pytest.approx(price.on_demand_usd_per_hour * 0.110 / 0.35 / 3600)
    # egress: the 4096-byte answer plus 512 bytes of envelope at the zone's $/GB
    assert batch.egress_usd == pytest.approx(price.egress_usd_per_gb * 4608 / 1e9)
    assert batch.total_usd == pytest.approx(batch.gpu_usd + batch.egress_usd)
    dhaka = cloud_inference_usd(model, "bd-dhaka", Lane.BATCH, DEFAULT)
    assert dhaka.total_usd > batch.total_usd  # bd-dhaka's prices are higher on every line


def test_models_without_figures_for_a_side_cannot_be_priced_there() -> None:
    with pytest.raises(ValueError, match="not served in the cloud"):
        cloud_inference_usd(DEFAULT.model("qclf-bn-distil"), "in-wb", Lane.INTERACTIVE, DEFAULT)
    with pytest.raises(ValueError, match="does not run on the edge"):
        local_inference_usd(DEFAULT.model("essay-grader-large"), DEFAULT)


def test_bytes_leaving_device_by_transform() -> None:
    overhead = DEFAULT.cost.message_overhead_bytes
    assert bytes_leaving_device(Transform.RAW, 10_000, DEFAULT) == 10_000 + overhead
    assert bytes_leaving_device(Transform.TOKENIZE, 10_000, DEFAULT) == 10_000 + overhead
    for size in (10, 10_000, 1_000_000):  # an embedding has the same size whatever the text
        assert bytes_leaving_device(Transform.EMBED, size, DEFAULT) == DEFAULT.edge.embedding_bytes + overhead


# ----------------------------------------------------------------------------------------- traces


def test_elearning_trace_is_deterministic_given_its_seed() -> None:
    assert elearning_trace(days=1, seed=3, students=50) == elearning_trace(days=1, seed=3, students=50)
    assert elearning_trace(days=1, seed=3, students=50) != elearning_trace(days=1, seed=4, students=50)


def test_elearning_trace_shape() -> None:
    trace = elearning_trace(days=2, seed=7, students=200)
    assert [r.at_s for r in trace] == sorted(r.at_s for r in trace)
    assert len({r.request.id for r in trace}) == len(trace)
    assert all(0 <= r.at_s < 2 * 86_400 for r in trace)

    questions = [r for r in trace if r.request.task == "question-classification"]
    hour = [0] * 24
    for r in questions:
        hour[int(r.at_s % 86_400 // 3600)] += 1
    assert sum(hour[0:6]) == 0  # nobody asks at night
    assert sum(hour[17:21]) > 2 * sum(hour[13:17])  # the homework peak
    assert sum(hour[9:13]) > 2 * sum(hour[6:9])  # the school-hours peak

    essays = [r for r in trace if r.request.task == "essay-grading"]
    assert essays and all(r.request.lane is Lane.BATCH for r in essays)
    assert all(3600 <= r.at_s % 86_400 < 3600 + 20 * 60 for r in essays)  # the nightly batch
    assert all(r.local_confidence is None for r in essays)
    assert all(r.local_confidence is not None for r in questions)

    bengali = sum(r.language == "bn" for r in questions) / len(questions)
    assert 0.55 < bengali < 0.65
    assert any(r.request.sensitivity is None for r in questions)  # some arrive untagged


def test_bengali_text_is_three_bytes_a_character() -> None:
    trace = [r for r in elearning_trace(days=1, seed=1, students=300) if r.request.task == "question-classification"]
    mean = {
        lang: sum(r.request.input_bytes for r in trace if r.language == lang) / sum(r.language == lang for r in trace)
        for lang in ("bn", "en")
    }
    assert 2.5 < mean["bn"] / mean["en"] < 3.5


def test_trace_jsonl_round_trip_and_errors() -> None:
    trace = elearning_trace(days=1, seed=2, students=20)
    assert parse_trace_jsonl(list(dump_trace_jsonl(trace))) == trace
    with pytest.raises(TraceError, match=r"t.jsonl:2: not JSON"):
        parse_trace_jsonl(['{"at_s": 1, "request": {"id": "a", "task": "summarization"}}', "{oops"], "t.jsonl")
    with pytest.raises(TraceError, match=r"t.jsonl:1: request.sensitivity"):
        parse_trace_jsonl(['{"at_s": 1, "request": {"id": "a", "task": "x", "sensitivity": "secret"}}'], "t.jsonl")


def test_trace_specs() -> None:
    spec = parse_trace_spec("elearning:day=2,seed=9")
    assert (spec.generator, spec.params) == ("elearning", {"days": 2, "seed": 9})
    assert parse_trace_spec("elearning").params == {}
    for bad, words in [
        ("wikipedia:days=1", "unknown trace generator"),
        ("elearning:hours=3", "bad trace parameter"),
        ("elearning:days=two", "needs a whole number"),
        ("elearning:days", "bad trace parameter"),
    ]:
        with pytest.raises(TraceError, match=words):
            parse_trace_spec(bad)


# ------------------------------------------------------------------------------------- simulation

TRACE = elearning_trace(days=1, seed=7, students=300)


def test_simulation_is_deterministic_and_accounts_for_every_request() -> None:
    options = SimulationOptions(zone="in-wb")
    report = simulate(TRACE, DEFAULT, options)
    assert simulate(TRACE, DEFAULT, options) == report
    assert report.requests == len(TRACE) == sum(r.count for r in report.routes) == sum(t.count for t in report.tasks)
    assert report.cloud_usd == pytest.approx(sum(o.cloud_usd for o in report.outcomes))
    assert report.total_usd == pytest.approx(report.edge_usd + report.cloud_usd)
    assert report.edge_usd == pytest.approx(edge_usd_per_hour(DEFAULT) * report.duration_hours)
    assert report.escalations == sum(o.escalated for o in report.outcomes) > 0
    essays = next(t for t in report.tasks if t.task == "essay-grading")
    assert essays.cloud == essays.count  # too big for the edge, offloaded every night


def test_busy_devices_offload_more_and_send_more_bytes() -> None:
    idle = simulate(TRACE, DEFAULT, SimulationOptions(zone="in-wb"))
    busy = simulate(TRACE, DEFAULT, SimulationOptions(zone="in-wb", base_utilization=0.8))
    count = {r.route: r.count for r in idle.routes}, {r.route: r.count for r in busy.routes}
    assert count[1][Route.CLOUD] > count[0][Route.CLOUD]
    assert count[1][Route.LOCAL] < count[0][Route.LOCAL]
    assert busy.bytes_leaving_device > idle.bytes_leaving_device


def test_an_outage_turns_offloads_into_fallbacks_inside_its_window() -> None:
    window = (3600.0, 3 * 3600.0)  # covers the nightly essay batch
    report = simulate(TRACE, DEFAULT, SimulationOptions(zone="in-wb", cloud_outages=(window,)))
    inside = [o for o in report.outcomes if window[0] <= o.at_s < window[1]]
    assert inside and all(o.route is not Route.CLOUD and not o.escalated for o in inside)
    assert any(o.route is Route.FALLBACK and o.degraded for o in inside)
    assert all(o.bytes_out == 0 for o in inside)


def test_a_spent_budget_opens_the_breaker_and_later_requests_fall_back() -> None:
    tiny = edited(("window_hours: 12, limit_usd: 15}", "window_hours: 12, limit_usd: 0.0001}"))
    report = simulate(TRACE, tiny, SimulationOptions(zone="in-wb"))
    assert report.breaker_trips >= 1
    essays = [o for o in report.outcomes if o.task == "essay-grading"]
    spent = 0.0
    for o in essays:
        if spent >= 0.0001:
            assert o.route is Route.FALLBACK
        spent += o.cloud_usd
    assert essays[0].route is Route.CLOUD and essays[-1].route is Route.FALLBACK


def test_no_outcome_sends_sensitive_data_raw() -> None:
    report = simulate(TRACE, DEFAULT, SimulationOptions(zone="bd-dhaka", base_utilization=0.9))
    ids = {r.request.id for r in TRACE if r.request.sensitivity in (None, "sensitive")}
    for o in report.outcomes:
        if o.request_id in ids and (o.route is Route.CLOUD or o.escalated):
            assert o.zone == "bd-dhaka"  # kept in the device's zone


def test_percentiles_are_ordered_and_slo_shares_are_fractions() -> None:
    report = simulate(TRACE, DEFAULT, SimulationOptions(zone="in-wb", base_utilization=0.5))
    for r in report.routes:
        if r.count:
            assert r.p50_ms is not None and r.p95_ms is not None and r.p50_ms <= r.p95_ms
    assert all(0.0 <= t.slo_met_share <= 1.0 for t in report.tasks)
    assert report.duration_hours == math.ceil(max(r.at_s for r in TRACE) / 3600)
