"""`hybrid policy`: validate a routing policy, explain one decision, simulate a workload trace.

Exit codes: 0 ok; 1 `validate` found problems in the policy; 2 bad input or usage (a file that
cannot be read, malformed JSON, an unusable policy given to `explain` or `simulate`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from policies import (
    DeviceState,
    LocalResult,
    Policy,
    PolicyError,
    Request,
    Route,
    SimulationOptions,
    SimulationReport,
    TraceError,
    TraceRecord,
    decide,
    dump_trace_jsonl,
    escalate,
    estimate,
    generate_trace,
    load_default_policy,
    load_policy,
    parse_trace_jsonl,
    parse_trace_spec,
    simulate,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_NAME = "default"

FILE_HELP = f"FILE is a policy YAML file, or '{DEFAULT_NAME}' for the policy shipped with the package."

TRACE_HELP = """Requests to replay: a JSONL file (one record a line:
{"at_s": 3600.5, "request": {"id": "q1", "task": "question-classification", "sensitivity": "public",
"input_bytes": 420}, "language": "bn", "local_confidence": 0.83}) or a generator spec
'elearning:days=N,seed=N,students=N' (any subset, e.g. 'elearning:day=1,seed=7'; defaults days=1,
seed=7, students=300). A path that exists is read as a file."""


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _console() -> Console:
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:  # pipes and files: wide enough that tables keep their task names
        console.width = 120
    return console


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def policy() -> None:
    """Routing policy: validate a policy file, explain a decision, simulate a workload.

    The policy is the decision map as data (docs/policies.md): which models may run on the edge,
    latency SLOs, utilization and confidence thresholds, what each sensitivity level requires before
    offload, the zones and their endpoints, and the cost figures.
    """


# ---------------------------------------------------------------------------------------- validate


@policy.command()
@click.argument("file")
def validate(file: str) -> None:
    """Check the policy FILE; list every problem with its line and field.

    Exit code 1 when the file has problems, 2 when it cannot be read. FILE may be 'default'.
    """
    if file != DEFAULT_NAME and not Path(file).is_file():
        _fail(f"{file}: no such file")
    try:
        loaded = load_default_policy() if file == DEFAULT_NAME else load_policy(file)
    except PolicyError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        count = len(exc.issues)
        click.secho(f"{file}: {count} problem{'s' if count != 1 else ''}", fg="red", err=True)
        sys.exit(EXIT_FAILURE)
    click.echo(f"{file}: ok — {len(loaded.tasks)} tasks, {len(loaded.models)} models, zones {', '.join(loaded.zones)}")


# ----------------------------------------------------------------------------------------- explain


def _load_for_use(file: str) -> Policy:
    try:
        return load_default_policy() if file == DEFAULT_NAME else load_policy(file)
    except PolicyError as exc:
        first = exc.issues[0]
        more = f" (and {len(exc.issues) - 1} more; run `hybrid policy validate {file}`)" if len(exc.issues) > 1 else ""
        _fail(f"{first}{more}")


def _parse_json_model(option: str, text: str, kind: type[BaseModel], defaults: dict[str, Any]) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"{option} is not valid JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(data, dict):
        _fail(f'{option} must be a JSON object, e.g. \'{{"id": "r1", "task": "summarization"}}\'')
    try:
        return kind.model_validate({**defaults, **data})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "value"
        msg = f"unknown field {field!r}" if err["type"] == "extra_forbidden" else f"{field}: {err['msg']}"
        _fail(f"{option}: {msg}")


@policy.command()
@click.argument("file")
@click.option(
    "--request",
    "request_json",
    required=True,
    metavar="JSON",
    help='The request: {"id", "task", "sensitivity"?, "lane"?, "tenant"?, "input_bytes"?, '
    '"max_latency_ms"?}. No sensitivity means the most sensitive.',
)
@click.option(
    "--device",
    "device_json",
    default="{}",
    metavar="JSON",
    help='The device state, over defaults: {"zone": first zone of the policy, "utilization": 0, '
    '"local_latency_ms": {}, "cloud_reachable": true, "breaker_open": false, '
    '"model_memory_available_mb": edge.model_memory_mb}.',
)
@click.option(
    "--confidence",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Also run the confidence cascade on a local answer with this confidence.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision(s) as JSON.")
def explain(file: str, request_json: str, device_json: str, confidence: float | None, as_json: bool) -> None:
    """Show where a request would run under the policy FILE, and why.

    \b
    Example:
      hybrid policy explain default \\
        --request '{"id": "q1", "task": "question-classification", "sensitivity": "personal"}' \\
        --device '{"zone": "bd-dhaka", "utilization": 0.85}'
    """
    loaded = _load_for_use(file)
    request: Request = _parse_json_model("--request", request_json, Request, {})
    device_defaults = {
        "zone": next(iter(loaded.zones)),
        "utilization": 0.0,
        "model_memory_available_mb": loaded.edge.model_memory_mb,
    }
    device: DeviceState = _parse_json_model("--device", device_json, DeviceState, device_defaults)

    decisions = [decide(request, device, loaded)]
    first = decisions[0]
    if confidence is not None:
        if first.route not in (Route.LOCAL, Route.FALLBACK) or first.model is None:
            _fail(f"--confidence applies to a local answer, and this request is routed {first.route.value!r}")
        result = LocalResult(
            request=request, device=device, model=first.model, confidence=confidence, route=first.route
        )
        decisions.append(escalate(result, loaded))

    if as_json:
        out = []
        for d in decisions:
            est = estimate(d, request, device, loaded)
            out.append(
                {
                    "decision": d.model_dump(mode="json"),
                    "estimate": {
                        "latency_ms": est.latency_ms,
                        "local_usd": est.local_usd,
                        "cloud_usd": est.cloud_usd,
                        "bytes_out": est.bytes_out,
                    },
                }
            )
        click.echo(json.dumps(out if len(out) > 1 else out[0], indent=2))
        return

    console = _console()
    for title, d in zip(("decision", "after the local answer"), decisions, strict=False):
        est = estimate(d, request, device, loaded)
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value")
        target = f"{d.model}@{d.version}" if d.model else "—"
        rows = [
            ("route", d.route.value + (" (degraded)" if d.degraded else "")),
            ("model", target),
            ("transform", d.transform.value),
            ("zone / endpoint", f"{d.zone} / {d.endpoint}" if d.zone else "—"),
            ("lane", d.lane.value),
            ("sensitivity", d.sensitivity.value),
            ("latency (est.)", f"{est.latency_ms:.0f} ms" if est.latency_ms is not None else "—"),
            ("cost (est.)", f"${est.local_usd + est.cloud_usd:.3g}"),
            ("bytes leaving device", str(est.bytes_out)),
        ]
        for name, value in rows:
            table.add_row(name, Text(value))
        console.print(table)
        for i, reason in enumerate(d.reasons, start=1):
            console.print(Text(f"  {i}. {reason}"))


# ---------------------------------------------------------------------------------------- simulate


def _trace(spec: str) -> list[TraceRecord]:
    path = Path(spec)
    try:
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                records = parse_trace_jsonl(fh, source=spec)
        elif spec.endswith(".jsonl") or "/" in spec:
            _fail(f"--trace {spec}: no such file")
        else:
            records = generate_trace(parse_trace_spec(spec))
    except TraceError as exc:
        _fail(f"--trace: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"--trace {spec}: cannot read it ({exc})")
    if not records:
        _fail(f"--trace {spec}: no requests in it")
    return records


def _parse_outage(text: str) -> tuple[float, float]:
    start, sep, end = text.partition("-")
    try:
        window = (float(start), float(end))
    except ValueError:
        _fail(f"--outage {text!r}: expected START-END in seconds from the trace's start, e.g. 36000-39600")
    if not sep or window[1] <= window[0] or window[0] < 0:
        _fail(f"--outage {text!r}: expected START-END with 0 ≤ START < END")
    return window


@policy.command("simulate")
@click.argument("file")
@click.option("--trace", "trace_spec", required=True, metavar="PATH|SPEC", help=TRACE_HELP)
@click.option("--zone", default=None, help="Zone of the simulated devices [default: the policy's first zone].")
@click.option(
    "--devices", type=click.IntRange(min=1), default=1, show_default=True, help="Edge devices sharing the trace's load."
)
@click.option(
    "--utilization",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Device utilization from work outside the trace.",
)
@click.option(
    "--memory-mb",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Memory available for models on the device [default: edge.model_memory_mb].",
)
@click.option(
    "--outage",
    "outages",
    multiple=True,
    metavar="START-END",
    help="Seconds from the trace's start with the cloud unreachable; repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (without per-request rows).")
def simulate_command(
    file: str,
    trace_spec: str,
    zone: str | None,
    devices: int,
    utilization: float,
    memory_mb: float | None,
    outages: tuple[str, ...],
    as_json: bool,
) -> None:
    """Replay a trace through the policy FILE: latency, cost and bytes leaving the device.

    Nothing runs: latencies and costs come from the policy's figures (docs/policies.md).

    \b
    Examples:
      hybrid policy simulate default --trace elearning:days=1,seed=7
      hybrid policy simulate my.yaml --trace pilot.jsonl --zone bd-dhaka --outage 36000-39600
    """
    loaded = _load_for_use(file)
    zone = zone or next(iter(loaded.zones))
    if zone not in loaded.zones:
        _fail(f"--zone {zone!r} is not defined in {file} (zones: {', '.join(loaded.zones)})")
    records = _trace(trace_spec)
    options = SimulationOptions(
        zone=zone,
        devices=devices,
        base_utilization=utilization,
        model_memory_available_mb=memory_mb,
        cloud_outages=tuple(_parse_outage(o) for o in outages),
    )
    report = simulate(records, loaded, options)
    if as_json:
        click.echo(
            json.dumps(
                report.model_dump(mode="json", exclude={"outcomes"})
                | {"savings_vs_always_cloud": report.savings_vs_always_cloud},
                indent=2,
            )
        )
        return
    _print_report(report, f"{file} · {trace_spec} · zone {zone} · {devices} device(s)")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _print_report(report: SimulationReport, title: str) -> None:
    console = _console()
    routes = Table(title=title, title_justify="left")
    for name in ("route", "requests", "share", "p50 ms", "p95 ms", "cloud $", "bytes out"):
        routes.add_column(name, justify="left" if name == "route" else "right")
    for r in report.routes:
        share = r.count / report.requests if report.requests else 0.0
        routes.add_row(
            r.route.value,
            str(r.count),
            f"{share:.1%}",
            _ms(r.p50_ms),
            _ms(r.p95_ms),
            f"{r.cloud_usd:.4f}",
            f"{r.bytes_out:,}",
        )
    console.print(routes)

    tasks = Table(title="by task", title_justify="left")
    for name in ("task", "requests", "local", "cloud", "fallback", "reject", "escalated", "p95 ms", "SLO met"):
        tasks.add_column(name, justify="left" if name == "task" else "right")
    for t in report.tasks:
        tasks.add_row(
            Text(t.task),
            str(t.count),
            str(t.local),
            str(t.cloud),
            str(t.fallback),
            str(t.reject),
            str(t.escalated),
            _ms(t.p95_ms),
            f"{t.slo_met_share:.1%}",
        )
    console.print(tasks)

    totals = Table(title=f"totals over {report.duration_hours:g} h", title_justify="left", show_header=False)
    totals.add_column("what", style="bold")
    totals.add_column("value", justify="right")
    for name, value in (
        ("requests", f"{report.requests:,}"),
        ("escalated by confidence", f"{report.escalations:,}"),
        ("SLO misses (incl. rejects)", f"{report.slo_misses:,}"),
        ("cost breaker trips", str(report.breaker_trips)),
        ("edge devices $ (full cost)", f"{report.edge_usd:.4f}"),
        ("  of which local inferences", f"{report.local_inference_usd:.4f}"),
        ("cloud $", f"{report.cloud_usd:.4f}"),
        ("total $", f"{report.total_usd:.4f}"),
        ("always-cloud $", f"{report.always_cloud_usd:.4f}"),
        ("saving vs always-cloud", f"{report.savings_vs_always_cloud:.1%}"),
        ("bytes leaving devices", f"{report.bytes_leaving_device:,}"),
        ("bytes if all sent raw", f"{report.always_cloud_bytes:,}"),
    ):
        totals.add_row(name, value)
    console.print(totals)


# ------------------------------------------------------------------------------------------- trace


@policy.command("trace")
@click.argument("spec")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default="-",
    show_default=True,
    help="Where to write the JSONL ('-' for standard output).",
)
def trace_command(spec: str, output: str) -> None:
    """Write a generated trace as JSONL, to edit or replay.

    SPEC is a generator spec such as 'elearning:days=2,seed=7,students=300'. The file can be edited
    and given back to `hybrid policy simulate --trace`.
    """
    try:
        records = generate_trace(parse_trace_spec(spec))
    except TraceError as exc:
        _fail(str(exc))
    lines = "".join(line + "\n" for line in dump_trace_jsonl(records))
    if output == "-":
        click.echo(lines, nl=False)
        return
    try:
        Path(output).write_text(lines, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    click.echo(f"wrote {len(records)} requests to {output}", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(policy)
