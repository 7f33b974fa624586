"""`hybrid top --once` and `hybrid exporter`: the same figures as XINFO/XPENDING on a backlog we made,
agreement between /metrics, /api/status and top, and an exporter that keeps running while Redis is
away and recovers when it comes back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from broker import keys
from broker.embedded import EmbeddedRedis, free_port
from broker.message import Sealer
from hybrid.cli import cli
from tests.sre_backlog import make_backlog


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def metric(text: bytes, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def poll(fn, what: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as exc:  # the server is not listening yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def exporter_proc(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    procs: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "exporter.log"

    def start(*args: str) -> int:
        port = free_port()
        cmd = [sys.executable, "-m", "hybrid", "exporter", "--port", str(port), "--interval", "0.3", *args]
        env = {**os.environ, "HYB_CONFIG": "", "REDIS_URL": "", "HYB_REDIS_URL": ""}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env))
        return port

    yield start, log  # type: ignore[misc]
    for p in procs:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def test_top_once_shows_the_backlog(r: redis.Redis, sealer: Sealer, zone: str, redis_server) -> None:
    backlog = make_backlog(r, sealer, zone)
    res = CliRunner().invoke(cli, ["top", "--once", "--redis-url", redis_server.url, "--zone", zone])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[2].strip(): line for line in res.output.splitlines() if zone in line and "│" in line}
    batch = [c.strip() for c in rows["batch"].split("│")[1:-1]]
    interactive = [c.strip() for c in rows["interactive"].split("│")[1:-1]]
    xinfo = r.xpending(keys.jobs_stream(zone, "interactive"), keys.GROUP)
    # zone, lane, backlog, lag, pending, oldest, workers, added, removed, trend
    assert batch[2:5] == [str(backlog.batch), str(backlog.batch), "0"]
    assert interactive[2:5] == [str(backlog.interactive), str(backlog.interactive - xinfo["pending"]), "2"]
    assert interactive[6] == "2/2"
    assert "tampered 1" in res.output


def test_top_once_says_plainly_when_redis_is_down() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    res = CliRunner().invoke(cli, ["top", "--once", "--redis-url", url, "--zone", "z"])
    assert res.exit_code == 69
    assert "Redis is DOWN" in res.output and "not reachable" in res.output
    assert "Traceback" not in res.output


def test_top_says_when_a_zone_has_nothing_in_this_redis(redis_server, zone: str) -> None:
    res = CliRunner().invoke(cli, ["top", "--once", "--redis-url", redis_server.url, "--zone", zone])
    assert res.exit_code == 0, res.output
    assert f"zone '{zone}' has no job streams in this Redis" in " ".join(res.output.split())


def test_bad_zone_is_a_usage_error(redis_server) -> None:
    res = CliRunner().invoke(cli, ["top", "--once", "--redis-url", redis_server.url, "--zone", "Not A Zone"])
    assert res.exit_code == 2 and "invalid zone" in res.output


def test_exporter_page_json_metrics_and_top_agree(
    r: redis.Redis, sealer: Sealer, zone: str, redis_server, exporter_proc
) -> None:
    start, _ = exporter_proc
    make_backlog(r, sealer, zone)
    port = start("--redis-url", redis_server.url, "--zone", zone)
    base = f"http://127.0.0.1:{port}"
    status = poll(lambda: json.loads(get(base + "/api/status")), "the exporter")
    assert status["redis"]["up"], status  # the exporter samples once before it listens
    text = get(base + "/metrics")
    status = json.loads(get(base + "/api/status"))  # after the scrape: the same sample
    page = get(base + "/").decode()
    assert "<svg" in page and "api/status" in page and "http://" not in page.replace(NS_SVG, "")
    res = CliRunner().invoke(cli, ["top", "--once", "--redis-url", redis_server.url, "--zone", zone])
    for lane in ("interactive", "batch"):
        stream = keys.jobs_stream(zone, lane)
        xlen, pending = r.xlen(stream), r.xpending(stream, keys.GROUP)["pending"]
        [row] = [ln for ln in status["snapshot"]["lanes"] if ln["lane"] == lane]
        assert (row["backlog"], row["pending"], row["lag"]) == (xlen, pending, xlen - pending)
        assert metric(text, "hybrid_queue_backlog", zone=zone, lane=lane) == xlen
        assert metric(text, "hybrid_queue_pending", zone=zone, lane=lane) == pending
        assert metric(text, "hybrid_queue_lag", zone=zone, lane=lane) == xlen - pending
        assert status["history"]["series"][f"{zone}/{lane}"][-1] == xlen
        [line] = [ln for ln in res.output.splitlines() if zone in ln and f" {lane} " in ln]
        cells = [c.strip() for c in line.split("│")[1:-1]]
        assert cells[2:5] == [str(xlen), str(xlen - pending), str(pending)]
    assert status["snapshot"]["dlq"][0]["reasons"] == {"tampered": 1}
    assert metric(text, "hybrid_dlq_entries", zone=zone) == 1
    with pytest.raises(urllib.error.HTTPError) as err:
        get(base + "/nope")
    assert err.value.code == 404


NS_SVG = "http://www.w3.org/2000/svg"


def test_exporter_survives_redis_down_and_recovers(tmp_path: Path, exporter_proc) -> None:
    start, log = exporter_proc
    redis_port = free_port()
    port = start("--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--zone", "sre-down")
    base = f"http://127.0.0.1:{port}"
    text = poll(lambda: get(base + "/metrics"), "the exporter")
    assert metric(text, "hybrid_redis_up") == 0
    status = json.loads(get(base + "/api/status"))
    assert status["redis"]["up"] is False and "not reachable" in status["redis"]["error"]
    assert b"<html" in get(base + "/")
    server = EmbeddedRedis(tmp_path / "redis", port=redis_port).start()
    try:
        poll(lambda: json.loads(get(base + "/api/status"))["redis"]["up"], "recovery")
        assert metric(get(base + "/metrics"), "hybrid_redis_up") == 1
        assert metric(get(base + "/metrics"), "hybrid_queue_backlog", zone="sre-down", lane="batch") == 0
    finally:
        server.cleanup()
    poll(lambda: metric(get(base + "/metrics"), "hybrid_redis_up") == 0, "Redis gone again")
    poll(lambda: "Redis is DOWN" in log.read_text() and "Redis is up" in log.read_text(), f"the log lines in {log}")
    assert "Traceback" not in log.read_text()
    assert re.search(r"hybrid exporter on http://127\.0\.0\.1:\d+/", log.read_text())


def test_exporter_port_in_use_is_a_usage_error(redis_server) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = CliRunner().invoke(cli, ["exporter", "--redis-url", redis_server.url, "--port", str(port)])
    assert res.exit_code == 2 and "cannot listen" in res.output


def test_asgi_app_mounts_under_a_prefix(r: redis.Redis, sealer: Sealer, zone: str, redis_server) -> None:
    """`hybrid up` mounts the same app in its own server: paths on the page are relative."""
    import asyncio

    import httpx
    from fastapi import FastAPI

    from broker.metrics import QueueMetrics
    from hybrid.exporter import Monitor, asgi_app

    make_backlog(r, sealer, zone)
    app = FastAPI()
    app.mount("/status", asgi_app(Monitor(QueueMetrics(redis_server.url, [zone]), interval_s=1)))

    async def fetch() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://up") as client:
            return (
                await client.get("/status/"),
                await client.get("/status/metrics"),
                await client.get("/status/api/status"),
            )

    page, metrics, status = asyncio.run(fetch())
    assert page.status_code == 200 and 'fetch("api/status"' in page.text
    assert metric(metrics.content, "hybrid_queue_backlog", zone=zone, lane="batch") == 7
    assert status.json()["snapshot"]["lanes"][1]["backlog"] == 7
