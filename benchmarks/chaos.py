"""Chaos benchmark: what the pipeline survives, counted — real processes, real Redis, loopback only.

    python -m benchmarks.chaos [--quick] [--out benchmarks/results/chaos.json]

Faults (quick: 2,000 jobs, faults 1-4, well under 5 minutes on 2 cores; full: 10,000 jobs and fault 5):

1. `worker_kills`: a fixed pool of `hybrid worker run --tasks chaos` processes kept by the real
   `Supervisor`; a chaos driver SIGKILLs a random worker every 2 s, the supervisor restarts it.
2. `redis_restart_always` / `redis_restart_everysec`: Redis SIGKILLed and started again on the same data
   directory twice during the run (AOF, `appendfsync always` / `everysec`). The producer records every
   submit that raised `RedisUnavailable` and resubmits it with the same job ids.
3. `edge_cut`: the edge agent cut off from Redis (a TCP proxy we control) for 60 s (quick: 10 s) while
   requests go on: async jobs wait in the outbox, interactive requests get the fallback answer, and after
   the cut every queued job reaches the stream, in order.
4. `worker_sigstop`: a worker SIGSTOPped mid-batch; another reclaims its jobs after min-idle; SIGCONT:
   its late results are refused (SET NX), no duplicate.
5. `cluster_master_kill` (full only): the pipeline on a 3-master Redis Cluster; one master is killed.

Per fault: `submitted`, `results`, `lost` (submitted and acknowledged, no result at the end),
`duplicate_results` (a job id notified twice on the producer's reply stream, or a result whose output is
not its own job's), `re_executions` (runs beyond the first, from the chaos runner's execution logs).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.chaos_lib import (
    FixedPool,
    RedisCluster,
    TcpProxy,
    chaos_specs,
    check_outputs,
    collect_results,
    count_results,
    exec_summary,
    key_slot,
    redis7_binaries,
    reply_duplicates,
    wait_until,
    worker_argv,
    worker_env,
)
from benchmarks.report import machine, write_result
from broker import keys
from broker.client import Client
from broker.connection import connect
from broker.dead_letter import DeadLetters
from broker.embedded import EmbeddedRedis
from broker.envelope import Envelope
from broker.errors import RedisUnavailable
from broker.keyring import LocalKeyring
from broker.message import Sealer

RESULTS = Path(__file__).parent / "results" / "chaos.json"
PRODUCER = "chaos-producer"


def _keyring(work: Path, zone: str) -> tuple[Path, Sealer]:
    path = work / "keyring.json"
    if not path.exists():
        LocalKeyring.init_zone(path, zone)
    return path, Sealer(Envelope(LocalKeyring(path, zones=[zone])))


def _figures(
    r: Any, sealer: Sealer, zone: str, prefix: str, ids: list[str], exec_dir: Path, submitted: int
) -> dict[str, Any]:
    results = collect_results(r, sealer, zone, ids)
    wrong = check_outputs(results, prefix)
    _, notified_twice = reply_duplicates(r, zone, PRODUCER)
    ex = exec_summary(exec_dir, ids)
    dead = [x.reason for x in DeadLetters(r, zone).list(count=10_000)]
    return {
        "submitted": submitted,
        "results": len(results),
        "lost": len(ids) - len(results),
        "duplicate_results": notified_twice + wrong,
        "re_executions": ex.re_executions,
        "jobs_run_more_than_once": ex.jobs_run_more_than_once,
        "executions": ex.executions,
        "dead_lettered": dict(Counter(dead)),  # e.g. `replayed`: a resubmitted copy of a job already done
    }


# -- fault 1: SIGKILL a random worker every 2 s ----------------------------------------------------------


def fault_worker_kills(
    redis_url: str, work: Path, zone: str, n_jobs: int, *, workers: int = 3, kill_every_s: float = 2.0,
    ms: float = 20.0, min_idle_ms: int = 1500, timeout_s: float = 300.0, seed: int = 1,
) -> dict[str, Any]:  # fmt: skip
    keyring, sealer = _keyring(work, zone)
    r = connect(redis_url)
    ids = Client(r, sealer, zone, name=PRODUCER).submit_many(chaos_specs("k", n_jobs, ms))
    exec_dir = work / "execs-kills"
    pool = FixedPool(redis_url, zone, keyring, exec_dir, work / "logs-kills", replicas=workers, min_idle_ms=min_idle_ms)
    rng = random.Random(seed)
    started = time.monotonic()
    next_kill = started + kill_every_s
    try:
        while time.monotonic() - started < timeout_s:
            pool.step()
            if time.monotonic() >= next_kill:
                pool.kill_random(rng)
                next_kill += kill_every_s
            if count_results(r, zone, ids) == n_jobs:
                break
            time.sleep(0.25)
        elapsed = time.monotonic() - started
    finally:
        pool.shutdown()
    out = _figures(r, sealer, zone, "k", ids, exec_dir, n_jobs)
    stream = keys.jobs_stream(zone, "batch")
    out.update(
        workers=workers, workers_killed=pool.kills, restarts=pool.supervisor.stats.restarted,
        result_writes_refused_clean_exits=pool.refused_duplicates(), seconds=round(elapsed, 1),
        left_in_stream=int(r.xlen(stream)), pending=int(r.xpending(stream, keys.GROUP)["pending"]),
    )  # fmt: skip
    return out


# -- fault 2: Redis SIGKILLed and restarted on the same data directory ------------------------------------


def fault_redis_restarts(
    work: Path, zone: str, n_jobs: int, appendfsync: str, *, workers: int = 2, restarts: int = 2,
    down_s: float = 1.0, ms: float = 5.0, chunk: int = 50, min_idle_ms: int = 1500, timeout_s: float = 240.0,
    pace_s: float = 15.0, binary: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    keyring, sealer = _keyring(work, zone)
    server = EmbeddedRedis(work / f"redis-{appendfsync}", appendonly=True, appendfsync=appendfsync, binary=binary)
    server.start()
    exec_dir = work / f"execs-{appendfsync}"
    pool = FixedPool(server.url, zone, keyring, exec_dir, work / f"logs-{appendfsync}", replicas=workers,
                     min_idle_ms=min_idle_ms, prefix=f"aof-{appendfsync}")  # fmt: skip
    r = connect(server.url)
    client = Client(r, sealer, zone, name=PRODUCER)
    specs = chaos_specs("a", n_jobs, ms)
    chunks = [specs[i : i + chunk] for i in range(0, n_jobs, chunk)]
    kill_at = {len(chunks) * (k + 1) // (restarts + 1) for k in range(restarts)}
    acked: list[str] = []
    unacked: set[str] = set()  # the producer knows these submits were not acknowledged
    ever_unacked: set[str] = set()
    retry: list[Any] = []
    kills = 0
    started = time.monotonic()
    try:
        _wait_ready(pool, r, zone, workers)
        for n, batch in enumerate(chunks):
            pool.step()
            if n in kill_at:
                server.kill()
                kills += 1
                down_until = time.monotonic() + down_s
                while time.monotonic() < down_until:  # submits go on while it is down: they fail, are noted
                    try:
                        acked += client.submit_many(batch)
                        break
                    except RedisUnavailable:
                        unacked.update(str(s.job_id) for s in batch)
                        ever_unacked.update(str(s.job_id) for s in batch)
                        retry.append(batch)
                        batch = []
                        time.sleep(0.1)
                server.start()
                if not batch:
                    continue
            for pending_batch in [*retry, batch]:
                if not pending_batch:
                    continue
                try:
                    acked += client.submit_many(pending_batch)  # same job ids: idempotent
                    unacked.difference_update(str(s.job_id) for s in pending_batch)
                except RedisUnavailable:
                    unacked.update(str(s.job_id) for s in pending_batch)
                    ever_unacked.update(str(s.job_id) for s in pending_batch)
                    if pending_batch is batch:
                        retry.append(batch)
                    continue
                if pending_batch is not batch:
                    retry.remove(pending_batch)
            time.sleep(pace_s / len(chunks))  # submissions spread over the run: kills hit a busy pipeline
        while retry and time.monotonic() - started < timeout_s:
            pool.step()
            batch = retry[0]
            try:
                acked += client.submit_many(batch)
                unacked.difference_update(str(s.job_id) for s in batch)
                retry.pop(0)
            except RedisUnavailable:
                time.sleep(0.2)
        ids = sorted(set(acked))
        while time.monotonic() - started < timeout_s:
            pool.step()
            if count_results(r, zone, ids) == len(ids):
                break
            time.sleep(0.25)
        elapsed = time.monotonic() - started
    finally:
        pool.shutdown()
    out = _figures(r, sealer, zone, "a", ids, exec_dir, n_jobs)
    out.update(
        appendfsync=appendfsync, redis_kills=kills, unacknowledged_submits=len(ever_unacked),
        resubmitted=len(ever_unacked - unacked), never_acknowledged=len(unacked),
        worker_restarts=pool.supervisor.stats.restarted, seconds=round(elapsed, 1),
    )  # fmt: skip
    out["lost"] = len(ids) - out["results"]  # acknowledged submits without a result
    server.cleanup()
    return out


def _wait_ready(pool: FixedPool, r: Any, zone: str, workers: int, timeout_s: float = 60.0) -> None:
    """Step the pool until its workers have all reported (heartbeat) — they consume from then on."""
    deadline = time.monotonic() + timeout_s
    while int(r.hlen(keys.worker_heartbeats(zone))) < workers and time.monotonic() < deadline:
        pool.step()
        time.sleep(0.2)


# -- fault 4: a worker SIGSTOPped mid-batch --------------------------------------------------------------


def fault_sigstop(
    redis_url: str, work: Path, zone: str, n_jobs: int, *, ms: float = 20.0, min_idle_ms: int = 2000,
    timeout_s: float = 120.0,
) -> dict[str, Any]:  # fmt: skip
    keyring, sealer = _keyring(work, zone)
    r = connect(redis_url)
    ids = Client(r, sealer, zone, name=PRODUCER).submit_many(chaos_specs("s", n_jobs, ms))
    exec_dir = work / "execs-stop"
    logs = work / "logs-stop"
    logs.mkdir(parents=True, exist_ok=True)
    env = worker_env(exec_dir)
    stream = keys.jobs_stream(zone, "batch")

    def start(name: str) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "ab") as log:
            return subprocess.Popen(worker_argv(redis_url, zone, keyring, name, min_idle_ms=min_idle_ms),
                                    stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip

    victim = start("sleeper")
    rescuer: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        # mid-batch: the victim has written its first execution records (a batch is running)
        if not wait_until(lambda: any(p.stat().st_size > 0 for p in exec_dir.glob(f"{victim.pid}.execs")), 60, 0.01):
            raise RuntimeError("the worker never started a batch")
        victim.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        held = _pending_of(r, stream, "sleeper")
        rescuer = start("rescuer")
        all_done = wait_until(lambda: count_results(r, zone, ids) == n_jobs, timeout_s, 0.25)
        reclaim_s = time.monotonic() - stopped_at
        victim.send_signal(signal.SIGCONT)
        # the sleeper wakes holding jobs that are done: let it finish its batch and try to store them
        time.sleep(max(2.0, ms * 40 / 1000))
    finally:
        victim.send_signal(signal.SIGCONT)
        for p in (victim, rescuer):
            if p is not None:
                p.send_signal(signal.SIGTERM)
        for p in (victim, rescuer):
            if p is not None:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    out = _figures(r, sealer, zone, "s", ids, exec_dir, n_jobs)
    refused = {}
    for name in ("sleeper", "rescuer"):
        text = (logs / f"{name}.log").read_text(errors="replace")
        refused[name] = int(text.split(" duplicate results refused")[0].rsplit(" ", 1)[1]) if "refused" in text else -1
    out.update(
        held_when_stopped=held, all_results_while_stopped=all_done, seconds_to_all_results=round(reclaim_s, 1),
        late_results_refused=refused["sleeper"], rescuer_refused=refused["rescuer"],
        victim_exit=victim.returncode, pending=int(r.xpending(stream, keys.GROUP)["pending"]),
        left_in_stream=int(r.xlen(stream)), seconds=round(time.monotonic() - started, 1),
    )  # fmt: skip
    return out


def _pending_of(r: Any, stream: str, consumer: str) -> int:
    for c in r.xinfo_consumers(stream, keys.GROUP):
        name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
        if name == consumer:
            return int(c["pending"])
    return 0


# -- fault 3: the edge agent cut off from Redis -----------------------------------------------------------

PII_ESSAYS = [
    "Essay by Rahim Uddin (rahim.uddin@example.com, phone 01712-345678): the water cycle moves water.",
    "রহিম উদ্দিন লিখেছে, ফোন ০১৭১২-৩৪৫৬৭৮: সালোকসংশ্লেষণ গাছের খাদ্য তৈরির প্রক্রিয়া।",
    "Fatema Khatun <fatema.k@example.org> explains why ice floats: it is less dense than water.",
    "করিম হোসেন (karim.h@example.net, ০১৮১৯-৯৮৭৬৫৪) ভগ্নাংশ যোগের নিয়ম ব্যাখ্যা করেছে।",
]
"""The workload's PII: every name, email and phone number in English and Bengali script, Latin and
Bengali digits. `benchmarks.security` searches Redis, metrics and logs for each of them."""
PII_VALUES = [
    "Rahim Uddin", "রহিম উদ্দিন", "rahim.uddin@example.com", "01712-345678", "০১৭১২-৩৪৫৬৭৮",
    "Fatema Khatun", "fatema.k@example.org", "করিম হোসেন", "karim.h@example.net", "০১৮১৯-৯৮৭৬৫৪",
]  # fmt: skip


class _PinnedMonitor:
    """The device held at one utilization (busy: interactive questions go to the cloud, or the fallback)."""

    def __init__(self, utilization: float) -> None:
        from edge_agent.device import Snapshot

        self._snap = Snapshot(utilization, None, 4096.0, 8192.0, time.monotonic())

    def snapshot(self) -> Any:
        return self._snap

    def start(self) -> _PinnedMonitor:
        return self

    def stop(self) -> None:
        return None


def fault_edge_cut(
    redis_url: str, work: Path, zone: str, models: Any, policy: Any, *, cut_s: float = 10.0,
    before_s: float = 2.0, after_s: float = 2.0, rate_per_s: float = 10.0, drain_timeout_s: float = 150.0,
    roster: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Async essays (PII inside) and interactive questions at `rate_per_s` each; the edge's path to Redis
    goes through a `TcpProxy` that is cut for `cut_s`. A cloud consumer (straight to Redis) answers."""
    import threading
    from urllib.parse import urlparse

    from broker.consumer import Consumer
    from edge_agent.agent import AgentConfig, EdgeAgent, EdgeRequest

    _, sealer = _keyring(work, zone)
    proxy = TcpProxy("127.0.0.1", int(urlparse(redis_url).port or 6379)).start()
    cfg = AgentConfig(device_id="chaos-edge", zone=zone, replay_interval_s=0.2, cloud_wait_s=2.0)
    agent = EdgeAgent(models, policy, cfg, state_dir=work / "edge", sealer=sealer, redis_url=proxy.url,
                      roster=roster, monitor=_PinnedMonitor(0.95),
                      bench={"classifier": {"p50_ms": 5.0, "p95_ms": 8.0}}).start()  # fmt: skip
    seen: list[str] = []

    def cloud(jobs: list[Any]) -> list[Any]:
        seen.extend(j.job_id for j in jobs)
        return [{"label": "cloud", "n": len(j.payload.inputs.get("text", ""))} for j in jobs]

    direct = connect(redis_url)
    consumer = Consumer(direct, sealer, zone, "chaos-cloud", block_ms=100, min_idle_ms=5000)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(cloud,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    essays: list[tuple[str, str]] = []  # (job id, status at submission)
    interactive: Counter[str] = Counter()
    errors: list[str] = []
    max_outbox = 0
    started = time.monotonic()
    cut_at, restore_at, end_at = started + before_s, started + before_s + cut_s, started + before_s + cut_s + after_s
    cut = restored = False
    i = 0
    try:
        while time.monotonic() < end_at:
            now = time.monotonic()
            if not cut and now >= cut_at:
                proxy.cut()
                cut = True
            if cut and not restored and now >= restore_at:
                proxy.restore()
                restored = True
            phase = "cut" if cut and not restored else "up"
            try:
                out = agent.handle(EdgeRequest(text=PII_ESSAYS[i % len(PII_ESSAYS)] + f" #{i}", task="essay-grading"))
                essays.append((out["job_id"], out["status"]))
                q = agent.handle(EdgeRequest(text=f"What is Newton's second law? ({i})",
                                             task="question-classification", sensitivity="personal"))  # fmt: skip
                interactive[f"{phase}:{q['route']}:{q['status']}"] += 1
            except Exception as exc:  # counted: a request the device could not answer at all
                errors.append(f"{phase}: {type(exc).__name__}: {exc}")
            max_outbox = max(max_outbox, len(agent.outbox))
            i += 1
            time.sleep(max(0.0, started + i / rate_per_s - time.monotonic()))
        ids = [j for j, _ in essays]
        drained = wait_until(lambda: len(agent.outbox) == 0 and count_results(direct, zone, ids) == len(ids),
                             drain_timeout_s, 0.2)  # fmt: skip
        drain_s = time.monotonic() - restore_at
    finally:
        stop.set()
        thread.join(10)
        agent.close()
        proxy.stop()
    first_seen = list(dict.fromkeys(seen))
    order = [j for j in first_seen if j in set(ids)]
    results = collect_results(direct, sealer, zone, ids)
    runs = Counter(seen)
    _, notified_twice = reply_duplicates(direct, zone, "edge-chaos-edge")
    during = {k.split(":", 1)[1]: v for k, v in interactive.items() if k.startswith("cut:")}
    return {
        "submitted": len(ids), "results": len(results), "lost": len(ids) - len(results),
        "duplicate_results": notified_twice, "re_executions": sum(c - 1 for c in runs.values() if c > 1),
        "cut_s": cut_s, "queued_in_outbox": sum(1 for _, st in essays if st == "queued"), "max_outbox": max_outbox,
        "delivered_in_order": order == ids, "drained": drained, "drain_s_after_restore": round(drain_s, 1),
        "interactive_during_cut": during, "interactive_total": sum(interactive.values()),
        "interactive_fallback_during_cut": sum(v for k, v in during.items() if k.startswith("fallback")),
        "interactive_not_answered": len(errors), "errors": errors[:5], "proxy_connections": proxy.connections,
    }  # fmt: skip


# -- fault 5: a Redis Cluster master killed ----------------------------------------------------------------


def fault_cluster(
    work: Path, n_jobs: int, *, ms: float = 5.0, chunk: int = 50, pace_s: float = 10.0, outage_s: float = 8.0,
    min_idle_ms: int = 1500, timeout_s: float = 180.0,
) -> dict[str, Any]:  # fmt: skip
    """Two zones whose hash-tag slots live on different masters of a 3-master cluster (no replicas), a
    supervised worker and a producer each. Mid-run the master of zone A's slot is SIGKILLed; after
    `outage_s` it is started again on its data directory (AOF always)."""
    cluster = RedisCluster(work / "cluster").start()
    pools: list[FixedPool] = []
    try:
        owner: dict[str, int] = {}
        zones: list[str] = []
        for k in range(200):  # two zones on two different masters
            z = f"cz{k}"
            port = cluster.port_of_slot(key_slot(keys.jobs_stream(z, "batch")))
            if port not in owner.values():
                owner[z] = port
                zones.append(z)
            if len(zones) == 2:
                break
        victim_zone, other_zone = zones
        victim_port = owner[victim_zone]
        clients: dict[str, Client] = {}
        sealers: dict[str, Sealer] = {}
        for z in zones:
            keyring, sealers[z] = _keyring(work / z, z)
            (work / z).mkdir(parents=True, exist_ok=True)
            pools.append(FixedPool(cluster.url, z, keyring, work / z / "execs", work / z / "logs", replicas=1,
                                   min_idle_ms=min_idle_ms, prefix=f"cl-{z}"))  # fmt: skip
            clients[z] = Client(connect(cluster.url), sealers[z], z, name=PRODUCER)
        specs = {z: chaos_specs(z, n_jobs, ms) for z in zones}
        acked: dict[str, list[str]] = {z: [] for z in zones}
        refused: dict[str, int] = dict.fromkeys(zones, 0)
        retry: dict[str, list[Any]] = {z: [] for z in zones}
        n_chunks = (n_jobs + chunk - 1) // chunk
        for z, pool in zip(zones, pools, strict=True):  # both workers consume before the clock starts
            _wait_ready(pool, clients[z].redis, z, 1)
        started = time.monotonic()
        killed_at = restarted_at = None
        other_done_during_outage = 0
        for c in range(n_chunks):
            for pool in pools:
                pool.step()
            if killed_at is None and c == n_chunks // 3:
                cluster.kill(victim_port)
                killed_at = time.monotonic()
            if killed_at is not None and restarted_at is None and time.monotonic() - killed_at >= outage_s:
                other_done_during_outage = count_results(clients[other_zone].redis, other_zone, acked[other_zone])
                cluster.restart(victim_port)
                restarted_at = time.monotonic()
            for z in zones:
                for batch in [*retry[z], specs[z][c * chunk : (c + 1) * chunk]]:
                    try:
                        acked[z] += clients[z].submit_many(batch)
                        if batch in retry[z]:
                            retry[z].remove(batch)
                    except RedisUnavailable:
                        refused[z] += len(batch)
                        if batch not in retry[z]:
                            retry[z].append(batch)
            time.sleep(pace_s / n_chunks)
        if restarted_at is None:
            while time.monotonic() - (killed_at or 0) < outage_s:
                time.sleep(0.1)
            other_done_during_outage = count_results(clients[other_zone].redis, other_zone, acked[other_zone])
            cluster.restart(victim_port)
            restarted_at = time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pool in pools:
                pool.step()
            for z in zones:
                for batch in list(retry[z]):
                    try:
                        acked[z] += clients[z].submit_many(batch)
                        retry[z].remove(batch)
                    except RedisUnavailable:
                        pass
            if all(not retry[z] for z in zones) and all(
                _safe_count(clients[z].redis, z, acked[z]) == n_jobs for z in zones
            ):
                break
            time.sleep(0.25)
        out: dict[str, Any] = {"zones": {}, "killed_master": victim_port, "outage_s": outage_s}
        for z, pool in zip(zones, pools, strict=True):
            figs = _figures(clients[z].redis, sealers[z], z, z, sorted(set(acked[z])), work / z / "execs", n_jobs)
            figs.update(role="its master killed" if z == victim_zone else "other master",
                        submits_refused=refused[z], worker_restarts=pool.supervisor.stats.restarted)  # fmt: skip
            out["zones"][z] = figs
        out["other_zone_results_during_outage"] = other_done_during_outage
        out["seconds"] = round(time.monotonic() - started, 1)
        for key in ("submitted", "results", "lost", "duplicate_results", "re_executions"):
            out[key] = sum(out["zones"][z][key] for z in zones)
        return out
    finally:
        for pool in pools:
            pool.shutdown()
        cluster.stop()


def _safe_count(r: Any, zone: str, ids: list[str]) -> int:
    try:
        return count_results(r, zone, ids)
    except Exception:
        return -1


# -- the run ---------------------------------------------------------------------------------------------


def _edge_models(work: Path, models_dir: Path | None) -> Any:
    """The edge models: from `models_dir`, else the installed ones, else built into `work` (signed with a
    key made here, which the loader is then told to trust)."""
    from edge_agent.models import EdgeModels
    from edge_agent.models.runtime import default_models_dir

    for candidate in (models_dir, default_models_dir()):
        if candidate is not None and (candidate / "registry.json").exists():
            return EdgeModels.load(candidate)
    from edge_agent.models.build import build_models

    key = work / "model-keys" / "signing.pem"
    os.environ["HYB_MODEL_SIGNING_KEY"] = str(key)
    os.environ["HYB_MODEL_VERIFY_KEY"] = str(key) + ".pub"
    build_models(work / "models", signing_key=key)
    return EdgeModels.load(work / "models")


def _policy() -> Any:
    from policies import load_default_policy

    return load_default_policy()  # zone in-wb


def _roster() -> Any:
    from edge_agent.pii import Roster

    return Roster.load(Path(__file__).resolve().parents[1] / "data" / "pii" / "roster.yaml")


def _table(faults: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="chaos: jobs through each fault")
    for col in ("fault", "submitted", "results", "lost", "duplicate results", "re-executions", "notes"):
        table.add_column(col, justify="left" if col in ("fault", "notes") else "right")
    for name, f in faults.items():
        note = f.get("note", "")
        table.add_row(name, str(f.get("submitted", "")), str(f.get("results", "")), str(f.get("lost", "")),
                      str(f.get("duplicate_results", "")), str(f.get("re_executions", "")), note)  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 jobs, faults 1-4 (under 5 minutes)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--only", default="", help="comma-separated faults to run (default: all)")
    ap.add_argument(
        "--models-dir", type=Path, default=None, help="built edge models for fault 3 (default: installed, else built)"
    )
    args = ap.parse_args(argv)
    n = 2000 if args.quick else 10_000
    only = {x for x in args.only.split(",") if x}
    console = Console(width=160)
    faults: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()

    def want(name: str) -> bool:
        return not only or name in only

    with tempfile.TemporaryDirectory(prefix="hyb-chaos-") as tmp:
        work = Path(tmp)
        with EmbeddedRedis(work / "redis-main") as server:
            if want("worker_kills"):
                faults["worker_kills"] = fault_worker_kills(server.url, work / "f1", "chaos-kills", n,
                                                            ms=20 if args.quick else 10)  # fmt: skip
                faults["worker_kills"]["note"] = f"{faults['worker_kills']['workers_killed']} SIGKILLs"
                console.print(faults["worker_kills"])
            if want("worker_sigstop"):
                faults["worker_sigstop"] = fault_sigstop(server.url, work / "f4", "chaos-stop", min(n, 2000))
                faults["worker_sigstop"]["note"] = (
                    f"{faults['worker_sigstop']['held_when_stopped']} held; "
                    f"{faults['worker_sigstop']['late_results_refused']} late results refused"
                )
                console.print(faults["worker_sigstop"])
            if want("edge_cut"):
                faults["edge_cut"] = fault_edge_cut(
                    server.url, work / "f3", "in-wb", _edge_models(work, args.models_dir), _policy(),
                    cut_s=10.0 if args.quick else 60.0, roster=_roster(),
                )  # fmt: skip
                f = faults["edge_cut"]
                f["note"] = (
                    f"cut {f['cut_s']:g} s: {f['max_outbox']} held in the outbox, "
                    f"{f['interactive_fallback_during_cut']} fallback answers, in order: {f['delivered_in_order']}"
                )
                console.print(f)
        for mode in ("always", "everysec"):
            name = f"redis_restart_{mode}"
            if want(name):
                faults[name] = fault_redis_restarts(work / f"f2-{mode}", f"chaos-aof-{mode}", n, mode)
                f = faults[name]
                f["note"] = f"{f['redis_kills']} kills; {f['unacknowledged_submits']} unacked → resubmitted"
                console.print(faults[name])
        if not args.quick and want("cluster_master_kill"):
            if redis7_binaries() is None:
                faults["cluster_master_kill"] = {"note": "skipped: needs redis-server and redis-cli >= 7"}
            else:
                f = faults["cluster_master_kill"] = fault_cluster(work / "f5", n // 5)
                victim = next(z for z, v in f["zones"].items() if v["role"] == "its master killed")
                f["note"] = (
                    f"zone {victim}: {f['zones'][victim]['submits_refused']} submit attempts refused while down; "
                    f"other zone: {f['other_zone_results_during_outage']} results during the outage"
                )
                console.print(f)
    result = {
        "benchmark": "chaos",
        "config": {**machine(), "jobs": n, "quick": args.quick},
        "faults": faults,
        "seconds": round(time.monotonic() - t0, 1),
    }
    write_result(args.out, result)
    console.print(_table(faults))
    console.print(f"wrote {args.out} in {result['seconds']} s")
    return 0 if all(f.get("lost", 0) == 0 and f.get("duplicate_results", 0) == 0 for f in faults.values()) else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "PII_ESSAYS",
    "PII_VALUES",
    "fault_cluster",
    "fault_edge_cut",
    "fault_redis_restarts",
    "fault_sigstop",
    "fault_worker_kills",
    "main",
]
