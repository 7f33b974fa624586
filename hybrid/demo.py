"""`hybrid demo`: the whole stack on this machine, driven by the e-learning workload.

By default it runs `hybrid up` and sends student questions and essays through the edge agents
(`hybrid.stack.demo_run`). `--broker-only` keeps the older, smaller demo: the sealed broker round
trip alone — an embedded redis-server (or the one REDIS_URL names), a fresh keyring, a worker in a
separate process, a few hundred sealed jobs in Bengali and English, one tampered message to show
the dead-letter stream at work.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker import keys
from broker.client import Client, sealer_from_settings
from broker.connection import connect
from broker.dead_letter import DeadLetters
from broker.embedded import EmbeddedRedis
from broker.errors import HybridError
from broker.keyring import LocalKeyring
from broker.message import JobSpec
from broker.queues import queue_depth
from broker.settings import load_settings
from hybrid.common import EXIT_FAILURE, friendly_errors

QUESTIONS = [
    "সালোকসংশ্লেষণ কী এবং এটি কেন গুরুত্বপূর্ণ?",
    "What is the difference between speed and velocity?",
    "ভগ্নাংশ যোগ করার নিয়ম কী?",
    "Explain the water cycle in three sentences.",
    "বাংলাদেশের জাতীয় কবি কে?",
    "Why does ice float on water?",
]


def _specs(n: int, seed: int) -> list[JobSpec]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        essay = i % 4 == 3  # a quarter are essay-sized batch jobs, the rest interactive questions
        text = " ".join(rng.choice(QUESTIONS) for _ in range(12 if essay else 1))
        out.append(
            JobSpec(
                task="text_stats",
                inputs={"text": text},
                model="default",
                tenant="elearn-bd",
                lane="batch" if essay else "interactive",
                sensitivity="personal",
                trace_id=f"demo-{i}",
            )
        )
    return out


@click.command()
@click.option("--quick", is_flag=True, help="A short workload (about a minute once the models are built).")
@click.option("--redis-url", default=None, help="Use this Redis instead of starting an embedded one.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report's figures as JSON here.")  # fmt: skip
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data dir of the stack [env HYB_DATA_DIR, default ~/.local/share/hybrid-ai-stack].")  # fmt: skip
@click.option("--edges", type=click.IntRange(1, 32), default=2, show_default=True, help="Edge agents to start.")
@click.option(
    "--cloud-models",
    type=click.Choice(["full", "light"]),
    default=None,
    help="Cloud models: full (torch runners) or light (ONNX) [default: full; light with --quick].",
)
@click.option("--keep-running", is_flag=True, help="Leave the stack up after the report (status page) until Ctrl-C.")
@click.option("--broker-only", is_flag=True, help="Only the sealed broker round trip (no models, no edge).")
@click.option(
    "--jobs", "n_jobs", type=click.IntRange(1, 100_000), default=300, show_default=True,
    help="--broker-only: jobs to submit.",
)  # fmt: skip
@click.option("--zone", default="demo", show_default=True, help="--broker-only: zone for the keys and streams.")
@click.option("--seed", type=int, default=7, show_default=True, help="--broker-only: seed for the questions.")
@friendly_errors
def demo(
    quick: bool, redis_url: str | None, json_path: Path | None, data_dir: Path | None, edges: int,
    cloud_models: str | None, keep_running: bool, broker_only: bool, n_jobs: int, zone: str, seed: int,
) -> None:  # fmt: skip
    """Start the stack and drive the e-learning workload through it; print what happened.

    Questions in Bengali and English (some with names, phone numbers, e-mails) go to the edge
    agents, essays are graded with feedback in the cloud lane, and a short Redis outage shows the
    fallback. Exit 0 when every request was answered, no PII value left a device and no job was
    dead-lettered.
    """
    if not broker_only:
        from hybrid.stack.commands import run_until_interrupted
        from hybrid.stack.demo_run import DemoOptions, run_demo

        opts = DemoOptions(
            quick=quick,
            redis_url=redis_url,
            json_path=json_path,
            data_dir=data_dir,
            edges=edges,
            cloud_models=cloud_models,
            keep_running=keep_running,
        )
        sys.exit(run_until_interrupted(lambda: run_demo(opts)))
    _broker_only(n_jobs, zone, seed, redis_url)


def _broker_only(n_jobs: int, zone: str, seed: int, redis_url: str | None) -> None:
    console = Console()
    keys.check_zone(zone)
    redis_url = redis_url or os.environ.get("HYB_REDIS_URL") or os.environ.get("REDIS_URL")
    with tempfile.TemporaryDirectory(prefix="hyb-demo-") as tmp:
        server = None if redis_url else EmbeddedRedis(Path(tmp) / "redis", appendonly=True).start()
        url = redis_url or (server.url if server else "")
        try:
            ok = _run(console, url, zone, Path(tmp), n_jobs, seed, server)
        finally:
            if server:
                server.cleanup()
    if not ok:
        sys.exit(EXIT_FAILURE)


def _run(
    console: Console, url: str, zone: str, tmp: Path, n_jobs: int, seed: int, server: EmbeddedRedis | None
) -> bool:
    keyring = tmp / "keyring.json"
    LocalKeyring.init_zone(keyring, zone)
    settings = load_settings(redis_url=url, zone=zone, keyring=str(keyring))
    where = f"embedded redis-server {server.version()} on {url}" if server else url
    console.print(f"[bold]Hybrid AI Stack demo[/] — zone [cyan]{zone}[/], {where}")

    client = Client(connect(url), sealer_from_settings(settings), zone)
    env = {
        **os.environ,
        "HYB_REDIS_URL": url,
        "HYB_ZONE": zone,
        "HYB_KEYRING": str(keyring),
        "HYB_LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "hybrid", "worker", "run", "--name", "demo-worker-1", "--min-idle-ms", "5000"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = ""
        while worker.stderr is not None:  # the worker says "worker <name> ready in zone …" once it consumes
            line = worker.stderr.readline()
            if not line or "ready in zone" in line or "consuming" in line:
                ready = line
                break
        if not ready:
            raise HybridError("the worker did not start (no 'ready' line on its stderr)")
        specs = _specs(n_jobs, seed)
        submitted_at: dict[str, float] = {}
        t0 = time.perf_counter()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:  # fmt: skip
            bar = progress.add_task("submitting", total=n_jobs)
            ids: list[str] = []
            for i in range(0, n_jobs, 50):
                chunk = client.submit_many(specs[i : i + 50])
                now = time.time()
                submitted_at.update(dict.fromkeys(chunk, now))
                ids += chunk
                progress.advance(bar, len(chunk))
            submit_s = time.perf_counter() - t0
            _inject_tampered(client, zone)
            progress.update(bar, description="waiting for results", completed=0)
            results = {}
            remaining = list(ids)
            while remaining:
                got = client.wait_all(remaining[:50], timeout=60)
                results.update(got)
                remaining = remaining[50:]
                progress.advance(bar, len(got))
        total_s = time.perf_counter() - t0
        dead = DeadLetters(client.redis, zone)
        depth = queue_depth(client.redis, zone)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, worker_log = worker.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, worker_log = worker.communicate()

    latencies = sorted(r.finished_ms - submitted_at[j] * 1000 for j, r in results.items())
    ok = sum(r.ok for r in results.values())
    table = Table(title="broker round trip", show_header=False)
    table.add_row("jobs submitted (sealed)", str(n_jobs))
    table.add_row("results fetched and opened", f"{len(results)} ({ok} ok)")
    table.add_row("submit rate", f"{n_jobs / submit_s:,.0f} jobs/s")
    table.add_row("end-to-end rate", f"{len(results) / total_s:,.0f} jobs/s")
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    table.add_row("latency p50 / p95 (submit → result stored)", f"{statistics.median(latencies):.1f} / {p95:.1f} ms")
    table.add_row("dead letters", ", ".join(f"{x.reason}: {x.detail}" for x in dead.list(5)) or "0")
    table.add_row("queue after", ", ".join(f"{d.lane} len={d.length} pending={d.pending}" for d in depth))
    table.add_row("worker process", f"pid {worker.pid}, exit code {worker.returncode} (drained on SIGTERM)")
    console.print(table)
    sample = results[ids[0]]
    console.print(f"sample result {sample.job_id}: {sample.output} by {sample.worker}")
    console.print(f"[dim]{worker_log.strip().splitlines()[-1] if worker_log.strip() else ''}[/]")
    client.close()
    good = len(results) == n_jobs and ok == n_jobs and worker.returncode == 0 and dead.size() == 1
    console.print("[green]demo passed[/]" if good else "[red]demo found a problem[/]")
    return good


def _inject_tampered(client: Client, zone: str) -> None:
    """One sealed job with a byte of its body flipped on the way — it must end in the DLQ."""
    header, hb, body = client.sealer.seal_job(zone, JobSpec(task="echo", inputs={"text": "tampered in transit"}))
    flipped = bytearray(body)
    flipped[-1] ^= 0x01
    client.redis.xadd(keys.jobs_stream(zone, header.lane), {b"h": hb, b"b": bytes(flipped)})


__all__ = ["demo"]


def register(cli: click.Group) -> None:
    cli.add_command(demo)
