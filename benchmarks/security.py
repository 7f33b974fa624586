"""Security figures: the PII leak scan and the ACL matrix, against a running pipeline.

    python -m benchmarks.security [--models-dir DIR] [--out benchmarks/results/security.json]

**PII leak scan.** Texts full of PII (names, emails, phone numbers; English and Bengali script, Latin
and Bengali digits — `benchmarks.chaos.PII_ESSAYS`) go through the real edge agent (PII detection,
tokenization into the vault, sealing) to Redis: async essays, interactive summaries, and a stretch
with the broker cut off (the outbox path). A real `hybrid worker run` process (DEBUG logging) echoes
jobs whose text is the edge tokenizer's output, a tampered message lands in the dead-letter stream.
Then every key and stream entry in Redis (strings, hashes, streams, sets, zsets, lists), the
exporter's `/metrics` and `/api/status`, the edge agent's metrics and the worker's log are searched
for every PII value in every spelling (each digit system, with and without separators): 0 expected.

**ACL matrix.** `hybrid deploy redis-acl`'s file for a zone, loaded by a real Redis 7 server; the
pipeline runs with each role as itself (edge submits, worker consumes and completes, exporter reads
depth); then every user tries every command of a fixed list — allowed where the role needs it,
NOPERM everywhere else — and each outcome is compared with the expected one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis
from prometheus_client import generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry

from benchmarks.chaos import PII_ESSAYS, PII_VALUES, _edge_models, _roster, fault_edge_cut
from benchmarks.chaos_lib import count_results, redis7_binaries, wait_until
from benchmarks.report import machine, write_result
from broker import keys
from broker.client import Client
from broker.connection import connect
from broker.consumer import Consumer
from broker.embedded import EmbeddedRedis, free_port
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import BODY_FIELD, HEADER_FIELD, JobSpec, Sealer

RESULTS = Path(__file__).parent / "results" / "security.json"
BN_DIGITS = str.maketrans("0123456789", "০১২৩৪৫৬৭৮৯")
LATIN_DIGITS = str.maketrans("০১২৩৪৫৬৭৮৯", "0123456789")


def spellings(values: Iterable[str]) -> list[str]:
    """Every value in both digit systems, with and without separators, and lower-cased."""
    out: set[str] = set()
    for v in values:
        for w in (v, v.translate(BN_DIGITS), v.translate(LATIN_DIGITS)):
            out.add(w)
            out.add(w.lower())
            if any(c.isdigit() for c in w):
                out.add("".join(c for c in w if c.isdigit()))
    return sorted(out)


def dump_redis(client: redis.Redis) -> list[tuple[str, bytes]]:
    """(key, bytes) for every value of every key: strings, hash fields, stream entries, set/zset members."""
    r: Any = client  # responses are bytes (decode_responses=False)
    out: list[tuple[str, bytes]] = []
    for raw in r.scan_iter(count=1000):
        key = raw.decode(errors="replace")
        kind = r.type(raw).decode()
        out.append((key, raw))
        if kind == "string":
            out.append((key, r.get(raw) or b""))
        elif kind == "hash":
            out += [(key, k + b"=" + v) for k, v in r.hgetall(raw).items()]
        elif kind == "stream":
            out += [(key, k + b"=" + v) for _, f in r.xrange(raw) for k, v in f.items()]
        elif kind == "set":
            out += [(key, m) for m in r.smembers(raw)]
        elif kind == "zset":
            out += [(key, m) for m in r.zrange(raw, 0, -1)]
        elif kind == "list":
            out += [(key, m) for m in r.lrange(raw, 0, -1)]
    return out


def find(values: list[str], blobs: Iterable[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """(where, value) for every PII value found in a blob."""
    needles = [(v, v.encode()) for v in values if len(v) >= 4]
    return [(where, v) for where, blob in blobs for v, n in needles if n in blob]


def pii_scan(work: Path, models: Any) -> dict[str, Any]:
    from broker.metrics import QueueMetrics
    from edge_agent.agent import AgentConfig, EdgeAgent, EdgeRequest
    from hybrid.exporter import Monitor, respond
    from policies import load_default_policy

    zone = "in-wb"
    values = spellings(PII_VALUES)
    server = EmbeddedRedis(work / "redis").start()
    try:
        # 1. the edge path, with a cut (outbox) in the middle: fault 3's run, PII essays
        cut = fault_edge_cut(server.url, work / "edge-cut", zone, models, load_default_policy(), cut_s=3.0,
                             before_s=1.0, after_s=1.0, rate_per_s=5.0, roster=_roster())  # fmt: skip
        keyring = work / "edge-cut" / "keyring.json"
        sealer = Sealer(Envelope(LocalKeyring(keyring, zones=[zone])))
        # 2. interactive summaries (tokenized, sync) answered by a consumer echoing what it got
        r = connect(server.url)
        agent = EdgeAgent(models, load_default_policy(), AgentConfig(device_id="scan-edge", zone=zone,
                          cloud_wait_s=5.0), state_dir=work / "edge2", sealer=sealer, redis_url=server.url,
                          roster=_roster()).start()  # fmt: skip
        stop = threading.Event()
        echo = Consumer(connect(server.url), sealer, zone, "scan-cloud", block_ms=100)
        thread = threading.Thread(target=echo.run, args=(lambda jobs: [dict(j.payload.inputs) for j in jobs],),
                                  kwargs={"stop": stop}, daemon=True)  # fmt: skip
        thread.start()
        answers = []
        try:
            for text in PII_ESSAYS:
                answers.append(agent.handle(EdgeRequest(text="Summarize: " + text, task="summarization", mode="sync")))
            tokenized = [agent.tokenizer.tokenize(t).text for t in PII_ESSAYS]
            edge_metrics = generate_latest(agent.metrics.registry)
        finally:
            stop.set()
            thread.join(10)
            agent.close()
        # 3. a real worker process (DEBUG log) echoing the tokenizer's output; a tampered message to the DLQ
        log_path = work / "worker.log"
        client = Client(r, sealer, zone, name="scan-producer")
        ids = client.submit_many(JobSpec(task="echo", inputs={"text": tokenized[i % len(tokenized)]}, lane="batch")
                                 for i in range(200))  # fmt: skip
        _, hb, body = sealer.seal_job(zone, JobSpec(task="echo", inputs={"text": tokenized[0]}))
        r.xadd(keys.jobs_stream(zone, "batch"), {HEADER_FIELD: hb, BODY_FIELD: body[:-1] + bytes([body[-1] ^ 1])})
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hybrid", "worker", "run", "--redis-url", server.url, "--zone", zone,
                 "--keyring", str(keyring), "--name", "scan-worker", "--tasks", "builtin"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HYB_LOG_LEVEL": "DEBUG"},
            )  # fmt: skip
        try:
            done = wait_until(lambda: count_results(r, zone, ids) == len(ids), 60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        # 4. the exporter's view
        monitor = Monitor(QueueMetrics(server.url, [zone]), interval_s=1.0, history_s=10.0)
        exporter = [respond(monitor, "/metrics")[2], respond(monitor, "/api/status")[2]]
        blobs = dump_redis(r)
        sources = {
            "redis": blobs,
            "exporter": [("exporter", b) for b in exporter],
            "edge_metrics": [("edge metrics", edge_metrics)],
            "worker_log": [("worker log", log_path.read_bytes())],
        }
        found = {name: find(values, items) for name, items in sources.items()}
        # the check works: the same search over the plain texts finds every value
        control = find(values, [("plain", t.encode()) for t in PII_ESSAYS])
        return {
            "pii_values": len(PII_VALUES),
            "spellings_searched": len(values),
            "redis_keys": len({k for k, _ in blobs}),
            "redis_values_scanned": len(blobs),
            "found": {name: len(hits) for name, hits in found.items()},
            "found_where": {name: hits[:10] for name, hits in found.items() if hits},
            "control_hits_in_plain_texts": len({v for _, v in control}),
            "edge_jobs": cut["submitted"] + len(answers),
            "summaries_answered": sum(1 for a in answers if a.get("status") == "done"),
            "worker_jobs": len(ids),
            "worker_results": len(ids) if done else count_results(r, zone, ids),
            "pii_tokenized_by_edge": agent.totals["pii_tokenized"],
        }
    finally:
        server.cleanup()


def _demo_items(quick: bool = True) -> list[Any]:
    """The items of `hybrid demo`'s trace (the same counts and seeds as `hybrid.stack.demo_run`)."""
    from hybrid.stack.workload import essays, questions

    n_q, n_e, n_drill = (60, 8, 8) if quick else (400, 40, 20)
    return (questions(n_q, seed=7, pii_share=0.35) + essays(n_e, seed=11)
            + questions(n_drill, seed=98, pii_share=0.5) + questions(n_drill, seed=99, pii_share=0.5))  # fmt: skip


def demo_pii_values(quick: bool = True) -> list[str]:
    """Every PII value `hybrid demo` puts into its trace."""
    from hybrid.stack.workload import all_pii_values

    return all_pii_values(_demo_items(quick))


def pii_scan_after_demo(work: Path, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run `hybrid demo --quick` (embedded Redis with its outage drill), then load the Redis it left (its
    AOF, same binary) and search every key and value, the exporter's output and every log of the stack
    (workers, edges, API) for every PII value of the demo's trace, in every spelling."""

    data = work / "demo-data"
    started = time.monotonic()
    # the demo signs and verifies its own models: not with a key this process may have been told to trust
    env = {k: v for k, v in os.environ.items() if k not in ("HYB_MODEL_SIGNING_KEY", "HYB_MODEL_VERIFY_KEY")}
    proc = subprocess.run([sys.executable, "-m", "hybrid", "demo", "--quick", "--data-dir", str(data), "--json",
                           str(work / "demo.json")], capture_output=True, text=True, timeout=timeout_s,
                          env=env)  # fmt: skip
    demo_s = time.monotonic() - started
    if proc.returncode not in (0, 1):
        return {"skipped": f"hybrid demo failed (exit {proc.returncode}): {proc.stderr[-500:]}"}
    out = scan_stack_data(data, [("demo stdout/stderr", (proc.stdout + proc.stderr).encode())])
    report = {}
    with contextlib.suppress(OSError, ValueError):
        report = json.loads((work / "demo.json").read_text())
    keys_ = ("pii_values_in_trace", "pii_values_tokenized", "pii_values_left_devices", "pii_redis_scan_hits")
    checks = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip().startswith(("✓", "✗"))]
    return {"demo_exit": proc.returncode, "demo_s": round(demo_s, 1), "demo_checks": checks, **out,
            "demo_report_pii": {k: report.get(k) for k in keys_}}  # fmt: skip


def scan_stack_data(data: Path, extra: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Search what a `hybrid up`/`demo` data dir holds: its Redis (reloaded from the AOF), the exporter's
    output over it, every log file — and `extra` blobs — for every PII value of the demo's trace."""
    from broker.metrics import QueueMetrics
    from hybrid.exporter import Monitor, respond

    values = spellings(demo_pii_values(quick=True))
    server = EmbeddedRedis(data / "redis", appendonly=True).start()  # reloads the demo's AOF
    try:
        r = connect(server.url)
        blobs = dump_redis(r)
        zones = sorted({k.split("{", 1)[1].split("}", 1)[0] for k, _ in blobs if "{" in k})
        monitor = Monitor(QueueMetrics(server.url, zones or ["in-wb"]), interval_s=1.0, history_s=10.0)
        exporter = [respond(monitor, "/metrics")[2], respond(monitor, "/api/status")[2]]
    finally:
        server.stop()
    logs = [(str(p.relative_to(data)), p.read_bytes()) for p in sorted(data.rglob("*.log")) if p.is_file()]
    sources = {"redis": blobs, "exporter": [("exporter", b) for b in exporter], "stack_logs": logs,
               "demo_output": extra}  # fmt: skip
    found = {name: find(values, items) for name, items in sources.items()}
    return {
        "pii_values": len(demo_pii_values(True)),
        "spellings_searched": len(values),
        "redis_keys": len({k for k, _ in blobs}),
        "redis_values_scanned": len(blobs),
        "log_files": len(logs),
        "found": {name: len(hits) for name, hits in found.items()},
        "found_where": {name: hits[:10] for name, hits in found.items() if hits},
        # the check works: the same search over the trace's own texts finds every value
        "control_values_found_in_trace_texts": sum(
            1 for v in demo_pii_values() if find(spellings([v]), [(it.id, it.text.encode()) for it in _demo_items()])
        ),
    }


# -- the ACL matrix -----------------------------------------------------------------------------------------

ACL_ZONE, ACL_OTHER = "eu-west", "us-east"


def acl_commands(zone: str, other: str) -> dict[str, list[Any]]:
    z = keys.zone_prefix(zone)
    jobs = keys.jobs_stream(zone, "batch")
    return {
        "PING": ["PING"],
        "XADD own jobs": ["XADD", jobs, "*", "h", "x", "b", "y"],
        "XADD other zone's jobs": ["XADD", keys.jobs_stream(other, "batch"), "*", "h", "x", "b", "y"],
        "XLEN own jobs": ["XLEN", jobs],
        "XRANGE own jobs": ["XRANGE", jobs, "-", "+", "COUNT", "1"],
        "XREADGROUP own jobs": ["XREADGROUP", "GROUP", keys.GROUP, "acl-probe", "COUNT", "1", "STREAMS", jobs, ">"],
        "XACK own jobs": ["XACK", jobs, keys.GROUP, "0-1"],
        "SET result": ["SET", keys.result_key(zone, "acl-probe"), "v", "NX", "PX", "1000"],
        "GET result": ["GET", keys.result_key(zone, "acl-probe")],
        "MGET results": ["MGET", keys.result_key(zone, "acl-probe")],
        "XADD dlq": ["XADD", keys.dlq_stream(zone), "*", "reason", "probe"],
        "XRANGE dlq": ["XRANGE", keys.dlq_stream(zone), "-", "+", "COUNT", "1"],
        "DEL own jobs": ["DEL", jobs],
        "HSET budgets": ["HSET", keys.budgets(zone), "probe", "1"],
        "HGET breaker": ["HGET", keys.breaker_state(zone), "global"],
        "GET other zone's result": ["GET", keys.result_key(other, "acl-probe")],
        "KEYS *": ["KEYS", "*"],
        "SCAN": ["SCAN", "0"],
        "FLUSHALL": ["FLUSHALL"],
        "CONFIG GET": ["CONFIG", "GET", "appendonly"],
        "ACL LIST": ["ACL", "LIST"],
        "CLIENT LIST": ["CLIENT", "LIST"],
        "DEBUG SLEEP": ["DEBUG", "SLEEP", "0"],
        "SCRIPT FLUSH": ["SCRIPT", "FLUSH"],
        "EVAL DEL": ["EVAL", "return redis.call('DEL', KEYS[1])", "1", jobs],
        "SET outside hyb": ["SET", "not-ours", "1"],
        "GET api token hash": ["HGETALL", f"{z}:api:tokens"],
    }


ALLOWED: dict[str, set[str]] = {
    "edge": {"PING", "XADD own jobs", "XLEN own jobs", "GET result", "MGET results", "HGET breaker"},
    "api": {"PING", "XADD own jobs", "XLEN own jobs", "GET result", "MGET results", "HGET breaker",
            "GET api token hash"},
    "worker": {"PING", "XLEN own jobs", "XRANGE own jobs", "XREADGROUP own jobs", "XACK own jobs", "SET result",
               "XADD dlq", "HGET breaker"},
    "exporter": {"PING", "XLEN own jobs", "XRANGE own jobs", "XRANGE dlq", "HGET breaker", "GET result",
                 "MGET results", "GET other zone's result", "GET api token hash", "SCAN"},
    "default": set(),
}  # fmt: skip
"""What each role is expected to be allowed (the rest must be refused), per the generator's documented grants
(`hybrid/deploy/acl.py`). The exporter's SCAN is needed by its metrics (in-flight sets, devices); SCAN takes
no key, so it lists every key *name* on the server, other zones' too — values stay unreadable outside hyb:*."""


def acl_matrix(work: Path) -> dict[str, Any]:
    from hybrid.deploy.acl import write_acl

    found = redis7_binaries()
    if found is None:
        return {"skipped": "needs redis-server >= 7 (ACL selectors)"}
    acl = write_acl([ACL_ZONE, ACL_OTHER], work / "users.acl", env={})
    port = free_port()
    (work / "data").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([found[0], "--port", str(port), "--bind", "127.0.0.1", "--aclfile", str(acl.acl_path),
                             "--dir", str(work / "data"), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:

        def client(user: str | None) -> redis.Redis:
            if user is None:  # no retries: each refused connection answers at once
                return redis.Redis(port=port, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
            return connect(f"redis://{user}:{acl.passwords[user]}@127.0.0.1:{port}/0")

        if not wait_until(lambda: client("admin").ping(), 10, 0.05):
            raise RuntimeError("redis-server with the ACL file did not start")
        # the pipeline, each role as itself
        ring = work / "keyring.json"
        LocalKeyring.init_zone(ring, ACL_ZONE)
        sealer = Sealer(Envelope(LocalKeyring(ring, zones=[ACL_ZONE])))
        producer = Client(client(f"edge-{ACL_ZONE}"), sealer, ACL_ZONE, name="acl-edge")
        ids = producer.submit_many(JobSpec(task="t", inputs={"i": i}, lane="batch") for i in range(50))
        worker = Consumer(client(f"worker-{ACL_ZONE}"), sealer, ACL_ZONE, "acl-worker")
        worker.run(lambda jobs: [{"i": j.payload.inputs["i"]} for j in jobs], burst=True)
        pipeline_ok = len(producer.wait_all(ids, timeout=10)) == len(ids)
        from broker.queues import queue_depth

        depth = queue_depth(client("exporter"), ACL_ZONE)
        # the matrix
        commands = acl_commands(ACL_ZONE, ACL_OTHER)
        users = {"edge": f"edge-{ACL_ZONE}", "api": f"api-{ACL_ZONE}", "worker": f"worker-{ACL_ZONE}",
                 "exporter": "exporter", "default": None}  # fmt: skip
        rows: dict[str, dict[str, str]] = {}
        attempts = denials = unexpected = 0
        surprises: list[str] = []
        for role, user in users.items():
            c = client(user)
            rows[role] = {}
            for name, cmd in commands.items():
                attempts += 1
                try:
                    c.execute_command(*cmd)  # type: ignore[no-untyped-call]
                    outcome = "allowed"
                except (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError) as exc:
                    outcome = "denied"
                    _ = exc
                except redis.exceptions.ResponseError as exc:
                    text = str(exc).lower()
                    refused = ("noperm", "noauth", "permission", "enable-debug-command")  # DEBUG: refused by config
                    outcome = "denied" if any(w in text for w in refused) else "allowed"
                denials += outcome == "denied"
                rows[role][name] = outcome
                if (outcome == "allowed") != (name in ALLOWED[role]):
                    unexpected += 1
                    surprises.append(f"{role}: {name} {outcome}")
        return {
            "pipeline_as_roles": pipeline_ok,
            "exporter_saw_depth": depth is not None,
            "users": len(users),
            "commands": len(commands),
            "attempts": attempts,
            "denials": denials,
            "allowed": attempts - denials,
            "unexpected": unexpected,
            "surprises": surprises,
            "matrix": rows,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--models-dir", type=Path, default=None, help="built edge models (default: installed, else built)")
    ap.add_argument("--no-demo", dest="demo", action="store_false", help="skip the scan after `hybrid demo --quick`")
    args = ap.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hyb-security-") as tmp:
        work = Path(tmp)
        pii = pii_scan(work / "pii", _edge_models(work, args.models_dir))
        demo: dict[str, Any] = pii_scan_after_demo(work / "demo") if args.demo else {"skipped": "--no-demo"}
        acl = acl_matrix(work / "acl")
    result = {"benchmark": "security", "config": machine(), "pii_scan": pii, "pii_scan_after_demo": demo,
              "acl_matrix": acl,
              "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
    write_result(args.out, result)
    total = sum(pii["found"].values())
    print(f"PII leak scan: {total} PII values found in {pii['redis_values_scanned']} Redis values "
          f"({pii['redis_keys']} keys), exporter, edge metrics and worker log; "
          f"{pii['spellings_searched']} spellings of {pii['pii_values']} values searched "
          f"(control: {pii['control_hits_in_plain_texts']} found in the plain texts)")  # fmt: skip
    if "skipped" not in demo:
        print(f"after hybrid demo --quick: {sum(demo['found'].values())} PII values found in "
              f"{demo['redis_values_scanned']} Redis values, the exporter and {demo['log_files']} log files "
              f"({demo['spellings_searched']} spellings of {demo['pii_values']} values)")  # fmt: skip
        total += sum(demo["found"].values())
    if "skipped" not in acl:
        shape = f"{acl['users']} users x {acl['commands']} commands"
        print(f"ACL matrix: {acl['denials']} denials out of {acl['attempts']} attempts ({shape}), "
              f"{acl['unexpected']} unexpected outcomes")  # fmt: skip
        for s in acl["surprises"]:
            print("  unexpected:", s)
    print(f"wrote {args.out}")
    return 0 if total == 0 and acl.get("unexpected", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "acl_matrix",
    "demo_pii_values",
    "dump_redis",
    "find",
    "main",
    "pii_scan",
    "pii_scan_after_demo",
    "spellings",
]
