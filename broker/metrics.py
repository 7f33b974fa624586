"""Queue metrics read from Redis: what an SRE watches, per zone and lane, as data and as Prometheus text.

`QueueMetrics.sample()` reads every zone it was given and returns a `Snapshot`; it never raises for
Redis trouble (closed port, a server that is not Redis, refused commands) — the snapshot then says
`redis_up=False` with the reason, and the next sample tries again. `QueueMetrics` is also a
Prometheus collector: `exposition()` renders the latest sample (`hybrid_redis_up 0` when Redis is
gone, never a failed scrape).

Per lane (stream `hyb:{<zone>}:jobs:<lane>`, group `workers`):

- backlog = XLEN (acknowledged entries are deleted, so this is waiting + pending), pending from
  XPENDING, lag = XLEN - pending (Redis 6.2 has no `lag` in XINFO GROUPS; 7's may be null);
- oldest ages come from entry ids (their milliseconds are the Redis server's clock at XADD) against
  the server's TIME: the oldest entry, the oldest never delivered (after the group's
  last-delivered-id), the oldest pending (XPENDING's smallest id);
- consumers of the group, and those active (XINFO CONSUMERS idle under `active_idle_s`);
- throughput: `added` and `removed` entries. On Redis ≥ 7 `added` is XINFO STREAM's entries-added
  (exact, counted by Redis since the stream was created) and removed = added - XLEN. Redis 6.2 has
  no such counter: the collector keeps a running count of entries newer than the last
  last-generated-id it saw (entries present at its first sample count as added), so an entry added
  *and* removed between two samples is missed by both counts; they stay consistent: added - removed
  = XLEN, as on Redis 7. `exact_counts` says which one a sample used.

Per zone: the dead-letter stream's size and, among its newest `dlq_window` entries, counts per
reason code (a code only — anything that is not shaped like one is reported as `other`); spend,
budgets and breaker state of every scope (`broker.ledger.CostBreaker.status`); the fleet: edge devices
whose heartbeat key (`keys.edge_device`, with a TTL) exists — counted with SCAN, at most every
`fleet_scan_s` — and GPU workers whose heartbeat (`keys.worker_heartbeats`) is fresh.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker import breaker, keys
from broker.breaker import STATE_VALUE, State
from broker.errors import ConfigError
from broker.ledger import WINDOWS, CostBreaker, Ledger

_REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")

# One call per lane, returning ids and numbers only (no entry bodies cross the network):
# {XLEN, last-generated-id, entries-added or -1, first id, first undelivered id, new entries, last new id}
# KEYS[1] stream; ARGV: last-delivered-id of the group ('' = no group), previous last id ('' = none), page size
_LANE_SCRIPT = """
local s = KEYS[1]
if redis.call('EXISTS', s) == 0 then return {0, '', -1, '', '', 0, ''} end
local len = redis.call('XLEN', s)
local info = redis.call('XINFO', 'STREAM', s)
local last, added = '', -1
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
  if info[i] == 'entries-added' then added = info[i + 1] end
end
local first, undelivered = '', ''
local r = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
if #r > 0 then first = r[1][1] end
if ARGV[1] ~= '' then
  r = redis.call('XRANGE', s, '(' .. ARGV[1], '+', 'COUNT', 1)
  if #r > 0 then undelivered = r[1][1] end
else
  undelivered = first
end
local n, newest = 0, ''
if added == -1 and ARGV[2] ~= '' then
  r = redis.call('XRANGE', s, '(' .. ARGV[2], '+', 'COUNT', tonumber(ARGV[3]))
  n = #r
  if n > 0 then newest = r[n][1] end
end
return {len, last, added, first, undelivered, n, newest}
"""
_PAGE = 5000


def _ms_of(entry_id: str | bytes | None) -> int | None:
    if not entry_id:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    try:
        return int(text.split("-")[0])
    except ValueError:
        return None


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _int(v: Any) -> int:
    """A number field of a dead letter; 0 if missing or not a number (the DLQ is only as clean as its writers)."""
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def _age_s(now_ms: int, entry_id: str | bytes | None) -> float:
    ms = _ms_of(entry_id)
    return 0.0 if ms is None else max(now_ms - ms, 0) / 1000


def reason_label(reason: str) -> str:
    """A dead-letter reason as a label value: the code if it looks like one, else `other`."""
    return reason if _REASON_RE.match(reason) else "other"


@dataclass(frozen=True)
class LaneStats:
    zone: str
    lane: str
    backlog: int  # XLEN: waiting + pending
    pending: int  # delivered, not acknowledged (XPENDING)
    lag: int  # never delivered: backlog - pending
    consumers: int
    consumers_active: int  # idle under the active window
    oldest_age_s: float  # oldest entry in the stream (0 when empty)
    oldest_waiting_age_s: float  # oldest never delivered
    oldest_pending_age_s: float  # oldest delivered, unacknowledged
    added_total: int
    removed_total: int


@dataclass(frozen=True)
class DeadLetterStats:
    zone: str
    entries: int
    window: int  # how many of the newest entries `reasons` counts
    reasons: dict[str, int]  # reason code → count among the newest `window`
    last_failed_ms: dict[str, int]  # reason code → when its newest dead letter failed
    newest: list[dict[str, Any]]  # up to 10 newest: reason, failed_ms, lane, deliveries (no ids, no content)


@dataclass(frozen=True)
class ScopeBudget:
    zone: str
    scope: str
    state: str  # closed, half_open, open
    forced: bool
    spend_usd: dict[str, float]  # by window
    budget_usd: dict[str, float]  # by window, where a budget is set


@dataclass(frozen=True)
class FleetStats:
    zone: str
    devices_online: int | None  # edge devices whose heartbeat key has not expired (None: no device keys in this layout)
    workers: int  # GPU workers whose heartbeat is fresher than the active window
    workers_ready: int  # of those, ready and not draining
    workers_in_flight: int  # jobs those workers hold


@dataclass(frozen=True)
class TenantStats:
    zone: str
    tenant: str
    in_flight: int  # admitted, unfinished jobs whose lease has not expired (admission's in-flight set)


@dataclass
class Snapshot:
    taken_ms: int
    redis_up: bool
    error: str = ""
    redis_version: str = ""
    exact_counts: bool = False
    zones: list[str] = field(default_factory=list)
    lanes: list[LaneStats] = field(default_factory=list)
    dlq: list[DeadLetterStats] = field(default_factory=list)
    budgets: list[ScopeBudget] = field(default_factory=list)
    fleet: list[FleetStats] = field(default_factory=list)
    tenants: list[TenantStats] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # plain warnings (e.g. a zone with no streams at all)
    scrape_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_redis_error(url: str, exc: BaseException) -> str:
    """One plain sentence about why Redis could not be read."""
    where = redacted(url)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, redis.exceptions.InvalidResponse):
        return f"the server at {where} does not speak the Redis protocol (is it Redis?): {text}"
    if isinstance(exc, redis.AuthenticationError):
        return f"Redis at {where} refused our credentials: {text}"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        low = text.lower()
        if "protocol" in low or "invalid" in low or "reply" in low:
            return f"the server at {where} does not speak the Redis protocol (is it Redis?): {text}"
        return f"Redis at {where} is not reachable: {text}"
    if isinstance(exc, redis.ResponseError):
        return f"Redis at {where} refused a read (wrong server, or an ACL without stream reads?): {text}"
    return f"reading Redis at {where} failed: {type(exc).__name__}: {text}"


def redacted(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def connect_for_metrics(url: str, timeout_s: float = 3.0) -> redis.Redis:
    """A client with short timeouts: a hung or foreign server must not stall a scrape for long."""
    try:
        return redis.Redis.from_url(
            url, decode_responses=False, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redacted(url)!r}: {exc}") from None


def _device_pattern(zone: str) -> str | None:
    """SCAN pattern of a zone's edge device heartbeat keys, if `broker.keys` defines them."""
    fn = getattr(keys, "edge_device", None)
    if not callable(fn):
        return None
    key = fn(zone, "x")
    return key[:-1] + "*" if isinstance(key, str) and key.endswith(":x") else None


def _json(raw: Any) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


class QueueMetrics(Collector):
    """Samples queue figures of `zones` from Redis and exposes them (a prometheus_client collector)."""

    def __init__(
        self,
        url: str,
        zones: Sequence[str],
        *,
        active_idle_s: float = 60.0,
        fleet_scan_s: float = 30.0,
        dlq_window: int = 1000,
        client: redis.Redis | None = None,
    ) -> None:
        if not zones:
            raise ConfigError("give at least one zone to watch")
        self.url = url
        self.zones = [keys.check_zone(z) for z in zones]
        self.active_idle_ms = int(active_idle_s * 1000)
        self.fleet_scan_s = fleet_scan_s
        self._devices: dict[str, tuple[float, int]] = {}
        self._inflight_keys: dict[str, tuple[float, list[str]]] = {}
        self.dlq_window = dlq_window
        self.client = client if client is not None else connect_for_metrics(url)
        self._lane_script = self.client.register_script(_LANE_SCRIPT)
        self._lock = threading.Lock()
        self._last_id: dict[str, str] = {}  # Redis 6.2 running counts: newest id seen per stream
        self._counts: dict[str, list[int]] = {}  # stream → [added, removed] (6.2)
        self._prev_len: dict[str, int] = {}
        self._failures = 0
        self._scripts = True  # cleared when the ACL refuses EVAL/EVALSHA
        self._server_time = True  # cleared when the ACL refuses TIME
        self.latest: Snapshot = Snapshot(taken_ms=0, redis_up=False, error="not sampled yet", zones=self.zones)

    # -- sampling ---------------------------------------------------------------------------------

    def sample(self) -> Snapshot:
        """Read everything once; on any Redis failure return a snapshot saying so (never raises for it)."""
        started = time.monotonic()
        with self._lock:
            try:
                snap = self._read()
            except (redis.RedisError, OSError) as exc:
                self._failures += 1
                self.client.connection_pool.disconnect()
                snap = Snapshot(
                    taken_ms=time.time_ns() // 1_000_000,
                    redis_up=False,
                    error=describe_redis_error(self.url, exc),
                    zones=self.zones,
                )
            snap.scrape_s = time.monotonic() - started
            self.latest = snap
            return snap

    @property
    def failures(self) -> int:
        return self._failures

    def _now(self) -> int:
        """Redis server time in ms (entry ids carry its clock); the local clock where TIME is not allowed."""
        if self._server_time:
            try:
                sec, usec = self.client.time()
                return int(sec) * 1000 + int(usec) // 1000
            except redis.exceptions.NoPermissionError:
                self._server_time = False
        return time.time_ns() // 1_000_000

    def _read(self) -> Snapshot:
        c = self.client
        info: Any = c.info("server")
        version = _s(info.get("redis_version", "")) if isinstance(info, dict) else ""
        now = self._now()
        snap = Snapshot(taken_ms=now, redis_up=True, redis_version=version, zones=self.zones)
        exact = True
        for zone in self.zones:
            for lane in keys.LANES_BY_PRIORITY:
                stats, lane_exact = self._lane(zone, lane.value, now)
                exact = exact and lane_exact
                snap.lanes.append(stats)
            snap.dlq.append(self._dlq(zone))
            snap.budgets += self._budgets(zone, now)
            snap.fleet += self._fleet(zone, now)
            snap.tenants += self._tenants(zone, now)
            streams = [keys.jobs_stream(zone, lane) for lane in keys.LANES_BY_PRIORITY] + [keys.dlq_stream(zone)]
            if not c.exists(*streams):
                snap.notes.append(
                    f"zone {zone!r} has no job streams in this Redis (db {self._db()}): a wrong zone, or a Redis "
                    "this stack does not use? (they appear with the first job or worker)"
                )
        snap.exact_counts = exact
        return snap

    def _db(self) -> int:
        return int(self.client.connection_pool.connection_kwargs.get("db", 0))

    def _lane(self, zone: str, lane: str, now: int) -> tuple[LaneStats, bool]:
        c = self.client
        stream = keys.jobs_stream(zone, lane)
        pending = consumers = active = 0
        last_delivered = ""
        oldest_pending: Any = None
        groups: Any = []
        try:
            groups = c.xinfo_groups(stream)
        except redis.ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
        group = next((g for g in groups if _s(g.get("name")) == keys.GROUP), None)
        if group is not None:
            last_delivered = _s(group.get("last-delivered-id", ""))
            consumers = int(group.get("consumers", 0))
            summary: Any = c.xpending(stream, keys.GROUP)
            pending = int(summary.get("pending", 0))
            oldest_pending = summary.get("min") if pending else None
            if consumers:
                rows: Any = c.xinfo_consumers(stream, keys.GROUP)
                active = sum(1 for row in rows if int(row.get("idle", 0)) < self.active_idle_ms)
        prev = self._last_id.get(stream, "")
        delivered_arg = last_delivered if group else ""
        length, last_gen, added, first, undelivered, new = self._stream_ids(stream, delivered_arg, prev)
        exact = added >= 0 or (length == 0 and not last_gen)
        if added >= 0:
            added_total, removed_total = added, max(added - length, 0)
        else:
            counts = self._counts.get(stream)
            if counts is None:  # first sight: what is there counts as added, so added - removed = backlog
                counts = self._counts[stream] = [length, 0]
            elif prev:
                counts[0] += new
                counts[1] += max(self._prev_len.get(stream, 0) + new - length, 0)
            added_total, removed_total = counts
        # a stream not there yet: once it appears, every entry in it is new
        self._last_id[stream] = last_gen or "0-0"
        self._prev_len[stream] = length
        return (
            LaneStats(
                zone=zone,
                lane=lane,
                backlog=length,
                pending=pending,
                lag=max(length - pending, 0),
                consumers=consumers,
                consumers_active=active,
                oldest_age_s=_age_s(now, first),
                oldest_waiting_age_s=_age_s(now, undelivered),
                oldest_pending_age_s=_age_s(now, oldest_pending),
                added_total=added_total,
                removed_total=removed_total,
            ),
            exact,
        )

    def _stream_ids(self, stream: str, last_delivered: str, prev: str) -> tuple[int, str, int, str, str, int]:
        """(XLEN, last-generated-id, entries-added or -1, first id, first undelivered id, entries after `prev`).

        One Lua call returning ids only; where scripts are not allowed (a read-only ACL user such as
        the deployment's `exporter`), plain reads that fetch a few entries (and, on 6.2, the new ones)."""
        if self._scripts:
            try:
                res: Any = self._lane_script(keys=[stream], args=[last_delivered, prev, _PAGE])
            except redis.exceptions.NoPermissionError:
                self._scripts = False
            else:
                new, newest = int(res[5]), _s(res[6])
                while new and new % _PAGE == 0 and newest:  # a full page: read on (6.2 only)
                    more: Any = self._lane_script(keys=[stream], args=[last_delivered, newest, _PAGE])
                    if not int(more[5]):
                        break
                    new += int(more[5])
                    newest = _s(more[6])
                return int(res[0]), _s(res[1]), int(res[2]), _s(res[3]), _s(res[4]), new
        c = self.client
        if not c.exists(stream):
            return 0, "", -1, "", "", 0
        info: Any = c.xinfo_stream(stream)
        length, last_gen = int(info.get("length", 0)), _s(info.get("last-generated-id", ""))
        added = int(info["entries-added"]) if info.get("entries-added") is not None else -1
        head: Any = c.xrange(stream, count=1)
        first = _s(head[0][0]) if head else ""
        undelivered = first
        if last_delivered:
            after: Any = c.xrange(stream, min="(" + last_delivered, count=1)
            undelivered = _s(after[0][0]) if after else ""
        new = 0
        if added < 0 and prev:
            cursor = prev
            while True:
                page: Any = c.xrange(stream, min="(" + cursor, count=_PAGE)
                new += len(page)
                if len(page) < _PAGE:
                    break
                cursor = _s(page[-1][0])
        return length, last_gen, added, first, undelivered, new

    def _dlq(self, zone: str) -> DeadLetterStats:
        c = self.client
        stream = keys.dlq_stream(zone)
        pipe = c.pipeline(transaction=False)
        pipe.xlen(stream)
        pipe.xrevrange(stream, count=self.dlq_window)
        size, rows = pipe.execute()
        reasons: dict[str, int] = {}
        last: dict[str, int] = {}
        newest: list[dict[str, Any]] = []
        for _eid, f in rows:
            reason = reason_label(_s(f.get(b"reason", b"")))
            reasons[reason] = reasons.get(reason, 0) + 1
            last.setdefault(reason, _int(f.get(b"failed_ms")))
            if len(newest) < 10:
                source = _s(f.get(b"source", b""))
                lane = source.rsplit(":", 1)[-1] if source.startswith(keys.zone_prefix(zone)) else ""
                newest.append(
                    {
                        "reason": reason,
                        "failed_ms": _int(f.get(b"failed_ms")),
                        "lane": lane if lane in {ln.value for ln in keys.LANES_BY_PRIORITY} else "",
                        "deliveries": _int(f.get(b"deliveries")),
                    }
                )
        return DeadLetterStats(zone, int(size), self.dlq_window, reasons, last, newest)

    def _budgets(self, zone: str, now: int) -> list[ScopeBudget]:
        """Spend, budgets and breaker state of every scope, read only (`CostBreaker.status` also prunes)."""
        c = self.client
        cost = CostBreaker(Ledger(c, zone, clock=lambda: now), clock=lambda: now)
        budgets = cost.ledger.budgets()
        fields: Any = c.hkeys(keys.breaker_state(zone))
        known = {_s(f) for f in fields if not _s(f).startswith("alert|")}
        scopes = sorted({scope for scope, _ in budgets} | known | {"global"})
        out: list[ScopeBudget] = []
        for scope, st in cost.states(scopes).items():
            buckets: Any = c.hgetall(keys.spend(zone, scope))
            spend = dict.fromkeys(WINDOWS, 0.0)
            for minute, micro in buckets.items():
                age = now // 60_000 - int(minute)
                for window, minutes in WINDOWS.items():
                    if age < minutes:  # as `Ledger.spend` (a bucket a little ahead: clock skew)
                        spend[window] += int(micro) / 1_000_000
            out.append(
                ScopeBudget(
                    zone=zone,
                    scope=scope,
                    state=breaker.effective(st, now).value,
                    forced=st.forced is not None,
                    spend_usd=spend,
                    budget_usd={w: usd for (sc, w), usd in budgets.items() if sc == scope},
                )
            )
        return out

    def _tenants(self, zone: str, now: int) -> list[TenantStats]:
        """In-flight jobs per tenant from admission's sets (found with SCAN, at most every `fleet_scan_s`)."""
        prefix = f"{keys.zone_prefix(zone)}:inflight:"
        cached = self._inflight_keys.get(zone)
        if cached is None or time.monotonic() - cached[0] >= self.fleet_scan_s:
            found = sorted({_s(k) for k in self.client.scan_iter(match=prefix + "*", count=1000)})
            cached = (time.monotonic(), found)
            self._inflight_keys[zone] = cached
        out: list[TenantStats] = []
        for key in cached[1]:
            tenant = key[len(prefix) :]
            if not _TENANT_RE.match(tenant):
                continue  # not a name we would put in a label
            out.append(TenantStats(zone, tenant, int(self.client.zcount(key, f"({now}", "+inf"))))
        return out

    def _fleet(self, zone: str, now: int) -> list[FleetStats]:
        c = self.client
        devices: int | None = None
        pattern = _device_pattern(zone)
        if pattern is not None:
            cached = self._devices.get(zone)
            if cached is not None and time.monotonic() - cached[0] < self.fleet_scan_s:
                devices = cached[1]
            else:  # a SCAN walks the whole keyspace: not on every sample
                devices = sum(1 for _ in c.scan_iter(match=pattern, count=1000))
                self._devices[zone] = (time.monotonic(), devices)
        workers = ready = in_flight = 0
        hb = getattr(keys, "worker_heartbeats", None)
        if callable(hb):
            beats: Any = c.hgetall(hb(zone))
            for raw in beats.values():
                doc = _json(raw)
                ts = doc.get("ts_ms")
                if not isinstance(ts, int | float) or now - ts > self.active_idle_ms:
                    continue
                workers += 1
                ready += 1 if doc.get("ready") is True else 0
                n = doc.get("in_flight")
                in_flight += n if isinstance(n, int) and n >= 0 else 0
        return [FleetStats(zone, devices, workers, ready, in_flight)]

    # -- exposition -------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        yield from families(self.latest, self._failures)

    def exposition(self, refresh: bool = True) -> bytes:
        """Prometheus text format of a fresh sample (or of the latest with `refresh=False`)."""
        if refresh:
            self.sample()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)


def families(snap: Snapshot, failures: int = 0) -> Iterable[Metric]:
    """The metric families of one snapshot (used by the collector; exposed for tests and other servers)."""
    up = GaugeMetricFamily("hybrid_redis_up", "1 if the last sample could read Redis, else 0.")
    up.add_metric([], 1.0 if snap.redis_up else 0.0)
    yield up
    errors = CounterMetricFamily("hybrid_exporter_redis_errors", "Samples that could not read Redis.")
    errors.add_metric([], failures)
    yield errors
    took = GaugeMetricFamily("hybrid_exporter_sample_duration_seconds", "Time the last sample took.")
    took.add_metric([], snap.scrape_s)
    yield took
    if not snap.redis_up:
        return
    exact = GaugeMetricFamily(
        "hybrid_queue_counts_exact",
        "1 when throughput counters come from Redis (>= 7, entries-added), 0 for the exporter's running count (6.2).",
    )
    exact.add_metric([], 1.0 if snap.exact_counts else 0.0)
    yield exact

    lane_labels = ["zone", "lane"]
    gauges = {
        "backlog": ("hybrid_queue_backlog", "Entries in the lane's stream: waiting plus pending (XLEN)."),
        "pending": ("hybrid_queue_pending", "Delivered to a worker, not yet acknowledged (XPENDING)."),
        "lag": ("hybrid_queue_lag", "Never delivered to any consumer of the group: backlog minus pending."),
        "consumers": ("hybrid_queue_consumers", "Consumers known to the lane's group."),
        "consumers_active": ("hybrid_queue_consumers_active", "Consumers that read within the active window."),
        "oldest_age_s": ("hybrid_queue_oldest_age_seconds", "Age of the oldest entry (waiting or pending)."),
        "oldest_waiting_age_s": (
            "hybrid_queue_oldest_waiting_age_seconds",
            "Age of the oldest entry never delivered.",
        ),
        "oldest_pending_age_s": (
            "hybrid_queue_oldest_pending_age_seconds",
            "Age of the oldest delivered, unacknowledged entry.",
        ),
    }
    for attr, (name, doc) in gauges.items():
        fam = GaugeMetricFamily(name, doc, labels=lane_labels)
        for ln in snap.lanes:
            fam.add_metric([ln.zone, ln.lane], float(getattr(ln, attr)))
        yield fam
    added = CounterMetricFamily("hybrid_queue_entries_added", "Jobs appended to the lane.", labels=lane_labels)
    removed = CounterMetricFamily(
        "hybrid_queue_entries_removed",
        "Jobs that left the lane: completed, dead-lettered or dropped (added minus backlog).",
        labels=lane_labels,
    )
    for ln in snap.lanes:
        added.add_metric([ln.zone, ln.lane], ln.added_total)
        removed.add_metric([ln.zone, ln.lane], ln.removed_total)
    yield added
    yield removed

    dlq = GaugeMetricFamily("hybrid_dlq_entries", "Entries in the zone's dead-letter stream.", labels=["zone"])
    by_reason = GaugeMetricFamily(
        "hybrid_dlq_recent_entries",
        "Dead letters by reason code among the newest (window) entries.",
        labels=["zone", "reason"],
    )
    newest = GaugeMetricFamily(
        "hybrid_dlq_last_failure_timestamp_seconds",
        "When the newest dead letter of each reason failed (Unix time).",
        labels=["zone", "reason"],
    )
    for d in snap.dlq:
        dlq.add_metric([d.zone], d.entries)
        for reason, n in sorted(d.reasons.items()):
            by_reason.add_metric([d.zone, reason], n)
        for reason, ms in sorted(d.last_failed_ms.items()):
            newest.add_metric([d.zone, reason], ms / 1000)
    yield dlq
    yield by_reason
    yield newest

    state = GaugeMetricFamily(
        "hybrid_breaker_state", "Cost breaker state: 0 closed, 1 half-open, 2 open.", labels=["zone", "scope"]
    )
    forced = GaugeMetricFamily("hybrid_breaker_forced", "1 if an operator holds the breaker.", labels=["zone", "scope"])
    spend = GaugeMetricFamily(
        "hybrid_budget_spend_usd", "Spend in the rolling window, USD.", labels=["zone", "scope", "window"]
    )
    limit = GaugeMetricFamily(
        "hybrid_budget_limit_usd", "Budget of the rolling window, USD.", labels=["zone", "scope", "window"]
    )
    used = GaugeMetricFamily("hybrid_budget_used_ratio", "Spend divided by budget.", labels=["zone", "scope", "window"])
    for b in snap.budgets:
        state.add_metric([b.zone, b.scope], STATE_VALUE[State(b.state)])
        forced.add_metric([b.zone, b.scope], 1.0 if b.forced else 0.0)
        for window, usd in sorted(b.spend_usd.items()):
            spend.add_metric([b.zone, b.scope, window], usd)
        for window, usd in sorted(b.budget_usd.items()):
            limit.add_metric([b.zone, b.scope, window], usd)
            used.add_metric([b.zone, b.scope, window], b.spend_usd.get(window, 0.0) / usd)
    yield from (state, forced, spend, limit, used)

    devices = GaugeMetricFamily(
        "hybrid_edge_devices_online", "Edge devices whose heartbeat key has not expired.", labels=["zone"]
    )
    workers = GaugeMetricFamily(
        "hybrid_workers_alive", "GPU workers with a heartbeat within the active window.", labels=["zone"]
    )
    ready = GaugeMetricFamily(
        "hybrid_workers_ready", "Live GPU workers that are ready and not draining.", labels=["zone"]
    )
    held = GaugeMetricFamily("hybrid_workers_in_flight_jobs", "Jobs the live GPU workers hold.", labels=["zone"])
    for f in snap.fleet:
        if f.devices_online is not None:
            devices.add_metric([f.zone], f.devices_online)
        workers.add_metric([f.zone], f.workers)
        ready.add_metric([f.zone], f.workers_ready)
        held.add_metric([f.zone], f.workers_in_flight)
    yield from (devices, workers, ready, held)
    tenants = GaugeMetricFamily(
        "hybrid_tenant_in_flight_jobs",
        "A tenant's admitted, unfinished jobs (admission's in-flight set, unexpired leases).",
        labels=["zone", "tenant"],
    )
    for t in snap.tenants:
        tenants.add_metric([t.zone, t.tenant], t.in_flight)
    yield tenants


__all__ = [
    "DeadLetterStats",
    "FleetStats",
    "LaneStats",
    "QueueMetrics",
    "ScopeBudget",
    "Snapshot",
    "TenantStats",
    "connect_for_metrics",
    "describe_redis_error",
    "families",
    "reason_label",
    "redacted",
]
