"""Drive a workload through a running stack's edge agents and collect what happened.

Questions go to `POST /v1/requests` (sync, interactive) on the edge agents in turn; the latency is
measured by the client around the HTTP call. A cascaded answer comes back at once, marked
provisional, with the cloud job's id: its final label is fetched from `GET /v1/jobs/{id}`. Essays
go asynchronously (batch lane) and are polled until graded.

Afterwards: each edge's own counters (`/v1/device`: bytes offloaded, PII values that left), the
workers' `/metrics` (batch sizes, GPU-seconds), the dead-letter streams, and a scan of everything
in Redis for the raw PII values of the trace (an independent check of the edge's counter).
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from broker import keys
from hybrid.stack.workload import Item

ROUTES = ("local", "cloud", "fallback", "cascade")


@dataclass
class Outcome:
    item: Item
    edge: str
    route: str = "error"  # local | cloud | fallback | cascade | error
    status: str = ""
    http_status: int = 0
    latency_ms: float = 0.0
    label: str | None = None  # the final answer (after a cascade: the cloud's)
    local_label: str | None = None
    job_id: str | None = None
    answered: bool = False
    at_s: float = 0.0  # seconds since the trace started
    result: Any = None
    error: str = ""
    decision: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunStats:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0


def _route(doc: dict[str, Any]) -> str:
    route = str(doc.get("route", "error"))
    if route == "cloud" and doc.get("cascade"):
        return "cascade"  # answered locally first, low confidence, then by the cloud
    if route == "local" and doc.get("cascade"):
        return "cascade"
    return route


def _one(http: httpx.Client, edge: str, item: Item, t0: float) -> Outcome:
    out = Outcome(item, edge, at_s=time.perf_counter() - t0)
    if item.kind == "essay":
        body = {"text": item.text, "task": "essay-grading", "mode": "async", "request_id": item.id}
    else:
        body = {"text": item.text, "task": "question-classification", "mode": "sync", "request_id": item.id}
    start = time.perf_counter()
    try:
        r = http.post(f"{edge}/v1/requests", json=body)
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        return out
    out.latency_ms = (time.perf_counter() - start) * 1000
    out.http_status = r.status_code
    doc = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code >= 400:
        out.error = str(doc.get("error", r.text))[:300]
        return out
    out.route = _route(doc)
    out.decision = doc.get("decision") or {}
    out.status = str(doc.get("status", ""))
    out.job_id = doc.get("job_id")
    res = doc.get("result") or {}
    if isinstance(res, dict):
        out.label = res.get("label")
        out.result = res
    if out.route == "cascade":
        local = doc.get("local_result") or (res if doc.get("provisional") else None) or {}
        out.local_label = local.get("label") if isinstance(local, dict) else None
    out.answered = out.status in ("done", "fallback", "provisional") and (out.label is not None or item.kind == "essay")
    return out


def _settle(http: httpx.Client, o: Outcome, deadline: float) -> None:
    """Wait for the cloud's final answer of a cascaded question or a queued essay."""
    while time.monotonic() < deadline:
        try:
            r = http.get(f"{o.edge}/v1/jobs/{o.job_id}")
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if r.status_code == 200:
            doc = r.json()
            if doc.get("status") == "done":
                res = doc.get("result") or {}
                o.result = res
                if isinstance(res, dict) and "label" in res:
                    o.label = res["label"]
                o.status, o.answered = "done", True
                return
            if doc.get("status") == "failed":
                o.status, o.error, o.answered = "failed", str(doc.get("error")), False
                return
        time.sleep(0.1)
    o.error = o.error or "no final answer before the deadline"


def run_trace(
    edges: Sequence[str],
    items: Sequence[Item],
    *,
    concurrency: int = 4,
    rate_per_s: float | None = None,
    settle_timeout_s: float = 60.0,
    progress: Callable[[int], None] | None = None,
) -> RunStats:
    """Send `items` round-robin to `edges`; at most `concurrency` in flight, paced to `rate_per_s`."""
    t0 = time.perf_counter()
    lock = threading.Lock()
    done = [0]
    local = threading.local()

    def client() -> httpx.Client:
        c = getattr(local, "http", None)
        if c is None:
            c = local.http = httpx.Client(timeout=30.0)
        return c

    def task(i: int, item: Item) -> Outcome:
        if rate_per_s:
            wait = t0 + i / rate_per_s - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        o = _one(client(), edges[i % len(edges)], item, t0)
        with lock:
            done[0] += 1
            if progress:
                progress(done[0])
        return o

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(task, range(len(items)), items))
    deadline = time.monotonic() + settle_timeout_s
    with httpx.Client(timeout=10.0) as http:
        for o in outcomes:
            if o.job_id and (o.route == "cascade" or o.item.kind == "essay") and o.status != "done":
                _settle(http, o, deadline)
    return RunStats(outcomes, time.perf_counter() - t0)


# -- what the stack itself says ----------------------------------------------------------------------


def edge_totals(edges: Iterable[str]) -> dict[str, float]:
    out = {"offload_bytes": 0.0, "offloaded_jobs": 0.0, "pii_values_left": 0.0, "pii_tokenized": 0.0}
    with httpx.Client(timeout=5.0) as http:
        for e in edges:
            doc = http.get(f"{e}/v1/device").json()
            for k in out:
                out[k] += float(doc.get(k, 0))
    return out


def worker_metrics(urls: Iterable[str]) -> dict[str, Any]:
    """Batch-size histogram (per task) and GPU-seconds summed over the workers that answer."""
    sizes: dict[str, dict[str, float]] = {}
    buckets: dict[str, dict[str, float]] = {}
    gpu_s = 0.0
    jobs = 0.0
    with httpx.Client(timeout=3.0) as http:
        for url in urls:
            try:
                text = http.get(url).text
            except httpx.HTTPError:
                continue
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if fam.name == "hybrid_worker_batch_size":
                        task = s.labels.get("task", "?")
                        d = sizes.setdefault(task, {"batches": 0.0, "jobs": 0.0})
                        if s.name.endswith("_count"):
                            d["batches"] += s.value
                        elif s.name.endswith("_sum"):
                            d["jobs"] += s.value
                        elif s.name.endswith("_bucket"):
                            le = s.labels.get("le", "+Inf")
                            buckets.setdefault(task, {})
                            buckets[task][le] = buckets[task].get(le, 0.0) + s.value
                    elif fam.name == "hybrid_worker_gpu_seconds" and s.name.endswith("_total"):
                        gpu_s += s.value
                    elif fam.name == "hybrid_worker_jobs" and s.name.endswith("_total"):
                        jobs += s.value
    for task, d in sizes.items():
        d["mean"] = round(d["jobs"] / d["batches"], 2) if d["batches"] else 0.0
        full = [float(le) for le, n in buckets.get(task, {}).items() if le != "+Inf" and n >= d["batches"] > 0]
        d["max_at_most"] = min(full) if full else 0.0
    return {"batch_sizes": sizes, "gpu_seconds": gpu_s, "jobs": jobs}


def dlq_lengths(client: redis.Redis, zones: Iterable[str]) -> dict[str, int]:
    return {z: int(client.xlen(keys.dlq_stream(z))) for z in zones}


def scan_for(client: Any, needles: Sequence[str]) -> dict[str, int]:
    """How many Redis values (stream entries, strings, hash fields, list/set members) contain each needle."""
    raw = [(n, n.encode()) for n in needles if n]
    hits = {n: 0 for n, _ in raw}

    def check(blob: Any) -> None:
        if isinstance(blob, str):
            blob = blob.encode()
        if not isinstance(blob, bytes | bytearray):
            return
        for n, b in raw:
            if b in blob:
                hits[n] += 1

    for key in client.scan_iter(count=1000):
        check(key)
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        with contextlib.suppress(redis.ResponseError):
            if kind == "string":
                check(client.get(key))
            elif kind == "hash":
                for f, v in client.hgetall(key).items():
                    check(f)
                    check(v)
            elif kind == "list":
                for v in client.lrange(key, 0, -1):
                    check(v)
            elif kind in ("set", "zset"):
                for v in client.smembers(key) if kind == "set" else client.zrange(key, 0, -1):
                    check(v)
            elif kind == "stream":
                last: Any = "-"
                while True:
                    batch = client.xrange(key, min=last, count=1000)
                    for _entry_id, fields in batch:
                        for f, v in fields.items():
                            check(f)
                            check(v)
                    if len(batch) < 1000:
                        break
                    last = "(" + (batch[-1][0].decode() if isinstance(batch[-1][0], bytes) else batch[-1][0])
    return hits


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(sorted(values), n=100, method="inclusive")[int(q) - 1]) if 1 <= q <= 99 else None


__all__ = [
    "ROUTES",
    "Outcome",
    "RunStats",
    "dlq_lengths",
    "edge_totals",
    "percentile",
    "run_trace",
    "scan_for",
    "worker_metrics",
]
