"""`hybrid exporter` (Prometheus /metrics, status page, /api/status) and `hybrid top` (a live terminal view).

Both read the same figures (`broker.metrics.QueueMetrics`) and both keep running while Redis is
away: they say so plainly and pick up again when it is back.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from broker.metrics import QueueMetrics, Snapshot, redacted
from hybrid.common import EXIT_UNAVAILABLE, friendly_errors, settings_from
from hybrid.exporter import Monitor, serve

SPARK = "▁▂▃▄▅▆▇█"


def register(cli: click.Group) -> None:
    cli.add_command(exporter)
    cli.add_command(top)


def _metrics(redis_url: str | None, zones: tuple[str, ...], active_window: float) -> QueueMetrics:
    settings = settings_from(redis_url, None, None)
    if not settings.redis_url:
        raise click.UsageError("no Redis URL: pass --redis-url or set REDIS_URL (or HYB_REDIS_URL)")
    return QueueMetrics(settings.redis_url, list(zones) or [settings.zone], active_idle_s=active_window)


def _common(fn: Any) -> Any:
    fn = click.option(
        "--active-window", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
        help="A consumer idle for less than this many seconds counts as an active worker.",
    )(fn)  # fmt: skip
    fn = click.option(
        "--interval", type=click.FloatRange(min=0.1, max=3600), default=5.0, show_default=True,
        help="Seconds between samples.",
    )(fn)  # fmt: skip
    fn = click.option(
        "--zone", "zones", multiple=True, help="Zone to watch (repeat for several) [env HYB_ZONE, default 'local']."
    )(fn)
    fn = click.option("--redis-url", help="Redis to read [env REDIS_URL or HYB_REDIS_URL].")(fn)
    return fn


@click.command()
@_common
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=9470, show_default=True, help="Port to listen on.")
@click.option(
    "--history", type=click.FloatRange(min=1), default=900.0, show_default=True,
    help="Seconds of backlog history the status page charts.",
)  # fmt: skip
@friendly_errors
def exporter(
    redis_url: str | None, zones: tuple[str, ...], interval: float, active_window: float, host: str, port: int,
    history: float,
) -> None:  # fmt: skip
    """Serve queue metrics: /metrics (Prometheus), / (status page) and /api/status (JSON).

    Reads Redis every --interval seconds: backlog, lag, pending, oldest age per zone and lane, dead
    letters by reason, spend and breakers, edge fleet. If Redis cannot be read, /metrics says
    `hybrid_redis_up 0`, the page says why, and the exporter keeps retrying.
    """
    metrics = _metrics(redis_url, zones, active_window)

    def report(snap: Snapshot) -> None:
        click.echo("Redis is up" if snap.redis_up else f"Redis is DOWN: {snap.error} (retrying)", err=True)

    monitor = Monitor(metrics, interval_s=interval, history_s=max(history, interval), on_change=report)
    monitor.refresh()  # the first request never sees "not sampled yet"
    try:
        server = serve(monitor, host, port)
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    monitor.start()
    bound = server.server_address[1]
    click.echo(
        f"hybrid exporter on http://{host}:{bound}/ (metrics: /metrics, JSON: /api/status); "
        f"reading {redacted(metrics.url)} zones {', '.join(metrics.zones)} every {interval:g} s",
        err=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    monitor.stop()
    server.shutdown()
    server.server_close()
    click.echo("exporter stopped", err=True)


def _spark(values: list[int]) -> str:
    if not values:
        return ""
    top = max(max(values), 1)
    return "".join(SPARK[min(int(v / top * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for v in values)


def _age(s: float) -> str:
    if s < 1:
        return "<1s" if s > 0 else "0"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def frame(snap: Snapshot, url: str, history: dict[str, deque[int]], interval: float) -> Group:
    """One screen of `hybrid top`."""
    when = time.strftime("%H:%M:%S", time.localtime(snap.taken_ms / 1000)) if snap.taken_ms else "-"
    if not snap.redis_up:
        return Group(
            Panel(
                Text(f"Redis is DOWN: {snap.error}\nretrying every {interval:g} s ...", style="bold red"),
                title=f"hybrid top - {redacted(url)}",
            )
        )
    head = Text(f"hybrid top - {redacted(url)} - Redis {snap.redis_version} - {when}", style="bold")
    lanes = Table("zone", "lane", "backlog", "lag", "pending", "oldest", "workers", "added", "removed", "trend")
    for ln in snap.lanes:
        trend = _spark(list(history.get(f"{ln.zone}/{ln.lane}", [])))
        lanes.add_row(
            ln.zone, ln.lane, str(ln.backlog), str(ln.lag), str(ln.pending), _age(ln.oldest_age_s),
            f"{ln.consumers_active}/{ln.consumers}", str(ln.added_total), str(ln.removed_total), trend,
        )  # fmt: skip
    dlq = Table("zone", "dead letters", "newest reasons", title="dead letters")
    for d in snap.dlq:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(d.reasons.items(), key=lambda kv: -kv[1])) or "-"
        dlq.add_row(d.zone, str(d.entries), reasons)
    breakers = Table("zone", "scope", "breaker", "spend/budget hour", "spend/budget day", title="cost breakers")
    for b in snap.budgets:
        style = {"open": "bold red", "half_open": "bold yellow"}.get(b.state, "green")
        cells = []
        for w in ("hour", "day"):
            spent = b.spend_usd.get(w, 0.0)
            cells.append(f"${spent:,.2f} / ${b.budget_usd[w]:,.2f}" if w in b.budget_usd else f"${spent:,.2f}")
        state = b.state.replace("_", "-") + (" (forced)" if b.forced else "")
        breakers.add_row(b.zone, b.scope, Text(state, style=style), *cells)
    parts: list[Any] = [head, *(Text(n, style="bold yellow") for n in snap.notes), lanes, dlq, breakers]
    fleet = Table("zone", "edge devices online", "GPU workers alive", "ready", "jobs held", title="fleet")
    for f in snap.fleet:
        devices = "-" if f.devices_online is None else str(f.devices_online)
        fleet.add_row(f.zone, devices, str(f.workers), str(f.workers_ready), str(f.workers_in_flight))
    parts.append(fleet)
    mode = "exact (entries-added)" if snap.exact_counts else "running count since start (Redis 6.2)"
    parts.append(Text(f"added/removed: {mode}; Ctrl-C quits", style="dim"))
    return Group(*parts)


@click.command()
@_common
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and tests).")
@friendly_errors
def top(redis_url: str | None, zones: tuple[str, ...], interval: float, active_window: float, once: bool) -> None:
    """A live terminal view of queues, dead letters, breakers and the fleet (works over SSH).

    Keeps refreshing every --interval seconds; says so plainly when Redis cannot be read and picks
    up again when it is back. With --once, prints one frame (exit code 69 if Redis is down).
    """
    metrics = _metrics(redis_url, zones, active_window)
    history: dict[str, deque[int]] = {}

    def sample() -> Snapshot:
        snap = metrics.sample()
        for ln in snap.lanes:
            history.setdefault(f"{ln.zone}/{ln.lane}", deque(maxlen=40)).append(ln.backlog)
        return snap

    if once:
        console = Console(width=None if Console().is_terminal else 140)
        snap = sample()
        console.print(frame(snap, metrics.url, history, interval))
        if not snap.redis_up:
            raise SystemExit(EXIT_UNAVAILABLE)
        return
    first = frame(sample(), metrics.url, history, interval)
    with Live(first, console=Console(), auto_refresh=False) as live, contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(interval)
            live.update(frame(sample(), metrics.url, history, interval), refresh=True)


__all__ = ["exporter", "frame", "register", "top"]
