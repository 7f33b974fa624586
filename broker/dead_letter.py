"""The dead-letter stream: messages that cannot be used, each with why.

An entry of `hyb:{<zone>}:dlq` has the fields

    reason      a code: malformed, unsupported_schema, zone_mismatch, unknown_key, revoked_key, tampered,
                undecodable, too_large, max_deliveries, replayed (the job already has a result)
    detail      one readable sentence
    deliveries  how often the message had been delivered
    source      the job stream it came from;  source_id: its entry id there
    consumer    who gave up on it;            failed_ms: when
    job_id      the header's job id when the header could be read ('' otherwise)
    orig        the original entry's fields, msgpack map {field: value}, byte for byte

Moving a message here and acknowledging it on its job stream happen in one MULTI/EXEC, so it is
never lost and never in both places. `replay` puts the original fields back on the source stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from broker import keys
from broker.codec import pack, unpack
from broker.connection import redis_errors
from broker.errors import DecodeError
from broker.message import HEADER_FIELD, now_ms
from broker.scripts import REPLAY


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    reason: str
    detail: str
    deliveries: int
    source: str
    source_id: str
    consumer: str
    failed_ms: int
    job_id: str
    original: dict[bytes, bytes]

    def header(self) -> dict[str, Any] | None:
        """The original clear header, decoded, if it is a msgpack map."""
        raw = self.original.get(HEADER_FIELD)
        if raw is None:
            return None
        try:
            obj = unpack(raw)
        except DecodeError:
            return None
        return obj if isinstance(obj, dict) else None


@dataclass(frozen=True)
class Rejected:
    """A message the consumer gives up on, ready to be dead-lettered."""

    stream: str
    entry_id: bytes
    fields: Mapping[bytes, bytes]
    reason: str
    detail: str
    deliveries: int
    job_id: str = ""


def _text(v: bytes | None) -> str:
    return v.decode("utf-8", "replace") if v is not None else ""


class DeadLetters:
    """The dead-letter stream of one zone."""

    def __init__(self, client: redis.Redis, zone: str) -> None:
        self.client = client
        self.zone = zone
        self.stream = keys.dlq_stream(zone)
        self._replay = client.register_script(REPLAY)

    def add_to(self, pipe: Any, rejected: Rejected, consumer: str) -> None:
        """Queue the move of one rejected entry onto a MULTI pipeline (caller executes)."""
        pipe.xadd(
            self.stream,
            {
                "reason": rejected.reason,
                "detail": rejected.detail[:1000],
                "deliveries": rejected.deliveries,
                "source": rejected.stream,
                "source_id": rejected.entry_id,
                "consumer": consumer,
                "failed_ms": now_ms(),
                "job_id": rejected.job_id,
                "orig": pack(dict(rejected.fields)),
            },
        )
        pipe.xack(rejected.stream, keys.GROUP, rejected.entry_id)
        pipe.xdel(rejected.stream, rejected.entry_id)

    def move(self, rejected: Sequence[Rejected], consumer: str) -> None:
        if not rejected:
            return
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            for r in rejected:
                self.add_to(pipe, r, consumer)
            pipe.execute()

    def size(self) -> int:
        with redis_errors():
            return int(self.client.xlen(self.stream))

    def list(self, count: int = 50, newest_first: bool = True) -> list[DeadLetter]:
        with redis_errors():
            rows: Any = (
                self.client.xrevrange(self.stream, count=count)
                if newest_first
                else self.client.xrange(self.stream, count=count)
            )
        return [self._parse(eid, fields) for eid, fields in rows]

    def get(self, entry_id: str) -> DeadLetter | None:
        with redis_errors():
            rows: Any = self.client.xrange(self.stream, min=entry_id, max=entry_id, count=1)
        return self._parse(*rows[0]) if rows else None

    def replay(self, entry_id: str) -> str | None:
        """Put one dead letter back on its job stream; returns the new entry id, None if it was gone."""
        letter = self.get(entry_id)
        if letter is None:
            return None
        args: list[Any] = [entry_id]
        for k, v in letter.original.items():
            args += [k, v]
        with redis_errors():
            new_id = self._replay(keys=[self.stream, letter.source], args=args)
        return _text(new_id) if new_id else None

    def purge(self, entry_ids: Sequence[str] | None = None) -> int:
        """Delete the given dead letters, or all of them; returns how many were removed."""
        with redis_errors():
            if entry_ids is None:
                pipe = self.client.pipeline(transaction=True)
                pipe.xlen(self.stream)
                pipe.delete(self.stream)
                return int(pipe.execute()[0])
            return int(self.client.xdel(self.stream, *entry_ids)) if entry_ids else 0

    @staticmethod
    def _parse(entry_id: bytes, f: Mapping[bytes, bytes]) -> DeadLetter:
        try:
            orig = unpack(f.get(b"orig", pack({})))
        except DecodeError:
            orig = {}
        return DeadLetter(
            entry_id=_text(entry_id),
            reason=_text(f.get(b"reason")),
            detail=_text(f.get(b"detail")),
            deliveries=int(f.get(b"deliveries", b"0")),
            source=_text(f.get(b"source")),
            source_id=_text(f.get(b"source_id")),
            consumer=_text(f.get(b"consumer")),
            failed_ms=int(f.get(b"failed_ms", b"0")),
            job_id=_text(f.get(b"job_id")),
            original=orig if isinstance(orig, dict) else {},
        )


__all__ = ["DeadLetter", "DeadLetters", "Rejected"]
