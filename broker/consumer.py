"""Consumer: read a zone's lanes with the `workers` group, open jobs, store results, acknowledge.

Delivery is at-least-once:

    XREADGROUP (interactive first, then batch) → open → run → store result (SET NX) → XACK + XDEL

with the last two steps in one Lua script per batch (`scripts.COMPLETE`), which also takes each job
out of its tenant's in-flight set (`broker.admission`) and drops its claim (below). Entries idle longer than
`min_idle_ms` in another consumer's pending list (a crashed or preempted worker) are taken over
with XAUTOCLAIM; their delivery count comes from XPENDING. A message delivered more than
`max_deliveries` times, or one that cannot be opened, decoded or validated, is moved to the
dead-letter stream with its reason — the rest of the read goes on. So is a job whose result already
exists (`replayed`: an old message added again, or a duplicate submission): it is not run twice.

Nor is a job id run by two entries at once (a producer that resubmits a job while the first copy
is still running): the replay check of each read (`scripts.CLAIM_EACH`, one round trip, answered
while the bodies are decrypted) also *claims* each job id for its entry. A copy whose job id is
claimed by an entry that is still pending is held back — left pending, to be looked at again when
it is reclaimed — and `COMPLETE` drops the claim once the result is stored. A claim needs no
release on a crash: the crashed worker's entry keeps it and takes it again when it is reclaimed, and
a claim whose entry is no longer pending (acknowledged, dead-lettered) is taken over at once.

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
from broker.connection import MAX_BLOCK_MS, Deferred, SentScript, ensure_group, redis_errors, run_script, send_deferred
from broker.dead_letter import DeadLetters, Rejected
from broker.errors import DeadlinePassed, MessageError, ReplayedMessage, TooManyDeliveries
from broker.message import BODY_FIELD, HEADER_FIELD, Job, Sealer, entry_fields, now_ms
from broker.schema import JobHeader
from broker.scripts import ACK_CHUNK, ACK_DELETE, CLAIM_EACH, COMPLETE

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
    held_back: int = 0  # copies of a job id another entry was running: left pending, looked at again later
    dead_lettered: Counter[str] = field(default_factory=Counter)


class _Chunk(NamedTuple):
    """The entries of one stream as a read returned them (`[entry_id, fields]` pairs), with the
    delivery count of each reclaimed entry (`None` for a fresh read: every entry is on its first)."""

    stream: str
    entries: Sequence[Any]
    deliveries: Mapping[bytes, int] | None = None


_Head = tuple[str, bytes, int, Any, bytes, bytes, JobHeader]
"""One entry whose clear header was checked: stream, entry id, deliveries, its fields as read, h, b, header."""


def _as_map(flat: Sequence[bytes] | Mapping[bytes, bytes] | None) -> Mapping[bytes, bytes]:
    """An entry's fields from the flat list Redis sends (`h`, header, `b`, body in the usual case)."""
    if not flat:
        return {}
    if isinstance(flat, Mapping):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=False))


def _header_and_body(flat: Sequence[bytes] | Mapping[bytes, bytes]) -> tuple[bytes, bytes]:
    """An entry's `h` and `b`; the usual flat `[h, header, b, body]` is read by position."""
    if type(flat) is list and len(flat) == 4 and flat[0] == HEADER_FIELD and flat[2] == BODY_FIELD:
        return flat[1], flat[3]
    return entry_fields(_as_map(flat))  # raises, naming the fields the entry has, if h or b is missing


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
        claim_ms: int | None = None,
        read_ahead: bool = True,
        read_ahead_max_age_ms: int = 20,
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
        # the longest a job id's claim lives (acknowledging its entry drops it; an entry that is no
        # longer pending loses it to the next copy): by default as long as a held-back copy may wait
        # before it is dead-lettered (min_idle_ms * max_deliveries) plus one min_idle_ms, at least 1 min
        if claim_ms is not None and claim_ms <= 0:
            raise ValueError(f"claim_ms must be positive, got {claim_ms}")
        self.claim_ms = claim_ms or max(min_idle_ms * (max_deliveries + 1), 60_000)
        self.reclaim_interval_s = (
            reclaim_interval_s if reclaim_interval_s is not None else min(min_idle_ms / 2000, 30.0)
        )
        self.dead_letters = DeadLetters(client, zone)
        self.stats = ConsumerStats()
        self._complete = client.register_script(COMPLETE)
        self._claim_each = client.register_script(CLAIM_EACH)
        self._ack_delete = client.register_script(ACK_DELETE)
        self._reads = _raw_replies(client)
        self._result_prefix = keys.result_prefix(zone)
        self._claim_prefix = keys.claim_prefix(zone)
        self._all_streams = [keys.jobs_stream(zone, lane) for lane in keys.Lane]  # where a claim's entry may be
        self._token_prefix = {s: s.encode() + b"\n" for s in self._all_streams}  # a claim: stream \n entry id
        self._claim_cursor = dict.fromkeys(self.streams, "0-0")
        self._last_reclaim = float("-inf")
        self._groups_ready = False
        self._upper_lanes_idle = False  # every lane but the last was empty at the last read (see `fetch`)
        # read-ahead (see `fetch`): only on a plain client, whose connections can hold a reply for later
        self.read_ahead = read_ahead and type(client) is redis.Redis
        self.read_ahead_max_age_s = read_ahead_max_age_ms / 1000
        self._ahead: Deferred | None = None  # the next read, sent while this one was opened
        self._ahead_sent = 0.0  # when it was sent (monotonic)
        self._ahead_was_full = False  # the reply of the last read-ahead filled its count (a backlog goes on)
        self._ahead_due = False  # a read-ahead was decided on and is not sent yet
        self._held: list[_Chunk] = []  # entries read ahead and not handed out yet, lanes in priority order
        self._held_since = 0.0  # when the read of the oldest of them was sent (monotonic)
        self._held_read = 0.0  # when the reply of the newest of them came (monotonic)
        self._rank = {stream: i for i, stream in enumerate(self.streams)}
        self._unconfirmed: list[SentScript] = []  # acknowledgements sent with ack(wait=False)
        self._ahead_command = ("XREADGROUP", "GROUP", keys.GROUP, self.name, "COUNT", count, "STREAMS", *self.streams)
        self._ahead_command += (">",) * len(self.streams)

    def ensure_groups(self) -> None:
        with redis_errors():
            for stream in self.streams:
                ensure_group(self.client, stream, keys.GROUP)
        self._groups_ready = True

    # -- reading ----------------------------------------------------------------------------------

    def fetch(self, count: int | None = None, block_ms: int | None = None) -> list[Delivery]:
        """Up to `count` opened jobs: reclaimed jobs first, then new jobs lane by lane in priority order;
        waits up to `block_ms` only when nothing at all is ready. Bad messages are dead-lettered on the way.

        While every lane but the last was empty at the last read, one XREADGROUP reads all lanes (one
        round trip instead of one per lane, which a busy batch lane pays on every fetch); Redis counts
        per lane, so jobs that reached a higher lane meanwhile come first. A busy higher lane is read
        alone again from the next fetch on. A blocking read also covers all lanes at once.

        **Read-ahead.** When such a read of all lanes came back full (a backlog), the next one is sent
        at once and its reply read by the next `fetch`: Redis finds and sends those entries while this
        consumer opens the current ones, instead of between two fetches. What a read brings beyond
        `count` is held for the next fetch. Held entries are served before new ones, but if they are
        older than `read_ahead_max_age_ms` the higher lanes are read first (a job that reached the
        interactive lane meanwhile is not queued behind them). Entries held for `min_idle_ms / 2` or
        more are checked before they are served: one another consumer took over is dropped here.
        `release()` gives held entries back when a consumer stops.

        Acknowledgements sent with `ack(wait=False)` are confirmed here, after the read was opened."""
        if not self._groups_ready:
            self.ensure_groups()
        count = count or self.count
        block_ms = self.block_ms if block_ms is None else block_ms
        with redis_errors():
            chunks = self._reclaim(count) if self._reclaim_due() else []
            got = _size(chunks)
            if got < count:
                chunks += self._read_lanes(count - got)
                got = _size(chunks)
            if not got and block_ms > 0:
                self.flush()  # nothing to overlap with: confirm before waiting
                chunks = self._read_new(dict.fromkeys(self.streams, ">"), count, min(block_ms, MAX_BLOCK_MS))
            opened = self._open_all(chunks) if chunks else []
            self._send_ahead()  # if `_open_all` did not (nothing in the read got as far as the check)
            self.flush()  # acknowledgements pipelined by the caller (`ack(wait=False)`), run by now
            return opened

    def release(self) -> int:
        """Give back the entries read ahead and not handed out yet (a consumer that stops). Redis
        Streams cannot undo a delivery, so they stay pending, but as if never delivered: delivery count
        0 and an idle time past any `min_idle_ms`, so the next reclaim of any consumer takes them at
        once, as their first delivery. Returns how many. Pipelined acknowledgements are confirmed first."""
        self.flush()
        with redis_errors():
            held = self._take_held()
            self._ahead_was_full = self._ahead_due = False
            for chunk in held:
                self.client.xclaim(
                    chunk.stream, keys.GROUP, self.name, 0, [e[0] for e in chunk.entries], idle=_RELEASED_IDLE_MS,
                    retrycount=0, justid=True,
                )  # fmt: skip
        return _size(held)

    def _read_lanes(self, count: int) -> list[_Chunk]:
        """Up to `count` new entries, higher lanes first, without blocking: held entries first (see
        `fetch`), then fresh reads; what is beyond `count` is held."""
        started = time.monotonic()
        self._ahead_due = False
        chunks = self._take_held()
        full, self._ahead_was_full = self._ahead_was_full, False  # a full read-ahead: the backlog goes on
        since = self._held_since if chunks else started
        *upper, last = self.streams
        if chunks and upper and (not self._upper_lanes_idle or started - since > self.read_ahead_max_age_s):
            # a higher lane is busy, or the entries were held a while: look there before serving them
            fresh = self._read_new(dict.fromkeys(upper, ">"), count, None)
            self._upper_lanes_idle = not fresh
            chunks += fresh
        got = _size(chunks)
        if got < count:
            if self._upper_lanes_idle:
                new = self._read_new(dict.fromkeys(self.streams, ">"), count - got, None)
                self._upper_lanes_idle = all(c.stream == last for c in new)
                full = _size(new) >= count - got
            else:
                new = self._lane_by_lane(count - got)
                full = False
            chunks += new
        rank = self._rank
        chunks.sort(key=lambda c: rank[c.stream])  # stable: within a lane, older reads first
        taken, held = _split(chunks, count)
        if held:
            self._held, self._held_since, self._held_read = held, min(since, started), time.monotonic()
        elif full and self.read_ahead and self._upper_lanes_idle:
            self._ahead_due = True  # sent once this read's replay check is (`_send_ahead`)
        return taken

    def _send_ahead(self) -> None:
        """Send the read-ahead `_read_lanes` decided on. It goes after the read's replay check, so that
        Redis, which runs one command at a time, answers the check (awaited once the bodies are open)
        before it looks for the next entries (read at the next fetch)."""
        if self._ahead_due:
            self._ahead_due = False
            self._ahead = send_deferred(self.client, *self._ahead_command)
            self._ahead_sent = time.monotonic()

    def _lane_by_lane(self, count: int) -> list[_Chunk]:
        """New entries, one XREADGROUP per lane in priority order until `count` (a higher lane is busy)."""
        *upper, last = self.streams
        chunks: list[_Chunk] = []
        got = 0
        idle = True
        for stream in self.streams:
            if got >= count:
                idle = False  # the higher lanes filled the read: they are busy
                break
            new = self._read_new({stream: ">"}, count - got, None)
            if new and stream != last:
                idle = False
            got += _size(new)
            chunks += new
        self._upper_lanes_idle = idle and bool(upper)
        return chunks

    def _take_held(self) -> list[_Chunk]:
        """The entries read ahead (the reply of the read sent at the last fetch, if any, is read now),
        checked if they were held long; none are held afterwards."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            new = self._chunks(ahead.result())
            self._upper_lanes_idle = all(c.stream == self.streams[-1] for c in new)
            self._ahead_was_full = _size(new) >= self.count
            if new:
                self._held_since = min(self._held_since, self._ahead_sent) if self._held else self._ahead_sent
                self._held_read = time.monotonic()
                self._held += new
        held, self._held = self._held, []
        if held and time.monotonic() - self._held_since >= self.min_idle_ms / 2000:
            held = self._still_ours(held)
        return held

    def _still_ours(self, chunks: list[_Chunk]) -> list[_Chunk]:
        """Entries held since `_held_since` for `min_idle_ms / 2` or more: those no other consumer took
        over meanwhile, claimed afresh (idle time reset, delivery count kept); the rest are dropped.

        Another consumer takes an entry only once it is idle for `min_idle_ms`, so not before
        `_held_since + min_idle_ms`; our read delivered it before now minus the time since we had its reply.
        XCLAIM with that much minimum idle time takes back exactly the entries nobody delivered since.
        Entries held too long to tell the two apart are all dropped: still pending, they are reclaimed."""
        now = time.monotonic()
        if self._held_read - self._held_since >= self.min_idle_ms / 1000:
            return []
        min_idle = int((now - self._held_read) * 1000)
        out = []
        for chunk in chunks:
            ours = set(self.client.xclaim(
                chunk.stream, keys.GROUP, self.name, min_idle, [e[0] for e in chunk.entries], justid=True
            ))  # fmt: skip
            kept = [e for e in chunk.entries if e[0] in ours]
            if kept:
                out.append(_Chunk(chunk.stream, kept))
        return out

    def _reclaim_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_reclaim < self.reclaim_interval_s:
            return False
        self._last_reclaim = now
        return True

    def _read_new(self, streams: dict[str, str], count: int, block: int | None) -> list[_Chunk]:
        resp: Any = self._reads.xreadgroup(keys.GROUP, self.name, streams, count=count, block=block)  # type: ignore[arg-type]
        return self._chunks(resp)

    def _chunks(self, resp: Any) -> list[_Chunk]:
        """The entries of an XREADGROUP reply, stream by stream."""
        out: list[_Chunk] = []
        for stream, entries in _by_stream(resp):
            if not entries:
                continue
            if isinstance(entries[0], list) and entries[0] and isinstance(entries[0][0], tuple):
                entries = entries[0]  # redis-py's parsed RESP3 reply (a cluster client) nests one level more
            out.append(_Chunk(stream.decode() if isinstance(stream, bytes) else str(stream), entries))
            self.stats.read += len(entries)
        return out

    def _reclaim(self, count: int) -> list[_Chunk]:
        out: list[_Chunk] = []
        got = 0
        for stream in self.streams:
            if got >= count:
                break
            resp = self.client.xautoclaim(
                stream, keys.GROUP, self.name, self.min_idle_ms, self._claim_cursor[stream], count=count - got
            )
            cursor, entries = resp[0], resp[1]
            self._claim_cursor[stream] = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            if not entries:
                continue
            out.append(_Chunk(stream, entries, self._delivery_counts(stream, [eid for eid, _ in entries])))
            got += len(entries)
        self.stats.reclaimed += got
        return out

    def _delivery_counts(self, stream: str, ids: list[bytes]) -> dict[bytes, int]:
        rows = self.client.xpending_range(stream, keys.GROUP, ids[0], ids[-1], max(len(ids) * 4, 1000), self.name)
        wanted = set(ids)
        return {r["message_id"]: int(r["times_delivered"]) for r in rows if r["message_id"] in wanted}

    def _open_all(self, chunks: list[_Chunk]) -> list[Delivery]:
        """Open a read in two passes: every clear header first, then — while Redis answers whether
        any of these jobs already has a result or is run by another entry (the replay and claim check,
        sent between the passes) — every body. Bad messages are collected for the dead-letter stream;
        the rest of the read goes on."""
        received = now_ms()
        most = self.max_deliveries
        rejected: list[Rejected] = []
        vanished: list[tuple[str, bytes]] = []
        entries_read: list[tuple[str, bytes, int, Any, bytes, bytes]] = []
        h, b = HEADER_FIELD, BODY_FIELD
        for stream, entries, counts in chunks:
            for entry_id, flat in entries:
                deliveries = counts.get(entry_id, 1) if counts else 1
                if not flat:  # deleted while pending (Redis 6.2 returns it with no fields): nothing to run
                    vanished.append((stream, entry_id))
                    continue
                if deliveries <= most and type(flat) is list and len(flat) == 4 and flat[0] == h and flat[2] == b:
                    entries_read.append((stream, entry_id, deliveries, flat, flat[1], flat[3]))  # the usual entry
                    continue
                try:
                    if deliveries > most:
                        raise TooManyDeliveries(f"delivered {deliveries} times (limit {most})")
                    entries_read.append((stream, entry_id, deliveries, flat, *_header_and_body(flat)))
                except MessageError as exc:
                    rejected.append(_rejected(stream, entry_id, flat, deliveries, exc))
        headers = self.sealer.open_headers(self.zone, [e[4] for e in entries_read])
        heads: list[_Head] = []
        for entry, header in zip(entries_read, headers, strict=True):
            if isinstance(header, MessageError):
                rejected.append(_rejected(entry[0], entry[1], entry[3], entry[2], header))
            else:
                heads.append((*entry, header))
        opened: list[Delivery] = []
        if heads:
            check = self._send_claims(heads)
            self._send_ahead()  # after the check: Redis answers the check, which is awaited first
            try:
                jobs = self.sealer.open_bodies([(h[6], h[4], h[5]) for h in heads])
                for (stream, entry_id, deliveries, flat, *_), job in zip(heads, jobs, strict=True):
                    if isinstance(job, MessageError):
                        rejected.append(_rejected(stream, entry_id, flat, deliveries, job))
                verdicts: list[int] = check.result()
            finally:
                check.abandon()  # closes the connection only if the reply was never read
            opened = self._to_run(heads, jobs, verdicts, received, rejected)
        if rejected:
            position = {key: i for i, key in enumerate((c.stream, e[0]) for c in chunks for e in c.entries)}
            rejected.sort(key=lambda x: position[(x.stream, x.entry_id)])  # dead letters in stream order
            self.dead_letters.move(rejected, self.name)
            for x in rejected:
                self.stats.dead_lettered[x.reason] += 1
                log.warning("dead-lettered %s from %s: %s (%s)", x.entry_id.decode(), x.stream, x.reason, x.detail)
        if vanished:
            pipe = self.client.pipeline(transaction=False)
            for stream, entry_id in vanished:
                pipe.xack(stream, keys.GROUP, entry_id)
            pipe.execute()
        return opened

    def _send_claims(self, heads: list[_Head]) -> SentScript:
        """Send the replay and duplicate check of a read (`scripts.CLAIM_EACH`); its answer is read later."""
        rp, cp = self._result_prefix, self._claim_prefix  # job ids were checked by the header schema
        ids = [h[6].job_id for h in heads]
        script_keys = [*self._all_streams, *[rp + j for j in ids], *[cp + j for j in ids]]
        script_args: list[Any] = [keys.GROUP, self.claim_ms, len(self._all_streams)]
        prefix = self._token_prefix
        script_args += [prefix[h[0]] + h[1] for h in heads]
        return SentScript(self._claim_each, self.client, script_keys, script_args)

    def _to_run(
        self,
        heads: list[_Head],
        jobs: list[Job | MessageError],
        verdicts: list[int],
        received: int,
        rejected: list[Rejected],
    ) -> list[Delivery]:
        """The opened jobs to run, by the verdicts of `scripts.CLAIM_EACH`.

        A job whose result already exists is not run again: a replayed message (an old entry added again
        under a new stream id — its header, job id included, is the AEAD's associated data, so it still
        opens) or a duplicate submission. It goes to the dead-letter stream as `replayed`; the first
        result stays. (A result lives `result_ttl_s`; a replay after that runs again.) So does the second
        of two entries with one job id in the same read. A copy of a job id that another entry is running
        right now is held back: left pending, it is reclaimed after `min_idle_ms` and looked at again —
        by then the job has a result (`replayed`), or its entry is gone without one and the copy runs."""
        keep: list[Delivery] = []
        seen: dict[str, bytes] = {}  # job id → the entry that carries it in this read
        new = tuple.__new__  # Delivery(...) without the named tuple's Python-level __new__: half the cost
        for (stream, entry_id, deliveries, flat, _, _, header), job, verdict in zip(heads, jobs, verdicts, strict=True):
            if isinstance(job, MessageError):
                continue
            twin = seen.setdefault(header.job_id, entry_id)
            if verdict == 0 and twin is entry_id:
                keep.append(new(Delivery, (stream, entry_id, deliveries, received, job)))
                continue
            if verdict == 2 and twin is entry_id:
                self.stats.held_back += 1
                log.info(
                    "held back %s from %s: job %s is being run by another entry", entry_id.decode(), stream, job.job_id
                )
                continue
            why = "already has a result" if verdict == 1 else f"came twice in one read (first as entry {twin.decode()})"
            exc = ReplayedMessage(f"job {job.job_id} {why}; this copy (entry {entry_id.decode()}) was not run")
            rejected.append(Rejected(stream, entry_id, _as_map(flat), exc.reason, exc.detail, deliveries, job.job_id))
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

    def ack(self, deliveries: Sequence[Delivery], *, wait: bool = True) -> None:
        """Acknowledge (and delete) entries without storing a result — for jobs dropped on purpose. Their
        job ids' claims go with them, so a later copy of such a job runs.

        With `wait=False` the acknowledgement is pipelined: sent now, and its reply read by this
        consumer's next `fetch` (after that fetch has opened its read, so Redis executes the one while
        this process works on the other), by `flush()`, or by `release()`. Redis runs it as soon as it
        arrives either way; only the confirmation comes later, and an error in it is raised by the
        call that reads it. A process that dies first loses nothing but the confirmation: an entry
        whose acknowledgement did not land is redelivered (at-least-once), as after a crash just
        before `ack`. A loop of `fetch` + `ack(wait=False)` ends with `flush()` (or `release()`)."""
        if not deliveries:
            return
        cp = self._claim_prefix
        by_stream: dict[str, tuple[list[str], list[bytes]]] = {}  # stream → claim keys, entry ids
        for d in deliveries:
            claims, ids = by_stream.get(d.stream) or by_stream.setdefault(d.stream, ([], []))
            claims.append(cp + d.job.header.job_id)
            ids.append(d.entry_id)
        sent: list[SentScript] = []
        with redis_errors():
            try:
                for stream, (claims, ids) in by_stream.items():
                    for i in range(0, len(ids), ACK_CHUNK):
                        script_keys = [stream, *claims[i : i + ACK_CHUNK]]
                        script_args = [keys.GROUP, *ids[i : i + ACK_CHUNK]]
                        sent.append(SentScript(self._ack_delete, self.client, script_keys, script_args))
            finally:
                if wait:
                    self._confirm(sent)
                else:
                    self._unconfirmed += sent

    def flush(self) -> None:
        """Read the replies of the acknowledgements sent with `ack(wait=False)`; raises the first error."""
        with redis_errors():
            taken: list[SentScript] = []
            while self._unconfirmed:
                taken.append(self._unconfirmed.pop(0))  # one reader per reply, whichever thread flushes
            self._confirm(taken)

    @staticmethod
    def _confirm(sent: list[SentScript]) -> None:
        """Read each reply (`SentScript` runs a script Redis forgot again); the first error is raised
        once every reply was read or abandoned."""
        error: BaseException | None = None
        for item in sent:
            try:
                if error is None:
                    item.result()
            except BaseException as exc:  # re-raised below, once the rest were read
                error = exc
            finally:
                item.abandon()  # closes the connection only if the reply was never read
        if error is not None:
            raise error

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
            script_keys += [
                rkey,
                delivery.stream,
                reply,
                keys.inflight_set(self.zone, h.tenant),
                self._claim_prefix + h.job_id,
            ]
            args += [delivery.entry_id, stored, h.job_id, 1 if h.reply_to else 0]
        with redis_errors():
            created = int(run_script(self._complete, self.client, script_keys, args))
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
        try:
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
        finally:
            self.release_quietly()
        return self.stats

    def release_quietly(self) -> None:
        """`release`, logging instead of raising when Redis is not reachable (for shutdown paths)."""
        try:
            self.release()
        except Exception as exc:
            log.warning("could not give back the entries read ahead (reclaimed after min_idle_ms instead): %s", exc)


_RELEASED_IDLE_MS = 86_400_000  # what `release` sets an entry's idle time to: past any sensible min_idle_ms


def _size(chunks: Sequence[_Chunk]) -> int:
    return sum(len(c.entries) for c in chunks)


def _split(chunks: Sequence[_Chunk], count: int) -> tuple[list[_Chunk], list[_Chunk]]:
    """The first `count` entries of `chunks`, and the rest (fresh reads only: no delivery counts)."""
    taken: list[_Chunk] = []
    rest: list[_Chunk] = []
    room = count
    for chunk in chunks:
        n = len(chunk.entries)
        if n <= room:
            taken.append(chunk)
        elif room > 0:
            taken.append(_Chunk(chunk.stream, chunk.entries[:room], chunk.deliveries))
            rest.append(_Chunk(chunk.stream, chunk.entries[room:], chunk.deliveries))
        else:
            rest.append(chunk)
        room -= min(n, room)
    return taken, rest


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _rejected(
    stream: str, entry_id: bytes, flat: Sequence[bytes] | Mapping[bytes, bytes], deliveries: int, exc: MessageError
) -> Rejected:
    fields = _as_map(flat)
    return Rejected(stream, entry_id, fields, exc.reason, exc.detail, deliveries, _job_id_of(fields))


def _job_id_of(fields: Mapping[bytes, bytes]) -> str:
    """The job id from a raw header, if it can be read without trusting anything else."""
    try:
        h = unpack(fields.get(HEADER_FIELD, b""))
        jid = h.get("job_id") if isinstance(h, dict) else None
        return jid if isinstance(jid, str) and len(jid) <= 96 else ""
    except MessageError:
        return ""


__all__ = ["Consumer", "ConsumerStats", "Delivery", "Handler", "Outcome"]
