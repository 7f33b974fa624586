"""Alert rules and the Grafana dashboard: `promtool check rules`, `promtool test rules`, a mutated rule
fails its unit test, every dashboard query is valid PromQL, and every `hybrid_*` metric they name is
one something in this repository exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
import yaml

from broker.ledger import CostBreaker, Ledger
from broker.message import Sealer
from broker.metrics import QueueMetrics
from tests.sre_backlog import make_backlog

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "hybrid-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (.ci/run installs prometheus)")
NAME = re.compile(r"\b(hybrid_[a-z0-9_]+|kube_[a-z0-9_]+)\b")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for g in doc["groups"] for rule in g["rules"]]


@needs_promtool
def test_alert_rules_check_and_unit_tests_pass() -> None:
    check = promtool("check", "rules", str(ALERTS))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 10 rules found" in check.stdout
    result = promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    tested = {
        t["alertname"] for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for t in case["alert_rule_test"]
    }
    assert alerts == tested  # every alert has a unit test


@needs_promtool
def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    rule = "max by (zone, scope) (hybrid_breaker_state) == "
    broken = ALERTS.read_text().replace(rule + "2", rule + "1")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yml")
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "HybridBreakerOpen" in result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$zone", ".*").replace("$worker_deployment", ".*")
        assert "$" not in concrete, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_layout() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("backlog", "lag", "oldest", "dead letters", "throughput", "batch size", "latency", "spend",
                  "breaker", "replicas"):  # fmt: skip
        assert topic in titles, topic


def exported_names(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))


def source_names(*folders: str) -> set[str]:
    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"[\"'](hybrid_[a-z0-9_]+)[\"']", path.read_text()))
    return names


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_metric_named_exists(r: redis.Redis, sealer: Sealer, zone: str, redis_server) -> None:
    make_backlog(r, sealer, zone)
    ledger = Ledger(r, zone)
    ledger.set_budget("global", "day", 10.0)
    CostBreaker(ledger).evaluate()
    exposition = QueueMetrics(redis_server.url, [zone]).exposition().decode()
    known = {base(n) for n in exported_names(exposition) | source_names("gpu_worker", "edge_agent", "broker")}
    assert {"hybrid_worker_batch_size", "hybrid_edge_requests", "hybrid_queue_backlog"} <= known
    referenced = {m for e in dashboard_exprs() + alert_exprs() for m in NAME.findall(e)}
    missing = {m for m in referenced if m.startswith("hybrid_") and base(m) not in known}
    assert not missing, f"dashboard/alerts name metrics nobody exports: {sorted(missing)}"
    external = {m for m in referenced if m.startswith("kube_")}
    assert external <= {"kube_deployment_spec_replicas", "kube_deployment_status_replicas_available"}
