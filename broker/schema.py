"""The wire types: job header, job payload, result header and result body.

Headers travel in clear (they are the AEAD's associated data) and never hold user content; payloads
and result bodies are sealed. Every wire type rejects unknown fields, is frozen, and bounds its
sizes. `SCHEMA_VERSION` is the `v` field of every header; a reader refuses versions it does not know
instead of guessing.

The wire types are `msgspec` structs: one C call decodes a msgpack map *and* checks every
constraint below (types are strict — no bool for an int, no bytes for a str), which is ~6x cheaper
than msgpack + a pydantic model and sits on the hot path of every job (see docs/benchmarks.md) —
every constraint but the identifier patterns (`Matches`), which `invalid_fields` checks for a whole
read at once. Decode headers with `broker.message.Sealer`, which applies both.
Encoding a struct writes a msgpack map with the fields in the order declared here.
`JobResult`, the object clients get back, stays a pydantic model (it is an API, not a wire type).
"""

from __future__ import annotations

import re
import typing
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})

MAX_HEADER_BYTES = 1024

Sensitivity = Literal["public", "personal", "sensitive"]
LaneName = Literal["interactive", "batch"]
Status = Literal["ok", "error", "expired"]
"""`expired`: the job's deadline had passed before a worker could run it; it was not run."""


@dataclass(frozen=True)
class Matches:
    """A regular expression a string field must match in full. Declared next to the field like
    `msgspec.Meta`, but checked by `invalid_fields` for a whole read of headers at once: one regex call
    per field and read instead of one per field and message inside msgspec (1.3 µs of a header's
    2.2; docs/benchmarks.md). The batch check joins a read's values with newlines, so a pattern must
    never match a newline (only character classes without one, no `.`, `\\s` or `[^…]`)."""

    regex: str


_Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=96), Matches(r"[A-Za-z0-9][A-Za-z0-9._-]*")]
_Zone = Annotated[str, msgspec.Meta(min_length=1, max_length=32), Matches(r"[a-z0-9][a-z0-9-]{0,31}")]
_Short = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Model = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_KeyId = Annotated[str, msgspec.Meta(min_length=3, max_length=48), Matches(r"[a-z0-9][a-z0-9-]{0,31}/v[0-9]{1,9}")]
_Millis = Annotated[int, msgspec.Meta(ge=0, lt=2**53)]
_Version = Annotated[int, msgspec.Meta(ge=0)]
"""Any version decodes; the reader then refuses those not in `SUPPORTED_SCHEMA_VERSIONS` by name."""


class _Wire(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class JobHeader(_Wire, frozen=True, kw_only=True):
    """The clear part of a job. Bound to the sealed body as associated data."""

    v: _Version
    job_id: _Ident
    tenant: _Short
    zone: _Zone
    task: _Short
    model: _Model
    lane: LaneName
    sensitivity: Sensitivity
    kid: _KeyId
    created_ms: _Millis
    deadline_ms: _Millis | None = None
    reply_to: _Ident | None = None
    attempt: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    trace_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class JobPayload(_Wire, frozen=True, kw_only=True):
    """The sealed part of a job: task inputs (already minimized on the device) and options."""

    inputs: dict[str, Any]
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class ResultHeader(_Wire, frozen=True, kw_only=True):
    """The clear part of a result. Bound to the sealed result body as associated data."""

    v: _Version
    job_id: _Ident
    zone: _Zone
    kid: _KeyId
    status: Status
    worker: _Short
    finished_ms: _Millis


class ResultBody(_Wire, frozen=True, kw_only=True):
    """The sealed part of a result."""

    output: dict[str, Any] = msgspec.field(default_factory=dict)
    error: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    started_ms: _Millis


class JobResult(BaseModel):
    """A result as a client sees it once opened."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    status: Status
    output: dict[str, Any]
    error: str | None
    worker: str
    started_ms: int
    finished_ms: int

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_Checks = dict[str, tuple[Callable[[Any], Any], re.Pattern[str], re.Pattern[str]]]
_checks: dict[type, _Checks] = {}


def _checks_of(cls: type) -> _Checks:
    """For each field of `cls` declared with `Matches`: how to get it, its pattern, and the pattern of
    many values joined by newlines."""
    checks = _checks.get(cls)
    if checks is None:
        checks = {}
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            for tp in (hint, *typing.get_args(hint)):  # T, or each member of T | None
                for meta in getattr(tp, "__metadata__", ()):
                    if isinstance(meta, Matches):
                        rx = meta.regex
                        checks[name] = (attrgetter(name), re.compile(rx), re.compile(f"(?:{rx})(?:\n(?:{rx}))*"))
        _checks[cls] = checks
    return checks


_REPEATING = frozenset({"zone", "kid", "reply_to"})
"""Patterned fields whose values repeat from message to message (a job id does not)."""
_matched: defaultdict[str, set[str]] = defaultdict(set)
"""Pattern → values of `_REPEATING` fields that matched it: checked once, not at every job sealed."""


def invalid_fields(cls: type, items: Sequence[Any]) -> dict[int, str]:
    """The items of type `cls` (others are skipped) whose string fields do not match their declared
    `Matches`: index → what is wrong, worded like msgspec's own errors. A good read — the usual case —
    costs one regex call per patterned field: its distinct values are joined by newlines and matched
    at once (no value holds a newline, and no pattern matches one); only a failing field is looked
    at value by value."""
    checks = _checks_of(cls)
    if len(items) == 1:  # one header (sealing a job, opening one result): straight to its values
        x = items[0]
        for name, (get, one, _) in checks.items() if type(x) is cls else ():
            v = get(x)
            if v is None or v in _matched[one.pattern]:
                continue
            if not one.fullmatch(v):
                return {0: _mismatch(name, one)}
            if name in _REPEATING and len(_matched[one.pattern]) < 4096:
                _matched[one.pattern].add(v)
        return {}
    structs = [x for x in items if type(x) is cls]
    bad: dict[int, str] = {}
    for name, (get, one, many) in checks.items():
        values = set(map(get, structs))
        values.discard(None)
        joined = "\n".join(values)
        if not values or (joined.count("\n") == len(values) - 1 and many.fullmatch(joined)):
            continue
        for i, x in enumerate(items):
            if type(x) is not cls or i in bad:
                continue
            v = get(x)
            if v is not None and not one.fullmatch(v):
                bad[i] = _mismatch(name, one)
    return bad


def _mismatch(name: str, pattern: re.Pattern[str]) -> str:
    return f"Expected `str` matching regex {pattern.pattern!r} - at `$.{name}`"


__all__ = [
    "MAX_HEADER_BYTES",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "JobHeader",
    "JobPayload",
    "JobResult",
    "LaneName",
    "Matches",
    "ResultBody",
    "ResultHeader",
    "Sensitivity",
    "Status",
    "invalid_fields",
]
