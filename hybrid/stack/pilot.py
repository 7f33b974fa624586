"""`hybrid pilot`: the article's A/B pilot, compressed to minutes on one machine.

The same trace (labelled questions from the test split, a share with PII) goes twice through the
real stack, paced at the same rate, while the same batch of essays is graded with feedback by the
grading driver (`hybrid grade run`'s code → the workers' `grade` and `feedback` runners): once with
policy `hybrid` (policies/default.yaml) and once with `always-cloud` (policies/always-cloud.yaml).
Each arm starts its own stack (same data dir, models and keys) and stops it afterwards. A third,
offline arm, `edge-only`, classifies the test split with the device's classifier alone, for accuracy.

Cost per arm: `hybrid.stack.costmodel.CostModel` (warm instance-hours, spot batch, egress, edge
amortization) with the default policy's price table for both arms.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from broker.connection import connect
from hybrid.stack.cloud_worker import GRADE_MODEL
from hybrid.stack.costmodel import CloudJob, CostModel
from hybrid.stack.drive import Outcome, dlq_lengths, edge_totals, percentile, run_trace, scan_for, worker_metrics
from hybrid.stack.essays import EssayRun, grade_essays
from hybrid.stack.up import Stack, StackConfig, default_data_dir
from hybrid.stack.workload import Item, all_pii_values, essays, questions

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
ARMS = {"hybrid": None, "always-cloud": POLICY_DIR / "always-cloud.yaml"}
TARGETS = {"cost_saving": 0.75, "accuracy_ratio": 0.99, "interactive_p50_ms_hybrid": 20.0, "pii_values_leaked": 0}


@dataclass
class PilotOptions:
    quick: bool = False
    json_path: Path | None = None
    plots_dir: Path | None = None
    report_path: Path | None = None
    data_dir: Path | None = None
    redis_url: str | None = None
    edges: int = 2
    workers_max: int = 2
    rate_per_s: float = 20.0
    cloud_models: str = "full"


def cloud_jobs(outcomes: list[Outcome]) -> list[CloudJob]:
    jobs = []
    for o in outcomes:
        d = o.decision or {}
        if o.route == "cloud":
            lane = str(d.get("lane") or ("batch" if o.item.kind == "essay" else "interactive"))
            critical = o.item.kind == "question" and lane == "interactive"
            jobs.append(CloudJob(str(d.get("zone")), lane, str(d.get("model")), critical))
        elif o.route == "cascade":
            then = d.get("then") or d
            jobs.append(
                CloudJob(str(then.get("zone")), str(then.get("lane", "interactive")), str(then.get("model")), False)
            )
    return jobs


def essay_jobs(essay_run: EssayRun) -> list[CloudJob]:
    """The essays' cloud work, priced as the policy's essay model on the batch lane (spot)."""
    return [
        CloudJob(zone, "batch", GRADE_MODEL, False)
        for zone, summary in essay_run.summaries.items()
        for _ in range(int(summary.get("items") or 0))
    ]


def _arm(
    name: str, policy: Path | None, opts: PilotOptions, items: list[Item], essay_items: list[Item], err: Console
) -> dict[str, Any]:
    config = StackConfig(
        data_dir=opts.data_dir or default_data_dir(),
        redis_url=opts.redis_url,
        edges=opts.edges,
        edge_port=0,
        api_port=0,
        status_port=0,
        workers_max=opts.workers_max,
        policy_path=policy,
        cloud_models=opts.cloud_models,
        feedback_tokens=24 if opts.quick else 48,
    )
    stack = Stack(config, progress=lambda m: err.print(f"[dim]· {name}:[/dim] {m}"))
    with stack:
        client = connect(str(stack.redis_url))
        dlq0 = dlq_lengths(client, stack.zones)
        edges = [e.url for e in stack.edges]
        zone_of = {e.url: e.zone for e in stack.edges}
        before = {e: edge_totals([e]) for e in edges}
        err.print(
            f"[bold]{name}[/]: {len(items)} questions at {opts.rate_per_s:g}/s through {len(edges)} edges, "
            f"{len(essay_items)} essays through the grading driver at the same time"
        )
        graded: list[EssayRun] = []
        essays_thread = threading.Thread(
            target=lambda: graded.append(
                grade_essays(
                    str(stack.redis_url), stack.keyring, stack.zones, essay_items,
                    stack.data_dir / f"pilot-essays-{name}", roster=config.roster, item_timeout_s=300.0,
                )
            ),
            name="essays",
            daemon=True,
        )  # fmt: skip
        essays_thread.start()
        run = run_trace(edges, items, concurrency=4, rate_per_s=opts.rate_per_s, settle_timeout_s=90)
        essays_thread.join(timeout=600)
        essay_run = graded[0] if graded else EssayRun(items=len(essay_items), errors=["the grading run did not end"])
        after = {e: edge_totals([e]) for e in edges}
        wm = worker_metrics(stack.worker_metrics_urls())
        dlq1 = dlq_lengths(client, stack.zones)
        scan = scan_for(client, all_pii_values(items + essay_items))
        client.close()
    egress: dict[str, float] = {}
    pii_left = 0.0
    for e in edges:
        egress[zone_of[e]] = egress.get(zone_of[e], 0.0) + after[e]["offload_bytes"] - before[e]["offload_bytes"]
        pii_left += after[e]["pii_values_left"] - before[e]["pii_values_left"]
    return {
        "outcomes": run.outcomes,
        "essays": essay_run,
        "wall_s": max(run.wall_s, essay_run.wall_s),
        "egress": egress,
        "pii_left": int(pii_left),
        "scan_hits": sum(scan.values()),
        "dlq_new": sum(dlq1.values()) - sum(dlq0.values()),
        "workers": wm,
        "edges": len(edges),
    }


def edge_only_accuracy(data_dir: Path, items: list[Item]) -> float | None:
    """The device's classifier alone on the trace's labelled questions (the same texts as the arms)."""
    from edge_agent.models import EdgeModels

    stack = Stack(StackConfig(data_dir=data_dir))
    try:
        models = EdgeModels.load(stack.models_dir, verify_key=str(stack.verify_key))
    except Exception:
        return None
    rows = [it for it in items if it.kind == "question" and it.label]
    preds = models.classify([it.text for it in rows])
    return float(sum(p[0] == it.label for p, it in zip(preds, rows, strict=True)) / len(rows)) if rows else None


def summarize(name: str, arm: dict[str, Any], cm: CostModel) -> dict[str, Any]:
    outs: list[Outcome] = arm["outcomes"]
    essay_run: EssayRun = arm["essays"]
    qs = [o for o in outs if o.item.kind == "question"]
    lat = [o.latency_ms for o in qs if o.http_status and o.http_status < 400]
    labelled = [o for o in qs if o.item.label]
    acc = sum(o.label == o.item.label for o in labelled) / len(labelled) if labelled else 0.0
    offloaded = sum(o.route in ("cloud", "cascade") for o in qs)
    cost = cm.arm_cost(
        cloud_jobs(outs) + essay_jobs(essay_run),
        wall_s=arm["wall_s"],
        egress_bytes=arm["egress"],
        edge_devices=arm["edges"] if name == "hybrid" else 0,
    )
    routes: dict[str, int] = {}
    for o in outs:
        routes[o.route] = routes.get(o.route, 0) + 1
    return {
        "requests": len(outs) + essay_run.items,
        "answered": sum(o.answered for o in outs) + len(essay_run.graded),
        "essays": essay_run.items,
        "essays_graded": len(essay_run.graded),
        "essay_grading_wall_s": round(essay_run.wall_s, 2),
        "essay_grading_errors": essay_run.errors,
        "routes": routes,
        "interactive_p50_ms": percentile(lat, 50),
        "interactive_p95_ms": percentile(lat, 95),
        "accuracy": acc,
        "accuracy_by_route": {
            r: round(sum(o.label == o.item.label for o in labelled if o.route == r) / n, 4)
            for r in ("local", "cloud", "fallback", "cascade")
            if (n := sum(1 for o in labelled if o.route == r))
        },
        "accuracy_by_input": {
            kind: round(sum(o.label == o.item.label for o in sel) / len(sel), 4)
            for kind, sel in (
                ("with_pii", [o for o in labelled if o.item.pii]),
                ("without_pii", [o for o in labelled if not o.item.pii]),
            )
            if sel
        },
        "offload_rate": offloaded / len(qs) if qs else 0.0,
        "cost": cost,
        "cloud_gpu_seconds": cost["busy_gpu_s"],
        "worker_cpu_seconds": arm["workers"]["gpu_seconds"],
        "batch_sizes": arm["workers"]["batch_sizes"],
        "bytes_left_devices": int(sum(arm["egress"].values())),
        "pii_values_left": arm["pii_left"],
        "pii_redis_scan_hits": arm["scan_hits"],
        "dlq_new": arm["dlq_new"],
        "wall_s": arm["wall_s"],
        "latencies_ms": sorted(lat),
        "offload_timeline": [(round(o.at_s, 2), o.route in ("cloud", "cascade")) for o in qs],
    }


def run_pilot(opts: PilotOptions, console: Console | None = None) -> int:
    console = console or Console()
    err = Console(stderr=True)
    from policies import load_default_policy

    cm = CostModel(load_default_policy())
    n_q, n_e = (120, 8) if opts.quick else (630, 40)
    items = questions(n_q, seed=21, pii_share=0.3)
    essay_items = essays(n_e, seed=23)  # graded while the questions run: both lanes at once
    t0 = time.perf_counter()
    arms = {
        name: summarize(name, _arm(name, policy, opts, items, essay_items, err), cm) for name, policy in ARMS.items()
    }
    h, c = arms["hybrid"], arms["always-cloud"]
    edge_acc = edge_only_accuracy(opts.data_dir or default_data_dir(), items)
    saving = (
        1.0 - h["cost"]["usd_per_hour_of_trace"] / c["cost"]["usd_per_hour_of_trace"]
        if c["cost"]["usd_per_hour_of_trace"]
        else 0.0
    )
    # sensitivity: what if the hybrid arm also kept one warm on-demand GPU per zone?
    warm_all = sum(p.on_demand_usd_per_hour for p in cm.policy.cost.cloud.values())
    h_warm = (
        h["cost"]["usd_per_hour_of_trace"]
        + warm_all
        - sum(z["interactive_usd"] for z in h["cost"]["zones"].values()) / max(h["wall_s"] / 3600, 1e-9)
    )
    result: dict[str, Any] = {
        "cost_saving": round(saving, 4),
        "cost_saving_if_hybrid_kept_warm_gpus": round(1 - h_warm / c["cost"]["usd_per_hour_of_trace"], 4)
        if c["cost"]["usd_per_hour_of_trace"]
        else None,
        "accuracy_hybrid": round(h["accuracy"], 4),
        "accuracy_cloud": round(c["accuracy"], 4),
        "accuracy_edge_only": round(edge_acc, 4) if edge_acc is not None else None,
        "interactive_p50_ms_hybrid": _r(h["interactive_p50_ms"]),
        "interactive_p50_ms_cloud": _r(c["interactive_p50_ms"]),
        "interactive_p95_ms_hybrid": _r(h["interactive_p95_ms"]),
        "interactive_p95_ms_cloud": _r(c["interactive_p95_ms"]),
        "pii_values_leaked": h["pii_values_left"]
        + c["pii_values_left"]
        + h["pii_redis_scan_hits"]
        + c["pii_redis_scan_hits"],
        "offload_rate_hybrid": round(h["offload_rate"], 4),
        "offload_rate_cloud": round(c["offload_rate"], 4),
        "cloud_gpu_seconds_hybrid": round(h["cloud_gpu_seconds"], 4),
        "cloud_gpu_seconds_cloud": round(c["cloud_gpu_seconds"], 4),
        "usd_per_hour_hybrid": round(h["cost"]["usd_per_hour_of_trace"], 5),
        "usd_per_hour_cloud": round(c["cost"]["usd_per_hour_of_trace"], 5),
        "edge_usd_per_hour_hybrid": round(h["cost"]["edge_usd"] / max(h["wall_s"] / 3600, 1e-9), 5),
        "bytes_left_devices_hybrid": h["bytes_left_devices"],
        "bytes_left_devices_cloud": c["bytes_left_devices"],
        "requests_per_arm": len(items) + len(essay_items),
        "quick": opts.quick,
        "cloud_models": opts.cloud_models,
        "wall_s": round(time.perf_counter() - t0, 1),
        "arms": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("latencies_ms", "offload_timeline")}
            for k, v in arms.items()
        },
        "price_table": cm.price_table(),
    }
    acc_ok = result["accuracy_hybrid"] >= TARGETS["accuracy_ratio"] * result["accuracy_cloud"]
    result["targets"] = {
        "cost_saving>=0.75": saving >= TARGETS["cost_saving"],
        "accuracy_hybrid>=0.99*accuracy_cloud": acc_ok,
        "interactive_p50_ms_hybrid<=20": (result["interactive_p50_ms_hybrid"] or 1e9) <= 20.0,
        "pii_values_leaked==0": result["pii_values_leaked"] == 0,
    }
    result["targets_met"] = all(result["targets"].values())
    _print(console, result)
    plots = _plots(opts.plots_dir, arms) if opts.plots_dir else []
    result["plots"] = plots
    report = opts.report_path or (opts.json_path.with_suffix(".md") if opts.json_path else Path("pilot-report.md"))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(markdown(result, plots, report.parent), encoding="utf-8")
    err.print(f"wrote {report}")
    if opts.json_path:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        err.print(f"wrote {opts.json_path}")
    return 0


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def _print(console: Console, r: dict[str, Any]) -> None:
    t = Table(title="A/B pilot: hybrid vs always-cloud (same trace, same price table)")
    t.add_column("figure")
    t.add_column("hybrid", justify="right")
    t.add_column("always-cloud", justify="right")
    a = r["arms"]
    h, c = a["hybrid"], a["always-cloud"]
    t.add_row(
        "interactive p50 / p95 ms",
        f"{_f(h['interactive_p50_ms'])} / {_f(h['interactive_p95_ms'])}",
        f"{_f(c['interactive_p50_ms'])} / {_f(c['interactive_p95_ms'])}",
    )
    t.add_row("accuracy (test split)", f"{h['accuracy']:.1%}", f"{c['accuracy']:.1%}")
    t.add_row("offload rate (questions)", f"{h['offload_rate']:.1%}", f"{c['offload_rate']:.1%}")
    t.add_row(
        "cloud GPU-seconds (policy cloud_gpu_ms)", f"{h['cloud_gpu_seconds']:.3f}", f"{c['cloud_gpu_seconds']:.3f}"
    )
    t.add_row(
        "warm interactive GPUs (in-wb + bd-dhaka)",
        f"{sum(z['warm_instances'] for z in h['cost']['zones'].values()):.2f}",
        f"{sum(z['warm_instances'] for z in c['cost']['zones'].values()):.2f}",
    )
    t.add_row(
        "cost $/hour of trace", f"{h['cost']['usd_per_hour_of_trace']:.4f}", f"{c['cost']['usd_per_hour_of_trace']:.4f}"
    )
    t.add_row("  of which edge $", f"{h['cost']['edge_usd']:.6f}", f"{c['cost']['edge_usd']:.6f}")
    t.add_row("bytes that left the devices", f"{h['bytes_left_devices']:,}", f"{c['bytes_left_devices']:,}")
    t.add_row(
        "PII values that left (counter + Redis scan)",
        f"{h['pii_values_left']} + {h['pii_redis_scan_hits']}",
        f"{c['pii_values_left']} + {c['pii_redis_scan_hits']}",
    )
    t.add_row("answered / requests", f"{h['answered']} / {h['requests']}", f"{c['answered']} / {c['requests']}")
    t.add_row("dead letters", str(h["dlq_new"]), str(c["dlq_new"]))
    console.print(t)
    console.print(
        f"edge-only accuracy: {_pct(r['accuracy_edge_only'])}; cost saving {r['cost_saving']:.1%} "
        f"(if the hybrid arm also kept a warm GPU per zone: {_pct(r['cost_saving_if_hybrid_kept_warm_gpus'])})"
    )
    for name, ok in r["targets"].items():
        console.print(f"  {'[green]met[/]' if ok else '[red]NOT met[/]'}  {name}")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _plots(directory: Path, arms: dict[str, dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, a in arms.items():
        lat = a["latencies_ms"]
        if lat:
            ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("interactive latency, ms (client-measured, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency CDF per arm")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    p = directory / "latency_cdf.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))

    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(arms)
    parts = ("cloud_gpu_usd", "egress_usd", "edge_usd")
    bottom = [0.0] * len(names)
    for part in parts:
        vals = [arms[n]["cost"][part] / max(arms[n]["wall_s"] / 3600, 1e-9) for n in names]
        ax.bar(names, vals, bottom=bottom, label=part.replace("_usd", "").replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel("US$ per hour of trace")
    ax.set_title("Cost per hour of trace")
    ax.legend()
    fig.tight_layout()
    p = directory / "cost_per_hour.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, a in arms.items():
        tl = a["offload_timeline"]
        if not tl:
            continue
        span = max(t for t, _ in tl) or 1.0
        bins = 10
        rates = []
        for b in range(bins):
            lo, hi = span * b / bins, span * (b + 1) / bins
            sel = [off for t, off in tl if lo <= t < hi or (b == bins - 1 and t == hi)]
            rates.append(sum(sel) / len(sel) if sel else math.nan)
        ax.plot([span * (b + 0.5) / bins for b in range(bins)], rates, marker="o", label=name)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("seconds into the trace")
    ax.set_ylabel("share of questions offloaded")
    ax.set_title("Offload rate over the trace")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    p = directory / "offload_rate.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(str(p))
    return paths


def markdown(r: dict[str, Any], plots: list[str], base: Path) -> str:
    a = r["arms"]
    h, c = a["hybrid"], a["always-cloud"]
    lines = [
        "# Pilot report: hybrid vs always-cloud",
        "",
        f"Same trace through the real stack for both arms: {r['requests_per_arm']} requests per arm "
        f"({'quick' if r['quick'] else 'full'} run, {r['wall_s']} s in all). Generated by `hybrid pilot`.",
        "",
        "| figure | hybrid | always-cloud |",
        "|---|---:|---:|",
        f"| interactive latency p50 / p95 (ms) | {_f(h['interactive_p50_ms'])} / {_f(h['interactive_p95_ms'])} | "
        f"{_f(c['interactive_p50_ms'])} / {_f(c['interactive_p95_ms'])} |",
        f"| accuracy on the labelled test split | {h['accuracy']:.1%} | {c['accuracy']:.1%} |",
        f"| offload rate (questions) | {h['offload_rate']:.1%} | {c['offload_rate']:.1%} |",
        f"| cloud GPU-seconds | {h['cloud_gpu_seconds']:.3f} | {c['cloud_gpu_seconds']:.3f} |",
        f"| warm interactive GPUs | {sum(z['warm_instances'] for z in h['cost']['zones'].values()):.2f} | "
        f"{sum(z['warm_instances'] for z in c['cost']['zones'].values()):.2f} |",
        f"| cost, US$ per hour of trace | {h['cost']['usd_per_hour_of_trace']:.4f} | "
        f"{c['cost']['usd_per_hour_of_trace']:.4f} |",
        f"| edge cost in the run (US$) | {h['cost']['edge_usd']:.6f} | {c['cost']['edge_usd']:.6f} |",
        f"| bytes that left the devices | {h['bytes_left_devices']:,} | {c['bytes_left_devices']:,} |",
        f"| PII values that left (edge counter + Redis scan) | {h['pii_values_left']} + {h['pii_redis_scan_hits']} | "
        f"{c['pii_values_left']} + {c['pii_redis_scan_hits']} |",
        f"| answered / requests | {h['answered']} / {h['requests']} | {c['answered']} / {c['requests']} |",
        "",
        f"Edge-only accuracy (the device's classifier alone, on the same questions): {_pct(r['accuracy_edge_only'])}.",
        "",
        f"Accuracy by route — hybrid: {h['accuracy_by_route']}; always-cloud: {c['accuracy_by_route']}. "
        f"By input — hybrid: {h['accuracy_by_input']}; always-cloud: {c['accuracy_by_input']}. Questions with PII "
        "reach the cloud as an embedding only (the policy's `personal` → embed), and the cloud's embedding head is "
        "weaker than the device's classifier that reads the text. After such a cascade the device keeps its answer "
        "when the cloud is less confident (`edge_agent.agent.refine`); cascades happen when the device is unsure, "
        "so the cloud is usually the more confident one, right or not.",
        "",
        "## Targets",
        "",
        *[f"- {'met' if ok else '**not met**'}: `{name}`" for name, ok in r["targets"].items()],
        "",
        f"Cost saving: **{r['cost_saving']:.1%}**. If the hybrid arm also kept one warm on-demand GPU per zone "
        f"(as it must if it ever sends latency-critical questions to the cloud), the saving would be "
        f"{_pct(r['cost_saving_if_hybrid_kept_warm_gpus'])}.",
        "",
        "## Cost model",
        "",
        "Both arms are priced with the default policy's price table (below). Interactive GPU pools are billed",
        "by the instance-hour on-demand: an arm that makes users wait for cloud answers keeps at least one",
        "warm instance per zone it serves; an arm whose interactive cloud jobs are only cascades (the device",
        "already answered) is billed for busy time / interactive utilization. Essays run on spot at batch",
        "utilization. GPU busy time per job is the policy model's `cloud_gpu_ms` (a T4's, not this machine's",
        "CPU). Egress is the measured bytes leaving the devices. The hybrid arm pays for its Pi 5 + AI HAT",
        "devices (amortized); the always-cloud arm pays no edge hardware. Details: docs/up-demo-pilot.md.",
        "",
        "## Price table",
        "",
        "| item | value | source |",
        "|---|---:|---|",
        *[f"| {row['item']} | {row['value']} | {row['source']} |" for row in r["price_table"]],
        "",
    ]
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            rel = Path(p).resolve()
            with contextlib.suppress(ValueError):
                rel = rel.relative_to(base.resolve())
            lines.append(f"![{Path(p).stem}]({rel})")
        lines.append("")
    return "\n".join(lines)


__all__ = ["ARMS", "PilotOptions", "cloud_jobs", "markdown", "run_pilot"]
