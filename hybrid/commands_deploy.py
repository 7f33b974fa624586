"""`hybrid deploy redis-acl|redis-conf|certs`: the site-specific files of a locked-down Redis."""

from __future__ import annotations

from pathlib import Path

import click

from hybrid.common import friendly_errors
from hybrid.deploy.acl import acl_users, password_env_var, write_acl
from hybrid.deploy.certs import DEFAULT_SERVER_NAMES, write_certs
from hybrid.deploy.redis_conf import RedisConfOptions, render_redis_conf


def register(cli: click.Group) -> None:
    cli.add_command(deploy)


@click.group()
def deploy() -> None:
    """Files for a locked-down Redis: ACL users, redis.conf (AOF, TLS only), certificates.

    See docs/deploy.md for docker-compose, Kubernetes (KEDA) and the Pi fleet.
    """


@deploy.command("redis-acl")
@click.option("--zone", "zones", multiple=True, required=True, help="A zone served by this Redis (repeatable).")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="ACL file to write (mode 0600)."
)
@click.option(
    "--secrets-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Env file with the clear-text passwords (0600) [default: <out>.secrets.env].",
)
@click.option("--rotate", is_flag=True, help="New passwords for every user not given in the environment.")
@friendly_errors
def redis_acl(zones: tuple[str, ...], out: Path, secrets_out: Path | None, rotate: bool) -> None:
    """Least-privilege ACL users: edge-<zone>, worker-<zone>, exporter, admin (default user off).

    A password comes from HYB_REDIS_PASSWORD_<USER> (e.g. HYB_REDIS_PASSWORD_EDGE_EU_WEST), else from
    the existing secrets file, else it is generated. Needs Redis >= 7.0 (ACL selectors).
    """
    result = write_acl(list(zones), out, secrets_out=secrets_out, rotate=rotate)
    click.echo(f"wrote {result.acl_path} and {result.secrets_path} (both 0600)")
    for user in acl_users(list(zones)):
        origin = "generated" if user.name in result.generated else "kept"
        click.echo(f"  {user.name:<24} {password_env_var(user.name):<40} {origin}")


@deploy.command("redis-conf")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="File to write [default: stdout].")
@click.option("--tls-port", type=click.IntRange(1, 65535), default=6380, show_default=True)
@click.option("--bind", default="* -::*", show_default=True, help="Addresses to listen on (Redis 7 syntax).")
@click.option("--dir", "data_dir", default="/data", show_default=True, help="Data directory (the AOF).")
@click.option("--aclfile", default="/etc/redis/users.acl", show_default=True)
@click.option("--cert-dir", default="/tls", show_default=True, help="Holds ca.crt, server.crt, server.key.")
@click.option(
    "--appendfsync",
    type=click.Choice(["everysec", "always"]),
    default="everysec",
    show_default=True,
    help="everysec: up to ~1 s of writes lost on power failure, fast; always: none lost, slower writes.",
)
@click.option("--maxmemory", default="0", show_default=True, help="e.g. 4gb (policy is always noeviction).")
@friendly_errors
def redis_conf(
    out: Path | None,
    tls_port: int,
    bind: str,
    data_dir: str,
    aclfile: str,
    cert_dir: str,
    appendfsync: str,
    maxmemory: str,
) -> None:
    """redis.conf: AOF on, TLS-only port (port 0 + tls-port, client certificates required), ACL file."""
    opts = RedisConfOptions(
        tls_port=tls_port,
        bind=bind,
        data_dir=data_dir,
        aclfile=aclfile,
        cert_dir=cert_dir,
        appendfsync="always" if appendfsync == "always" else "everysec",
        maxmemory=maxmemory,
    )
    text = render_redis_conf(opts)
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}")


@deploy.command("certs")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write.")
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    help=f"SAN of the Redis certificate (repeatable) [default: {', '.join(DEFAULT_SERVER_NAMES)}].",
)
@click.option("--client", "clients", multiple=True, help="A client certificate name (repeatable) [default: client].")
@click.option("--days", type=int, default=365, show_default=True, help="Validity of every certificate.")
@click.option("--force", is_flag=True, help="Overwrite an existing CA in --out.")
@friendly_errors
def certs(out: Path, server_names: tuple[str, ...], clients: tuple[str, ...], days: int, force: bool) -> None:
    """A private CA, a Redis server certificate and client certificates (ECDSA P-256), for trying mTLS."""
    if (out / "ca.key").exists() and not force:
        raise click.UsageError(f"{out / 'ca.key'} exists: pass --force to replace the CA (and every certificate)")
    bundle = write_certs(
        out, server_names=server_names or DEFAULT_SERVER_NAMES, clients=clients or ("client",), days=days
    )
    click.echo(f"wrote {bundle.ca_cert}, {bundle.server_cert} (+ .key, 0600)")
    for name, (crt, _key) in bundle.clients.items():
        click.echo(f"  client {name}: {crt}")


__all__ = ["deploy", "register"]
