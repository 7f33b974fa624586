"""Redis locked down as `hybrid deploy` writes it, for real: ACL users, TLS-only with client certificates, AOF.

One Redis 7 server for the module, started by PID from the generated redis.conf (port 0 + tls-port),
users.acl and certificates. Every role runs the broker's own code (Client, Producer with admission,
Consumer, dead letters, ledger, queue depth) as itself, and every command outside its role is
refused with NOPERM. Redis 6.2 (the embedded binary) has neither TLS nor ACL selectors: these tests
need a Redis >= 7 built with TLS (Debian's `redis-server`, or HYB_TEST_REDIS7_SERVER).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from broker import breaker, keys
from broker.admission import Admission
from broker.client import Client
from broker.connection import connect, ensure_group
from broker.consumer import Consumer
from broker.dead_letter import DeadLetters
from broker.embedded import free_port
from broker.envelope import Envelope
from broker.errors import BudgetExceeded
from broker.keyring import LocalKeyring
from broker.ledger import ClassPrice, CostBreaker, Ledger, PriceTable, ZonePrices
from broker.message import JobSpec, Sealer
from broker.metrics import QueueMetrics
from broker.queues import queue_depth
from gpu_worker.autoscale import observe
from hybrid.deploy.acl import write_acl
from hybrid.deploy.certs import CertBundle, write_certs
from hybrid.deploy.redis_conf import RedisConfOptions, render_redis_conf

ZONE, OTHER = "eu-west", "us-east"


def _redis7_binary() -> str | None:
    candidates = [os.environ.get("HYB_TEST_REDIS7_SERVER"), "/usr/bin/redis-server", shutil.which("redis-server")]
    for path in candidates:
        if not path or not os.access(path, os.X_OK):
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        version = out.split("v=")[1].split()[0] if "v=" in out else "0"
        if int(version.split(".")[0]) >= 7:
            return path
    return None


REDIS7 = _redis7_binary()
pytestmark = pytest.mark.skipif(
    REDIS7 is None,
    reason="needs redis-server >= 7 with TLS (Debian package `redis-server`, or set HYB_TEST_REDIS7_SERVER)",
)


@dataclass
class LockedRedis:
    port: int
    certs: CertBundle
    passwords: dict[str, str]
    dir: Path
    conf: Path
    process: subprocess.Popen[bytes] | None = None

    def url(self, user: str, client_cert: str = "client") -> str:
        crt, key = self.certs.clients[client_cert]
        return (
            f"rediss://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"
            f"?ssl_ca_certs={self.certs.ca_cert}&ssl_certfile={crt}&ssl_keyfile={key}"
        )

    def client(self, user: str) -> redis.Redis:
        return connect(self.url(user))

    def start(self, timeout_s: float = 15.0) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - the child process keeps it
        assert REDIS7 is not None
        self.process = subprocess.Popen([REDIS7, str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        admin = self.client("admin")
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.process.poll() is not None:
                    tail = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited at start:\n{tail}")
                try:
                    if admin.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server (TLS) not ready in time")
                time.sleep(0.05)
        finally:
            admin.close()

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockedRedis]:
    d = tmp_path_factory.mktemp("locked-redis")
    acl = write_acl([ZONE, OTHER], d / "users.acl", env={})
    certs = write_certs(d / "tls", clients=["client"])
    write_certs(d / "rogue", clients=["client"])  # another CA: its client certificate must be refused
    port = free_port()
    opts = RedisConfOptions(
        tls_port=port, bind="127.0.0.1", data_dir=str(d / "data"), aclfile=str(acl.acl_path), cert_dir=str(d / "tls")
    )
    (d / "data").mkdir()
    conf = d / "redis.conf"
    conf.write_text(render_redis_conf(opts))
    server = LockedRedis(port, certs, acl.passwords, d, conf)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keyring_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keyring") / "keyring.json"
    LocalKeyring.init_zone(path, ZONE)
    LocalKeyring.init_zone(path, OTHER)
    return path


def _sealer(path: Path, zone: str = ZONE) -> Sealer:
    return Sealer(Envelope(LocalKeyring(path, zones=[zone])))


def _echo(jobs: list[Any]) -> list[dict[str, Any]]:
    return [{"echo": j.payload.inputs} for j in jobs]


def _refused(client: redis.Redis, *command: Any) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)  # type: ignore[no-untyped-call]


def _allowed(client: redis.Redis, *command: Any) -> Any:
    return client.execute_command(*command)  # type: ignore[no-untyped-call]


# -- the pipeline over mTLS, each role as itself ------------------------------------------------------


def test_edge_to_worker_to_result_over_mtls_with_acl_users(locked: LockedRedis, keyring_file: Path) -> None:
    edge = Client(locked.client(f"edge-{ZONE}"), _sealer(keyring_file), ZONE, name="pi-0042")
    ids = edge.submit_many(JobSpec(task="classify", inputs={"q": f"প্রশ্ন {i}"}) for i in range(20))
    worker = Consumer(locked.client(f"worker-{ZONE}"), _sealer(keyring_file), ZONE, "gpu-0", count=8)
    stats = worker.run(_echo, burst=True)
    results = edge.wait_all(ids, timeout=10)
    assert stats.completed == 20 and stats.duplicates == 0
    assert [results[i].output["echo"]["q"] for i in ids] == [f"প্রশ্ন {i}" for i in range(20)]
    exporter = locked.client("exporter")
    assert [(d.length, d.pending) for d in queue_depth(exporter, ZONE)] == [(0, 0), (0, 0)]


def test_edge_submits_through_the_admission_script(locked: LockedRedis, keyring_file: Path) -> None:
    r = locked.client(f"edge-{ZONE}")
    edge = Client(r, _sealer(keyring_file), ZONE, name="pi-adm", admission=Admission(r, ZONE))
    job_id = edge.submit("t", {"n": 1}, lane="batch", tenant="school-7")
    worker = Consumer(locked.client(f"worker-{ZONE}"), _sealer(keyring_file), ZONE, "gpu-adm")
    assert worker.run(_echo, burst=True).completed == 1
    assert edge.result(job_id, timeout=10).output == {"echo": {"n": 1}}
    # the job left its tenant's in-flight set (ZREM in the worker's COMPLETE script)
    assert locked.client("exporter").zcard(keys.inflight_set(ZONE, "school-7")) == 0


def test_worker_dead_letters_a_tampered_job_and_records_cost(locked: LockedRedis, keyring_file: Path) -> None:
    admin = locked.client("admin")
    ensure_group(admin, keys.jobs_stream(ZONE, "interactive"), keys.GROUP)
    admin.xadd(keys.jobs_stream(ZONE, "interactive"), {"h": b"\x81\xa1x\x01", "b": b"junk"})
    r = locked.client(f"worker-{ZONE}")
    worker = Consumer(r, _sealer(keyring_file), ZONE, "gpu-dlq")
    assert worker.fetch(block_ms=0) == []  # moved to the DLQ (MULTI: XADD dlq + XACK + XDEL)
    assert sum(worker.stats.dead_lettered.values()) == 1
    assert DeadLetters(locked.client("exporter"), ZONE).size() >= 1
    prices = PriceTable(zones={ZONE: ZonePrices(egress_usd_per_gb=0.05, classes={"l4": ClassPrice(
        on_demand_usd_per_gpu_hour=0.8, spot_usd_per_gpu_hour=0.3)})})  # fmt: skip
    ledger = Ledger(r, ZONE, prices)
    ledger.register_worker("gpu-dlq", "l4", "spot")
    charge = ledger.record("gpu-dlq", {"school-7": 3600.0})
    assert not charge.flagged and charge.usd == pytest.approx(0.3)
    assert ledger.spend("global")["hour"] >= 0.3


def test_the_gpu_worker_runs_as_its_acl_user(locked: LockedRedis, keyring_file: Path) -> None:
    """`hybrid worker run`'s Worker (batcher, heartbeat, cost ledger, drain) as `worker-<zone>`."""
    from gpu_worker.runners.builtin import builtin_runners
    from gpu_worker.worker import Worker

    edge = Client(locked.client(f"edge-{ZONE}"), _sealer(keyring_file), ZONE, name="pi-w")
    ids = edge.submit_many(JobSpec(task="echo", inputs={"i": i}) for i in range(10))
    r = locked.client(f"worker-{ZONE}")
    prices = PriceTable(zones={ZONE: ZonePrices(egress_usd_per_gb=0.05, classes={"cpu": ClassPrice(
        on_demand_usd_per_gpu_hour=0.1, spot_usd_per_gpu_hour=0.05)})})  # fmt: skip
    ledger = Ledger(r, ZONE, prices)
    ledger.register_worker("gpu-w", "cpu", "on_demand")
    worker = Worker(Consumer(r, _sealer(keyring_file), ZONE, "gpu-w"), builtin_runners(), ledger=ledger)
    stats = worker.run(burst=True, grace_s=10)
    results = edge.wait_all(ids, timeout=15)
    assert stats.completed == 10 and all(res.ok for res in results.values())


def test_worker_pool_reads_what_its_autoscaler_needs(locked: LockedRedis) -> None:
    """`hybrid worker pool` runs as the worker user: queue depth, heartbeats, budgets and breakers."""
    w = locked.client(f"worker-{ZONE}")
    w.hset(keys.worker_heartbeats(ZONE), "gpu-pool", '{"ready": true, "completed": 10, "busy_s": 2.0}')
    obs = observe(w, ZONE, 1, 0.0, breaker=CostBreaker(Ledger(w, ZONE)), usd_per_replica_hour=1.0)
    assert obs.replicas == 1 and obs.backlog >= 0 and obs.rate_per_worker == pytest.approx(5.0)
    w.hdel(keys.worker_heartbeats(ZONE), "gpu-pool")


# -- what each role may not do -------------------------------------------------------------------------


def test_edge_is_refused_everything_outside_its_role(locked: LockedRedis) -> None:
    e = locked.client(f"edge-{ZONE}")
    jobs, other_jobs = keys.jobs_stream(ZONE, "interactive"), keys.jobs_stream(OTHER, "interactive")
    _refused(e, "XREADGROUP", "GROUP", keys.GROUP, "evil", "STREAMS", jobs, ">")
    _refused(e, "XRANGE", jobs, "-", "+")
    _refused(e, "XAUTOCLAIM", jobs, keys.GROUP, "evil", 0, "0-0")
    _refused(e, "XTRIM", jobs, "MAXLEN", 0)
    _refused(e, "DEL", jobs)
    _refused(e, "XADD", other_jobs, "*", "h", "x", "b", "y")  # another zone
    _refused(e, "XADD", keys.dlq_stream(ZONE), "*", "h", "x")
    _refused(e, "GET", keys.result_key(OTHER, "j1"))
    _refused(e, "SET", keys.result_key(ZONE, "j1"), "forged")
    _refused(e, "XREAD", "STREAMS", keys.reply_stream(OTHER, "c"), "0")
    _refused(e, "HSET", keys.budgets(ZONE), "global|day", "1e9")
    _refused(e, "DEL", keys.breaker_state(ZONE))
    _refused(e, "GET", "anything")
    _refused(e, "KEYS", "*")
    _refused(e, "SCAN", 0)
    _refused(e, "FLUSHALL")
    _refused(e, "FLUSHDB")
    _refused(e, "CONFIG", "GET", "*")
    _refused(e, "ACL", "LIST")
    _refused(e, "EVAL", "return 1", 0)
    _refused(e, "SCRIPT", "FLUSH")
    _refused(e, "SHUTDOWN")
    # What an ACL cannot refuse: arguments. XADD is allowed, so XADD ... MAXLEN is too (docs/deploy.md).
    assert _allowed(e, "XADD", jobs, "MAXLEN", "~", 1_000_000, "*", "h", "x", "b", "y")
    # its own allowed command works, so the refusals above are the ACL, not a broken connection
    assert _allowed(e, "XADD", jobs, "*", "h", "x", "b", "y")
    assert _allowed(e, "GET", keys.result_key(ZONE, "nothing-here")) is None
    device = f"{keys.zone_prefix(ZONE)}:device:pi-0042"  # its capability report: write only
    assert _allowed(e, "SET", device, "{}", "EX", 60)
    _refused(e, "GET", device)


def test_edge_takes_the_half_open_trickle_of_the_cost_breaker(locked: LockedRedis) -> None:
    """The cost gate as the edge user: reads the breaker and, half-open, takes a trickle (WATCH/MULTI/HSET)."""
    now = 1_800_000_000_000
    admin = CostBreaker(Ledger(locked.client("admin"), ZONE), cooldown_s=60, clock=lambda: now)
    admin._update("global", lambda st: (None, breaker.failure(st, now, admin.policy)))
    edge = CostBreaker(Ledger(locked.client(f"edge-{ZONE}"), ZONE), cooldown_s=60, clock=lambda: now + 1_000)
    with pytest.raises(BudgetExceeded):
        edge.check({"school-7": 1})  # open: refused, by the breaker (not by the ACL)
    raw = locked.client("exporter").hget(keys.breaker_state(ZONE), "global")
    later = CostBreaker(Ledger(locked.client(f"edge-{ZONE}"), ZONE), cooldown_s=60, clock=lambda: now + 61_000)
    later.check({"school-7": 1})  # half-open: one of the trickle, written back by the edge
    assert locked.client("exporter").hget(keys.breaker_state(ZONE), "global") != raw


def test_the_jobs_api_runs_as_its_acl_user(locked: LockedRedis, keyring_file: Path) -> None:
    """`hybrid api serve` as `api-<zone>`: tokens, owners, admission with the cost gate, results."""
    fastapi_testclient = pytest.importorskip("fastapi.testclient")
    from broker.settings import load_settings
    from hybrid.api_server import TokenStore, create_app

    token, _ = TokenStore(locked.client("admin"), ZONE).create("school-7")  # operators issue tokens as admin
    settings = load_settings(redis_url=locked.url(f"api-{ZONE}"), zone=ZONE, keyring=str(keyring_file))
    app = create_app(settings, locked.client(f"api-{ZONE}"))
    headers = {"Authorization": f"Bearer {token}"}
    with fastapi_testclient.TestClient(app) as http:
        assert http.get("/healthz").status_code == 200
        res = http.post("/v1/jobs", json={"task": "echo", "inputs": {"q": "hi"}}, headers=headers)
        assert res.status_code == 202, res.text
        job_id = res.json()["job_id"]
        worker = Consumer(locked.client(f"worker-{ZONE}"), _sealer(keyring_file), ZONE, "gpu-api")
        assert worker.run(_echo, burst=True).completed >= 1
        got = http.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 10}, headers=headers)
        assert got.status_code == 200 and got.json()["status"] != "pending", got.text


def test_api_user_keeps_tokens_and_owners_but_reads_no_jobs(locked: LockedRedis) -> None:
    a = locked.client(f"api-{ZONE}")
    tokens = f"{keys.zone_prefix(ZONE)}:api:tokens"
    assert _allowed(a, "HSET", tokens, "sha256-of-token", "{}") == 1
    assert _allowed(a, "SET", f"{keys.zone_prefix(ZONE)}:api:job:j1", "school-7", "EX", 60)
    assert _allowed(a, "XADD", keys.jobs_stream(ZONE, "batch"), "*", "h", "x", "b", "y")
    _refused(a, "XRANGE", keys.jobs_stream(ZONE, "batch"), "-", "+")
    _refused(a, "HGETALL", f"{keys.zone_prefix(OTHER)}:api:tokens")
    _refused(a, "FLUSHALL")


def test_a_script_cannot_widen_the_edge_role(locked: LockedRedis) -> None:
    """Lua runs each redis.call with the caller's rights: a loaded script cannot delete or read jobs."""
    e = locked.client(f"edge-{ZONE}")
    jobs = keys.jobs_stream(ZONE, "batch")
    wipe = e.script_load("return redis.call('DEL', KEYS[1])")
    peek = e.script_load("return redis.call('XRANGE', KEYS[1], '-', '+')")
    with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)permission|noperm|can't (access|run)"):
        e.evalsha(wipe, 1, jobs)
    with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)permission|noperm|can't (access|run)"):
        e.evalsha(peek, 1, jobs)
    with pytest.raises(redis.exceptions.NoPermissionError):
        e.evalsha(wipe, 1, keys.jobs_stream(OTHER, "batch"))  # keys of another zone: refused before it runs


def test_edge_of_one_zone_cannot_submit_to_another(locked: LockedRedis, keyring_file: Path) -> None:
    r = locked.client(f"edge-{ZONE}")
    foreign = Client(r, _sealer(keyring_file, OTHER), OTHER, name="pi-x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        foreign.submit("t", {"n": 1})
    assert locked.client("exporter").xlen(keys.jobs_stream(OTHER, "interactive")) == 0


def test_worker_is_refused_everything_outside_its_role(locked: LockedRedis, keyring_file: Path) -> None:
    w = locked.client(f"worker-{ZONE}")
    other = keys.jobs_stream(OTHER, "interactive")
    _refused(w, "XREADGROUP", "GROUP", keys.GROUP, "w", "STREAMS", other, ">")
    _refused(w, "XADD", other, "*", "h", "x")
    _refused(w, "XGROUP", "CREATE", other, keys.GROUP, "0", "MKSTREAM")
    _refused(w, "SET", keys.result_key(OTHER, "j1"), "x")
    _refused(w, "GET", keys.result_key(ZONE, "j1"))  # writes results, never reads them back
    _refused(w, "DEL", keys.jobs_stream(ZONE, "interactive"))
    _refused(w, "XGROUP", "DESTROY", keys.jobs_stream(ZONE, "interactive"), keys.GROUP)
    _refused(w, "XRANGE", keys.dlq_stream(ZONE), "-", "+")
    _refused(w, "HSET", keys.budgets(ZONE), "global|day", "1e9")
    _refused(w, "HSET", keys.admission_state(ZONE), "paused:x", "1")
    _refused(w, "KEYS", "*")
    _refused(w, "FLUSHALL")
    _refused(w, "CONFIG", "SET", "appendonly", "no")
    _refused(w, "ACL", "SETUSER", "x", "on")
    foreign = Consumer(w, _sealer(keyring_file, OTHER), OTHER, "gpu-x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        foreign.fetch(block_ms=0)
    assert _allowed(w, "XLEN", keys.jobs_stream(ZONE, "interactive")) >= 0


def test_exporter_reads_depth_but_cannot_write(locked: LockedRedis) -> None:
    x = locked.client("exporter")
    jobs = keys.jobs_stream(ZONE, "batch")
    depth = queue_depth(x, ZONE)
    assert [d.lane for d in depth] == ["interactive", "batch"]
    assert x.xinfo_groups(keys.jobs_stream(ZONE, "interactive"))  # the workers group, read
    assert x.info("server")["redis_version"].startswith("7")
    _refused(x, "XADD", jobs, "*", "h", "x")
    _refused(x, "XACK", jobs, keys.GROUP, "0-1")
    _refused(x, "XREADGROUP", "GROUP", keys.GROUP, "x", "STREAMS", jobs, ">")
    _refused(x, "DEL", jobs)
    _refused(x, "SET", "hyb:x", "1")
    _refused(x, "HSET", keys.breaker_state(ZONE), "global", "closed")
    _refused(x, "GET", "not-ours")  # outside hyb:*
    _refused(x, "KEYS", "*")
    _refused(x, "FLUSHALL")
    _refused(x, "CONFIG", "GET", "*")
    _refused(x, "EVAL", "return 1", 0)
    _refused(x, "SCRIPT", "FLUSH")


def test_exporter_samples_every_figure_as_itself(locked: LockedRedis) -> None:
    metrics = QueueMetrics(locked.url("exporter"), [ZONE, OTHER], client=locked.client("exporter"))
    snap = metrics.sample()
    assert snap.redis_up and snap.error == "" and metrics.failures == 0
    assert {(lane.zone, lane.lane) for lane in snap.lanes} >= {(ZONE, "interactive"), (ZONE, "batch")}
    assert metrics._scripts and metrics._server_time  # its lane script and TIME were allowed
    x = locked.client("exporter")
    wipe = x.script_load("return redis.call('DEL', KEYS[1])")
    with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)permission|noperm|can't (access|run)"):
        x.evalsha(wipe, 1, keys.jobs_stream(ZONE, "batch"))  # a script does not make it a writer


def test_unauthenticated_and_wrong_password_are_refused(locked: LockedRedis) -> None:
    crt, key = locked.certs.clients["client"]
    tls = f"?ssl_ca_certs={locked.certs.ca_cert}&ssl_certfile={crt}&ssl_keyfile={key}"
    anonymous = connect(f"rediss://127.0.0.1:{locked.port}/0{tls}")
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()  # the default user is off
    wrong = connect(f"rediss://admin:not-the-password@127.0.0.1:{locked.port}/0{tls}")
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()


# -- TLS -----------------------------------------------------------------------------------------------


def test_plain_tcp_is_refused(locked: LockedRedis) -> None:
    plain = redis.Redis(
        host="127.0.0.1", port=locked.port, username="admin", password=locked.passwords["admin"],
        socket_connect_timeout=2, socket_timeout=2,
    )  # fmt: skip
    with pytest.raises(redis.ConnectionError):
        plain.ping()


def test_no_client_certificate_is_refused(locked: LockedRedis) -> None:
    c = connect(
        f"rediss://admin:{locked.passwords['admin']}@127.0.0.1:{locked.port}/0?ssl_ca_certs={locked.certs.ca_cert}",
        timeout_s=2,
    )
    with pytest.raises(redis.ConnectionError):
        c.ping()


def test_client_certificate_of_another_ca_is_refused(locked: LockedRedis) -> None:
    rogue = locked.dir / "rogue"
    c = connect(
        f"rediss://admin:{locked.passwords['admin']}@127.0.0.1:{locked.port}/0?ssl_ca_certs={locked.certs.ca_cert}"
        f"&ssl_certfile={rogue / 'client.crt'}&ssl_keyfile={rogue / 'client.key'}",
        timeout_s=2,
    )
    with pytest.raises(redis.ConnectionError):
        c.ping()


def test_server_not_signed_by_the_trusted_ca_is_refused(locked: LockedRedis) -> None:
    rogue = locked.dir / "rogue"
    crt, key = locked.certs.clients["client"]
    c = connect(
        f"rediss://admin:{locked.passwords['admin']}@127.0.0.1:{locked.port}/0?ssl_ca_certs={rogue / 'ca.crt'}"
        f"&ssl_certfile={crt}&ssl_keyfile={key}",
        timeout_s=2,
    )
    with pytest.raises(redis.ConnectionError):
        c.ping()


def test_tls_files_from_environment(locked: LockedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    crt, key = locked.certs.clients["client"]
    monkeypatch.setenv("HYB_REDIS_TLS_CA", str(locked.certs.ca_cert))
    monkeypatch.setenv("HYB_REDIS_TLS_CERT", str(crt))
    monkeypatch.setenv("HYB_REDIS_TLS_KEY", str(key))
    c = connect(f"rediss://exporter:{locked.passwords['exporter']}@127.0.0.1:{locked.port}/0")
    assert c.ping() is True
    monkeypatch.setenv("HYB_REDIS_TLS_CERT", str(locked.dir / "rogue" / "client.crt"))
    monkeypatch.setenv("HYB_REDIS_TLS_KEY", str(locked.dir / "rogue" / "client.key"))
    with pytest.raises(redis.ConnectionError):
        connect(f"rediss://exporter:{locked.passwords['exporter']}@127.0.0.1:{locked.port}/0", timeout_s=2).ping()


# -- AOF -----------------------------------------------------------------------------------------------


def test_aof_is_on_and_survives_a_restart(locked: LockedRedis) -> None:
    admin = locked.client("admin")
    got = {k: admin.config_get(k)[k] for k in ("appendonly", "appendfsync", "port", "tls-auth-clients")}
    assert got == {"appendonly": "yes", "appendfsync": "everysec", "port": "0", "tls-auth-clients": "yes"}
    stream = keys.dlq_stream(OTHER)
    admin.xadd(stream, {"reason": "test"})
    before = admin.xlen(stream)
    admin.close()
    locked.stop()
    locked.start()
    assert locked.client("admin").xlen(stream) == before
    assert any((locked.dir / "data").rglob("*.aof"))


def test_the_committed_compose_redis_conf_starts_redis_7(tmp_path: Path, locked: LockedRedis) -> None:
    """deploy/compose/redis.conf as shipped (only its paths, port and bind pointed at this test) loads and serves."""
    conf = (Path(__file__).resolve().parent.parent / "deploy" / "compose" / "redis.conf").read_text()
    port = free_port()
    local = (
        conf.replace("/tls/", f"{locked.dir / 'tls'}/")
        .replace("aclfile /etc/redis/users.acl", f"aclfile {locked.dir / 'users.acl'}")
        .replace("dir /data", f"dir {tmp_path}")
        .replace("tls-port 6380", f"tls-port {port}")
        .replace("bind * -::*", "bind 127.0.0.1")
    )
    assert local.count(str(locked.dir)) == 4 and " /data" not in local  # every path was replaced
    (tmp_path / "redis.conf").write_text(local)
    server = LockedRedis(port, locked.certs, locked.passwords, tmp_path, tmp_path / "redis.conf")
    server.start()
    try:
        admin = server.client("admin")
        assert admin.config_get("appendonly")["appendonly"] == "yes"
        _refused(server.client(f"edge-{ZONE}"), "XRANGE", keys.jobs_stream(ZONE, "batch"), "-", "+")
        admin.close()
    finally:
        server.stop()
