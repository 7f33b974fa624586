"""`hybrid grade run|schedule|unschedule|schedules|runs|scheduler`: the nightly batch from the shell."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from hybrid.common import EXIT_FAILURE, friendly_errors, redis_for, settings_from, settings_options
from hybrid.grading.job import RunRequest, execute
from hybrid.grading.runner import Summary
from hybrid.grading.state import RunRegistry

console = Console(stderr=True)


def register(cli: click.Group) -> None:
    cli.add_command(grade)
    from hybrid.commands_api import api

    cli.add_command(api)


@click.group()
def grade() -> None:
    """Nightly batch grading: a file of answers in, grades and feedback out, resumable.

    Input: JSONL or CSV with id, question_id, answer and optionally student, tenant, sensitivity.
    Output: the same order, one row per item (JSONL or CSV by the file name), a rejects file with
    the malformed lines and their line numbers, and `<output>.summary.json`.
    """


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} items/s" if speed else "- items/s", style="progress.data.speed")


def _request_options(fn: Any) -> Any:
    opts = [
        click.option(
            "--input", "input_path", required=True, type=click.Path(dir_okay=False), help="Items, .jsonl or .csv."
        ),
        click.option("--output", required=True, type=click.Path(dir_okay=False), help="Grades, .jsonl or .csv."),
        click.option(
            "--rejects", type=click.Path(dir_okay=False), help="Malformed lines [default: <output>.rejects.jsonl]."
        ),
        click.option("--tenant", default="default", show_default=True, help="Tenant of items that name none."),
        click.option("--task", default="grade", show_default=True, help="Task of the grade job."),
        click.option(
            "--feedback/--no-feedback", default=True, show_default=True, help="Also ask for written feedback."
        ),
        click.option("--feedback-task", default="feedback", show_default=True, help="Task of the feedback job."),
        click.option(
            "--window",
            type=click.IntRange(1, 1_000_000),
            default=2000,
            show_default=True,
            help="Jobs in flight at most.",
        ),
        click.option(
            "--chunk", type=click.IntRange(1, 5000), default=250, show_default=True, help="Jobs per submit call."
        ),
        click.option(
            "--item-timeout",
            type=click.FloatRange(1),
            default=3600.0,
            show_default=True,
            help="Seconds to wait for one job's result before leaving it to a resume.",
        ),
        click.option(
            "--pii/--no-pii", default=True, show_default=True, help="Tokenize PII of non-public answers before sealing."
        ),
        click.option("--vault", type=click.Path(file_okay=False), help="PII vault directory [default: <output>.pii/]."),
        click.option("--roster", type=click.Path(dir_okay=False, exists=True), help="Names to tokenize (roster file)."),
        click.option(
            "--admission", type=click.Path(dir_okay=False, exists=True), help="Admission policy file (TOML/YAML)."
        ),
        click.option(
            "--usd-per-gpu-hour", type=click.FloatRange(0), help="Price for the cost estimate from worker-seconds."
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _request(kw: dict[str, Any], run_id: str | None) -> RunRequest:
    output = kw["output"]
    return RunRequest(
        input=kw["input_path"], output=output, rejects=kw["rejects"] or f"{output}.rejects.jsonl", run_id=run_id,
        tenant=kw["tenant"], task=kw["task"], feedback_task=kw["feedback_task"] if kw["feedback"] else None,
        window=kw["window"], chunk=kw["chunk"], item_timeout_s=kw["item_timeout"], pii=kw["pii"], vault=kw["vault"],
        roster=kw["roster"], admission=kw["admission"], usd_per_gpu_hour=kw["usd_per_gpu_hour"],
    )  # fmt: skip


def _show_summary(s: Summary, request: RunRequest) -> None:
    table = Table(title=f"run {s.run_id}: {s.status}", show_header=False)
    rows = [
        ("items", s.items), ("already done (resumed)", s.already_done), ("graded ok", s.ok),
        ("failed (per-item errors)", s.failed), ("timed out (resume to retry)", s.timed_out),
        ("dead-lettered (resume to retry)", s.dead_lettered),
        ("rejected lines", s.rejected), ("jobs submitted this run", s.submitted_jobs),
        ("pauses (backpressure/budget)", f"{s.pauses} ({s.paused_s:.1f} s)"), ("duration", f"{s.duration_s:.1f} s"),
        ("rate", f"{s.items_per_s:,.1f} items/s"), ("worker time", f"{s.worker_s:.1f} s"),
        ("spend recorded (tenants, day)", f"${s.spend_usd:.4f}"),
    ]  # fmt: skip
    if s.cost_usd_est is not None:
        rows.append(("cost estimate", f"${s.cost_usd_est:.4f}"))
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
    console.print(f"grades: {request.output}   rejects: {request.rejects}")


@grade.command("run")
@settings_options
@_request_options
@click.option("--run-id", help="Run id [default: new, or the one in <output>.state.sqlite when resuming].")
@friendly_errors
def grade_run(redis_url: str | None, zone: str | None, keyring: str | None, run_id: str | None, **kw: Any) -> None:
    """Grade every item of --input; re-run the same command after a crash to resume.

    Up to --window jobs are in flight; on backpressure or an open budget breaker the run pauses
    (shown on the progress bar) and resumes by itself. Items that already have a result are never
    submitted again: the run's state is in <output>.state.sqlite.
    """
    request = _request(kw, run_id)
    request.check()
    settings = settings_from(redis_url, zone, keyring)
    client = redis_for(settings)
    interactive = console.is_terminal
    progress = Progress(
        TextColumn("[bold]grading"), BarColumn(), MofNCompleteColumn(), _RateColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("[yellow]{task.fields[status]}"),
        console=console, disable=not interactive,
    )  # fmt: skip
    task_id = progress.add_task("grading", total=None, status="")
    last_log: dict[str, Any] = {"at": 0.0, "pause": ""}

    def on_progress(done: int, total: int, pause: str | None) -> None:
        progress.update(task_id, completed=done, total=total, status=pause or "")
        if not interactive and (time.monotonic() - last_log["at"] > 10 or (pause or "") != last_log["pause"]):
            last_log["at"], last_log["pause"] = time.monotonic(), pause or ""
            click.echo(f"grading: {done}/{total}" + (f" ({pause})" if pause else ""), err=True)

    with progress:
        summary = execute(request, settings, client, on_progress=on_progress)
    summary_path = Path(f"{request.output}.summary.json")
    summary_path.write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")
    if summary.rejected:
        click.secho(f"{summary.rejected} malformed line(s) written to {request.rejects}", fg="yellow", err=True)
    _show_summary(summary, request)
    if summary.status != "completed":
        sys.exit(EXIT_FAILURE)


@grade.command("schedule")
@settings_options
@_request_options
@click.option("--cron", required=True, help='When, as a cron line in UTC, e.g. "0 1 * * *" (01:00 daily).')
@click.option("--name", default="nightly", show_default=True, help="Schedule name (runs are <name>-<YYYYmmddHHMM>).")
@friendly_errors
def grade_schedule(
    redis_url: str | None, zone: str | None, keyring: str | None, cron: str, name: str, **kw: Any
) -> None:
    """Register a recurring run; an RQ worker with its scheduler runs it (`hybrid grade scheduler`).

    --output and --rejects may contain {run_id} and {date}, e.g. --output 'grades-{date}.jsonl'.
    """
    from hybrid.grading.schedule import Schedule, add_schedule, check_schedule_request

    settings = settings_from(redis_url, zone, keyring)
    request = _request(kw, None)
    request.input = str(Path(request.input).resolve())
    request.output = str(Path(request.output).resolve())
    request.rejects = str(Path(request.rejects).resolve()) if request.rejects else None
    schedule = Schedule(name, cron, settings.zone, request, keyring=str(settings.keyring))
    check_schedule_request(schedule)  # bad input is said before Redis is asked
    request.check()
    job, when = add_schedule(redis_for(settings), schedule)
    click.echo(f"scheduled {name} ({cron}, UTC): next run {when:%Y-%m-%d %H:%M} UTC as RQ job {job.id}")


@grade.command("unschedule")
@settings_options
@click.argument("name")
@friendly_errors
def grade_unschedule(redis_url: str | None, zone: str | None, keyring: str | None, name: str) -> None:
    """Forget a schedule (an occurrence already queued finds it gone and does nothing)."""
    from hybrid.grading.schedule import remove_schedule

    settings = settings_from(redis_url, zone, keyring)
    if not remove_schedule(redis_for(settings), settings.zone, name):
        raise click.UsageError(f"no schedule {name!r} in zone {settings.zone} (see `hybrid grade schedules`)")
    click.echo(f"unscheduled {name}")


@grade.command("schedules")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@friendly_errors
def grade_schedules(redis_url: str | None, zone: str | None, keyring: str | None, as_json: bool) -> None:
    """List the zone's schedules and when each runs next."""
    from hybrid.grading.schedule import list_schedules, next_time

    settings = settings_from(redis_url, zone, keyring)
    now = datetime.now(UTC)
    rows = list_schedules(redis_for(settings), settings.zone)
    if as_json:
        for s in rows:
            click.echo(json.dumps({"name": s.name, "cron": s.cron, "next": next_time(s.cron, now).isoformat(),
                                   "input": s.request.input, "output": s.request.output}))  # fmt: skip
        return
    table = Table("name", "cron (UTC)", "next run", "input", "output", title=f"zone {settings.zone}")
    for s in rows:
        table.add_row(s.name, s.cron, f"{next_time(s.cron, now):%Y-%m-%d %H:%M}", s.request.input, s.request.output)
    Console().print(table)


def _when(ts: Any) -> str:
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


@grade.command("runs")
@settings_options
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@friendly_errors
def grade_runs(redis_url: str | None, zone: str | None, keyring: str | None, limit: int, as_json: bool) -> None:
    """List grading runs (CLI and scheduled): id, started, finished, counts, status."""
    settings = settings_from(redis_url, zone, keyring)
    runs = RunRegistry(redis_for(settings), settings.zone).list(limit)
    if as_json:
        for r in runs:
            click.echo(json.dumps(r))
        return
    table = Table("run id", "started (UTC)", "finished", "items", "ok", "failed", "rejected", "status",
                  title=f"grading runs of zone {settings.zone}")  # fmt: skip
    for r in runs:
        table.add_row(
            r["run_id"], _when(r.get("started")), _when(r.get("finished")), str(r.get("items", "-")),
            str(r.get("ok", "-")), str(r.get("failed", "-")), str(r.get("rejected", "-")), str(r.get("status", "-")),
        )  # fmt: skip
    Console().print(table)


@grade.command("scheduler")
@settings_options
@click.option("--burst", is_flag=True, help="Run what is due, then exit.")
@friendly_errors
def grade_scheduler(redis_url: str | None, zone: str | None, keyring: str | None, burst: bool) -> None:
    """An RQ worker with its scheduler on the grading queue: runs scheduled runs when they are due.

    Same as `rq worker hybrid-grade --with-scheduler --url $REDIS_URL`.
    """
    from rq import Worker

    from hybrid.grading.schedule import QUEUE

    settings = settings_from(redis_url, zone, keyring)
    worker = Worker([QUEUE], connection=redis_for(settings))
    worker.work(burst=burst, with_scheduler=True)
