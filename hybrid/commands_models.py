"""`hybrid models build|keygen|sign|verify|list|activate|rollback`: the signed edge-model registry."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from broker.errors import ConfigError
from broker.registry import (
    ModelRegistry,
    ModelVerificationError,
    default_signing_key_path,
    generate_signing_key,
    key_id,
    load_signing_key,
    load_verify_key,
)
from hybrid.common import EXIT_FAILURE, fail, friendly_errors

console = Console(stderr=True)
BUILD_STEPS = 5


def register(cli: click.Group) -> None:
    cli.add_command(models)


def _models_dir(path: str | None) -> Path:
    if path:
        return Path(path).expanduser()
    from edge_agent.models.runtime import default_models_dir

    return default_models_dir()


dir_option = click.option(
    "--dir",
    "models_dir",
    type=click.Path(file_okay=False),
    help="Models directory [env HYB_MODELS_DIR, default ~/.cache/hybrid-ai-stack/models].",
)


@click.group()
def models() -> None:
    """Edge models and their signed registry.

    Every model version has a manifest (name, version, runtime, files with sha256 and size) signed with
    Ed25519; the edge agent and the workers verify it before loading and refuse a tampered, unsigned
    or wrongly signed artifact. Signing key: --signing-key, env HYB_MODEL_SIGNING_KEY, default
    ~/.config/hybrid/model-signing.pem; trusted public key: env HYB_MODEL_VERIFY_KEY, default the
    `.pub` beside the signing key.
    """


@models.command("build")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Models directory to build into [env HYB_MODELS_DIR, default ~/.cache/hybrid-ai-stack/models].",
)
@click.option("--version", "version", default="1.0.0", show_default=True, help="Version to give the built models.")
@click.option("--signing-key", type=click.Path(dir_okay=False), help="Ed25519 signing key (created if absent).")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
@friendly_errors
def build(out: str | None, version: str, signing_key: str | None, as_json: bool) -> None:
    """Build, evaluate, sign and activate the edge models (needs the [build] extra: torch, onnx)."""
    try:
        from edge_agent.models.build import build_models
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(f"`hybrid models build` needs the build extra (pip install '.[build]'): {exc}") from exc
    out_dir = _models_dir(out)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=as_json,
    ) as progress:
        task = progress.add_task("building", total=BUILD_STEPS)
        seen = 0

        def step(message: str) -> None:
            nonlocal seen
            progress.update(task, description=message, completed=seen)
            seen += 1

        report = build_models(
            out_dir, version=version, signing_key=Path(signing_key).expanduser() if signing_key else None, progress=step
        )
        progress.update(task, description="done", completed=BUILD_STEPS)
    doc = {
        "out_dir": str(report.out_dir),
        "version": report.version,
        "key_id": report.key_id,
        "labels": report.labels,
        "accuracy": report.accuracy,
        "cosine_mean": round(report.cosine_mean, 5),
        "cosine_min": round(report.cosine_min, 5),
        "sizes": report.sizes,
    }
    if as_json:
        click.echo(json.dumps(doc))
        return
    table = Table("model", "size", "test accuracy en", "test accuracy bn", title=f"built into {report.out_dir}")
    for name, size in report.sizes.items():
        acc = report.accuracy.get(name, {})
        table.add_row(name, f"{size / 1e6:.2f} MB", str(acc.get("en", "")), str(acc.get("bn", "")))
    Console().print(table)
    cosine = f"mean {report.cosine_mean:.4f}, min {report.cosine_min:.4f}"
    click.echo(f"int8 vs fp32 cosine: {cosine}; signed by key {report.key_id}")


@models.command("keygen")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="Where to write the signing key.")
@click.option("--force", is_flag=True, help="Replace an existing key (models signed with it will no longer verify).")
@friendly_errors
def keygen(key_path: str | None, force: bool) -> None:
    """Create an Ed25519 model-signing key (mode 0600) and its public key (<key>.pub)."""
    path = Path(key_path).expanduser() if key_path else default_signing_key_path()
    key = generate_signing_key(path, overwrite=force)
    click.echo(f"signing key {path} (key id {key_id(key)}); public key {path}.pub — give that to the devices")


@models.command("sign")
@click.argument("name")
@click.argument("version", required=False)
@dir_option
@click.option("--signing-key", type=click.Path(dir_okay=False), help="Ed25519 signing key.")
@friendly_errors
def sign(name: str, version: str | None, models_dir: str | None, signing_key: str | None) -> None:
    """(Re)write and sign the manifest of NAME (one VERSION, or every version)."""
    registry = ModelRegistry(_models_dir(models_dir))
    key = load_signing_key(signing_key)
    versions = [version] if version else registry.versions(name)
    if not versions:
        raise click.UsageError(f"no model {name!r} in {registry.root}")
    for v in versions:
        m = registry.sign(name, v, key)
        click.echo(f"signed {name} {v}: {len(m.files)} files, {m.size} bytes, sha256 {m.sha256[:16]}… key {m.key_id}")


@models.command("verify")
@click.argument("name", required=False)
@click.argument("version", required=False)
@dir_option
@click.option("--verify-key", type=click.Path(dir_okay=False), help="Trusted Ed25519 public key (PEM).")
@friendly_errors
def verify(name: str | None, version: str | None, models_dir: str | None, verify_key: str | None) -> None:
    """Verify signatures and file hashes (NAME, NAME VERSION, or everything). Exit 1 if any fails."""
    registry = ModelRegistry(_models_dir(models_dir))
    public = load_verify_key(verify_key)
    if name:
        targets = [(name, v) for v in ([version] if version else registry.versions(name))]
        if not targets:
            raise click.UsageError(f"no model {name!r} in {registry.root}")
    else:
        targets = [(e.name, e.version) for e in registry.list()]
        if not targets:
            raise click.UsageError(f"no models in {registry.root}: run `hybrid models build` first")
    failed = 0
    for n, v in targets:
        try:
            m = registry.verify(n, v, verify_key=public).manifest
            click.echo(f"ok      {n} {v}  sha256 {m.sha256[:16]}…  key {m.key_id}")
        except ModelVerificationError as exc:
            failed += 1
            click.secho(f"FAILED  {n} {v}: {exc}", fg="red")
    if failed:
        fail(f"{failed} of {len(targets)} model(s) failed verification", EXIT_FAILURE)


@models.command("list")
@dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def list_models(models_dir: str | None, as_json: bool) -> None:
    """Installed models, versions, which is active, and whether they are signed."""
    registry = ModelRegistry(_models_dir(models_dir))
    entries = registry.list()
    if as_json:
        click.echo(json.dumps([e.__dict__ for e in entries]))
        return
    if not entries:
        click.echo(f"no models in {registry.root}: run `hybrid models build`")
        return
    table = Table(title=str(registry.root))
    table.add_column("name", no_wrap=True)
    for column in ("version", "state", "signed", "runtime", "size", "created"):
        table.add_column(column, no_wrap=True)
    for e in entries:
        state = "active" if e.active else ("retired" if e.retired else "")
        signed = "yes" if e.signed else "NO"
        table.add_row(e.name, e.version, state, signed, e.runtime, f"{e.size / 1e6:.2f} MB", e.created[:10])
    Console().print(table)


@models.command("activate")
@click.argument("name")
@click.argument("version")
@dir_option
@friendly_errors
def activate(name: str, version: str, models_dir: str | None) -> None:
    """Make VERSION of NAME the active one (the previous active one can be rolled back to)."""
    registry = ModelRegistry(_models_dir(models_dir))
    registry.activate(name, version)
    click.echo(f"{name}: active version is now {version}")


@models.command("rollback")
@click.argument("name")
@dir_option
@friendly_errors
def rollback(name: str, models_dir: str | None) -> None:
    """Switch NAME back to its previously active version; the one left is retired from canary traffic."""
    registry = ModelRegistry(_models_dir(models_dir))
    old, new = registry.rollback(name)
    click.echo(f"{name}: rolled back from {old} to {new}")
