"""`hybrid api serve` and `hybrid api token create|list|revoke`: the HTTP entry point for app backends."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from broker.admission import AdmissionPolicy
from hybrid.common import friendly_errors, redis_for, settings_from, settings_options


@click.group()
def api() -> None:
    """The jobs HTTP API (POST /v1/jobs, GET /v1/jobs/{id}[/wait]) and its per-tenant tokens."""


@api.command("serve")
@settings_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--admission", type=click.Path(dir_okay=False, exists=True), help="Admission policy file (TOML/YAML).")
@click.option(
    "--max-body-bytes", type=click.IntRange(256, 64 << 20), default=1 << 20, show_default=True,
    help="Larger request bodies get 413.",
)  # fmt: skip
@friendly_errors
def api_serve(
    redis_url: str | None, zone: str | None, keyring: str | None, host: str, port: int, admission: str | None,
    max_body_bytes: int,
) -> None:  # fmt: skip
    """Serve the jobs API of a zone (OpenAPI document at /openapi.json, docs at /docs)."""
    from hybrid.api_server import ApiConfig, create_app, serve

    settings = settings_from(redis_url, zone, keyring)
    policy = AdmissionPolicy.load(admission) if admission else None
    app = create_app(settings, redis_for(settings), policy=policy, config=ApiConfig(max_body_bytes=max_body_bytes))
    click.echo(f"jobs API of zone {settings.zone} on http://{host}:{port} (OpenAPI: /openapi.json)", err=True)
    serve(app, host, port)


@api.group("token")
def token() -> None:
    """Per-tenant API tokens (stored as SHA-256 hashes; shown once, at creation)."""


@token.command("create")
@settings_options
@click.option("--tenant", required=True, help="Tenant whose jobs the token submits and reads.")
@click.option("--name", default="", help="A note to recognise the token by (e.g. the backend's name).")
@friendly_errors
def token_create(redis_url: str | None, zone: str | None, keyring: str | None, tenant: str, name: str) -> None:
    """Create a token and print it once (keep it: only its hash is stored)."""
    from hybrid.api_server import TokenStore

    settings = settings_from(redis_url, zone, keyring)
    secret, info = TokenStore(redis_for(settings), settings.zone).create(tenant, name)
    click.echo(secret)
    click.echo(f"token {info.token_id} for tenant {tenant} in zone {settings.zone} (shown only now)", err=True)


@token.command("list")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@friendly_errors
def token_list(redis_url: str | None, zone: str | None, keyring: str | None, as_json: bool) -> None:
    """List tokens by id and tenant (never the tokens)."""
    from hybrid.api_server import TokenStore

    settings = settings_from(redis_url, zone, keyring)
    infos = TokenStore(redis_for(settings), settings.zone).list()
    if as_json:
        for i in infos:
            click.echo(json.dumps({"id": i.token_id, "tenant": i.tenant, "name": i.name, "created": i.created}))
        return
    table = Table("id", "tenant", "name", "created (UTC)", title=f"API tokens of zone {settings.zone}")
    for i in infos:
        table.add_row(i.token_id, i.tenant, i.name, datetime.fromtimestamp(i.created, UTC).strftime("%Y-%m-%d %H:%M"))
    Console().print(table)


@token.command("revoke")
@settings_options
@click.argument("token_id")
@friendly_errors
def token_revoke(redis_url: str | None, zone: str | None, keyring: str | None, token_id: str) -> None:
    """Revoke a token by its id (from `hybrid api token list`); takes effect at once."""
    from hybrid.api_server import TokenStore

    settings = settings_from(redis_url, zone, keyring)
    n = TokenStore(redis_for(settings), settings.zone).revoke(token_id)
    if n == 0:
        raise click.UsageError(f"no token with id {token_id!r} (see `hybrid api token list`)")
    click.echo(f"revoked {n} token(s)")
