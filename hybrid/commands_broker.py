"""`hybrid keys`, `hybrid dlq` and `hybrid submit`: the broker from the shell."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from broker.client import Client, sealer_from_settings
from broker.dead_letter import DeadLetters
from broker.errors import ConfigError
from broker.keyring import LocalKeyring, default_keyring_path
from broker.keys import check_zone
from hybrid.common import EXIT_FAILURE, friendly_errors, redis_for, settings_from, settings_options

console = Console()


def register(cli: click.Group) -> None:
    for command in (keys, dlq, submit):
        cli.add_command(command)


# -- keys -------------------------------------------------------------------------------------------


def _keyring_path(keyring: str | None) -> Path:
    return Path(keyring).expanduser() if keyring else default_keyring_path()


def _zone_arg(zone: str | None) -> str:
    zone = zone or os.environ.get("HYB_ZONE")
    if not zone:
        raise ConfigError("name the zone: --zone bd-dhaka (or set HYB_ZONE)")
    return check_zone(zone)


@click.group()
def keys() -> None:
    """Manage key-encryption keys (KEKs) in the local keyring file.

    The keyring is created with mode 0600 and refused if others can read it. Each zone has
    versioned KEKs: the newest wraps new data keys, older ones still open what is in flight.
    Path: --keyring, else HYB_KEYRING, else ~/.config/hybrid/keyring.json.
    """


@keys.command("init")
@click.option("--zone", help="Zone to create a first KEK for [env HYB_ZONE].")
@click.option("--keyring", type=click.Path(dir_okay=False), help="Keyring file [env HYB_KEYRING].")
@friendly_errors
def keys_init(zone: str | None, keyring: str | None) -> None:
    """Create the keyring (if needed) and the zone's first KEK."""
    path = _keyring_path(keyring)
    info = LocalKeyring.init_zone(path, _zone_arg(zone))
    click.echo(f"created {info.kid} in {path}")


@keys.command("rotate")
@click.option("--zone", help="Zone whose KEK to rotate [env HYB_ZONE].")
@click.option("--keyring", type=click.Path(dir_okay=False), help="Keyring file [env HYB_KEYRING].")
@friendly_errors
def keys_rotate(zone: str | None, keyring: str | None) -> None:
    """Add a new KEK version; running producers and workers pick it up without a restart."""
    path = _keyring_path(keyring)
    info = LocalKeyring.rotate(path, _zone_arg(zone))
    click.echo(f"rotated: {info.kid} now encrypts; older versions still decrypt")


@keys.command("revoke")
@click.option("--zone", help="Zone of the KEK [env HYB_ZONE].")
@click.option("--version", "version", type=click.IntRange(1), required=True, help="KEK version to revoke.")
@click.option("--keyring", type=click.Path(dir_okay=False), help="Keyring file [env HYB_KEYRING].")
@friendly_errors
def keys_revoke(zone: str | None, version: int, keyring: str | None) -> None:
    """Destroy an old KEK version: messages sealed under it are dead-lettered as `revoked_key`.

    The current version cannot be revoked (rotate first). Running workers stop using it within a
    second (they re-read the keyring when it changes). This cannot be undone.
    """
    path = _keyring_path(keyring)
    info = LocalKeyring.revoke(path, _zone_arg(zone), version)
    click.echo(f"revoked: {info.kid} (key material destroyed at {info.revoked}); its messages will be refused")


@keys.command("list")
@click.option("--keyring", type=click.Path(dir_okay=False), help="Keyring file [env HYB_KEYRING].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def keys_list(keyring: str | None, as_json: bool) -> None:
    """List key ids, which one is current per zone, and when each was created (never the keys)."""
    infos = LocalKeyring(_keyring_path(keyring)).list_keys()
    if as_json:
        rows = [{"kid": i.kid, "current": i.current, "created": i.created, "revoked": i.revoked} for i in infos]
        click.echo(json.dumps(rows))
        return
    table = Table("kid", "zone", "version", "current", "created", "revoked")
    for i in infos:
        table.add_row(i.kid, i.zone, str(i.version), "yes" if i.current else "", i.created, i.revoked)
    console.print(table)


# -- dlq --------------------------------------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Inspect and act on the dead-letter stream of a zone.

    Messages land here when they cannot be opened, decoded or validated, or were delivered too
    often; each keeps its reason and its original fields byte for byte.
    """


def _letters(redis_url: str | None, zone: str | None, keyring: str | None) -> DeadLetters:
    settings = settings_from(redis_url, zone, keyring)
    return DeadLetters(redis_for(settings), settings.zone)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dlq.command("list")
@settings_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000), help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@friendly_errors
def dlq_list(redis_url: str | None, zone: str | None, keyring: str | None, limit: int, as_json: bool) -> None:
    """List dead letters, newest first."""
    letters = _letters(redis_url, zone, keyring)
    rows = letters.list(limit)
    if as_json:
        for x in rows:
            doc = {"id": x.entry_id, "reason": x.reason, "detail": x.detail, "job_id": x.job_id,
                   "deliveries": x.deliveries, "source": x.source, "failed_ms": x.failed_ms}  # fmt: skip
            click.echo(json.dumps(doc))
        return
    table = Table(
        "id", "failed (UTC)", "reason", "job id", "deliveries", "detail", title=f"{letters.size()} dead letters"
    )
    for x in rows:
        table.add_row(x.entry_id, _when(x.failed_ms), x.reason, x.job_id or "-", str(x.deliveries), x.detail)
    console.print(table)


@dlq.command("show")
@settings_options
@click.argument("entry_id")
@friendly_errors
def dlq_show(redis_url: str | None, zone: str | None, keyring: str | None, entry_id: str) -> None:
    """Show one dead letter: reason, where it came from, and its clear header."""
    letter = _letters(redis_url, zone, keyring).get(entry_id)
    if letter is None:
        raise ConfigError(f"no dead letter {entry_id!r} (see `hybrid dlq list`)")
    header = letter.header()
    doc: dict[str, Any] = {
        "id": letter.entry_id,
        "reason": letter.reason,
        "detail": letter.detail,
        "deliveries": letter.deliveries,
        "source": letter.source,
        "source_id": letter.source_id,
        "consumer": letter.consumer,
        "failed": _when(letter.failed_ms),
        "header": header if header is not None else "(not readable)",
        "fields": {k.decode(errors="replace"): len(v) for k, v in letter.original.items()},
    }
    click.echo(json.dumps(doc, indent=2, default=str, ensure_ascii=False))


@dlq.command("replay")
@settings_options
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@friendly_errors
def dlq_replay(
    redis_url: str | None, zone: str | None, keyring: str | None, entry_ids: tuple[str, ...], replay_all: bool
) -> None:
    """Put dead letters back on the job stream they came from (unchanged)."""
    letters = _letters(redis_url, zone, keyring)
    if replay_all == bool(entry_ids):
        raise ConfigError("give dead-letter ids, or --all (not both)")
    ids = [x.entry_id for x in letters.list(letters.size() or 1, newest_first=False)] if replay_all else list(entry_ids)
    missing = [i for i in ids if letters.replay(i) is None]
    click.echo(f"replayed {len(ids) - len(missing)} dead letter(s)")
    if missing:
        click.secho(f"not found: {', '.join(missing)}", fg="yellow", err=True)
        sys.exit(EXIT_FAILURE)


@dlq.command("purge")
@settings_options
@click.argument("entry_ids", nargs=-1)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@friendly_errors
def dlq_purge(
    redis_url: str | None, zone: str | None, keyring: str | None, entry_ids: tuple[str, ...], yes: bool
) -> None:
    """Delete the given dead letters, or all of them when no id is given."""
    letters = _letters(redis_url, zone, keyring)
    what = (
        f"{len(entry_ids)} dead letter(s)" if entry_ids else f"all {letters.size()} dead letters of zone {letters.zone}"
    )
    if not yes and not click.confirm(f"delete {what}?", default=False):
        click.echo("nothing deleted")
        return
    n = letters.purge(list(entry_ids) if entry_ids else None)
    click.echo(f"deleted {n} dead letter(s)")


# -- submit ------------------------------------------------------------------------------


@click.command()
@settings_options
@click.option("--task", required=True, help="Task name, e.g. echo.")
@click.option("--input", "input_json", required=True, help='Inputs as a JSON object, e.g. \'{"text": "..."}\'.')
@click.option("--lane", type=click.Choice(["interactive", "batch"]), default="interactive", show_default=True)
@click.option(
    "--sensitivity", type=click.Choice(["public", "personal", "sensitive"]), default="sensitive", show_default=True
)
@click.option("--wait", "wait_s", type=float, default=None, help="Wait this many seconds for the result and print it.")
@friendly_errors
def submit(
    redis_url: str | None, zone: str | None, keyring: str | None, task: str, input_json: str, lane: str,
    sensitivity: str, wait_s: float | None,
) -> None:  # fmt: skip
    """Seal and submit one job; prints its id (and its result with --wait)."""
    try:
        inputs = json.loads(input_json)
    except ValueError as exc:
        raise ConfigError(f"--input is not valid JSON: {exc}") from None
    if not isinstance(inputs, dict):
        raise ConfigError("--input must be a JSON object")
    settings = settings_from(redis_url, zone, keyring)
    client = Client(redis_for(settings), sealer_from_settings(settings), settings.zone)
    job_id = client.submit(task, inputs, lane=lane, sensitivity=sensitivity)  # type: ignore[arg-type]
    click.echo(job_id)
    if wait_s is not None:
        started = time.monotonic()
        result = client.result(job_id, timeout=wait_s)
        click.echo(
            json.dumps({**result.model_dump(), "waited_s": round(time.monotonic() - started, 3)}, ensure_ascii=False)
        )
        client.close()
        if not result.ok:
            sys.exit(EXIT_FAILURE)
