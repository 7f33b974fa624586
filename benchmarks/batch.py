"""Batch benchmark: a grading run through the whole path vs the same items as RQ jobs.

    python -m benchmarks.batch [--quick] [--items N] [--workers K] [--out benchmarks/results/batch.json]

Same run, same N answers, same per-item function (`text_stats`: characters and words), K worker
processes on each side, a redis-server started here:

1. `hybrid_items_per_s`: `hybrid.grading.job.execute` — read the JSONL file, seal each item, submit
   through admission in a window of in-flight jobs, K `hybrid worker run` processes (dynamic
   batcher) run them and store sealed results, the run collects them, writes the output in input
   order and its state file. Timed from the start of the run to the output written; the workers
   are started and ready before the clock starts. No feedback job, no PII tokenization (the items
   are `public`), so both sides do the same work per item.
2. `rq_items_per_s`: the tool a team would use instead — the N items enqueued with
   `Queue.enqueue_many` as RQ jobs calling the same function, K RQ `SimpleWorker` processes (no
   fork per job, RQ's fastest) already started, timed until every job is finished; results are
   read back with `Job.fetch_many`.

Also `raw_submit_items_per_s`: the same items submitted with one `Client.submit_many` and collected
with `wait_all` on the same workers — the floor the grading driver's own costs (file, state, window,
output) are measured against.

Target: `hybrid_items_per_s` ≥ 5 x `rq_items_per_s`, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.report import machine, write_result
from broker import keys
from broker.admission import Admission
from broker.client import Client, sealer_from_settings
from broker.connection import connect
from broker.embedded import EmbeddedRedis
from broker.keyring import LocalKeyring
from broker.message import JobSpec
from broker.settings import load_settings
from hybrid.grading.job import RunRequest, execute

RESULTS = Path(__file__).with_name("results") / "batch.json"
TARGET_RATIO = 5.0
RQ_QUEUE = "bench-batch"
ZONE = "bench"
console = Console(stderr=True)


def text_stats(text: str) -> dict[str, int]:
    """The per-item work on the RQ side (the built-in `text_stats` task of the hybrid worker)."""
    return {"chars": len(text), "words": len(text.split())}


def answers(n: int) -> list[dict[str, Any]]:
    base = [
        "Photosynthesis turns light energy into chemical energy stored in glucose.",
        "সালোকসংশ্লেষণে আলোর শক্তি রাসায়নিক শক্তিতে পরিণত হয়।",
        "Speed is a scalar; velocity has a direction as well as a magnitude.",
        "গতি একটি স্কেলার রাশি, বেগের দিক আছে।",
    ]
    return [
        {"id": f"a{i}", "question_id": f"q{i % 7}", "answer": f"{base[i % 4]} ({i})", "sensitivity": "public"}
        for i in range(n)
    ]


def _wait_ready(r: Any, n: int, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        beats = r.hgetall(keys.worker_heartbeats(ZONE))
        if sum(1 for v in beats.values() if json.loads(v).get("ready")) >= n:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{n} hybrid workers did not report ready in {deadline_s:g} s")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def run_hybrid(server: EmbeddedRedis, work: Path, n: int, k: int) -> dict[str, Any]:
    keyring = work / "keyring.json"
    LocalKeyring.init_zone(keyring, ZONE)
    settings = load_settings(redis_url=server.url, zone=ZONE, keyring=str(keyring))
    inp, out = work / "in.jsonl", work / "out.jsonl"
    inp.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers(n)))
    r = connect(server.url)
    cmd = [sys.executable, "-m", "hybrid", "worker", "run", "--redis-url", server.url, "--zone", ZONE,
           "--keyring", str(keyring), "--tasks", "builtin", "--count", "256", "--max-in-flight", "512"]  # fmt: skip
    procs = [
        subprocess.Popen([*cmd, "--name", f"bw{i}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(k)
    ]
    try:
        _wait_ready(r, k)
        # the floor: the same items as plain jobs, submitted at once and waited for (no file, no state)
        client = Client(r, sealer_from_settings(settings), ZONE, admission=Admission(r, ZONE))
        specs = [JobSpec("text_stats", {"text": a["answer"]}, lane="batch", sensitivity="public") for a in answers(n)]
        started = time.perf_counter()
        ids = client.submit_many(specs)
        client.wait_all(ids, timeout=600)
        raw_elapsed = time.perf_counter() - started
        client.close()
        request = RunRequest(input=str(inp), output=str(out), task="text_stats", feedback_task=None, pii=False,
                             window=4000, chunk=500)  # fmt: skip
        started = time.perf_counter()
        summary = execute(request, settings, r)
        elapsed = time.perf_counter() - started
    finally:
        _stop(procs)
    rows = out.read_text().splitlines()
    if summary.ok != n or len(rows) != n:
        raise RuntimeError(f"hybrid run graded {summary.ok} of {n} items")
    return {"items_per_s": n / elapsed, "seconds": elapsed, "pauses": summary.pauses,
            "raw_submit_per_s": n / raw_elapsed, "raw_seconds": raw_elapsed}  # fmt: skip


def run_rq(server: EmbeddedRedis, n: int, k: int) -> dict[str, Any]:
    from rq import Queue
    from rq.job import Job

    r = connect(server.url)
    queue = Queue(RQ_QUEUE, connection=r)
    boot = (
        "import sys; from redis import Redis; from rq import SimpleWorker, Queue; "
        "r = Redis.from_url(sys.argv[1]); "
        f"SimpleWorker([Queue({RQ_QUEUE!r}, connection=r)], connection=r, name=sys.argv[2]).work(burst=False, "
        "logging_level='WARNING')"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", boot, server.url, f"rqw{i}-{os.getpid()}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(k)
    ]
    try:
        from rq import Worker

        deadline = time.monotonic() + 60
        while len(Worker.all(connection=r)) < k:
            if time.monotonic() > deadline:
                raise RuntimeError("RQ workers did not start")
            time.sleep(0.1)
        items = answers(n)
        started = time.perf_counter()
        data = [Queue.prepare_data("benchmarks.batch.text_stats", args=(a["answer"],), result_ttl=3600) for a in items]
        jobs = []
        for i in range(0, n, 1000):
            jobs += queue.enqueue_many(data[i : i + 1000])
        registry = queue.finished_job_registry
        while registry.count < n:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"RQ finished {registry.count} of {n} jobs in 600 s")
            failed = queue.failed_job_registry.count
            if failed:
                raise RuntimeError(f"{failed} RQ jobs failed")
            time.sleep(0.02)
        results = []
        ids = [j.id for j in jobs]
        for i in range(0, n, 1000):
            results += [j.return_value() for j in Job.fetch_many(ids[i : i + 1000], connection=r) if j is not None]
        elapsed = time.perf_counter() - started
    finally:
        _stop(procs)
    if len(results) != n or any(x is None for x in results):
        raise RuntimeError("RQ results missing")
    return {"items_per_s": n / elapsed, "seconds": elapsed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="Fewer items (≤ 90 s).")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    n = args.items or (3000 if args.quick else 20000)
    k = args.workers
    with tempfile.TemporaryDirectory(prefix="hyb-batch-") as tmp:
        work = Path(tmp)
        server = EmbeddedRedis(work / "redis").start()
        try:
            console.print(f"[bold]hybrid grade run[/]: {n} items, {k} workers …")
            hybrid = run_hybrid(server, work, n, k)
            console.print(f"[bold]RQ[/]: {n} items, {k} SimpleWorkers …")
            rq = run_rq(server, n, k)
        finally:
            server.cleanup()
    ratio = hybrid["items_per_s"] / rq["items_per_s"]
    result = {
        "hybrid_items_per_s": round(hybrid["items_per_s"], 1),
        "rq_items_per_s": round(rq["items_per_s"], 1),
        "raw_submit_items_per_s": round(hybrid["raw_submit_per_s"], 1),
        "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "config": {"items": n, "workers": k, "quick": args.quick, "hybrid": hybrid, "rq": rq, **machine()},
    }
    write_result(args.out, result)
    table = Table("path", "items/s", "seconds", title=f"batch: {n} items, {k} workers each")
    table.add_row(
        "hybrid grade run (sealed, admitted, batched)", f"{hybrid['items_per_s']:,.0f}", f"{hybrid['seconds']:.2f}"
    )
    table.add_row("raw Client.submit_many + wait_all (floor)", f"{hybrid['raw_submit_per_s']:,.0f}",
                  f"{hybrid['raw_seconds']:.2f}")  # fmt: skip
    table.add_row("RQ jobs, SimpleWorker", f"{rq['items_per_s']:,.0f}", f"{rq['seconds']:.2f}")
    table.add_row("ratio", f"{ratio:.1f}x (target ≥ {TARGET_RATIO:g}x)", "")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
