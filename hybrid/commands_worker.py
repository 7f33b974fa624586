"""`hybrid worker run` (one consumer process) and `hybrid worker pool` (the local autoscaler)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import click
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from broker.client import sealer_from_settings
from broker.consumer import Consumer
from broker.errors import ConfigError
from broker.ledger import CostBreaker, Ledger, PriceTable
from gpu_worker.autoscale import Autoscaler, ScalePolicy, observe
from gpu_worker.health import HealthServer
from gpu_worker.runners.base import ModelRunner
from gpu_worker.runners.builtin import builtin_runners
from gpu_worker.supervisor import Supervisor
from gpu_worker.worker import Worker
from hybrid.common import friendly_errors, redis_for, settings_from, settings_options

BUILTIN = ("noop", "echo", "text_stats", "sleep")
MODEL_TASKS = ("embed", "classify", "classify-embedding", "grade", "feedback", "summarize")


def register(cli: click.Group) -> None:
    cli.add_command(worker)


@click.group()
def worker() -> None:
    """Consume a zone's jobs: one worker process (`run`) or an autoscaled pool of them (`pool`)."""


def parse_tasks(tasks: str) -> list[str]:
    """A checked task list from `--tasks`; `builtin` means noop, echo and text_stats, `all` every task."""
    wanted = [t.strip() for t in tasks.split(",") if t.strip()]
    if not wanted:
        raise ConfigError("--tasks is empty: name tasks, e.g. --tasks embed,classify (or builtin, or all)")
    if "all" in wanted:
        wanted = ["builtin", *MODEL_TASKS]
    unknown = sorted(set(wanted) - {"builtin", "chaos", *BUILTIN, *MODEL_TASKS})
    if unknown:
        raise ConfigError(
            f"unknown task(s) {', '.join(unknown)}; choose from builtin, all, {', '.join(BUILTIN + MODEL_TASKS)}"
        )
    return wanted


def select_runners(tasks: str, models_dir: str | None = None) -> list[ModelRunner]:
    """Runners for a comma-separated task list (see `parse_tasks`); model runners load lazily."""
    wanted = parse_tasks(tasks)
    runners: list[ModelRunner] = [r for r in builtin_runners() if "builtin" in wanted or r.task in wanted]
    if "chaos" in wanted:  # the fault-injection harness's task (benchmarks/chaos.py): logs each execution
        from gpu_worker.runners.chaos import ChaosRunner

        runners.append(ChaosRunner())
    model_tasks = [t for t in MODEL_TASKS if t in wanted]
    if model_tasks:
        from gpu_worker.runners.registry import build_runners  # torch and transformers load only here

        runners += list(build_runners(model_tasks, models_dir=models_dir).values())
    return runners


def _ledger(client: Any, zone: str, prices: str | None, instance_class: str, market: str, name: str) -> Ledger | None:
    if not prices:
        return None
    ledger = Ledger(client, zone, PriceTable.load(prices))
    ledger.register_worker(name, instance_class, "spot" if market == "spot" else "on_demand")
    return ledger


_run_options = [
    click.option(
        "--tasks", envvar="HYB_WORKER_TASKS", default="builtin", show_default=True,
        help="Comma-separated tasks to serve: builtin, all, or any of noop, echo, text_stats, sleep, embed, classify, "
        "classify-embedding, grade, feedback [env HYB_WORKER_TASKS].",
    ),
    click.option("--models-dir", envvar="HYB_MODELS_DIR", help="Built, signed models [env HYB_MODELS_DIR]."),
    click.option("--count", type=click.IntRange(1, 1000), default=None, help="Jobs per read [env HYB_READ_COUNT]."),
    click.option(
        "--min-idle-ms", type=click.IntRange(0), default=None, help="Reclaim jobs idle this long [env HYB_MIN_IDLE_MS]."
    ),
    click.option(
        "--max-in-flight", type=click.IntRange(1, 100_000), envvar="HYB_MAX_IN_FLIGHT", default=128, show_default=True,
        help="Jobs held between fetch and result [env HYB_MAX_IN_FLIGHT].",
    ),
    click.option(
        "--grace", "grace_s", type=click.FloatRange(0), envvar="HYB_DRAIN_GRACE_S", default=30.0, show_default=True,
        help="Seconds to finish jobs in hand after SIGTERM [env HYB_DRAIN_GRACE_S].",
    ),
    click.option("--prices", envvar="HYB_PRICES", type=click.Path(dir_okay=False), help="Price table (YAML/TOML) "
                 "to charge GPU-seconds to the cost ledger [env HYB_PRICES]."),
    click.option("--instance-class", envvar="HYB_INSTANCE_CLASS", default="cpu", show_default=True,
                 help="This machine's class in the price table [env HYB_INSTANCE_CLASS]."),
    click.option("--market", envvar="HYB_MARKET", type=click.Choice(["on_demand", "spot"]), default="on_demand",
                 show_default=True, help="Priced as on-demand or spot [env HYB_MARKET]."),
]  # fmt: skip


def run_options(fn: Any) -> Any:
    for opt in reversed(_run_options):
        fn = opt(fn)
    return fn


@worker.command("run")
@settings_options
@run_options
@click.option("--name", default=None, help="Consumer name, unique per worker [default: host-pid].")
@click.option("--burst", is_flag=True, help="Exit when no job is left instead of waiting for more.")
@click.option(
    "--health-port", type=click.IntRange(0, 65535), envvar="HYB_HEALTH_PORT", default=None,
    help="Serve /live, /ready and /metrics on this port [env HYB_HEALTH_PORT].",
)  # fmt: skip
@click.option("--health-host", envvar="HYB_HEALTH_HOST", default="127.0.0.1", show_default=True)
@friendly_errors
def worker_run(
    redis_url: str | None, zone: str | None, keyring: str | None, tasks: str, models_dir: str | None,
    count: int | None, min_idle_ms: int | None, max_in_flight: int, grace_s: float, prices: str | None,
    instance_class: str, market: str, name: str | None, burst: bool, health_port: int | None, health_host: str,
) -> None:  # fmt: skip
    """Consume the zone's jobs: interactive lane first, batched per model, results sealed.

    Models load once before the worker counts as ready (/ready answers 503 until then).
    SIGTERM or Ctrl-C: stop reading, finish and acknowledge the jobs in hand within --grace
    seconds, exit 0. Jobs of a killed worker are reclaimed by the others after --min-idle-ms.
    """
    logging.basicConfig(level=os.environ.get("HYB_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    settings = settings_from(redis_url, zone, keyring, read_count=count, min_idle_ms=min_idle_ms)
    client = redis_for(settings)
    name = name or f"{os.uname().nodename}-{os.getpid()}"
    consumer = Consumer(
        client, sealer_from_settings(settings), settings.zone, name,
        count=settings.read_count, block_ms=settings.block_ms, min_idle_ms=settings.min_idle_ms,
        max_deliveries=settings.max_deliveries, result_ttl_s=settings.result_ttl_s, read_ahead=settings.read_ahead,
    )  # fmt: skip
    registry = CollectorRegistry()
    w = Worker(
        consumer, select_runners(tasks, models_dir), max_in_flight=max_in_flight, registry=registry,
        ledger=_ledger(client, settings.zone, prices, instance_class, market, name),
    )  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    health = None
    if health_port is not None:
        health = HealthServer(
            lambda: w.ready.is_set() and not w.draining.is_set(),
            lambda: {"worker": w.name, "models": w.describe() if w.ready.is_set() else []},
            registry, host=health_host, port=health_port,
        ).start()  # fmt: skip
    w.load()
    models = ", ".join(f"{m['task']}/{m['model']} on {m['device']} ({m['dtype']})" for m in w.describe())
    click.echo(f"worker {w.name} ready in zone {settings.zone}: {models}", err=True)
    stats = w.run(stop, burst=burst, grace_s=grace_s)
    if health:
        health.stop()
    click.echo(
        f"worker {w.name} done: {stats.completed} results ({stats.expired} expired, {stats.rejected} rejected, "
        f"{stats.failed} failed), {consumer.stats.reclaimed} reclaimed, {consumer.stats.duplicates} duplicate "
        "results refused, "
        f"{sum(consumer.stats.dead_lettered.values())} dead-lettered, {consumer.stats.held_back} copies of running "
        f"jobs held back, {stats.abandoned} left pending",
        err=True,
    )


@worker.command("pool")
@settings_options
@run_options
@click.option("--min", "min_replicas", type=click.IntRange(0, 256), default=1, show_default=True)
@click.option("--max", "max_replicas", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option(
    "--target-latency", type=click.FloatRange(0.1), default=30.0, show_default=True,
    help="Seconds within which a waiting job should be done; sets how many workers a backlog needs.",
)  # fmt: skip
@click.option("--scale-down-delay", type=click.FloatRange(0), default=60.0, show_default=True)
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True, help="Seconds between steps.")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None, help="One log file per worker here.")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), envvar="HYB_POOL_METRICS_PORT", default=None,
    help="Serve the autoscaler's /metrics (desired and running workers, restarts) [env HYB_POOL_METRICS_PORT].",
)  # fmt: skip
@click.option("--metrics-host", envvar="HYB_POOL_METRICS_HOST", default="127.0.0.1", show_default=True)
@click.option("--usd-per-worker-hour", type=click.FloatRange(0), default=None,
              help="Cost of a worker-hour; with a global budget, caps the pool to what it affords.")  # fmt: skip
@friendly_errors
def worker_pool(
    redis_url: str | None, zone: str | None, keyring: str | None, tasks: str, models_dir: str | None,
    count: int | None, min_idle_ms: int | None, max_in_flight: int, grace_s: float, prices: str | None,
    instance_class: str, market: str, min_replicas: int, max_replicas: int, target_latency: float,
    scale_down_delay: float, interval: float, log_dir: str | None, metrics_port: int | None, metrics_host: str,
    usd_per_worker_hour: float | None,
) -> None:  # fmt: skip
    """Start and stop `hybrid worker run` processes on this machine as the zone's backlog needs.

    Desired workers = backlog / (measured jobs/s per worker x target latency), within --min and
    --max, never zero while a backlog exists, lowered only after --scale-down-delay, capped by the
    global budget's remaining spend. Crashed workers are restarted. Ctrl-C drains them all.
    """
    if min_replicas > max_replicas:
        raise ConfigError(f"--min ({min_replicas}) is above --max ({max_replicas})")
    parse_tasks(tasks)
    settings = settings_from(redis_url, zone, keyring)
    client = redis_for(settings)
    policy = ScalePolicy(
        min_replicas=min_replicas, max_replicas=max_replicas, target_latency_s=target_latency,
        scale_down_delay_s=scale_down_delay,
    )  # fmt: skip
    breaker = CostBreaker(Ledger(client, settings.zone))
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)

    def command(name: str) -> list[str]:
        argv = [sys.executable, "-m", "hybrid", "worker", "run", "--name", name, "--tasks", tasks,
                "--max-in-flight", str(max_in_flight), "--grace", str(grace_s), "--instance-class", instance_class,
                "--market", market]  # fmt: skip
        for flag, value in (("--redis-url", settings.redis_url), ("--zone", settings.zone),
                            ("--keyring", str(settings.keyring)), ("--models-dir", models_dir),
                            ("--count", count), ("--min-idle-ms", min_idle_ms), ("--prices", prices)):  # fmt: skip
            if value is not None:
                argv += [flag, str(value)]
        return argv

    sup = Supervisor(
        command, Autoscaler(policy),
        lambda replicas, now: observe(client, settings.zone, replicas, now, breaker=breaker,
                                      usd_per_replica_hour=usd_per_worker_hour),
        prefix=f"{os.uname().nodename}-pool", interval_s=interval, grace_s=grace_s, log_dir=log_dir,
    )  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    last: list[int] = [-1]
    registry = CollectorRegistry()
    desired = Gauge("hybrid_autoscaler_desired_replicas", "Workers the autoscaler wants", ["zone"], registry=registry)
    wanted = Gauge("hybrid_autoscaler_wanted_replicas", "Before the scale-down delay", ["zone"], registry=registry)
    running = Gauge("hybrid_autoscaler_running_replicas", "Worker processes running", ["zone"], registry=registry)
    restarts = Gauge("hybrid_autoscaler_restarts", "Workers restarted after dying on their own", ["zone"],
                     registry=registry)  # fmt: skip
    if metrics_port is not None:
        start_http_server(metrics_port, addr=metrics_host, registry=registry)

    def on_step(decision: Any) -> None:
        desired.labels(settings.zone).set(decision.replicas)
        wanted.labels(settings.zone).set(decision.wanted)
        running.labels(settings.zone).set(len(sup.running))
        restarts.labels(settings.zone).set(sup.stats.restarted)
        if decision.replicas != last[0]:
            click.echo(f"{time.strftime('%H:%M:%S')} workers: {decision.replicas} — {decision.reason}", err=True)
            last[0] = decision.replicas

    stats = sup.run(stop, on_step)
    click.echo(
        f"pool stopped: {stats.started} started, {stats.restarted} restarted, {stats.stopped} drained, "
        f"{stats.killed} killed",
        err=True,
    )
