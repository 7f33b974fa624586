"""`hybrid policy …`: exit codes, one-line errors, and output that carries the decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hybrid.policy_cli import policy
from policies import default_policy_text, elearning_trace


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(policy, list(args))
    assert "Traceback" not in result.output + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def bad_policy(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(default_policy_text().replace("    size_mb: 68\n", "    size_mb: 900\n"), encoding="utf-8")
    return path


def test_validate_ok(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(default_policy_text(), encoding="utf-8")
    code, out, _ = run("validate", str(path))
    assert code == 0 and "ok" in out
    assert run("validate", "default")[0] == 0


def test_validate_reports_file_line_and_field_with_exit_1(bad_policy: Path) -> None:
    code, _, err = run("validate", str(bad_policy))
    line = default_policy_text().splitlines().index("    size_mb: 68") + 1
    assert code == 1
    assert f"{bad_policy}:{line}: models[0].size_mb: " in err


def test_validate_missing_file_is_usage_error(tmp_path: Path) -> None:
    code, _, err = run("validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and err.strip().count("\n") == 0 and "no such file" in err


def test_explain_prints_route_and_reasons() -> None:
    request = json.dumps({"id": "q1", "task": "question-classification", "sensitivity": "personal"})
    code, out, _ = run("explain", "default", "--request", request, "--device", '{"utilization": 0.85}')
    assert code == 0
    assert "cloud" in out and "embed" in out
    assert "local utilization 0.85 ≥ threshold 0.70" in out


def test_explain_json_with_cascade() -> None:
    request = json.dumps({"id": "q1", "task": "question-classification", "sensitivity": "public"})
    code, out, _ = run("explain", "default", "--request", request, "--confidence", "0.2", "--json")
    assert code == 0
    first, second = json.loads(out)
    assert first["decision"]["route"] == "local" and first["estimate"]["bytes_out"] == 0
    assert second["decision"]["route"] == "cloud" and second["estimate"]["bytes_out"] > 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--request", '{"id": "q1", "task"'], "not valid JSON"),
        (["--request", "[1, 2]"], "must be a JSON object"),
        (["--request", '{"id": "q1", "task": "summarization", "colour": 1}'], "unknown field 'colour'"),
        (["--request", '{"id": "q1", "task": "summarization", "sensitivity": "secret"}'], "sensitivity"),
        (["--request", '{"id": "q1", "task": "summarization"}', "--device", '{"utilization": 3}'], "utilization"),
        (["--request", '{"id": "q1", "task": "essay-grading"}', "--confidence", "0.5"], "--confidence applies"),
    ],
)
def test_explain_bad_input_is_one_line_exit_2(args: list[str], words: str) -> None:
    code, _, err = run("explain", "default", *args)
    assert code == 2
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and words in err


def test_explain_with_an_invalid_policy_is_exit_2(bad_policy: Path) -> None:
    code, _, err = run("explain", str(bad_policy), "--request", '{"id": "a", "task": "summarization"}')
    assert code == 2 and "models[0].size_mb" in err and err.strip().count("\n") == 0


def test_simulate_generator_spec_json() -> None:
    code, out, _ = run("simulate", "default", "--trace", "elearning:day=1,seed=7,students=40", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["requests"] == len(elearning_trace(days=1, seed=7, students=40))
    assert {r["route"] for r in report["routes"]} == {"local", "cloud", "fallback", "reject"}


def test_trace_command_writes_jsonl_that_simulate_reads(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    code, _, _ = run("trace", "elearning:days=1,seed=3,students=30", "-o", str(path))
    assert code == 0
    assert len(path.read_text().splitlines()) == len(elearning_trace(days=1, seed=3, students=30))
    code, out, _ = run("simulate", "default", "--trace", str(path), "--zone", "bd-dhaka", "--outage", "3600-7200")
    assert code == 0
    assert "essay-grading" in out and "always-cloud" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--trace", "nope.jsonl"], "no such file"),
        (["--trace", "elearning:hours=2"], "bad trace parameter"),
        (["--trace", "elearning", "--zone", "np-ktm"], "not defined"),
        (["--trace", "elearning", "--outage", "9-3"], "START < END"),
        (["--trace", "elearning", "--outage", "soon"], "START-END"),
    ],
)
def test_simulate_bad_input_is_one_line_exit_2(args: list[str], words: str) -> None:
    code, _, err = run("simulate", "default", *args)
    assert code == 2
    assert err.startswith("error: ") and err.strip().count("\n") == 0 and words in err


def test_simulate_bad_trace_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"at_s": 1, "request": {"id": "a", "task": "summarization"}}\nnot json\n')
    code, _, err = run("simulate", "default", "--trace", str(path))
    assert code == 2 and f"{path}:2" in err
