"""Loading, refusing and writing policy files: every refusal names the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from policies import (
    PolicyError,
    PolicyIssue,
    default_policy_text,
    dump_policy,
    load_default_policy,
    load_policy,
    parse_policy,
)

DEFAULT = default_policy_text()


def mutate(old: str, new: str, text: str = DEFAULT) -> str:
    assert text.count(old) == 1, f"{old!r} must occur exactly once in the policy"
    return text.replace(old, new)


def line_of(text: str, marker: str) -> int:
    """The 1-based number of the one line of `text` that contains `marker`."""
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if marker in line]
    assert len(lines) == 1, f"{marker!r} is on lines {lines}"
    return lines[0]


def issues_of(text: str) -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="p.yaml")
    return list(info.value.issues)


def test_default_policy_loads_with_the_case_study_zones() -> None:
    policy = load_default_policy()
    assert set(policy.zones) == {"in-wb", "bd-dhaka"}
    assert policy.routing.utilization_threshold == 0.7
    edge_models = [m for m in policy.models if m.edge_eligible]
    assert edge_models and all(m.size_mb < 600 for m in edge_models)


def test_round_trip_load_dump_load_is_equal_and_stable() -> None:
    policy = load_default_policy()
    text = dump_policy(policy)
    again = parse_policy(text)
    assert again == policy
    assert dump_policy(again) == text


def test_load_policy_from_a_file_and_errors_name_that_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(DEFAULT, encoding="utf-8")
    assert load_policy(good) == load_default_policy()

    text = mutate("  utilization_threshold: 0.7", "  utilization_threshold: 1.5")
    line = line_of(text, "utilization_threshold: 1.5")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(bad)
    assert str(info.value).startswith(f"{bad}:{line}: routing.utilization_threshold: ")


def test_missing_file_is_a_policy_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file"):
        load_policy(tmp_path / "absent.yaml")


# (old text, new text, field reported, words the message must contain, text on the line reported)
BAD_INPUT = [
    pytest.param(
        "version: 1\n", "version: 1\ncolour: red\n", "colour", "unknown key", "colour: red", id="unknown-top-level-key"
    ),
    pytest.param(
        "    local_latency_ms: 38\n",
        "    local_latency_ms: 38\n    latency: 40\n",
        "models[0].latency",
        "unknown key",
        "latency: 40",
        id="unknown-nested-key",
    ),
    pytest.param(
        "  utilization_threshold: 0.7",
        "  utilization_threshold: 1.5",
        "routing.utilization_threshold",
        "less than or equal to 1",
        "utilization_threshold: 1.5",
        id="utilization-threshold-above-1",
    ),
    pytest.param(
        "    confidence_threshold: 0.6",
        "    confidence_threshold: -0.2",
        "tasks.summarization.confidence_threshold",
        "greater than or equal to 0",
        "-0.2",
        id="confidence-below-0",
    ),
    pytest.param(
        "    size_mb: 68\n",
        "    size_mb: 900\n",
        "models[0].size_mb",
        "900 MB exceed the edge's 600 MB",
        "size_mb: 900",
        id="edge-eligible-model-too-big",
    ),
    pytest.param(
        "  personal:                     # names, roll numbers, a student's own writing\n"
        "    transform: tokenize\n    in_zone_only: true\n",
        "",
        "data_classes",
        "'personal' has no rule",
        "data_classes:",
        id="sensitivity-level-without-rule",
    ),
    pytest.param(
        "{name: bd-dhaka-batch-nightly, zone: bd-dhaka,",
        "{name: bd-dhaka-batch-nightly, zone: bd-dhka,",
        "cost.budgets[3].zone",
        "'bd-dhka' is not defined",
        "bd-dhka,",
        id="budget-zone-not-defined",
    ),
    pytest.param(
        "    bd-dhaka:\n      on_demand_usd_per_hour: 0.736",
        "    bd-ctg:\n      on_demand_usd_per_hour: 0.736",
        "cost.cloud.bd-ctg",
        "not defined under zones",
        "bd-ctg:",
        id="priced-zone-not-defined",
    ),
    pytest.param(
        "{name: in-wb-batch-nightly, zone: in-wb,",
        "{name: in-wb-batch-nightly, zone: In_WB,",
        "cost.budgets[1].zone",
        "does not match",
        "In_WB",
        id="zone-name-fails-regex",
    ),
    pytest.param(
        "  runtimes: [onnx]",
        "  runtimes: [onnx, torch]",
        "edge.runtimes",
        "never runs torch",
        "[onnx, torch]",
        id="torch-on-the-edge",
    ),
    pytest.param(
        "    versions:\n      - {version: 2.1.0, canary_percent: 90}\n      - {version: 2.2.0, canary_percent: 10}",
        "    versions:  # oops\n      - {version: 2.1.0, canary_percent: 90}\n"
        "      - {version: 2.2.0, canary_percent: 20}",
        "models[0].versions",
        "add up to 110",
        "# oops",
        id="canary-split-not-100",
    ),
    pytest.param(
        "    fallback: qclf-bn-distil",
        "    fallback: summarizer-large",
        "models[1].fallback",
        "must be edge-eligible",
        "fallback: summarizer-large",
        id="fallback-not-edge-eligible",
    ),
    pytest.param(
        "    model: essay-grader-large",
        "    model: essay-grader-xl",
        "tasks.essay-grading.model",
        "'essay-grader-xl' is not defined",
        "essay-grader-xl",
        id="task-model-not-defined",
    ),
    pytest.param(
        "    edge_model: summarizer-bn-small",
        "    edge_model: summarizer-large",
        "tasks.summarization.edge_model",
        "not edge-eligible",
        "edge_model: summarizer-large",
        id="edge-model-not-eligible",
    ),
    pytest.param(
        "    transform: tokenize\n    in_zone_only: true\n    require_enclave: true",
        "    transform: raw  # oops\n    in_zone_only: true\n    require_enclave: true",
        "data_classes.sensitive.transform",
        "may not leave the device raw",
        "# oops",
        id="sensitive-raw",
    ),
    pytest.param(
        "    transform: tokenize\n    in_zone_only: true\n    require_enclave: true",
        "    transform: tokenize\n    in_zone_only: false  # oops\n    require_enclave: true",
        "data_classes.sensitive.in_zone_only",
        "at least as strict as 'personal'",
        "# oops",
        id="levels-not-monotonic",
    ),
    pytest.param(
        "    url: rediss://redis.bd-dhaka.sovereign.example:6380",
        "    url: redis.bd-dhaka:6380",
        "zones.bd-dhaka.endpoints[0].url",
        "does not match",
        "redis.bd-dhaka:6380",
        id="endpoint-url-without-scheme",
    ),
    pytest.param(
        "    edge_eligible: true\n    local_latency_ms: 38\n",
        "    edge_eligible: true  # oops\n",
        "models[0].edge_eligible",
        "no local_latency_ms",
        "# oops",
        id="edge-model-without-latency",
    ),
]


@pytest.mark.parametrize(("old", "new", "field", "words", "marker"), BAD_INPUT)
def test_bad_input_is_refused_with_file_line_and_field(old: str, new: str, field: str, words: str, marker: str) -> None:
    text = mutate(old, new)
    issues = issues_of(text)
    matching = [i for i in issues if i.field == field]
    assert matching, f"no issue for {field}: {[str(i) for i in issues]}"
    issue = matching[0]
    assert issue.source == "p.yaml"
    assert words in issue.message
    assert issue.line == line_of(text, marker), str(issue)


def test_missing_required_field_points_at_its_section() -> None:
    text = mutate("  model_memory_mb: 600          # practical ceiling for models on the HAT's NPU\n", "")
    issue = next(i for i in issues_of(text) if i.field == "edge.model_memory_mb")
    assert "missing" in issue.message
    assert issue.line == line_of(text, "device: Raspberry Pi") - 1  # the line of `edge:` above it


def test_several_problems_are_all_reported() -> None:
    text = mutate("    size_mb: 68\n", "    size_mb: 900\n")
    text = mutate("    model: essay-grader-large", "    model: essay-grader-xl", text)
    fields = {i.field for i in issues_of(text)}
    assert {"models[0].size_mb", "tasks.essay-grading.model"} <= fields


def test_duplicate_keys_are_refused_not_silently_overwritten() -> None:
    text = mutate("  utilization_threshold: 0.7", "  utilization_threshold: 0.7\n  utilization_threshold: 0.2")
    issues = issues_of(text)
    line = line_of(text, "utilization_threshold: 0.2")
    assert [(i.line, i.field) for i in issues] == [(line, "utilization_threshold")]


def test_yaml_syntax_error_names_its_line() -> None:
    text = mutate("  runtimes: [onnx]", "  runtimes: [onnx")
    line = line_of(text, "runtimes: [onnx")
    (issue,) = issues_of(text)
    assert "YAML syntax error" in issue.message
    assert issue.line is not None and line <= issue.line <= line + 2


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_a_policy_must_be_a_mapping(text: str) -> None:
    (issue,) = issues_of(text)
    assert "mapping" in issue.message


def test_dump_is_plain_yaml_without_python_tags() -> None:
    dumped = dump_policy(load_default_policy())
    assert "!!python" not in dumped
    assert yaml.safe_load(dumped)["zones"]["in-wb"]["endpoints"][0]["name"] == "in-wb-kolkata-1"
