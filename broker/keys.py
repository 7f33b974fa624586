"""Every Redis key name, built in one place.

All keys of a zone share the Redis Cluster hash tag `{<zone>}` so they live on one slot and the Lua
scripts that touch several of them stay legal on a cluster:

    hyb:{<zone>}:jobs:<lane>          job stream per lane (interactive, batch); consumer group `workers`
    hyb:{<zone>}:dlq                  dead-letter stream
    hyb:{<zone>}:result:<job_id>      sealed result (string, with a TTL)
    hyb:{<zone>}:claim:<job_id>       the stream entry running this job id ("<stream>\n<entry id>", with a TTL)
    hyb:{<zone>}:reply:<name>         reply stream a producer reads to learn its results are ready
    hyb:{<zone>}:adm                  admission state: paused flag per lane, token bucket per tenant (hash)
    hyb:{<zone>}:inflight:<tenant>    a tenant's admitted, unfinished job ids, scored by lease expiry (zset)
    hyb:{<zone>}:breaker              cost breaker state per scope (hash)
    hyb:{<zone>}:budgets              budgets in USD per scope and window (hash)
    hyb:{<zone>}:spend:<scope>        spend in micro-USD per minute bucket (hash); scope `global`, `tenant:<t>`
    hyb:{<zone>}:workers              instance class and market each known worker reported (hash)
    hyb:{<zone>}:ledger:flags         ledger writes from unknown workers, per worker (hash)
    hyb:{<zone>}:device:<device_id>   an edge device's capability report (JSON string with a TTL)
"""

from __future__ import annotations

import re
from enum import StrEnum

PREFIX = "hyb"
GROUP = "workers"

_ZONE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")


class Lane(StrEnum):
    """A job stream of a zone. `interactive` is always served before `batch`."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


LANES_BY_PRIORITY: tuple[Lane, ...] = (Lane.INTERACTIVE, Lane.BATCH)


_valid_zones: set[str] = set()  # zones that passed `check_zone` (it runs once per job sealed)


def check_zone(zone: str) -> str:
    """Return `zone` if it is a valid zone name (lower-case letters, digits, dashes; ≤ 32 chars)."""
    if zone in _valid_zones:
        return zone
    if not _ZONE_RE.match(zone):
        raise ValueError(
            f"invalid zone {zone!r}: use 1-32 lower-case letters, digits and dashes, starting with a letter "
            "or digit (it becomes a Redis hash tag)"
        )
    if len(_valid_zones) < 1024:
        _valid_zones.add(zone)
    return zone


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it is usable inside a key (job ids, reply names, consumer names)."""
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid {what} {name!r}: use up to 96 letters, digits, '.', '_' or '-'")
    return name


def zone_prefix(zone: str) -> str:
    return f"{PREFIX}:{{{check_zone(zone)}}}"


def jobs_stream(zone: str, lane: Lane | str) -> str:
    return f"{zone_prefix(zone)}:jobs:{Lane(lane).value}"


def dlq_stream(zone: str) -> str:
    return f"{zone_prefix(zone)}:dlq"


def result_key(zone: str, job_id: str) -> str:
    return f"{result_prefix(zone)}{check_name(job_id, 'job id')}"


def result_prefix(zone: str) -> str:
    """`result_key(zone, job_id)` is this followed by the job id (for ids a schema already checked)."""
    return f"{zone_prefix(zone)}:result:"


def claim_prefix(zone: str) -> str:
    """The claim key of a job id is this followed by the id: which entry runs the job (`scripts.CLAIM_EACH`)."""
    return f"{zone_prefix(zone)}:claim:"


def claim_key(zone: str, job_id: str) -> str:
    return f"{claim_prefix(zone)}{check_name(job_id, 'job id')}"


def reply_stream(zone: str, name: str) -> str:
    return f"{zone_prefix(zone)}:reply:{check_name(name, 'reply name')}"


def admission_state(zone: str) -> str:
    return f"{zone_prefix(zone)}:adm"


def inflight_set(zone: str, tenant: str) -> str:
    return f"{zone_prefix(zone)}:inflight:{tenant}"


def breaker_state(zone: str) -> str:
    return f"{zone_prefix(zone)}:breaker"


def budgets(zone: str) -> str:
    return f"{zone_prefix(zone)}:budgets"


def spend(zone: str, scope: str) -> str:
    return f"{zone_prefix(zone)}:spend:{scope}"


def ledger_workers(zone: str) -> str:
    return f"{zone_prefix(zone)}:workers"


def ledger_flags(zone: str) -> str:
    return f"{zone_prefix(zone)}:ledger:flags"


def worker_heartbeats(zone: str) -> str:
    """Hash: worker name → its latest heartbeat (JSON: ready, completed, busy_s, models, ts_ms)."""
    return f"{zone_prefix(zone)}:workers:heartbeat"


def edge_device(zone: str, device_id: str) -> str:
    """String with a TTL: an edge device's capability report (JSON), refreshed by its heartbeat."""
    return f"{zone_prefix(zone)}:device:{check_name(device_id, 'device id')}"


__all__ = [
    "GROUP",
    "LANES_BY_PRIORITY",
    "PREFIX",
    "Lane",
    "admission_state",
    "breaker_state",
    "budgets",
    "check_name",
    "check_zone",
    "claim_key",
    "claim_prefix",
    "dlq_stream",
    "edge_device",
    "inflight_set",
    "jobs_stream",
    "ledger_flags",
    "ledger_workers",
    "reply_stream",
    "result_key",
    "result_prefix",
    "spend",
    "worker_heartbeats",
    "zone_prefix",
]
