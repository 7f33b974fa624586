"""Jobs and results as they travel: a clear header (msgpack map) and a sealed body.

`Sealer` is the one place that turns a job spec into the two stream fields `h` (header) and `b`
(body), and turns them back — every way that can fail raises a `MessageError` whose `reason` becomes
the dead-letter reason. Results are sealed the same way and stored as `msgpack([h, b])`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from broker.codec import Codec, pack, unpack
from broker.envelope import Envelope
from broker.errors import (
    DecodeError,
    MalformedMessage,
    MessageError,
    OversizedMessage,
    UnsupportedSchema,
    ZoneMismatch,
)
from broker.ids import new_ulid
from broker.keys import check_zone
from broker.schema import (
    MAX_HEADER_BYTES,
    SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    JobHeader,
    JobResult,
    LaneName,
    ResultBody,
    ResultHeader,
    Sensitivity,
)

HEADER_FIELD = b"h"
BODY_FIELD = b"b"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_job_id() -> str:
    """A ULID: 26 characters, sortable by creation time."""
    return new_ulid()


@dataclass(frozen=True)
class JobSpec:
    """What a producer asks for. `job_id` may be given for idempotent submission (batch runs)."""

    task: str
    inputs: Mapping[str, Any]
    model: str = "default"
    tenant: str = "default"
    lane: LaneName = "interactive"
    sensitivity: Sensitivity = "sensitive"
    options: Mapping[str, Any] = field(default_factory=dict)
    deadline_ms: int | None = None
    trace_id: str | None = None
    job_id: str | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Payload:
    """An opened job payload. Same fields and rules as the `JobPayload` schema, checked by hand in
    `_payload` because pydantic's per-object cost would dominate the worker's hot path."""

    inputs: dict[str, Any]
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Job:
    """An opened job, as a worker sees it."""

    header: JobHeader
    payload: Payload

    @property
    def job_id(self) -> str:
        return self.header.job_id


def _validation_detail(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"{loc}: {first['msg']}" + (f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else "")


def _str_keyed(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"invalid job payload: {what} must be a mapping, not {type(obj).__name__}")
    d = dict(obj)
    if not all(type(k) is str for k in d):
        raise ValueError(f"invalid job payload: every key of {what} must be a string")
    return d


def _payload(obj: dict[str, Any]) -> Payload:
    """Validate a decoded payload by hand: the rules of `JobPayload` (a test holds the two together)."""
    inputs, options = obj.get("inputs"), obj.get("options", {})
    if obj.keys() - {"inputs", "options"}:  # keys may be str or bytes: sort their reprs, never the keys
        raise DecodeError(f"invalid payload: unexpected fields {sorted(map(repr, obj.keys() - {'inputs', 'options'}))}")
    if type(inputs) is not dict or type(options) is not dict:
        raise DecodeError("invalid payload: inputs and options must be maps")
    if not all(type(k) is str for k in inputs) or not all(type(k) is str for k in options):
        raise DecodeError("invalid payload: keys of inputs and options must be strings")
    return Payload(inputs, options)


class Sealer:
    """Seals and opens jobs and results with one envelope and one codec."""

    def __init__(self, envelope: Envelope, codec: Codec | None = None, max_body_bytes: int | None = None) -> None:
        self.envelope = envelope
        self.codec = codec or Codec()
        # a compressed body may be a little larger than the payload; anything far beyond is refused unread
        self.max_body_bytes = max_body_bytes or self.codec.max_payload_bytes + 4096

    # -- jobs -------------------------------------------------------------------------------------

    def seal_job(self, zone: str, spec: JobSpec, reply_to: str | None = None) -> tuple[JobHeader, bytes, bytes]:
        """Returns `(header, header_bytes, body)`; raises `PayloadTooLarge` or `ValueError` on bad input."""
        check_zone(zone)
        payload = {"inputs": _str_keyed(spec.inputs, "inputs"), "options": _str_keyed(spec.options, "options")}
        plaintext = self.codec.encode(payload, spec.task)
        job_id = spec.job_id or new_job_id()
        fields: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "job_id": job_id,
            "tenant": spec.tenant,
            "zone": zone,
            "task": spec.task,
            "model": spec.model,
            "lane": str(spec.lane),
            "sensitivity": spec.sensitivity,
            "kid": "",
            "created_ms": now_ms(),
            "deadline_ms": spec.deadline_ms,
            "reply_to": reply_to,
            "attempt": spec.attempt,
            "trace_id": spec.trace_id,
        }
        holder: list[JobHeader] = []

        def header_for(kid: str) -> bytes:
            fields["kid"] = kid
            try:
                holder.append(JobHeader.model_validate(fields))
            except ValidationError as exc:
                raise ValueError(f"invalid job header: {_validation_detail(exc)}") from None
            return pack(fields)

        header_bytes, body = self.envelope.seal(zone, plaintext, header_for)
        return holder[0], header_bytes, body

    def open_job(self, zone: str, entry: Mapping[bytes, bytes]) -> Job:
        """Open one stream entry of `zone`'s job streams; raises a `MessageError` on any defect."""
        header = self.read_job_header(zone, entry)
        body = entry[BODY_FIELD]
        if len(body) > self.max_body_bytes:
            raise OversizedMessage(f"body is {len(body)} bytes, over the limit of {self.max_body_bytes}")
        plaintext = self.envelope.open(header.kid, entry[HEADER_FIELD], body)
        return Job(header, _payload(self.codec.decode(plaintext)))

    def read_job_header(self, zone: str, entry: Mapping[bytes, bytes]) -> JobHeader:
        """Validate the clear header only (no key needed): schema version, fields, zone."""
        raw = entry.get(HEADER_FIELD)
        if raw is None or entry.get(BODY_FIELD) is None:
            raise MalformedMessage(
                f"entry lacks the 'h' or 'b' field (has {sorted(k.decode(errors='replace') for k in entry)})"
            )
        if len(raw) > MAX_HEADER_BYTES:
            raise OversizedMessage(f"header is {len(raw)} bytes, over the limit of {MAX_HEADER_BYTES}")
        try:
            fields = unpack(raw)
        except DecodeError as exc:
            raise MalformedMessage(f"header {exc}") from None
        if not isinstance(fields, dict):
            raise MalformedMessage("header is not a msgpack map")
        version = fields.get("v")
        if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:  # any msgpack value may be here
            raise UnsupportedSchema(
                f"schema version {version!r} is not supported (this build reads {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
            )
        try:
            header = JobHeader.model_validate(fields)
        except ValidationError as exc:
            raise MalformedMessage(f"invalid header: {_validation_detail(exc)}") from None
        if header.zone != zone:
            raise ZoneMismatch(f"job of zone {header.zone!r} read from zone {zone!r}'s stream")
        return header

    # -- results ----------------------------------------------------------------------------------

    def seal_result(
        self,
        job: JobHeader,
        worker: str,
        started_ms: int,
        output: Mapping[str, Any] | None = None,
        error: str | None = None,
        *,
        expired: bool = False,
    ) -> bytes:
        """The stored form of a result: `msgpack([header_bytes, body])`. With `expired`, the status is
        `expired` (the job was not run because its deadline had passed; `error` says when)."""
        status = "expired" if expired else "ok" if error is None else "error"
        plaintext = self.codec.encode(
            {"output": dict(output or {}), "error": error[:4096] if error else None, "started_ms": started_ms}
        )
        finished = now_ms()

        def header_for(kid: str) -> bytes:
            return pack(
                {
                    "v": SCHEMA_VERSION,
                    "job_id": job.job_id,
                    "zone": job.zone,
                    "kid": kid,
                    "status": status,
                    "worker": worker,
                    "finished_ms": finished,
                }
            )

        header_bytes, body = self.envelope.seal(job.zone, plaintext, header_for)
        return pack([header_bytes, body])

    def open_result(self, zone: str, job_id: str, stored: bytes) -> JobResult:
        try:
            parts = unpack(stored)
            header_bytes, body = parts
            fields = unpack(header_bytes)
            if not isinstance(fields, dict) or fields.get("v") not in SUPPORTED_SCHEMA_VERSIONS:
                raise UnsupportedSchema(f"result schema version {fields.get('v')!r} is not supported")
            header = ResultHeader.model_validate(fields)
        except (ValueError, TypeError) as exc:  # includes ValidationError and msgpack errors
            if isinstance(exc, MessageError):
                raise
            raise MalformedMessage(f"stored result of {job_id} is not readable: {exc}") from None
        if header.zone != zone or header.job_id != job_id:
            raise ZoneMismatch(f"stored result names job {header.job_id} of zone {header.zone}, expected {job_id}")
        obj = self.codec.decode(self.envelope.open(header.kid, header_bytes, body))
        try:
            rbody = ResultBody.model_validate(obj)
        except ValidationError as exc:
            raise DecodeError(f"invalid result body: {_validation_detail(exc)}") from None
        return JobResult(
            job_id=header.job_id,
            status=header.status,
            output=rbody.output,
            error=rbody.error,
            worker=header.worker,
            started_ms=rbody.started_ms,
            finished_ms=header.finished_ms,
        )


__all__ = ["BODY_FIELD", "HEADER_FIELD", "Job", "JobSpec", "Payload", "Sealer", "new_job_id", "now_ms"]
