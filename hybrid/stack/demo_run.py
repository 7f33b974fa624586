"""`hybrid demo`: start the stack (`hybrid up`) and drive the e-learning workload through it.

1. interactive questions (Bengali and English, a share with names, phone numbers in ASCII and
   Bengali digits, e-mail addresses) to the edge agents' `/v1/requests`, a few in flight at a time;
2. a batch of essays (answers to questions of the grading bank, signed with the student's name and
   contact) graded with feedback by the grading driver (`hybrid grade run`'s code: PII tokenized on
   the grading host, `grade` and `feedback` jobs on the batch lane, the real runners on the workers);
3. an outage drill (embedded Redis only): Redis is stopped for a moment while questions keep
   coming — the devices answer from their distilled fallback — then started again on the same AOF;
4. the report: requests by route, latency per route, batch sizes the workers formed, cost, bytes
   and PII values that left the devices (the edge's counter, and a scan of all of Redis for the raw
   values), dead letters, every request answered, and where to look.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from broker.connection import connect
from hybrid.stack.drive import (
    ROUTES,
    Outcome,
    dlq_lengths,
    edge_totals,
    percentile,
    run_trace,
    scan_for,
    worker_metrics,
)
from hybrid.stack.essays import EssayRun, grade_essays
from hybrid.stack.up import Stack, StackConfig, default_data_dir
from hybrid.stack.workload import Item, all_pii_values, essays, questions


@dataclass
class DemoOptions:
    quick: bool = False
    redis_url: str | None = None
    json_path: Path | None = None
    data_dir: Path | None = None
    edges: int = 2
    cloud_models: str | None = None
    keep_running: bool = False


def route_table(outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for route in (*ROUTES, "error"):
        lat = [o.latency_ms for o in outcomes if o.route == route]
        if not lat and route == "error":
            continue
        out[route] = {
            "requests": len(lat),
            "p50_ms": round(percentile(lat, 50) or 0.0, 2) if lat else None,
            "p95_ms": round(percentile(lat, 95) or 0.0, 2) if lat else None,
        }
    return out


def _busy_and_outage(stack: Stack, busy: list[Item], outage: list[Item], console: Console) -> list[Outcome]:
    """Busy devices (cloud route), then busy devices with Redis stopped (fallback), then back to normal."""
    edges = [e.url for e in stack.edges]
    console.print("[yellow]busy devices[/]: another app holds each device's NPU at 95 %; questions go to the cloud")
    stack.set_device_load(0.95)
    try:
        outcomes = run_trace(edges, busy, concurrency=2, settle_timeout_s=30).outcomes
        if stack.embedded is not None:
            console.print(
                "[yellow]outage drill[/]: Redis stopped while the devices are busy; they answer from "
                "the distilled fallback"
            )
            stack.embedded.stop()
            try:
                outcomes += run_trace(edges, outage, concurrency=2, settle_timeout_s=0).outcomes
            finally:
                stack.embedded.start()
            console.print("Redis is back (AOF replayed)")
    finally:
        stack.set_device_load(None)
    return outcomes


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    console = console or Console()
    err = Console(stderr=True)
    n_q, n_e, n_drill = (60, 8, 8) if opts.quick else (400, 40, 20)
    config = StackConfig(
        data_dir=opts.data_dir or default_data_dir(),
        redis_url=opts.redis_url,
        edges=opts.edges,
        edge_port=0,
        api_port=0,
        status_port=0,
        workers_max=2,
        cloud_models=opts.cloud_models or ("light" if opts.quick else "full"),
        feedback_tokens=24 if opts.quick else 48,
    )
    stack = Stack(config, progress=lambda m: err.print(f"[dim]·[/dim] {m}"))
    t_start = time.perf_counter()
    with stack:
        client = connect(str(stack.redis_url))
        dlq0 = dlq_lengths(client, stack.zones)
        before = edge_totals([e.url for e in stack.edges])
        qs = questions(n_q, seed=7, pii_share=0.35)
        es = essays(n_e, seed=11)
        busy_items = questions(n_drill, seed=98, pii_share=0.5)
        drill_items = questions(n_drill, seed=99, pii_share=0.5)
        for i, it in enumerate(busy_items):
            it.id = f"busy{i}-{it.id}"
        for i, it in enumerate(drill_items):
            it.id = f"drill{i}-{it.id}"
        edges = [e.url for e in stack.edges]
        console.print(
            f"[bold]Hybrid AI Stack demo[/]: {len(qs)} questions and {len(es)} essays through "
            f"{len(edges)} edge agents ({', '.join(f'{e.device_id}@{e.zone}' for e in stack.edges)})"
        )
        # the essays arrive as one batch (a class handing in homework): the grading driver submits them
        # all, and the workers batch them
        console.print(f"grading {len(es)} essays with feedback (grading driver → grade + feedback runners)")
        essay_run = grade_essays(
            str(stack.redis_url),
            stack.keyring,
            stack.zones,
            es,
            stack.data_dir / "demo-essays",
            roster=config.roster,
            item_timeout_s=300.0,
        )
        run = run_trace(edges, qs, concurrency=4, settle_timeout_s=60)
        outcomes = list(run.outcomes)
        wm = worker_metrics(stack.worker_metrics_urls())  # before the drill: restarted workers start from zero
        outcomes += _busy_and_outage(stack, busy_items, drill_items, console)
        # wait for every cloud answer (also of questions sent during the drill)
        pending = [o for o in outcomes if o.job_id and o.status != "done" and o.route in ("cloud", "cascade")]
        if pending:
            import httpx

            from hybrid.stack.drive import _settle

            deadline = time.monotonic() + 60
            with httpx.Client(timeout=10) as http:
                for o in pending:
                    _settle(http, o, deadline)
        after = edge_totals(edges)
        dlq1 = dlq_lengths(client, stack.zones)
        pii_values = all_pii_values(qs + es + busy_items + drill_items)
        scan = scan_for(client, pii_values)
        urls = stack.urls()
        client.close()
        figures = _figures(opts, stack, outcomes, essay_run, before, after, wm, dlq0, dlq1, pii_values, scan, urls)
        figures["wall_s"] = round(time.perf_counter() - t_start, 1)
        _print(console, figures)
        if opts.json_path:
            opts.json_path.write_text(json.dumps(figures, indent=2, ensure_ascii=False), encoding="utf-8")
            err.print(f"wrote {opts.json_path}")
        if opts.keep_running:
            console.print(f"the stack keeps running: status page {stack.status_url} — Ctrl-C stops it")
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()
    return 0 if figures["passed"] else 1


def _figures(
    opts: DemoOptions,
    stack: Stack,
    outcomes: list[Outcome],
    essay_run: EssayRun,
    before: dict[str, float],
    after: dict[str, float],
    wm: dict[str, Any],
    dlq0: dict[str, int],
    dlq1: dict[str, int],
    pii_values: list[str],
    scan: dict[str, int],
    urls: dict[str, Any],
) -> dict[str, Any]:
    from hybrid.stack.costmodel import CostModel
    from policies import load_default_policy

    qs = [o for o in outcomes if o.item.kind == "question"]
    graded = essay_run.graded
    answered = sum(o.answered for o in outcomes) + len(graded)
    n_requests = len(outcomes) + essay_run.items
    labelled = [o for o in qs if o.item.label]
    correct = sum(o.label == o.item.label for o in labelled)
    cm = CostModel(load_default_policy())
    gpu_s = float(wm["gpu_seconds"])
    offload_bytes = after["offload_bytes"] - before["offload_bytes"]
    cost = cm.run_cost(
        gpu_busy_s=gpu_s,
        wall_s=max(o.at_s for o in outcomes) if outcomes else 0.0,
        warm_gpus=len(stack.zones),
        edges=len(stack.edges),
        egress_bytes=offload_bytes,
    )
    pii_left = after["pii_values_left"] - before["pii_values_left"]
    dlq_new = sum(dlq1.values()) - sum(dlq0.values())
    by_route = Counter(o.route for o in outcomes)
    fig: dict[str, Any] = {
        "requests": n_requests,
        "questions": len(qs),
        "essays": essay_run.items,
        "answered": answered,
        "unanswered": (
            [
                {"id": o.item.id, "route": o.route, "status": o.status, "error": o.error}
                for o in outcomes
                if not o.answered
            ]
            + [
                {"id": r.get("id"), "route": "grading", "status": r.get("status"), "error": r.get("error")}
                for r in essay_run.rows
                if r not in graded
            ]
            + [{"id": "essays", "route": "grading", "status": "error", "error": e} for e in essay_run.errors]
        )[:20],
        "routes": {r: by_route.get(r, 0) for r in ROUTES},
        "latency_by_route_ms": route_table([o for o in qs]),
        "essays_graded": len(graded),
        "essay_grading": {
            "path": "hybrid.grading driver (hybrid grade run) → tasks grade + feedback → workers' real runners",
            "runners": ["grade/rubric-minilm", "feedback/smollm2-135m-instruct"],
            "feedback_max_new_tokens": stack.config.feedback_tokens,
            "wall_s": round(essay_run.wall_s, 2),
            "essays_per_s": round(essay_run.items / essay_run.wall_s, 2) if essay_run.wall_s else None,
            "mean_score": round(sum(float(r["score"]) for r in graded) / len(graded), 2) if graded else None,
            "by_zone": {
                z: {k: s.get(k) for k in ("status", "items", "ok", "failed", "timed_out", "worker_s", "duration_s")}
                for z, s in essay_run.summaries.items()
            },
            "errors": essay_run.errors,
        },
        "essay_sample": next(
            (
                {k: r.get(k) for k in ("id", "question_id", "score", "feedback")}
                | {"max_score": (r.get("grade") or {}).get("max_score")}
                for r in graded
            ),
            None,
        ),
        "question_accuracy": round(correct / len(labelled), 4) if labelled else None,
        "accuracy_by_route": {
            r: round(sum(o.label == o.item.label for o in labelled if o.route == r) / n, 4)
            for r in ROUTES
            if (n := sum(1 for o in labelled if o.route == r))
        },
        "batch_sizes": wm["batch_sizes"],
        "worker_jobs": wm["jobs"],
        "gpu_seconds": round(gpu_s, 4),
        "cost_usd": cost,
        "bytes_left_devices": int(offload_bytes),
        "pii_values_tokenized": int(after["pii_tokenized"] - before["pii_tokenized"]) + essay_run.pii_tokenized,
        "pii_values_tokenized_edges": int(after["pii_tokenized"] - before["pii_tokenized"]),
        "pii_values_tokenized_grading_host": essay_run.pii_tokenized,
        "pii_values_left_devices": int(pii_left),
        "pii_values_in_trace": len(pii_values),
        "pii_found_in_redis": {k: v for k, v in scan.items() if v},
        "pii_redis_scan_hits": sum(scan.values()),
        "dlq_new": dlq_new,
        "dlq_by_zone": dlq1,
        "urls": urls,
        "where_to_look": {
            "status_page": urls["status_page"],
            "metrics": f"{urls['status_page']}metrics",
            "edge_metrics": [f"{e['url']}/metrics" for e in urls["edges"]],
            "logs": urls["logs"],
        },
        "quick": opts.quick,
    }
    checks = {
        "every_request_answered": answered == n_requests,
        "routes_all_exercised": all(by_route.get(r, 0) > 0 for r in ROUTES) if stack.embedded else True,
        "pii_left_zero": pii_left == 0 and sum(scan.values()) == 0,
        "dlq_zero": dlq_new == 0,
    }
    fig["checks"] = checks
    fig["passed"] = all(checks.values())
    return fig


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def _print(console: Console, f: dict[str, Any]) -> None:
    t = Table(title="requests by route (interactive questions; client-measured HTTP latency)")
    for col in ("route", "requests", "p50 ms", "p95 ms"):
        t.add_column(col, justify="right" if col != "route" else "left")
    for route, d in f["latency_by_route_ms"].items():
        t.add_row(route, str(d["requests"]), _ms(d["p50_ms"]), _ms(d["p95_ms"]))
    console.print(t)
    s = Table(title="summary", show_header=False)
    s.add_row(
        "requests answered", f"{f['answered']} / {f['requests']} ({f['questions']} questions, {f['essays']} essays)"
    )
    s.add_row(
        "question accuracy (labelled test split)", f"{f['question_accuracy']:.1%}" if f["question_accuracy"] else "-"
    )
    eg = f["essay_grading"]
    s.add_row(
        "essays graded with feedback",
        f"{f['essays_graded']} / {f['essays']} in {eg['wall_s']:.1f} s (grading driver → grade + feedback runners; "
        f"mean score {eg['mean_score'] if eg['mean_score'] is not None else '-'})",
    )
    bs = ", ".join(f"{task}: {d['batches']:.0f} batches, mean {d['mean']} jobs" for task, d in f["batch_sizes"].items())
    s.add_row("batches formed by the workers", bs or "-")
    c = f["cost_usd"]
    s.add_row(
        "cost (price table of the policy)",
        f"${c['total_usd']:.4f} (cloud GPU ${c['cloud_gpu_usd']:.4f} incl. warm "
        f"instance time, egress ${c['egress_usd']:.6f}, edge ${c['edge_usd']:.4f})",
    )
    s.add_row("bytes that left the devices", f"{f['bytes_left_devices']:,}")
    s.add_row(
        "PII values tokenized before leaving",
        f"{f['pii_values_tokenized']} ({f['pii_values_tokenized_edges']} on the devices, "
        f"{f['pii_values_tokenized_grading_host']} on the grading host)",
    )
    s.add_row(
        "PII values that left the devices",
        f"{f['pii_values_left_devices']} (edge counter); "
        f"{f['pii_redis_scan_hits']} raw values found scanning all of Redis for the trace's "
        f"{f['pii_values_in_trace']} values",
    )
    s.add_row("dead letters (new)", str(f["dlq_new"]))
    s.add_row(
        "where to look",
        f"status page {f['where_to_look']['status_page']} (while the stack runs), logs {f['where_to_look']['logs']}",
    )
    console.print(s)
    for name, ok in f["checks"].items():
        console.print(f"  {'[green]✓[/]' if ok else '[red]✗[/]'} {name.replace('_', ' ')}")
    console.print("[green]demo passed[/]" if f["passed"] else "[red]demo found a problem[/]")


__all__ = ["DemoOptions", "run_demo"]
