"""Queue metrics (`broker.metrics`): they agree with XINFO/XPENDING on a backlog we made, the text
exposition passes `promtool check metrics`, throughput counts work on Redis 6.2 and 7, and an
unreachable or foreign Redis gives `hybrid_redis_up 0` with a plain reason, then recovers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from broker import keys
from broker.connection import connect, ensure_group
from broker.embedded import EmbeddedRedis, free_port
from broker.ledger import CostBreaker, Ledger
from broker.message import Sealer
from broker.metrics import QueueMetrics, reason_label
from tests.sre_backlog import make_backlog

PROMTOOL = shutil.which("promtool")
REDIS7 = "/usr/bin/redis-server"


def values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def promtool_check(text: bytes) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool missing: apt-get install prometheus (.ci/run does)"
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text.decode(), capture_output=True, text=True)


def test_figures_agree_with_xinfo_and_xpending(r: redis.Redis, sealer: Sealer, zone: str, redis_server) -> None:
    backlog = make_backlog(r, sealer, zone)
    snap = QueueMetrics(redis_server.url, [zone]).sample()
    assert snap.redis_up and not snap.error and not snap.notes
    by_lane = {ln.lane: ln for ln in snap.lanes}
    for lane, ln in by_lane.items():
        stream = keys.jobs_stream(zone, lane)
        xpending = r.xpending(stream, keys.GROUP)
        [group] = r.xinfo_groups(stream)
        assert ln.backlog == r.xlen(stream)
        assert ln.pending == xpending["pending"] == group["pending"]
        assert ln.lag == ln.backlog - ln.pending
        assert ln.consumers == group["consumers"]
        if "lag" in group and group["lag"] is not None:  # Redis 7 reports it when it can
            assert ln.lag == group["lag"]
    assert by_lane["batch"].backlog == backlog.batch and by_lane["batch"].pending == 0
    assert by_lane["interactive"].backlog == backlog.interactive
    assert by_lane["interactive"].pending == backlog.delivered
    assert by_lane["interactive"].consumers_active == 2
    assert by_lane["batch"].oldest_age_s >= 0 and by_lane["interactive"].oldest_pending_age_s >= 0
    # the oldest waiting interactive job was appended after the oldest pending one
    assert by_lane["interactive"].oldest_pending_age_s >= by_lane["interactive"].oldest_waiting_age_s
    [dlq] = snap.dlq
    assert dlq.entries == 1 and dlq.reasons == {"tampered": 1}
    assert dlq.newest[0]["reason"] == "tampered" and dlq.newest[0]["lane"] == "interactive"
    assert set(dlq.newest[0]) == {"reason", "failed_ms", "lane", "deliveries"}  # no ids, no content


def test_exposition_passes_promtool_and_carries_no_ids(r: redis.Redis, sealer: Sealer, zone: str, redis_server) -> None:
    make_backlog(r, sealer, zone)
    ledger = Ledger(r, zone)
    ledger.set_budget("global", "day", 100.0)
    CostBreaker(ledger).force("tenant:acme", None)
    text = QueueMetrics(redis_server.url, [zone]).exposition()
    if PROMTOOL is None:
        pytest.skip("promtool not installed")
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    v = values(text)
    assert v[("hybrid_redis_up", ())] == 1
    assert v[("hybrid_queue_backlog", (("lane", "batch"), ("zone", zone)))] == 7
    assert v[("hybrid_dlq_entries", (("zone", zone),))] == 1
    assert v[("hybrid_dlq_recent_entries", (("reason", "tampered"), ("zone", zone)))] == 1
    assert v[("hybrid_budget_limit_usd", (("scope", "global"), ("window", "day"), ("zone", zone)))] == 100
    assert v[("hybrid_breaker_state", (("scope", "global"), ("zone", zone)))] == 0
    label_values = {val for (_, labels) in v for _, val in labels}
    job_ids = {e[1][b"h"] for e in r.xrange(keys.jobs_stream(zone, "batch"))}
    assert label_values <= {zone, "batch", "interactive", "tampered", "global", "tenant:acme", "hour", "day"}
    assert job_ids  # (and none of them appears as a label value: the set above is closed)


@pytest.mark.parametrize("binary", [None, REDIS7], ids=["redis-6.2", "redis-7"])
def test_throughput_counts_on_6_2_and_7(binary: str | None, tmp_path: Path) -> None:
    if binary and not Path(binary).exists():
        pytest.skip(f"{binary} not installed")
    server = EmbeddedRedis(tmp_path, binary=binary).start()
    try:
        r = connect(server.url)
        stream = keys.jobs_stream("tp", "batch")
        ensure_group(r, stream, keys.GROUP)
        for i in range(3):  # already there when the exporter starts: counted as added
            r.xadd(stream, {"h": b"x", "b": str(i).encode()})
        qm = QueueMetrics(server.url, ["tp"])
        assert {ln.lane: ln for ln in qm.sample().lanes}["batch"].added_total == 3
        for i in range(12):
            r.xadd(stream, {"h": b"x", "b": str(i).encode()})
        first = qm.sample()
        batch = {ln.lane: ln for ln in first.lanes}["batch"]
        assert (batch.added_total, batch.removed_total) == (15, 0)
        got = r.xreadgroup(keys.GROUP, "w", {stream: ">"}, count=5)
        ids = [eid for eid, _ in got[0][1]]
        r.xack(stream, keys.GROUP, *ids)
        r.xdel(stream, *ids)
        r.xadd(stream, {"h": b"x", "b": b"late"})
        second = qm.sample()
        batch = {ln.lane: ln for ln in second.lanes}["batch"]
        assert (batch.added_total, batch.removed_total, batch.backlog) == (16, 5, 11)
        assert second.exact_counts is server.version().startswith(("7", "8"))
    finally:
        server.cleanup()


def test_reason_labels_are_codes_only() -> None:
    assert reason_label("tampered") == "tampered"
    assert reason_label("max_deliveries") == "max_deliveries"
    for odd in ["", "Hello World", "a" * 40, 'x"} 1\nevil 2', "user@example.com"]:
        assert reason_label(odd) == "other"


def test_dead_letter_with_an_odd_reason_is_labelled_other(r: redis.Redis, zone: str, redis_server) -> None:
    r.xadd(keys.dlq_stream(zone), {"reason": "tampered", "failed_ms": 5000})
    r.xadd(keys.dlq_stream(zone), {"reason": "tampered", "failed_ms": 7000})
    r.xadd(keys.dlq_stream(zone), {"reason": "Name: Jane Doe", "failed_ms": "yesterday", "deliveries": "x"})
    snap = QueueMetrics(redis_server.url, [zone]).sample()
    assert snap.redis_up, snap.error
    assert snap.dlq[0].reasons == {"other": 1, "tampered": 2}
    assert snap.dlq[0].last_failed_ms == {"other": 0, "tampered": 7000}
    assert "Jane" not in json.dumps(snap.to_dict())


@pytest.fixture
def not_redis() -> Iterator[int]:
    """A TCP server on loopback that answers like a web server, not like Redis."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def loop() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def test_foreign_server_is_reported_plainly(not_redis: int) -> None:
    qm = QueueMetrics(f"redis://127.0.0.1:{not_redis}/0", ["z"])
    snap = qm.sample()
    assert not snap.redis_up
    assert "does not speak the Redis protocol" in snap.error, snap.error
    v = values(qm.exposition(refresh=False))
    assert v[("hybrid_redis_up", ())] == 0
    assert v[("hybrid_exporter_redis_errors_total", ())] == 1


def test_unreachable_redis_then_recovery(tmp_path: Path) -> None:
    port = free_port()
    secret = QueueMetrics(f"redis://:s3cret@127.0.0.1:{port}/0", ["z"]).sample()
    assert "is not reachable" in secret.error and "s3cret" not in secret.error and ":***@" in secret.error
    qm = QueueMetrics(f"redis://127.0.0.1:{port}/0", ["z"])
    text = qm.exposition()
    snap = qm.latest
    assert not snap.redis_up and "is not reachable" in snap.error
    assert values(text)[("hybrid_redis_up", ())] == 0
    if PROMTOOL:
        result = promtool_check(text)
        assert result.returncode == 0, result.stdout + result.stderr
    server = EmbeddedRedis(tmp_path, port=port).start()
    try:
        assert qm.sample().redis_up  # the same collector picks up again
        assert values(qm.exposition())[("hybrid_redis_up", ())] == 1
    finally:
        server.cleanup()
    assert not qm.sample().redis_up  # and notices it leaving


def test_fleet_counts_live_devices_and_workers(r: redis.Redis, zone: str, redis_server) -> None:
    from broker.message import now_ms

    for device in ("pi-1", "pi-2", "pi-3"):
        r.set(keys.edge_device(zone, device), json.dumps({"device_id": device}), ex=30)
    r.set(keys.edge_device("elsewhere", "pi-9"), "{}", ex=30)  # another zone's device
    beats = {
        "w-fresh": {"ready": True, "in_flight": 3, "ts_ms": now_ms()},
        "w-draining": {"ready": False, "in_flight": 1, "ts_ms": now_ms() - 1000},
        "w-stale": {"ready": True, "in_flight": 9, "ts_ms": now_ms() - 600_000},
        "w-garbled": "not json",
    }
    r.hset(keys.worker_heartbeats(zone), mapping={k: json.dumps(v) for k, v in beats.items()})
    qm = QueueMetrics(redis_server.url, [zone], active_idle_s=60)
    [fleet] = qm.sample().fleet
    assert (fleet.devices_online, fleet.workers, fleet.workers_ready, fleet.workers_in_flight) == (3, 2, 1, 4)
    text = qm.exposition()
    assert b'hybrid_edge_devices_online{zone="%s"} 3.0' % zone.encode() in text
    assert b'hybrid_workers_alive{zone="%s"} 2.0' % zone.encode() in text


@pytest.mark.parametrize("binary", [None, REDIS7], ids=["redis-6.2", "redis-7"])
def test_read_only_acl_user_sees_the_same_figures(
    binary: str | None, tmp_path: Path, sealer: Sealer, zone: str
) -> None:
    """The deployment's `exporter` user may only read (`-@all +@read -@dangerous +info +ping`): no
    EVAL, no TIME, no writes. The collector falls back to plain reads and reports the same figures."""
    if binary and not Path(binary).exists():
        pytest.skip(f"{binary} not installed")
    grant = "%R~hyb:*" if binary else "~hyb:*"  # read-only key patterns exist from Redis 7
    acl = ["--user", "exporter", "on", ">pw", "-@all", "+@read", "-@dangerous", "+info", "+ping", grant]
    server = EmbeddedRedis(tmp_path, binary=binary, extra_args=acl).start()
    try:
        r = connect(server.url)
        ro_url = f"redis://exporter:pw@127.0.0.1:{server.port}/0"
        with pytest.raises(redis.exceptions.NoPermissionError):
            connect(ro_url).time()
        full, ro = QueueMetrics(server.url, [zone]), QueueMetrics(ro_url, [zone])
        full.sample(), ro.sample()  # 6.2: both start their running counts here
        make_backlog(r, sealer, zone)
        ledger = Ledger(r, zone)
        ledger.set_budget("global", "day", 10.0)
        r.hincrby(keys.spend(zone, "global"), str(int(r.time()[0]) // 60), 9_000_000)
        CostBreaker(ledger).evaluate()
        a, b = full.sample(), ro.sample()
        assert b.redis_up, b.error
        assert not ro._scripts and not ro._server_time and full._scripts
        strip = [
            (ln.lane, ln.backlog, ln.pending, ln.lag, ln.consumers, ln.added_total, ln.removed_total) for ln in a.lanes
        ]
        assert strip == [
            (ln.lane, ln.backlog, ln.pending, ln.lag, ln.consumers, ln.added_total, ln.removed_total) for ln in b.lanes
        ]
        assert a.dlq[0].reasons == b.dlq[0].reasons == {"tampered": 1}
        for ln in a.lanes + b.lanes:  # the streams appeared after the first sample: all counted
            assert ln.added_total - ln.removed_total == ln.backlog > 0
        assert a.budgets == b.budgets and b.budgets[0].spend_usd["day"] == pytest.approx(9.0)
        assert a.exact_counts == b.exact_counts
    finally:
        server.cleanup()


def test_a_hung_server_never_stalls_a_scrape() -> None:
    """A server that accepts and never answers: samples time out (3 s), scrapes answer at once."""
    import time
    import urllib.request

    from hybrid.exporter import Monitor, serve

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)  # connections queue up; nothing ever reads or replies
    try:
        monitor = Monitor(QueueMetrics(f"redis://127.0.0.1:{srv.getsockname()[1]}/0", ["z"]), interval_s=0.1)
        first = monitor.refresh()
        assert not first.redis_up and "Timeout" in first.error, first.error
        monitor.start()  # the background sample is now stuck waiting on the socket most of the time
        http = serve(monitor, "127.0.0.1", 0)
        try:
            for _ in range(3):
                started = time.monotonic()
                with urllib.request.urlopen(f"http://127.0.0.1:{http.server_address[1]}/metrics", timeout=5) as resp:
                    text = resp.read()
                assert time.monotonic() - started < 1.0
                assert values(text)[("hybrid_redis_up", ())] == 0
        finally:
            monitor.stop()
            http.shutdown()
            http.server_close()
    finally:
        srv.close()


def test_tenant_in_flight_from_admission(r: redis.Redis, sealer: Sealer, zone: str, redis_server) -> None:
    from broker.admission import Admission, AdmissionPolicy, TenantLimits
    from broker.message import JobSpec
    from broker.producer import Producer

    policy = AdmissionPolicy(tenants={"acme": TenantLimits(max_in_flight=100)})
    producer = Producer(r, sealer, zone, admission=Admission(r, zone, policy))
    producer.submit_many([JobSpec(task="classify", inputs={"n": i}, tenant="acme") for i in range(5)])
    r.zadd(keys.inflight_set(zone, "bad name!"), {"x": 2**50})  # not label-shaped: left out
    qm = QueueMetrics(redis_server.url, [zone])
    snap = qm.sample()
    assert [(t.tenant, t.in_flight) for t in snap.tenants] == [("acme", 5)]
    assert r.zcard(keys.inflight_set(zone, "acme")) == 5
    text = qm.exposition(refresh=False).decode()
    assert f'hybrid_tenant_in_flight_jobs{{tenant="acme",zone="{zone}"}} 5.0' in text
