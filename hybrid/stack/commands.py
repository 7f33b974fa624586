"""Commands `hybrid up`, `hybrid pilot` and `hybrid dataflow` (`hybrid demo` lives in `hybrid.demo`)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click

from hybrid.common import friendly_errors


def register(cli: click.Group) -> None:
    cli.add_command(up)
    cli.add_command(pilot)
    cli.add_command(dataflow)


def stack_options(fn: Any) -> Any:
    opts = [
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Redis AOF, keyring, models, edge state and logs [env HYB_DATA_DIR, "
            "default ~/.local/share/hybrid-ai-stack].",
        ),
        click.option("--redis-url", default=None, help="Use this Redis instead of starting an embedded one."),
        click.option("--edges", type=click.IntRange(1, 32), default=2, show_default=True, help="Edge agents to start."),
        click.option(
            "--workers-max",
            type=click.IntRange(1, 64),
            default=2,
            show_default=True,
            help="Most workers per zone (the autoscaler keeps at least one).",
        ),
        click.option(
            "--cloud-models",
            type=click.Choice(["full", "light"]),
            default=None,
            help="Cloud models of the workers: full (torch runners of gpu_worker) or light (ONNX, fast "
            "to load) [default: full; light with --quick].",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def run_until_interrupted(body: Any) -> Any:
    """Run `body()`; SIGTERM behaves as Ctrl-C. Returns what body returns."""
    previous = signal.getsignal(signal.SIGTERM)

    def _term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        return body()
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command()
@stack_options
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Routing policy for the edge agents (default: the packaged one).",
)
@click.option(
    "--edge-port",
    type=click.IntRange(0, 65535),
    default=8700,
    show_default=True,
    help="Port of the first edge agent; the others take the next ones (0: free ports).",
)
@click.option("--api-port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--status-port", type=click.IntRange(0, 65535), default=9470, show_default=True)
@friendly_errors
def up(
    data_dir: Path | None,
    redis_url: str | None,
    edges: int,
    workers_max: int,
    cloud_models: str | None,
    policy_path: Path | None,
    edge_port: int,
    api_port: int,
    status_port: int,
) -> None:
    """Start the whole stack on this machine and keep it running until Ctrl-C.

    A real Redis (embedded, AOF in the data dir) unless --redis-url, keys (first run), built and
    signed edge models (first run), a worker pool per zone with the local autoscaler, --edges edge
    agents, the jobs API and the status page. Ctrl-C drains the workers, stops the rest, Redis last.
    """
    from rich.console import Console

    from hybrid.stack.up import Stack, StackConfig, default_data_dir

    err = Console(stderr=True)
    config = StackConfig(
        data_dir=data_dir or default_data_dir(),
        redis_url=redis_url,
        edges=edges,
        workers_max=workers_max,
        policy_path=policy_path,
        edge_port=edge_port,
        api_port=api_port,
        status_port=status_port,
        cloud_models=cloud_models or "full",
    )
    stack = Stack(config, progress=lambda m: err.print(f"[dim]·[/dim] {m}"))
    done = threading.Event()

    def body() -> None:
        try:
            stack.start()
            urls = stack.urls()
            click.echo("hybrid stack is up:")
            for e in urls["edges"]:
                click.echo(f"  edge {e['device']:<8} zone {e['zone']:<9} {e['url']}/v1/requests")
            click.echo(f"  jobs API               {urls['api']}/docs")
            click.echo(f"  status page            {urls['status_page']}")
            click.echo(f"  Redis                  {urls['redis']}")
            click.echo(f"  data and logs          {urls['data_dir']}")
            click.echo("Ctrl-C stops everything.", err=True)
            done.wait()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            click.echo("stopping: draining workers, then edges and API, Redis last …", err=True)
            stack.stop()
            click.echo("stopped.", err=True)

    run_until_interrupted(body)


@click.command()
@click.option("--quick", is_flag=True, help="A short trace (about a minute per arm).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the figures as JSON here.",
)
@click.option(
    "--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Write PNG plots here."
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the markdown report here (default: next to --json, or pilot-report.md).",
)
@stack_options
@friendly_errors
def pilot(
    quick: bool,
    json_path: Path | None,
    plots_dir: Path | None,
    report_path: Path | None,
    data_dir: Path | None,
    redis_url: str | None,
    edges: int,
    workers_max: int,
    cloud_models: str | None,
) -> None:
    """The A/B pilot: the same trace through policy `hybrid` (default) and `always-cloud`, side by side."""
    from hybrid.stack.pilot import PilotOptions, run_pilot

    opts = PilotOptions(
        quick=quick,
        json_path=json_path,
        plots_dir=plots_dir,
        report_path=report_path,
        data_dir=data_dir,
        redis_url=redis_url,
        edges=edges,
        workers_max=workers_max,
        cloud_models=cloud_models or ("light" if quick else "full"),
    )
    code = run_until_interrupted(lambda: run_pilot(opts))
    raise SystemExit(code)


@click.command()
@click.option("--lang", type=click.Choice(["en", "bn"]), default="en", show_default=True)
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Policy to describe (default: the packaged one).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write here instead of standard output.",
)
@friendly_errors
def dataflow(lang: str, policy_path: Path | None, out_path: Path | None) -> None:
    """Write the data-flow document of a policy (English or Bengali): what stays, what leaves, how."""
    from broker.errors import ConfigError
    from hybrid.stack.dataflow import render
    from policies import PolicyError, load_default_policy, load_policy

    try:
        policy = load_policy(policy_path) if policy_path else load_default_policy()
    except PolicyError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    text = render(policy, lang, source=str(policy_path) if policy_path else "policies/default.yaml")
    if out_path is None:
        click.echo(text, nl=False)
        return
    try:
        out_path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {out_path}: {exc.strerror}") from None
    click.echo(f"wrote {out_path}", err=True)


__all__ = ["dataflow", "pilot", "register", "up"]
