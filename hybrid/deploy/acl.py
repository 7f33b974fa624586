"""Least-privilege Redis ACL users, derived from the key layout in `broker.keys` (Redis ≥ 7.0).

Users (one `edge-` and one `worker-` user per zone; `exporter` and `admin` are global):

    edge-<zone>     submit: the APPEND / ADMIT scripts and the XADD, XLEN, admission-hash and in-flight
                    writes they run on the zone's keys; read results (MGET) and its reply streams (XREAD);
                    the cost gate (read the breaker, take its half-open trickle); its device report.
                    Nothing else: no XREADGROUP, XRANGE, KEYS, DEL of jobs, FLUSHALL, CONFIG.
    api-<zone>      the jobs HTTP API: an edge's rights, plus its tenant tokens and job owners (`api:*`).
    worker-<zone>   consume (XREADGROUP, XAUTOCLAIM, XCLAIM, XPENDING; the CLAIM_EACH script: job-id
                    claims), complete (the COMPLETE script: SET NX results, XACK, XTRIM MINID/XDEL of the
                    acknowledged, reply XADD, DEL claims),
                    dead-letter (MULTI: XADD to the DLQ + XACK + XDEL),
                    the cost ledger, heartbeats, the breaker.
    exporter        read-only commands (`+@read -@dangerous`, INFO, TIME) on `hyb:*`, and EVALSHA of its
                    read-only lane script (whose calls are held to the same rules): no write, no KEYS.
    admin           everything (`hybrid dlq replay|purge`, `hybrid keys`, budgets, operators).
    default         off: a connection that does not authenticate can run nothing.

Every command is granted only on the keys it needs, with Redis 7 *selectors* — `(+del ~reply:*)` lets
DEL touch reply streams and nothing else. A script is checked twice: EVALSHA against the keys it
declares (so the root key patterns list them), and each `redis.call` inside against the same rules
as a direct call. What Redis ACLs cannot do: restrict a command's arguments. An edge may XADD to its
zone's job streams, so it may also XADD with MAXLEN (trimming that zone's backlog); see docs/deploy.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from broker import keys

Mode = Literal["RW", "R", "W"]
MIN_PASSWORD_LEN = 16


@dataclass(frozen=True)
class KeyGrant:
    """A key pattern (Redis glob) and the access it allows: RW (`~`), read only (`%R~`), write only (`%W~`)."""

    pattern: str
    mode: Mode = "RW"

    def rule(self) -> str:
        return f"~{self.pattern}" if self.mode == "RW" else f"%{self.mode}~{self.pattern}"


@dataclass(frozen=True)
class Selector:
    """Commands allowed together with the keys they may touch: `(+cmd ... ~pattern ...)`."""

    commands: tuple[str, ...]
    keys: tuple[KeyGrant, ...]

    def rule(self) -> str:
        return "(" + " ".join([*(f"+{c}" for c in self.commands), *(k.rule() for k in self.keys)]) + ")"


@dataclass(frozen=True)
class AclUser:
    name: str
    role: str
    zone: str | None
    commands: tuple[str, ...]  # root command rules, written as is (`-@all`, `+ping`, `+@read`, ...)
    keys: tuple[KeyGrant, ...] = ()
    selectors: tuple[Selector, ...] = ()
    channels: str = "resetchannels"
    summary: str = ""

    def line(self, password: str) -> str:
        digest = hashlib.sha256(password.encode()).hexdigest()
        parts = ["user", self.name, "on", f"#{digest}", "resetkeys", self.channels]
        parts += [*self.commands, *(k.rule() for k in self.keys), *(s.rule() for s in self.selectors)]
        return " ".join(parts)

    @property
    def password_env(self) -> str:
        return password_env_var(self.name)


def password_env_var(user: str) -> str:
    """`HYB_REDIS_PASSWORD_<USER>` with the user upper-cased and dashes as underscores."""
    return "HYB_REDIS_PASSWORD_" + re.sub(r"[^A-Z0-9]", "_", user.upper())


def _z(zone: str, suffix: str) -> str:
    return f"{keys.zone_prefix(zone)}:{suffix}"


def edge_user(zone: str) -> AclUser:
    jobs, adm, inflight = _z(zone, "jobs:*"), _z(zone, "adm"), _z(zone, "inflight:*")
    return AclUser(
        name=f"edge-{zone}",
        role="edge",
        zone=zone,
        commands=("-@all", "+ping", "+evalsha", "+script|load", "+time", "+multi", "+exec", "+discard", "+unwatch"),
        # EVALSHA of APPEND / ADMIT declares these keys
        keys=(KeyGrant(jobs), KeyGrant(adm), KeyGrant(inflight)),
        selectors=(
            Selector(("xadd", "xlen", "xgroup|create"), (KeyGrant(jobs),)),
            Selector(("hget", "hmget", "hset", "hdel"), (KeyGrant(adm),)),
            Selector(("zadd", "zcard", "zremrangebyscore"), (KeyGrant(inflight),)),
            Selector(("get", "mget"), (KeyGrant(_z(zone, "result:*"), "R"),)),
            Selector(("xread",), (KeyGrant(_z(zone, "reply:*"), "R"),)),
            Selector(("del",), (KeyGrant(_z(zone, "reply:*")),)),
            # the cost gate reads the breaker, and in half-open takes its trickle (WATCH + MULTI + HSET)
            Selector(("hget", "hmget", "hset", "watch"), (KeyGrant(_z(zone, "breaker")),)),
            # the device's capability report (a string with a TTL, refreshed by its heartbeat)
            Selector(("set", "setex", "expire", "pexpire", "del"), (KeyGrant(_z(zone, "device:*"), "W"),)),
        ),
        summary="XADD to its zone's job streams through the APPEND/ADMIT scripts; read its results and replies",
    )


def api_user(zone: str) -> AclUser:
    """The jobs HTTP API (`hybrid api serve`): an edge's rights plus its own token and job-owner keys."""
    edge = edge_user(zone)
    api = Selector(
        ("get", "set", "del", "exists", "expire", "hget", "hset", "hdel", "hgetall", "hkeys"),
        (KeyGrant(_z(zone, "api:*")),),
    )
    return replace(
        edge,
        name=f"api-{zone}",
        role="api",
        selectors=(*edge.selectors, api),
        summary="what an edge may do, plus its tenant tokens and job owners (api:*)",
    )


def worker_user(zone: str) -> AclUser:
    jobs, results, replies, inflight, claims = (
        _z(zone, "jobs:*"),
        _z(zone, "result:*"),
        _z(zone, "reply:*"),
        _z(zone, "inflight:*"),
        _z(zone, "claim:*"),
    )
    return AclUser(
        name=f"worker-{zone}",
        role="worker",
        zone=zone,
        commands=("-@all", "+ping", "+evalsha", "+script|load", "+multi", "+exec", "+discard", "+unwatch"),
        # EVALSHA of COMPLETE and CLAIM_EACH declares these keys
        keys=(KeyGrant(results), KeyGrant(jobs), KeyGrant(replies), KeyGrant(inflight), KeyGrant(claims)),
        selectors=(
            Selector(
                (
                    "xreadgroup",
                    "xautoclaim",
                    "xclaim",  # touch (idle reset), read-ahead check and release (broker/consumer.py)
                    "xpending",
                    "xack",
                    "xdel",
                    "xtrim",  # MINID only, of what is acknowledged (ack_delete in broker/scripts.py)
                    "xgroup|create",
                    "xlen",
                    "xrange",
                    "xinfo|groups",
                    "exists",
                ),
                (KeyGrant(jobs),),
            ),
            Selector(("set", "exists"), (KeyGrant(results),)),  # exists: a replayed job is not run again
            Selector(("get", "set", "del"), (KeyGrant(claims),)),  # which entry runs a job id (CLAIM_EACH)
            Selector(("xadd", "pexpire"), (KeyGrant(replies),)),
            Selector(("zrem",), (KeyGrant(inflight),)),
            Selector(("xadd",), (KeyGrant(_z(zone, "dlq")),)),
            Selector(
                ("hget", "hset", "hincrby", "hgetall", "hdel", "expire"),
                (
                    KeyGrant(_z(zone, "workers")),
                    KeyGrant(_z(zone, "workers:*")),
                    KeyGrant(_z(zone, "spend:*")),
                    KeyGrant(_z(zone, "ledger:flags")),
                ),
            ),
            Selector(("hget", "hmget", "hgetall", "hkeys"), (KeyGrant(_z(zone, "budgets"), "R"),)),
            Selector(("hget", "hmget", "hgetall", "hkeys", "hset", "watch"), (KeyGrant(_z(zone, "breaker")),)),
        ),
        summary="consume/ack/claim its zone's jobs, write results and replies, dead-letter, cost ledger",
    )


def exporter_user() -> AclUser:
    return AclUser(
        name="exporter",
        role="exporter",
        zone=None,
        # its lane script runs read commands only: every redis.call inside is checked against these rules
        commands=("-@all", "+@read", "-@dangerous", "+info", "+ping", "+time", "+script|load"),
        keys=(KeyGrant(f"{keys.PREFIX}:*", "R"),),
        # EVALSHA declares its keys read-write, so it needs `~`; nothing it may run inside writes
        selectors=(Selector(("evalsha",), (KeyGrant(f"{keys.PREFIX}:*"),)),),
        summary="read-only commands on hyb:* (no KEYS, no writes)",
    )


def admin_user() -> AclUser:
    return AclUser(
        name="admin",
        role="admin",
        zone=None,
        commands=("+@all",),
        keys=(KeyGrant("*"),),
        channels="allchannels",
        summary="everything: DLQ replay/purge, budgets, operators",
    )


def acl_users(zones: Sequence[str]) -> list[AclUser]:
    """The users of an ACL file serving `zones` (validated with `broker.keys.check_zone`)."""
    if not zones:
        raise ValueError("give at least one zone (--zone)")
    seen: list[str] = []
    for z in zones:
        keys.check_zone(z)
        if z not in seen:
            seen.append(z)
    users: list[AclUser] = []
    for z in seen:
        users += [edge_user(z), api_user(z), worker_user(z)]
    return [*users, exporter_user(), admin_user()]


def render_acl(users: Sequence[AclUser], passwords: Mapping[str, str]) -> str:
    """The ACL file: the default user off, then one line per user (passwords as SHA-256 only)."""
    # An ACL file has no comments (Redis refuses any line not starting with `user`).
    lines = ["user default off resetkeys resetchannels -@all"]
    lines += [u.line(passwords[u.name]) for u in users]
    return "\n".join(lines) + "\n"


def read_secrets(path: Path) -> dict[str, str]:
    """`NAME=value` lines of an env file (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def choose_passwords(
    users: Iterable[AclUser], env: Mapping[str, str], existing: Mapping[str, str], rotate: bool = False
) -> dict[str, str]:
    """Per user: `HYB_REDIS_PASSWORD_<USER>` from `env`, else the existing secrets file's, else a new one."""
    out: dict[str, str] = {}
    for u in users:
        var = u.password_env
        given = env.get(var)
        if given is not None:
            if len(given) < MIN_PASSWORD_LEN or any(c.isspace() for c in given):
                raise ValueError(f"{var} must be at least {MIN_PASSWORD_LEN} characters with no whitespace")
            out[u.name] = given
        elif var in existing and not rotate:
            out[u.name] = existing[var]
        else:
            out[u.name] = secrets.token_urlsafe(32)
    return out


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600), also when the file existed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


@dataclass
class AclResult:
    acl_path: Path
    secrets_path: Path
    passwords: dict[str, str] = field(default_factory=dict)
    generated: list[str] = field(default_factory=list)


def write_acl(
    zones: Sequence[str],
    out: Path,
    *,
    secrets_out: Path | None = None,
    env: Mapping[str, str] | None = None,
    rotate: bool = False,
) -> AclResult:
    """Write the ACL file and, beside it, `<out>.secrets.env` (both 0600). Re-running keeps passwords."""
    users = acl_users(zones)
    secrets_path = secrets_out or out.with_name(out.name + ".secrets.env")
    existing = read_secrets(secrets_path) if secrets_path.is_file() else {}
    env = os.environ if env is None else env
    passwords = choose_passwords(users, env, existing, rotate)
    generated = [u.name for u in users if u.password_env not in env and (rotate or u.password_env not in existing)]
    write_private(out, render_acl(users, passwords))
    body = ["# Redis passwords of the ACL users (keep secret; `hybrid deploy redis-acl` reuses them)."]
    for u in users:
        body += [f"# {u.name}: {u.summary}", f"{u.password_env}={passwords[u.name]}"]
    write_private(secrets_path, "\n".join(body) + "\n")
    return AclResult(out, secrets_path, passwords, generated)


__all__ = [
    "MIN_PASSWORD_LEN",
    "AclResult",
    "AclUser",
    "KeyGrant",
    "Selector",
    "acl_users",
    "admin_user",
    "api_user",
    "choose_passwords",
    "edge_user",
    "exporter_user",
    "password_env_var",
    "read_secrets",
    "render_acl",
    "worker_user",
    "write_acl",
    "write_private",
]
