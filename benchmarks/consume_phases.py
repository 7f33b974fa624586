"""Where the time of the sealed consume loop goes: `Consumer.fetch` + `ack`, phase by phase.

    python -m benchmarks.consume_phases [--quick] [--out benchmarks/results/consume_phases.json]

A profiler for `benchmarks.broker`'s `sealed_consume_per_s`, not a benchmark with a target. It runs
the steps of `Consumer.fetch` one by one, in its order, on the good path (every message opens, none
is a replay) — read the lanes (with read-ahead, mostly the reply of the read sent at the last
fetch), check the clear headers, send the replay/claim check (and then the next read), open the bodies, read the check's
answer, make the deliveries, read the reply of the last read's acknowledgement — then `ack` the
read, pipelined (`ack(wait=False)`, as `benchmarks.broker` does), timing each with
`perf_counter_ns`, 100 entries per read as in `benchmarks.broker`. The raw loop (XREADGROUP +
XACK) is timed the same way, interleaved. Reports µs per message of each phase: the minimum over
all reads (what the code costs when the shared machine leaves it alone) and the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.broker import READ, Bench, essay_text
from benchmarks.report import machine, write_result
from broker.client import Client
from broker.consumer import Consumer, _header_and_body
from broker.embedded import EmbeddedRedis
from broker.message import JobSpec

RESULTS = Path(__file__).with_name("results") / "consume_phases.json"
PHASES = ("read", "headers", "send_check", "bodies", "check_answer", "deliveries", "ack_confirm", "ack_send")
RAW_PHASES = ("raw_read", "raw_ack")


def sealed_round(bench: Bench, n: int, text: str, into: dict[str, list[float]]) -> None:
    zone = bench.zone()
    sealer = bench.sealer(zone)
    Client(bench.r, sealer, zone).submit_many(
        JobSpec(task="noop", inputs={"text": text}, lane="batch") for _ in range(n)
    )
    consumer = Consumer(bench.r, sealer, zone, "phases", count=READ, reclaim_interval_s=3600)
    first = consumer.fetch(count=1, block_ms=0)  # groups, scripts and the first reclaim out of the way
    consumer.ack(first, wait=False)  # so that every read below has an acknowledgement to confirm
    done = len(first)
    now = time.perf_counter_ns
    while done < n:
        t0 = now()
        chunks = consumer._read_lanes(READ)
        t1 = now()
        read = [
            (stream, entry_id, 1, flat, *_header_and_body(flat)) for stream, es, _ in chunks for entry_id, flat in es
        ]
        headers = sealer.open_headers(zone, [e[4] for e in read])
        heads: list[Any] = [(*e, h) for e, h in zip(read, headers, strict=True)]
        t2 = now()
        check = consumer._send_claims(heads)
        consumer._send_ahead()
        t3 = now()
        jobs: list[Any] = sealer.open_bodies([(h[6], h[4], h[5]) for h in heads])
        t4 = now()
        verdicts = check.result()
        t5 = now()
        batch = consumer._to_run(heads, jobs, verdicts, 0, [])
        t6 = now()
        consumer.flush()
        t7 = now()
        consumer.ack(batch, wait=False)
        t8 = now()
        if len(batch) != len(heads):
            raise RuntimeError("a message did not open on the good path")
        done += len(batch)
        for key, (a, b) in zip(
            PHASES, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6), (t6, t7), (t7, t8)], strict=True
        ):
            into[key].append((b - a) / len(batch) / 1000)
    consumer.flush()


def raw_round(bench: Bench, n: int, text: str, into: dict[str, list[float]]) -> None:
    stream = f"raw-phases:{bench.zone()}"
    bench.r.xgroup_create(stream, "g", id="0", mkstream=True)
    for i in range(0, n, 500):
        pipe = bench.r.pipeline(transaction=False)
        for _ in range(min(500, n - i)):
            pipe.xadd(stream, {b"p": text.encode()})
        pipe.execute()
    now = time.perf_counter_ns
    done = 0
    while done < n:
        t0 = now()
        resp: Any = bench.r.xreadgroup("g", "c", {stream: ">"}, count=READ)
        t1 = now()
        ids = [eid for _, entries in resp for eid, _ in entries]
        bench.r.xack(stream, "g", *ids)
        t2 = now()
        done += len(ids)
        into["raw_read"].append((t1 - t0) / len(ids) / 1000)
        into["raw_ack"].append((t2 - t1) / len(ids) / 1000)
    bench.r.delete(stream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.consume_phases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3,000 messages instead of 5 of 30,000.")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS}).")
    args = parser.parse_args(argv)
    rounds, n = (3, 3_000) if args.quick else (5, 30_000)
    text = essay_text(1024, seed=1024)
    samples: dict[str, list[float]] = {key: [] for key in (*PHASES, *RAW_PHASES)}
    console = Console(stderr=True)
    with (
        tempfile.TemporaryDirectory(prefix="hyb-phases-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as server,
    ):
        bench = Bench(server, Path(tmp))
        for i in range(rounds):
            console.log(f"round {i + 1} of {rounds} …")
            raw_round(bench, n, text, samples)
            sealed_round(bench, n, text, samples)
    phases = {
        key: {"min_us": round(min(v), 3), "median_us": round(statistics.median(v), 3)} for key, v in samples.items()
    }
    ours = [phases[k] for k in PHASES]
    raw = [phases[k] for k in RAW_PHASES]
    result = {
        "phases": phases,
        "sum_min_us": round(sum(p["min_us"] for p in ours), 2),
        "sum_median_us": round(sum(p["median_us"] for p in ours), 2),
        "raw_sum_min_us": round(sum(p["min_us"] for p in raw), 2),
        "raw_sum_median_us": round(sum(p["median_us"] for p in raw), 2),
        "config": {"rounds": rounds, "messages_per_round": n, "read": READ, "payload_bytes": 1024, **machine()},
    }
    write_result(args.out, result)
    table = Table(title="sealed consume loop, µs per 1 KB message")
    table.add_column("phase")
    table.add_column("min", justify="right")
    table.add_column("median", justify="right")
    for key, p in phases.items():
        table.add_row(key, f"{p['min_us']:.2f}", f"{p['median_us']:.2f}")
    table.add_row("ours, all phases", f"{result['sum_min_us']:.2f}", f"{result['sum_median_us']:.2f}")
    table.add_row("raw, both phases", f"{result['raw_sum_min_us']:.2f}", f"{result['raw_sum_median_us']:.2f}")
    Console().print(table)
    console.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
