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
from typing import Any, NamedTuple

import redis

from broker import keys
from broker.codec import unpack
from broker.connection import MAX_BLOCK_MS, ensure_group, redis_errors, send_deferred
from broker.dead_letter import DeadLetters, Rejected
from broker.errors import DeadlinePassed, MessageError, ReplayedMessage, TooManyDeliveries
from broker.message import Job, Sealer, entry_fields, now_ms
from broker.schema import JobHeader
from broker.scripts import ACK_CHUNK, ACK_DELETE, COMPLETE, EXISTS_EACH

log = logging.getLogger(__name__)

Outcome = Mapping[str, Any] | BaseException
"""What a handler returns per job: its output, or the exception that failed it (stored as an error result;
`DeadlinePassed` is stored as an `expired` result)."""

Handler = Callable[[list[Job]], Sequence[Outcome]]


class Delivery(NamedTuple):
    """One opened job as this consumer received it (immutable; a named tuple because one is made per job)."""

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


@dataclass(slots=True)
class _Raw:
    stream: str
    entry_id: bytes
    fields: Mapping[bytes, bytes] | None
    deliveries: int


def _as_map(flat: Sequence[bytes] | Mapping[bytes, bytes] | None) -> Mapping[bytes, bytes] | None:
    """An entry's fields from the flat list Redis sends (`h`, header, `b`, body in the usual case)."""
    if not flat:
        return None
    if isinstance(flat, Mapping):
        return flat
    if len(flat) == 4:
        return {flat[0]: flat[1], flat[2]: flat[3]}
    return dict(zip(flat[::2], flat[1::2], strict=False))


def _by_stream(resp: Any) -> list[tuple[Any, Any]]:
    """(stream, entries) pairs from an XREADGROUP reply: a list of pairs (RESP2) or a map (RESP3)."""
    if not resp:
        return []
    return list(resp.items()) if isinstance(resp, dict) else resp


def _raw_replies(client: redis.Redis) -> redis.Redis:
    """A view of `client` (same connections) whose XREADGROUP replies are not reshaped into per-entry
    dicts by redis-py: the consumer reads two fields by position, which is cheaper. A cluster client
    is returned as it is (`_as_map` and `_by_stream` read its parsed replies too)."""
    if type(client) is not redis.Redis:
        return client
    view = redis.Redis(connection_pool=client.connection_pool)
    view.set_response_callback("XREADGROUP", lambda response, **_: response)
    return view


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
        self._ack_delete = client.register_script(ACK_DELETE)
        self._reads = _raw_replies(client)
        self._result_prefix = keys.result_prefix(zone)
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
        resp: Any = self._reads.xreadgroup(keys.GROUP, self.name, streams, count=count, block=block)  # type: ignore[arg-type]
        out: list[_Raw] = []
        for stream, entries in _by_stream(resp):
            s = stream.decode() if isinstance(stream, bytes) else str(stream)
            if entries and isinstance(entries[0], list) and entries[0] and isinstance(entries[0][0], tuple):
                entries = entries[0]  # redis-py's parsed RESP3 reply (a cluster client) nests one level more
            out += [_Raw(s, eid, _as_map(fields), 1) for eid, fields in entries]
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
        """Open a read in two passes: every clear header first, then — while Redis answers whether
        any of these jobs already has a result (the replay check, sent between the passes) — every
        body. Bad messages are collected for the dead-letter stream; the rest of the read goes on."""
        received = now_ms()
        rejected: list[Rejected] = []
        vanished: list[_Raw] = []
        heads: list[tuple[_Raw, bytes, bytes, JobHeader]] = []
        for r in raw:
            fields = r.fields
            if not fields:  # deleted while pending (Redis 6.2 returns it with no fields): nothing to run
                vanished.append(r)
                continue
            try:
                if r.deliveries > self.max_deliveries:
                    raise TooManyDeliveries(f"delivered {r.deliveries} times (limit {self.max_deliveries})")
                hb, body = entry_fields(fields)  # raises, naming the fields the entry has, if h or b is missing
                heads.append((r, hb, body, self.sealer.open_header(self.zone, hb)))
            except MessageError as exc:
                rejected.append(self._rejected(r, exc))
        opened: list[Delivery] = []
        if heads:
            prefix = self._result_prefix  # job ids were checked by the header schema
            result_keys = [prefix + h.job_id for _, _, _, h in heads]
            check = send_deferred(self.client, "EVALSHA", self._exists_each.sha, len(result_keys), *result_keys)
            try:
                jobs: list[Job | None] = []
                for r, hb, body, header in heads:
                    try:
                        jobs.append(self.sealer.open_body(header, hb, body))
                    except MessageError as exc:
                        jobs.append(None)
                        rejected.append(self._rejected(r, exc))
                try:
                    had_result: list[int] = check.result()
                except redis.exceptions.NoScriptError:  # a restarted Redis forgot it: load it and ask again
                    had_result = self._exists_each(keys=result_keys)
            finally:
                check.abandon()  # closes the connection only if the reply was never read
            candidates = [
                (Delivery(r.stream, r.entry_id, r.deliveries, received, job), r, bool(had))
                for (r, _, _, _), job, had in zip(heads, jobs, had_result, strict=True)
                if job is not None
            ]
            opened = self._drop_replays(candidates, rejected)
        if rejected:
            position = {(r.stream, r.entry_id): i for i, r in enumerate(raw)}
            rejected.sort(key=lambda x: position[(x.stream, x.entry_id)])  # dead letters in stream order
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

    def _rejected(self, r: _Raw, exc: MessageError) -> Rejected:
        return Rejected(r.stream, r.entry_id, r.fields or {}, exc.reason, exc.detail, r.deliveries, _job_id_of(r))

    def _drop_replays(self, candidates: list[tuple[Delivery, _Raw, bool]], rejected: list[Rejected]) -> list[Delivery]:
        """Jobs whose result already exists are not run again: a replayed message (an old entry added
        again under a new stream id — its header, job id included, is the AEAD's associated data, so it
        still opens) or a duplicate submission. They go to the dead-letter stream as `replayed`; the
        first result stays. (A result lives `result_ttl_s`; a replay after that runs again.)"""
        keep: list[Delivery] = []
        first_of: dict[str, bytes] = {}  # job id → the entry that carries it in this read
        for d, r, exists in candidates:
            twin = first_of.setdefault(d.job.job_id, d.entry_id)
            if not exists and twin == d.entry_id:
                keep.append(d)
                continue
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
            for stream, ids in by_stream.items():
                for i in range(0, len(ids), ACK_CHUNK):
                    self._ack_delete(keys=[stream], args=[keys.GROUP, *ids[i : i + ACK_CHUNK]])

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
