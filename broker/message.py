"""Jobs and results as they travel: a clear header (msgpack map) and a sealed body.

`Sealer` is the one place that turns a job spec into the two stream fields `h` (header) and `b`
(body), and turns them back — every way that can fail raises a `MessageError` whose `reason` becomes
the dead-letter reason. Results are sealed the same way and stored as `msgpack([h, b])`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from broker.codec import Codec, pack, pack_fast, unpack
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
    JobPayload,
    JobResult,
    LaneName,
    ResultBody,
    ResultHeader,
    Sensitivity,
    invalid_fields,
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


_JOB_HEADER = msgspec.msgpack.Decoder(JobHeader)
_JOB_PAYLOAD = msgspec.msgpack.Decoder(JobPayload)
_RESULT_HEADER = msgspec.msgpack.Decoder(ResultHeader)
_RESULT_BODY = msgspec.msgpack.Decoder(ResultBody)


class Job(NamedTuple):
    """An opened job, as a worker sees it. (A named tuple: immutable, and made per job on the hot path,
    where a frozen dataclass costs 2.5x as much to create.)"""

    header: JobHeader
    payload: JobPayload

    @property
    def job_id(self) -> str:
        return self.header.job_id


def _str_keyed(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    if type(obj) is not dict:
        if not isinstance(obj, Mapping):
            raise ValueError(f"invalid job payload: {what} must be a mapping, not {type(obj).__name__}")
        obj = dict(obj)
    if not all(type(k) is str for k in obj):
        raise ValueError(f"invalid job payload: every key of {what} must be a string")
    return obj


def _version_error(raw: bytes, exc: msgspec.DecodeError) -> MessageError:
    """Why a header that did not decode was refused: an unknown schema version is told apart from a
    malformed header (the slow path, taken only for bad messages)."""
    try:
        fields = unpack(raw)
    except DecodeError as err:
        return MalformedMessage(f"header {err}")
    if not isinstance(fields, dict):
        return MalformedMessage("header is not a msgpack map")
    version = fields.get("v")
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:  # any msgpack value may be here
        return UnsupportedSchema(
            f"schema version {version!r} is not supported (this build reads {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
        )
    return MalformedMessage(f"invalid header: {exc}")


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
        try:
            plaintext = self.codec.encode(payload, spec.task)
        except TypeError as exc:
            raise ValueError(f"invalid job payload: {exc}") from None
        job_id = spec.job_id or new_job_id()
        created = now_ms()
        holder: list[JobHeader] = []

        def header_for(kid: str) -> bytes:
            try:
                # the header is checked as a reader will check it: encoded, then decoded with the schema
                raw = pack_fast(
                    JobHeader(
                        v=SCHEMA_VERSION, job_id=job_id, tenant=spec.tenant, zone=zone, task=spec.task,
                        model=spec.model, lane=str(spec.lane), sensitivity=spec.sensitivity, kid=kid,  # type: ignore[arg-type]
                        created_ms=created, deadline_ms=spec.deadline_ms, reply_to=reply_to,
                        attempt=spec.attempt, trace_id=spec.trace_id,
                    )
                )  # fmt: skip
                header = _JOB_HEADER.decode(raw)
            except (TypeError, msgspec.DecodeError) as exc:
                raise ValueError(f"invalid job header: {exc}") from None
            why = invalid_fields(JobHeader, [header]).get(0)
            if why:
                raise ValueError(f"invalid job header: {why}")
            holder.append(header)
            return raw

        header_bytes, body = self.envelope.seal(zone, plaintext, header_for)
        return holder[0], header_bytes, body

    def open_job(self, zone: str, entry: Mapping[bytes, bytes]) -> Job:
        """Open one stream entry of `zone`'s job streams; raises a `MessageError` on any defect."""
        header_bytes, body = entry_fields(entry)
        return self.open_body(self.open_header(zone, header_bytes), header_bytes, body)

    def open_body(self, header: JobHeader, header_bytes: bytes, body: bytes) -> Job:
        """The second half of `open_job`: decrypt and decode the body under its checked header. (The
        one-message reference that `open_bodies` is tested against.)"""
        if len(body) > self.max_body_bytes:
            raise OversizedMessage(f"body is {len(body)} bytes, over the limit of {self.max_body_bytes}")
        return Job(header, self.codec.decode_as(self.envelope.open(header.kid, header_bytes, body), _JOB_PAYLOAD))

    def open_bodies(self, sealed: Sequence[tuple[JobHeader, bytes, bytes]]) -> list[Job | MessageError]:
        """`open_body` for the jobs of one read, `(header, header_bytes, body)` each: the job, or the
        `MessageError` that refused it, in order — decrypted in one pass (`Envelope.open_many`, data keys
        looked up once per read), then decompressed and decoded in another (`Codec.decode_many_as`)."""
        limit = self.max_body_bytes
        plaintexts = self.envelope.open_many(
            (header.kid, header_bytes, body)
            if len(body) <= limit
            else OversizedMessage(f"body is {len(body)} bytes, over the limit of {limit}")
            for header, header_bytes, body in sealed
        )
        payloads = self.codec.decode_many_as(plaintexts, _JOB_PAYLOAD)
        new = tuple.__new__  # Job(header, p) without the named tuple's Python-level __new__: half the cost
        return [
            p if isinstance(p, MessageError) else new(Job, (item[0], p))
            for item, p in zip(sealed, payloads, strict=True)
        ]

    def read_job_header(self, zone: str, entry: Mapping[bytes, bytes]) -> JobHeader:
        """Validate the clear header only (no key needed): schema version, fields, zone."""
        return self.open_header(zone, entry_fields(entry)[0])

    def open_header(self, zone: str, raw: bytes) -> JobHeader:
        """The first half of `open_job`: the clear header, checked (no key needed)."""
        header = self.open_headers(zone, [raw])[0]
        if isinstance(header, MessageError):
            raise header
        return header

    def open_headers(self, zone: str, raws: Sequence[bytes]) -> list[JobHeader | MessageError]:
        """The clear headers of one read, checked (no key needed): each header, or the `MessageError`
        that refused it, in order. Size, schema version, every field's type and bounds, identifier
        patterns (once for the whole read: `schema.invalid_fields`) and zone, in that order."""
        decode = _JOB_HEADER.decode
        out: list[JobHeader | MessageError] = []
        for raw in raws:
            if len(raw) > MAX_HEADER_BYTES:
                out.append(OversizedMessage(f"header is {len(raw)} bytes, over the limit of {MAX_HEADER_BYTES}"))
                continue
            try:
                out.append(decode(raw))
            except msgspec.DecodeError as exc:
                out.append(_version_error(raw, exc))
        for i, why in invalid_fields(JobHeader, out).items():
            out[i] = _version_error(raws[i], msgspec.ValidationError(why))
        for i, header in enumerate(out):
            if isinstance(header, MessageError):
                continue
            if header.v not in SUPPORTED_SCHEMA_VERSIONS:
                out[i] = _version_error(raws[i], msgspec.DecodeError())
            elif header.zone != zone:
                out[i] = ZoneMismatch(f"job of zone {header.zone!r} read from zone {zone!r}'s stream")
        return out

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
        result = ResultBody(output=dict(output or {}), error=error[:4096] if error else None, started_ms=started_ms)
        plaintext = self.codec.encode(result)
        finished = now_ms()

        def header_for(kid: str) -> bytes:
            return pack_fast(
                ResultHeader(
                    v=SCHEMA_VERSION, job_id=job.job_id, zone=job.zone, kid=kid, status=status,  # type: ignore[arg-type]
                    worker=worker, finished_ms=finished,
                )
            )  # fmt: skip

        header_bytes, body = self.envelope.seal(job.zone, plaintext, header_for)
        return pack([header_bytes, body])

    def open_result(self, zone: str, job_id: str, stored: bytes) -> JobResult:
        try:
            header_bytes, body = unpack(stored)
            header = _RESULT_HEADER.decode(header_bytes)
        except (ValueError, TypeError, msgspec.DecodeError) as exc:  # includes msgpack errors and bad shapes
            raise MalformedMessage(f"stored result of {job_id} is not readable: {exc}") from None
        why = invalid_fields(ResultHeader, [header]).get(0)
        if why:
            raise MalformedMessage(f"stored result of {job_id} is not readable: {why}")
        if header.v not in SUPPORTED_SCHEMA_VERSIONS:
            raise UnsupportedSchema(f"result schema version {header.v!r} is not supported")
        if header.zone != zone or header.job_id != job_id:
            raise ZoneMismatch(f"stored result names job {header.job_id} of zone {header.zone}, expected {job_id}")
        rbody = self.codec.decode_as(self.envelope.open(header.kid, header_bytes, body), _RESULT_BODY)
        return JobResult(
            job_id=header.job_id,
            status=header.status,
            output=rbody.output,
            error=rbody.error,
            worker=header.worker,
            started_ms=rbody.started_ms,
            finished_ms=header.finished_ms,
        )


def entry_fields(entry: Mapping[bytes, bytes]) -> tuple[bytes, bytes]:
    """The `h` and `b` fields of a stream entry; `MalformedMessage`, naming what it has, if either is missing."""
    header_bytes, body = entry.get(HEADER_FIELD), entry.get(BODY_FIELD)
    if header_bytes is None or body is None:
        raise MalformedMessage(
            f"entry lacks the 'h' or 'b' field (has {sorted(k.decode(errors='replace') for k in entry)})"
        )
    return header_bytes, body


__all__ = ["BODY_FIELD", "HEADER_FIELD", "Job", "JobSpec", "Sealer", "entry_fields", "new_job_id", "now_ms"]
