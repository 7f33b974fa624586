"""How many workers a zone wants: from backlog, measured service rate, the latency target and budget.

The rule (one function, `Autoscaler.decide`, used by the local supervisor; the KEDA ScaledObject in
`deploy/k8s/` encodes the same numbers as `lagCount` = rate * target latency per replica):

    wanted   = ceil(backlog / (rate_per_worker * target_latency_s))    backlog = lag + pending, all lanes
    replicas = clamp(wanted, min_replicas, max_replicas)
    replicas = min(replicas, budget_cap)          when the cost ledger caps it (open breaker → 0)
    replicas = max(replicas, 1)                   while any backlog exists: never to zero with work left

Scaling up happens at once; scaling down only after the lower figure held for `scale_down_delay_s`
(no flapping when a burst ends) — except down to what the budget affords, which happens at once.
`rate_per_worker` is measured from the workers' heartbeats (jobs completed per busy second); before
any worker has reported, `assumed_rate_per_worker` stands in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import redis

from broker import keys
from broker.breaker import State
from broker.connection import redis_errors
from broker.ledger import CostBreaker
from broker.queues import queue_depth


@dataclass(frozen=True, kw_only=True)
class ScalePolicy:
    min_replicas: int = 1
    max_replicas: int = 8
    target_latency_s: float = 30.0  # a job waiting now should be done within this
    scale_down_delay_s: float = 60.0
    assumed_rate_per_worker: float = 8.0  # jobs/s before a measurement exists

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 ≤ min_replicas ≤ max_replicas, got {self.min_replicas} and {self.max_replicas}")
        if self.max_replicas < 1:
            raise ValueError("max_replicas must be at least 1")
        if not (self.target_latency_s > 0 and self.assumed_rate_per_worker > 0 and self.scale_down_delay_s >= 0):
            raise ValueError("target latency and assumed rate must be positive, the scale-down delay not negative")

    @property
    def lag_per_replica(self) -> int:
        """The backlog one replica is meant to absorb: KEDA's `lagCount` for the same rule."""
        return max(math.ceil(self.assumed_rate_per_worker * self.target_latency_s), 1)


@dataclass(frozen=True)
class Observation:
    backlog: int  # lag + pending over the zone's lanes
    replicas: int  # workers running now
    rate_per_worker: float | None = None  # measured jobs/s per busy worker
    budget_cap: int | None = None  # most replicas the budget allows (None: no cap)
    now_s: float = 0.0


@dataclass(frozen=True)
class Decision:
    replicas: int
    wanted: int  # before the scale-down delay
    reason: str


class Autoscaler:
    def __init__(self, policy: ScalePolicy | None = None) -> None:
        self.policy = policy or ScalePolicy()
        self._lower_since: float | None = None

    def decide(self, obs: Observation) -> Decision:
        p = self.policy
        rate = obs.rate_per_worker if obs.rate_per_worker and obs.rate_per_worker > 0 else p.assumed_rate_per_worker
        need = math.ceil(obs.backlog / (rate * p.target_latency_s)) if obs.backlog > 0 else 0
        wanted = min(max(need, p.min_replicas), p.max_replicas)
        reason = f"backlog {obs.backlog} at {rate:.1f} jobs/s per worker needs {need} for {p.target_latency_s:g}s"
        if need > p.max_replicas:
            reason += f"; capped at max {p.max_replicas}"
        elif need < p.min_replicas:
            reason += f"; kept at min {p.min_replicas}"
        if obs.budget_cap is not None and wanted > obs.budget_cap:
            wanted = obs.budget_cap
            reason += f"; budget allows {obs.budget_cap}"
        if obs.backlog > 0 and wanted < 1:
            wanted = 1
            reason += "; 1 kept while a backlog exists"
        if wanted >= obs.replicas:
            self._lower_since = None
            return Decision(wanted, wanted, reason)
        if obs.budget_cap is not None and obs.replicas > max(obs.budget_cap, wanted):
            self._lower_since = None  # over what the budget affords: no waiting, spend stops now
            return Decision(wanted, wanted, reason + "; down at once")
        if self._lower_since is None:
            self._lower_since = obs.now_s
        waited = obs.now_s - self._lower_since
        if waited >= p.scale_down_delay_s:
            self._lower_since = None
            return Decision(wanted, wanted, reason + f"; lower for {waited:.0f}s")
        return Decision(obs.replicas, wanted, reason + f"; scale-down waits {p.scale_down_delay_s - waited:.0f}s more")


def budget_cap(breaker: CostBreaker | None, usd_per_replica_hour: float | None) -> int | None:
    """Replicas the zone's global budget affords for the next hour (0 when its breaker is open).

    None when there is no breaker, no global budget, or no price to divide by."""
    if breaker is None:
        return None
    for st in breaker.status():
        if st.scope != "global":
            continue
        if st.state is State.OPEN:
            return 0
        if not st.budget or not usd_per_replica_hour:
            return None
        remaining = min(st.budget[w] - st.spend.get(w, 0.0) for w in st.budget)
        return max(math.floor(remaining / usd_per_replica_hour), 0)
    return None


def measured_rate(client: redis.Redis, zone: str) -> tuple[float | None, int]:
    """(jobs per busy second per worker, ready workers) from the zone's worker heartbeats."""
    with redis_errors():
        beats: Any = client.hgetall(keys.worker_heartbeats(zone))
    completed = busy = 0.0
    ready = 0
    for raw in beats.values():
        try:
            b = json.loads(raw)
        except ValueError:
            continue
        ready += 1 if b.get("ready") else 0
        completed += float(b.get("completed", 0))
        busy += float(b.get("busy_s", 0.0))
    return (completed / busy if busy > 0.5 and completed > 0 else None), ready


def observe(
    client: redis.Redis,
    zone: str,
    replicas: int,
    now_s: float,
    *,
    breaker: CostBreaker | None = None,
    usd_per_replica_hour: float | None = None,
) -> Observation:
    backlog = sum(d.length for d in queue_depth(client, zone))  # length = lag + pending
    rate, _ = measured_rate(client, zone)
    return Observation(backlog, replicas, rate, budget_cap(breaker, usd_per_replica_hour), now_s)


__all__ = ["Autoscaler", "Decision", "Observation", "ScalePolicy", "budget_cap", "measured_rate", "observe"]
