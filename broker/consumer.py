"""Consumer: read a zone's lanes with the `workers` group, open jobs, store results, acknowledge.

Delivery is at-least-once:

    XREADGROUP (interactive first, then batch) → open → run → store result (SET NX) → XACK + XDEL

with the last two steps in one Lua script per batch (`scripts.COMPLETE`), which also takes each job
out of its tenant's in-flight set (`broker.admission`). Entries idle longer than
`min_idle_ms` in another consumer's pending list (a crashed or preempted worker) are taken over
with XAUTOCLAIM; their delivery count comes from XPENDING. A message delivered more than
`max_deliveries` times, or one that cannot be opened, decoded or validated, is moved to the
dead-letter stream with its reason — the rest of the read goes on. So is a job whose result already
exists (`replayed`: an old message added again, or a duplicate submission): it is not run twice.

Acknowledged entries are deleted from the job stream, so a stream's length is exactly its backlog
plus what is pending; lag is computed from that on Redis 6.2 and 7 alike (`queue_depth`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from broker import keys
from broker.codec import unpack
from broker.connection import MAX_BLOCK_MS, ensure_group, redis_errors
from broker.dead_letter import DeadLetters, Rejected
from broker.errors import DeadlinePassed, MessageError, ReplayedMessage, TooManyDeliveries
from broker.message import Job, Sealer, now_ms
from broker.scripts import COMPLETE, EXISTS_EACH

log = logging.getLogger(__name__)

Outcome = Mapping[str, Any] | BaseException
"""What a handler returns per job: its output, or the exception that failed it (stored as an error result;
`DeadlinePassed` is stored as an `expired` result)."""

Handler = Callable[[list[Job]], Sequence[Outcome]]


@dataclass(frozen=True)
class Delivery:
    """One opened job as this consumer received it."""

    stream: str
    entry_id: bytes
    deliveries: int
    received_ms: int
    job: Job


@dataclass
class ConsumerStats:
    read: int = 0
    reclaimed: int = 0
    completed: int = 0
    duplicates: int = 0  # results that already existed (a job run twice)
    handler_failures: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Raw:
    stream: str
    entry_id: bytes
    fields: Mapping[bytes, bytes] | None
    deliveries: int


class Consumer:
    def __init__(
        self,
        client: redis.Redis,
        sealer: Sealer,
        zone: str,
        name: str,
        *,
        lanes: Sequence[keys.Lane] = keys.LANES_BY_PRIORITY,
        count: int = 32,
        block_ms: int = 1000,
        min_idle_ms: int = 60_000,
        max_deliveries: int = 5,
        result_ttl_s: int = 24 * 3600,
        reclaim_interval_s: float | None = None,
        reply_maxlen: int = 10_000,
    ) -> None:
        self.client = client
        self.sealer = sealer
        self.zone = keys.check_zone(zone)
        self.name = keys.check_name(name, "consumer name")
        self.streams = [keys.jobs_stream(zone, lane) for lane in lanes]
        self.count = count
        self.block_ms = block_ms
        self.min_idle_ms = min_idle_ms
        self.max_deliveries = max_deliveries
        self.result_ttl_ms = result_ttl_s * 1000
        self.reply_maxlen = reply_maxlen
        self.reclaim_interval_s = (
            reclaim_interval_s if reclaim_interval_s is not None else min(min_idle_ms / 2000, 30.0)
        )
        self.dead_letters = DeadLetters(client, zone)
        self.stats = ConsumerStats()
        self._complete = client.register_script(COMPLETE)
        self._exists_each = client.register_script(EXISTS_EACH)
        self._claim_cursor = dict.fromkeys(self.streams, "0-0")
        self._last_reclaim = float("-inf")
        self._groups_ready = False

    def ensure_groups(self) -> None:
        with redis_errors():
            for stream in self.streams:
                ensure_group(self.client, stream, keys.GROUP)
        self._groups_ready = True

    # -- reading ----------------------------------------------------------------------------------

    def fetch(self, count: int | None = None, block_ms: int | None = None) -> list[Delivery]:
        """Up to `count` opened jobs (more only when a blocking read returns from several lanes).

        Reclaimed jobs first, then new jobs lane by lane in priority order; waits up to `block_ms`
        only when nothing at all is ready. Bad messages are dead-lettered on the way."""
        if not self._groups_ready:
            self.ensure_groups()
        count = count or self.count
        block_ms = self.block_ms if block_ms is None else block_ms
        with redis_errors():
            raw = self._reclaim(count) if self._reclaim_due() else []
            for stream in self.streams:
                if len(raw) >= count:
                    break
                raw += self._read_new({stream: ">"}, count - len(raw), None)
            if not raw and block_ms > 0:
                raw = self._read_new(dict.fromkeys(self.streams, ">"), count, min(block_ms, MAX_BLOCK_MS))
            return self._open_all(raw)

    def _reclaim_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_reclaim < self.reclaim_interval_s:
            return False
        self._last_reclaim = now
        return True

    def _read_new(self, streams: dict[str, str], count: int, block: int | None) -> list[_Raw]:
        resp: Any = self.client.xreadgroup(keys.GROUP, self.name, streams, count=count, block=block)  # type: ignore[arg-type]
        out: list[_Raw] = []
        for stream, entries in resp or []:
            s = stream.decode() if isinstance(stream, bytes) else str(stream)
            out += [_Raw(s, eid, fields, 1) for eid, fields in entries]
        self.stats.read += len(out)
        return out

    def _reclaim(self, count: int) -> list[_Raw]:
        out: list[_Raw] = []
        for stream in self.streams:
            if len(out) >= count:
                break
            resp = self.client.xautoclaim(
                stream, keys.GROUP, self.name, self.min_idle_ms, self._claim_cursor[stream], count=count - len(out)
            )
            cursor, entries = resp[0], resp[1]
            self._claim_cursor[stream] = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            if not entries:
                continue
            counts = self._delivery_counts(stream, [eid for eid, _ in entries])
            out += [_Raw(stream, eid, fields, counts.get(eid, 1)) for eid, fields in entries]
        self.stats.reclaimed += len(out)
        return out

    def _delivery_counts(self, stream: str, ids: list[bytes]) -> dict[bytes, int]:
        rows = self.client.xpending_range(stream, keys.GROUP, ids[0], ids[-1], max(len(ids) * 4, 1000), self.name)
        wanted = set(ids)
        return {r["message_id"]: int(r["times_delivered"]) for r in rows if r["message_id"] in wanted}

    def _open_all(self, raw: list[_Raw]) -> list[Delivery]:
        received = now_ms()
        opened: list[Delivery] = []
        rejected: list[Rejected] = []
        vanished: list[_Raw] = []
        for r in raw:
            if not r.fields:  # deleted while pending (Redis 6.2 returns it with no fields): nothing to run
                vanished.append(r)
                continue
            try:
                if r.deliveries > self.max_deliveries:
                    raise TooManyDeliveries(f"delivered {r.deliveries} times (limit {self.max_deliveries})")
                job = self.sealer.open_job(self.zone, r.fields)
            except MessageError as exc:
                rejected.append(
                    Rejected(r.stream, r.entry_id, r.fields, exc.reason, exc.detail, r.deliveries, _job_id_of(r))
                )
                continue
            opened.append(Delivery(r.stream, r.entry_id, r.deliveries, received, job))
        if opened:
            opened = self._drop_replays(opened, {(r.stream, r.entry_id): r for r in raw}, rejected)
        if rejected:
            self.dead_letters.move(rejected, self.name)
            for x in rejected:
                self.stats.dead_lettered[x.reason] += 1
                log.warning("dead-lettered %s from %s: %s (%s)", x.entry_id.decode(), x.stream, x.reason, x.detail)
        if vanished:
            pipe = self.client.pipeline(transaction=False)
            for r in vanished:
                pipe.xack(r.stream, keys.GROUP, r.entry_id)
            pipe.execute()
        return opened

    def _drop_replays(
        self, opened: list[Delivery], raw: Mapping[tuple[str, bytes], _Raw], rejected: list[Rejected]
    ) -> list[Delivery]:
        """Jobs whose result already exists are not run again: a replayed message (an old entry added
        again under a new stream id — its header, job id included, is the AEAD's associated data, so it
        still opens) or a duplicate submission. They go to the dead-letter stream as `replayed`; the
        first result stays. (A result lives `result_ttl_s`; a replay after that runs again.)"""
        done: Any = self._exists_each(keys=[keys.result_key(self.zone, d.job.job_id) for d in opened])
        keep: list[Delivery] = []
        first_of: dict[str, bytes] = {}  # job id → the entry that carries it in this read
        for d, exists in zip(opened, done, strict=True):
            twin = first_of.setdefault(d.job.job_id, d.entry_id)
            if not exists and twin == d.entry_id:
                keep.append(d)
                continue
            r = raw[(d.stream, d.entry_id)]
            why = "already has a result" if exists else f"came twice in one read (first as entry {twin.decode()})"
            exc = ReplayedMessage(f"job {d.job.job_id} {why}; this copy (entry {d.entry_id.decode()}) was not run")
            rejected.append(
                Rejected(d.stream, d.entry_id, r.fields or {}, exc.reason, exc.detail, d.deliveries, d.job.job_id)
            )
        return keep

    # -- completing -------------------------------------------------------------------------------

    def touch(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Reset the idle time of entries this consumer still works on (XCLAIM … JUSTID), so that a
        job waiting in a long local queue is not taken over as if its worker had died."""
        by_stream: dict[str, list[Any]] = {}
        for stream, entry_id in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xclaim(stream, keys.GROUP, self.name, 0, ids, justid=True)
            pipe.execute()

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge (and delete) entries without storing a result — for jobs dropped on purpose."""
        if not deliveries:
            return
        by_stream: dict[str, list[bytes]] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, []).append(d.entry_id)
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(stream, keys.GROUP, *ids)
                pipe.xdel(stream, *ids)
            pipe.execute()

    def complete(self, items: Sequence[tuple[Delivery, Outcome]]) -> int:
        """Store each result (once per job id) and acknowledge its entry; returns results created."""
        if not items:
            return 0
        script_keys: list[str] = []
        args: list[Any] = [self.result_ttl_ms, keys.GROUP, self.reply_maxlen]
        for delivery, outcome in items:
            h = delivery.job.header
            if isinstance(outcome, BaseException):
                expired = isinstance(outcome, DeadlinePassed)
                stored = self.sealer.seal_result(
                    h, self.name, delivery.received_ms, error=_describe(outcome), expired=expired
                )
            else:
                stored = self.sealer.seal_result(h, self.name, delivery.received_ms, output=outcome)
            rkey = keys.result_key(self.zone, h.job_id)
            reply = keys.reply_stream(self.zone, h.reply_to) if h.reply_to else rkey
            script_keys += [rkey, delivery.stream, reply, keys.inflight_set(self.zone, h.tenant)]
            args += [delivery.entry_id, stored, h.job_id, 1 if h.reply_to else 0]
        with redis_errors():
            created = int(self._complete(keys=script_keys, args=args))
        self.stats.completed += len(items)
        self.stats.duplicates += len(items) - created
        return created

    # -- the loop ---------------------------------------------------------------------------------

    def run(
        self,
        handler: Handler,
        *,
        stop: threading.Event | None = None,
        burst: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> ConsumerStats:
        """Fetch → handle → complete until `stop` is set (or, with `burst`, until nothing is left).

        A batch whose handler raises is left unacknowledged: it is reclaimed after `min_idle_ms` and
        dead-lettered once it has been delivered `max_deliveries` times."""
        stop = stop or threading.Event()
        while not stop.is_set():
            batch = self.fetch(block_ms=0 if burst else None)
            if not batch:
                if burst:
                    break
                continue
            try:
                outcomes = handler([d.job for d in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"handler returned {len(outcomes)} outcomes for {len(batch)} jobs")
            except Exception:
                self.stats.handler_failures += 1
                log.exception("handler failed on a batch of %d; left for redelivery", len(batch))
                continue
            self.complete(list(zip(batch, outcomes, strict=True)))
            if on_batch:
                on_batch(len(batch))
        return self.stats


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _job_id_of(r: _Raw) -> str:
    """The job id from a raw header, if it can be read without trusting anything else."""
    try:
        h = unpack((r.fields or {}).get(b"h", b""))
        jid = h.get("job_id") if isinstance(h, dict) else None
        return jid if isinstance(jid, str) and len(jid) <= 96 else ""
    except MessageError:
        return ""


__all__ = ["Consumer", "ConsumerStats", "Delivery", "Handler", "Outcome"]
