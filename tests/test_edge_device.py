"""Device state: cached utilization, the capability report and its heartbeat in the real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

from broker import keys
from edge_agent.device import DeviceMonitor, Heartbeat, capabilities, list_devices, time_calls


def test_monitor_caches_and_refreshes_in_background() -> None:
    mon = DeviceMonitor(refresh_s=0.05)
    first = mon.snapshot()
    assert mon.snapshot() is first  # reading never measures
    assert 0.0 <= first.utilization <= 1.0 and first.memory_total_mb > 0
    mon.start()
    try:
        deadline = time.monotonic() + 5
        while mon.samples < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mon.samples >= 3
        assert mon.snapshot().taken_at > first.taken_at
    finally:
        mon.stop()
    mon.set_npu_utilization(0.9)
    assert mon.refresh().utilization == pytest.approx(max(0.9, mon.snapshot().cpu_utilization))


def test_time_calls_reports_percentiles() -> None:
    calls = []
    stats = time_calls(lambda: calls.append(1), runs=10, warmup=2)
    assert len(calls) == 12 and stats["runs"] == 10 and 0 <= stats["p50_ms"] <= stats["p95_ms"]


def test_heartbeat_lists_the_fleet_and_expires(r: redis.Redis, zone: str) -> None:
    bench = {"classifier": {"p50_ms": 1.0, "p95_ms": 2.0, "runs": 5}}
    report = capabilities(None, device_id="pi-7", zone=zone, bench=bench)
    assert report["cores"] >= 1 and report["ram_mb"] > 0 and "present" in report["npu"]
    assert report["runtimes"]["onnxruntime"]
    hb = Heartbeat(r, zone, "pi-7", report, live=lambda: {"utilization": 0.25}, interval_s=0.2, ttl_s=1)
    hb.start()
    try:
        deadline = time.monotonic() + 5
        while hb.beats < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hb.beats >= 2
        key = keys.edge_device(zone, "pi-7")
        assert key == f"hyb:{{{zone}}}:device:pi-7"
        assert 0 < r.pttl(key) <= 1000
        fleet = list_devices(r, zone)
        assert [d["device_id"] for d in fleet] == ["pi-7"]
        assert fleet[0]["utilization"] == 0.25 and fleet[0]["latency_ms"] == bench
        assert any(d["device_id"] == "pi-7" for d in list_devices(r))  # across zones too
    finally:
        hb.stop()
    deadline = time.monotonic() + 5
    while r.exists(keys.edge_device(zone, "pi-7")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list_devices(r, zone) == []  # a silent device drops out by itself


def test_heartbeat_refuses_ttl_not_above_interval(r: redis.Redis, zone: str) -> None:
    with pytest.raises(ValueError, match="TTL"):
        Heartbeat(r, zone, "pi-1", {}, interval_s=10, ttl_s=10)
    with pytest.raises(ValueError, match="device id"):
        keys.edge_device(zone, "bad id")


def test_list_skips_garbage(r: redis.Redis, zone: str) -> None:
    r.set(keys.edge_device(zone, "junk"), b"not json", ex=30)
    r.set(keys.edge_device(zone, "ok"), json.dumps({"device_id": "ok", "zone": zone}), ex=30)
    assert [d["device_id"] for d in list_devices(r, zone)] == ["ok"]


def test_the_edge_runtime_imports_no_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "import edge_agent.agent, edge_agent.api, edge_agent.pii, edge_agent.vault, edge_agent.outbox\n"
        "import edge_agent.device, edge_agent.metrics, hybrid.commands_edge\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'gpu_worker'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""
