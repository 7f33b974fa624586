"""Admission: watermarks with hysteresis per lane, a token bucket and an in-flight cap per tenant.

Decided in Redis, in one Lua script per submit batch that also appends the batch (`scripts.ADMIT`):
producers on many machines racing for the same limit can never overshoot it, and a refused batch
leaves nothing behind (no entry appended, no token spent). A refusal raises `Backpressure` (or
`BudgetExceeded` when a budget gate says no) carrying `reason`, `retry_after_s`, the ids of the
batches that did go out and the specs that did not — the caller still holds everything.

What each kind of producer does with a refusal:

- an app backend (`Client`) lets `Backpressure` reach its caller (HTTP 429 with `Retry-After`);
- a nightly batch uses `submit_paced`: it pauses, says so through a callback, and resumes once the
  script admits again — for a watermark, only below the low watermark — never dropping an item;
- the edge agent runs its local fallback model for the refused request.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import redis
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from broker import keys
from broker.connection import redis_errors
from broker.errors import AdmissionRefused, Backpressure
from broker.message import JobSpec
from broker.schema import LaneName
from broker.scripts import ADMIT
from broker.settings import load_model_file

Clock = Callable[[], int]
"""Milliseconds since the epoch. Admission's default is the Redis server's clock."""


class LaneLimits(BaseModel):
    """Backlog watermarks of a lane: pause at `high`, resume at or below `low`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    high: int = Field(gt=0, le=100_000_000)
    low: int = Field(ge=0, le=100_000_000)

    @model_validator(mode="after")
    def _low_below_high(self) -> LaneLimits:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class TenantLimits(BaseModel):
    """A tenant's rate (token bucket: `burst` tokens refilled at `rate_per_s`) and in-flight cap; None = no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_s: float | None = Field(default=None, gt=0, le=1_000_000)
    burst: int | None = Field(default=None, ge=1, le=10_000_000)
    max_in_flight: int | None = Field(default=None, ge=1, le=100_000_000)

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> TenantLimits:
        if self.burst is not None and self.rate_per_s is None:
            raise ValueError("burst is the size of a rate limit's bucket: give rate_per_s too")
        return self

    @property
    def bucket_size(self) -> int | None:
        if self.rate_per_s is None:
            return None
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate_per_s))


def _default_lanes() -> dict[LaneName, LaneLimits]:
    return {"interactive": LaneLimits(high=2_000, low=1_000), "batch": LaneLimits(high=50_000, low=25_000)}


class AdmissionPolicy(BaseModel):
    """Every limit admission applies, per zone. Load one with `AdmissionPolicy.load(path)` (TOML or YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lanes: dict[LaneName, LaneLimits] = Field(default_factory=_default_lanes)
    default_tenant: TenantLimits = TenantLimits()
    tenants: dict[str, TenantLimits] = Field(default_factory=dict)
    lease_s: float = Field(default=3600.0, gt=0, le=7 * 86400)  # an in-flight job stops counting after this
    retry_after_s: float = Field(default=0.5, gt=0, le=3600)  # advised wait after a watermark or in-flight refusal

    @classmethod
    def load(cls, path: Path | str) -> AdmissionPolicy:
        return load_model_file(path, cls)

    def tenant(self, name: str) -> TenantLimits:
        return self.tenants.get(name, self.default_tenant)

    def max_batch(self, chunk: int) -> int:
        """The largest batch every tenant's bucket and cap can ever admit (no larger than `chunk`)."""
        sizes = [chunk]
        for limits in (self.default_tenant, *self.tenants.values()):
            sizes += [n for n in (limits.bucket_size, limits.max_in_flight) if n is not None]
        return max(1, min(sizes))


class BudgetGate(Protocol):
    """Asked before admission; raises `BudgetExceeded` when a budget's breaker refuses (see `broker.ledger`)."""

    def check(self, tenants: Mapping[str, int]) -> None: ...


class Entry(NamedTuple):
    """A sealed job ready to be appended (no header object kept: a big batch holds many of these)."""

    job_id: str
    tenant: str
    stream: str
    h: bytes
    b: bytes


@dataclass(frozen=True)
class LaneState:
    lane: str
    backlog: int
    paused: bool


REFUSALS = Counter(
    "hybrid_admission_refused_jobs", "Jobs refused at admission, by reason (watermark, rate, in_flight, budget)",
    ["zone", "reason"],
)  # fmt: skip
ADMITTED = Counter("hybrid_admission_admitted_jobs", "Jobs admitted into a lane stream", ["zone"])


class Admission:
    """The admission check of one zone, used by a `Producer` (`Producer(..., admission=Admission(...))`)."""

    def __init__(
        self,
        client: redis.Redis,
        zone: str,
        policy: AdmissionPolicy | None = None,
        *,
        clock: Clock | None = None,
        gate: BudgetGate | None = None,
    ) -> None:
        self.client = client
        self.zone = keys.check_zone(zone)
        self.policy = policy or AdmissionPolicy()
        self.clock = clock
        self.gate = gate
        self.state_key = keys.admission_state(zone)
        self._script = client.register_script(ADMIT)
        self._lane_of: dict[str, LaneName] = {
            keys.jobs_stream(zone, "interactive"): "interactive",
            keys.jobs_stream(zone, "batch"): "batch",
        }
        self.peak_backlog = 0  # highest backlog (after the batch) this object has admitted into

    def admit(self, batch: Sequence[Entry]) -> int:
        """Append `batch` if every limit allows it; returns the lane backlog it reached, or raises."""
        if not batch:
            return 0
        lanes: dict[str, int] = {}
        tenants: dict[str, int] = {}
        for e in batch:
            lanes[e.stream] = lanes.get(e.stream, 0) + 1
            tenants[e.tenant] = tenants.get(e.tenant, 0) + 1
        if self.gate is not None:
            try:
                self.gate.check(tenants)
            except AdmissionRefused as exc:
                REFUSALS.labels(self.zone, exc.reason or "budget").inc(len(batch))
                raise
        lane_idx = {s: i for i, s in enumerate(lanes, 1)}
        tenant_idx = {t: i for i, t in enumerate(tenants, 1)}
        args: list[Any] = [
            self.clock() if self.clock else "",
            len(lanes),
            len(tenants),
            int(self.policy.lease_s * 1000),
            int(self.policy.retry_after_s * 1000),
        ]
        for stream, n in lanes.items():
            limits = self.policy.lanes.get(self._lane_of[stream])
            args += [limits.high, limits.low, n] if limits else [1 << 53, (1 << 53) - 1, n]
        for tenant, n in tenants.items():
            t = self.policy.tenant(tenant)
            size = t.bucket_size
            args += [tenant, t.rate_per_s or -1, size or 0, t.max_in_flight or -1, n]
        for (li, ti), run in itertools.groupby(batch, key=lambda e: (lane_idx[e.stream], tenant_idx[e.tenant])):
            group = list(run)  # consecutive jobs of one lane and tenant: appended in the caller's order
            args += [li, ti, len(group), ",".join(e.job_id for e in group)]
            for e in group:
                args += (e.h, e.b)
        script_keys = [self.state_key, *lanes, *(keys.inflight_set(self.zone, t) for t in tenants)]
        with redis_errors():
            res: Any = self._script(keys=script_keys, args=args)
        if int(res[0]) == 1:
            ADMITTED.labels(self.zone).inc(len(batch))
            self.peak_backlog = max(self.peak_backlog, int(res[1]))
            return int(res[1])
        reason, limit, retry_ms = res[1].decode(), res[2].decode(), int(res[3])
        REFUSALS.labels(self.zone, reason).inc(len(batch))
        if reason == "watermark":
            limit = self._lane_of.get(limit, limit)  # the stream key → its lane
            msg = f"lane {limit} of zone {self.zone} reached its high watermark; paused until back at its low one"
        elif reason == "rate":
            msg = f"tenant {limit} is over its rate limit in zone {self.zone}"
        else:
            msg = f"tenant {limit} has too many jobs in flight in zone {self.zone}"
        raise Backpressure(f"{msg} (retry after {retry_ms / 1000:g} s)", retry_ms / 1000, reason=reason, limit=limit)

    def submit(self, batch: Sequence[Entry], specs: Sequence[JobSpec], chunk: int) -> None:
        """Admit `batch` (sealed from `specs`, in order) in steps of at most `chunk`.

        On a refusal the exception lists the job ids already appended (`submitted`) and the specs
        that were not, each with the job id it was sealed with (`unsent`), so a retry is idempotent."""
        step = self.policy.max_batch(chunk)
        for i in range(0, len(batch), step):
            try:
                self.admit(batch[i : i + step])
            except AdmissionRefused as exc:
                exc.submitted = [e.job_id for e in batch[:i]]
                exc.unsent = [replace(s, job_id=e.job_id) for s, e in zip(specs[i:], batch[i:], strict=True)]
                raise

    def lane_states(self) -> list[LaneState]:
        """Backlog and paused flag of each lane, as the admission script last saw them."""
        streams = [keys.jobs_stream(self.zone, lane) for lane in keys.LANES_BY_PRIORITY]
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for s in streams:
                pipe.xlen(s)
            pipe.hmget(self.state_key, [f"paused:{s}" for s in streams])
            *lengths, flags = pipe.execute()
        return [LaneState(self._lane_of[s], int(n), f == b"1") for s, n, f in zip(streams, lengths, flags, strict=True)]

    def in_flight(self, tenant: str) -> int:
        """Jobs of `tenant` admitted and not yet completed (leases not yet expired are counted)."""
        with redis_errors():
            return int(self.client.zcard(keys.inflight_set(self.zone, tenant)))


class _Submitter(Protocol):
    chunk: int

    def submit_many(self, specs: Sequence[JobSpec]) -> list[str]: ...


def submit_paced(
    producer: _Submitter,
    specs: Sequence[JobSpec],
    *,
    on_pause: Callable[[AdmissionRefused | None], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    slice_size: int | None = None,
) -> list[str]:
    """Submit every spec, pausing while admission refuses; never drops an item. Returns ids in order.

    For batch jobs: on a refusal (`Backpressure` or `BudgetExceeded`) `on_pause(exc)` is called once,
    then the call waits `exc.retry_after_s` with `sleep` and retries what was not sent; when a retry
    goes through, `on_pause(None)` says it resumed. A lane over its high watermark is admitted again
    only once its backlog is at or below the low watermark (the admission script's hysteresis)."""
    size = slice_size or producer.chunk * 4  # a retry re-seals at most this many jobs
    ids: list[str] = []
    todo = list(specs)
    paused = False
    while todo:
        part, rest = todo[:size], todo[size:]
        try:
            ids += producer.submit_many(part)
            todo = rest
        except AdmissionRefused as exc:
            ids += exc.submitted
            todo = exc.unsent + rest
            if not paused and on_pause is not None:
                on_pause(exc)
            paused = True
            sleep(exc.retry_after_s)
            continue
        if paused and on_pause is not None:
            on_pause(None)
        paused = False
    return ids


__all__ = [
    "Admission",
    "AdmissionPolicy",
    "BudgetGate",
    "Clock",
    "Entry",
    "LaneLimits",
    "LaneState",
    "TenantLimits",
    "submit_paced",
]
