"""`hybrid edge serve` (the device's agent and HTTP API) and `hybrid devices` (the fleet's capability reports)."""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from hybrid.common import friendly_errors, redis_for, settings_from, settings_options

console = Console()


def register(cli: click.Group) -> None:
    cli.add_command(edge)
    cli.add_command(devices)


def _default_device_id() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", platform.node() or "edge")[:64].strip("-.")
    return name or "edge"


def _default_state_dir() -> Path:
    return Path("~/.local/state/hybrid-ai-stack/edge").expanduser()


@click.group()
def edge() -> None:
    """The edge agent: on-device inference, PII tokenization, routing, fallback and outbox."""


@edge.command("serve")
@settings_options
@click.option(
    "--models-dir", type=click.Path(file_okay=False, path_type=Path), help="Built edge models [env HYB_MODELS_DIR]."
)
@click.option("--verify-key", help="Ed25519 public key file trusted for model manifests [env HYB_MODEL_VERIFY_KEY].")
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Routing policy YAML (default: the packaged one).",
)
@click.option(
    "--roster", type=click.Path(dir_okay=False, path_type=Path), help="Student roster (YAML) for name detection."
)
@click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), help="Vault, device key and outbox directory."
)
@click.option("--device-id", default=None, help="This device's id in the fleet (default: the host name).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8700, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option(
    "--bench-runs",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Start-up benchmark runs per model.",
)
@click.option(
    "--heartbeat-s", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600), help="Heartbeat interval."
)
@click.option(
    "--max-text-chars",
    default=8192,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Longest text accepted.",
)
@click.option(
    "--cloud-wait-s",
    default=3.0,
    show_default=True,
    type=click.FloatRange(0, 600),
    help="How long a sync request waits for a cloud result.",
)
@click.option(
    "--admission",
    "admission_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Admission policy (TOML/YAML) applied on submit [env HYB_ADMISSION_POLICY].",
)
@click.option("--budget-gate", is_flag=True, help="Refuse submits while the cost breaker is open [env HYB_BUDGET_GATE]")
@friendly_errors
def edge_serve(
    redis_url: str | None,
    zone: str | None,
    keyring: str | None,
    models_dir: Path | None,
    verify_key: str | None,
    policy_path: Path | None,
    roster: Path | None,
    state_dir: Path | None,
    device_id: str | None,
    host: str,
    port: int,
    bench_runs: int,
    heartbeat_s: float,
    max_text_chars: int,
    cloud_wait_s: float,
    admission_path: Path | None,
    budget_gate: bool,
) -> None:
    """Serve the edge agent over HTTP: Open Inference Protocol v2, /v1/requests, /v1/jobs, /metrics.

    Without a Redis URL the device answers locally and with its fallback only. With one, it offloads
    to its zone, keeps what it cannot submit in the outbox, and heartbeats its capabilities.
    """
    import uvicorn

    from broker.admission import AdmissionPolicy
    from broker.client import sealer_from_settings
    from broker.connection import connect
    from broker.errors import ConfigError
    from broker.keys import check_name
    from edge_agent.agent import AgentConfig, EdgeAgent
    from edge_agent.api import create_app
    from edge_agent.device import Heartbeat, benchmark_models, capabilities
    from edge_agent.models import EdgeModels
    from edge_agent.models.runtime import default_models_dir
    from edge_agent.pii import Roster
    from policies import PolicyError, load_default_policy, load_policy

    settings = settings_from(redis_url, zone, keyring)
    device = check_name(device_id or _default_device_id(), "device id")
    try:
        policy = load_policy(policy_path) if policy_path else load_default_policy()
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    try:
        names = Roster.load(roster) if roster else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    admission_file = admission_path or settings.admission_policy  # flag, else HYB_ADMISSION_POLICY
    admission = AdmissionPolicy.load(admission_file) if admission_file else None
    budget_gate = budget_gate or settings.budget_gate
    if settings.zone not in policy.zones:
        click.secho(
            f"warning: zone {settings.zone!r} is not in the policy's zones ({', '.join(policy.zones)}); "
            "personal and sensitive data will not be offloaded",
            fg="yellow",
            err=True,
        )
    mdir = models_dir or default_models_dir()
    click.echo(f"loading and verifying edge models from {mdir} …", err=True)
    models = EdgeModels.load(mdir, verify_key=verify_key)
    bench = benchmark_models(models, bench_runs)
    for name, stats in bench.items():
        click.echo(f"  {name:<11} p50 {stats['p50_ms']:.2f} ms  p95 {stats['p95_ms']:.2f} ms", err=True)
    sealer = sealer_from_settings(settings) if settings.redis_url else None
    config = AgentConfig(device_id=device, zone=settings.zone, max_text_chars=max_text_chars, cloud_wait_s=cloud_wait_s)
    agent = EdgeAgent(
        models,
        policy,
        config,
        state_dir=state_dir or _default_state_dir(),
        sealer=sealer,
        redis_url=settings.redis_url,
        roster=names,
        admission_policy=admission,
        budget_gate=budget_gate,
        bench=bench,
    ).start()
    heartbeat = None
    if settings.redis_url:
        report = capabilities(models, device_id=device, zone=settings.zone, bench=bench)
        heartbeat = Heartbeat(
            connect(settings.redis_url, timeout_s=2.0),
            settings.zone,
            device,
            report,
            live=agent.stats,
            interval_s=heartbeat_s,
            ttl_s=max(int(heartbeat_s * 3), int(heartbeat_s) + 1),
        ).start()
    click.echo(f"edge agent {device} (zone {settings.zone}) on http://{host}:{port}", err=True)
    try:
        uvicorn.run(create_app(agent), host=host, port=port, log_level="warning", access_log=False)
    finally:
        if heartbeat is not None:
            heartbeat.stop(remove=True)
        agent.close()


@edge.command("rotate-key")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="The agent's state directory.")
@friendly_errors
def edge_rotate_key(state_dir: Path | None) -> None:
    """Start a new device key epoch: new PII tokens from now on; older tokens still detokenize."""
    from edge_agent.vault import DeviceKeys, VaultError

    path = (state_dir or _default_state_dir()) / "device_keys.json"
    if not path.is_file():
        raise click.UsageError(f"no device key file at {path} (has the agent run with this --state-dir?)")
    try:
        epoch = DeviceKeys(path).rotate()
    except VaultError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"device key epoch {epoch} is current ({path}); restart the agent to use it")


@edge.command("purge-vault")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="The agent's state directory.")
@click.option("--older-than-days", type=click.FloatRange(min=0), required=True, help="Age to forget after.")
@friendly_errors
def edge_purge_vault(state_dir: Path | None, older_than_days: float) -> None:
    """Forget token → value mappings not used for a while (a retention period for the PII vault)."""
    from edge_agent.vault import Vault, VaultError

    directory = state_dir or _default_state_dir()
    if not (directory / "vault.sqlite").is_file():
        raise click.UsageError(f"no vault in {directory}")
    try:
        vault = Vault.open(directory)
        removed = vault.purge(older_than_days * 86400)
        left = len(vault)
        vault.close()
    except VaultError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"removed {removed} mapping(s); {left} left")


@click.command()
@settings_options
@click.option("--all-zones", is_flag=True, help="List devices of every zone, not only --zone's.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def devices(redis_url: str | None, zone: str | None, keyring: str | None, all_zones: bool, as_json: bool) -> None:
    """The edge fleet: each live device's capabilities (benchmarks, RAM, cores, NPU) and state."""
    from edge_agent.device import list_devices

    settings = settings_from(redis_url, zone, keyring)
    fleet = list_devices(redis_for(settings), None if all_zones else settings.zone)
    if as_json:
        click.echo(json.dumps({"devices": fleet}))
        return
    title = "all zones" if all_zones else f"zone {settings.zone}"
    if not fleet:
        console.print(f"no live edge devices in {title}")
        return
    table = Table(
        "device", "zone", "cores", "RAM", "NPU", "classifier p50/p95", "util", "outbox", "cloud", "seen", title=title
    )
    now = time.time() * 1000
    for d in fleet:
        lat = (d.get("latency_ms") or {}).get("classifier") or {}
        p = f"{lat.get('p50_ms', 0):.1f}/{lat.get('p95_ms', 0):.1f} ms" if lat else "-"
        npu = d.get("npu") or {}
        table.add_row(
            str(d.get("device_id")),
            str(d.get("zone")),
            str(d.get("cores", "-")),
            f"{d.get('ram_mb', 0) / 1024:.1f} GB",
            "yes" if npu.get("present") else "no",
            p,
            f"{float(d.get('utilization', 0)):.0%}",
            str(d.get("outbox_jobs", "-")),
            str(d.get("breaker", "-")),
            f"{max(0.0, (now - float(d.get('heartbeat_ms', now))) / 1000):.0f} s ago",
        )
    console.print(table)


__all__ = ["devices", "edge", "register"]
