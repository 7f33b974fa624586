"""Replay a trace through the engine without running a model: latency, cost, bytes leaving the device.

For planning before a pilot. The simulated device pool is `devices` identical edge devices in one
zone. Its utilization is the local busy time of the last `utilization_window_s` seconds divided by
the pool's capacity in that window; local latency grows with utilization as in an M/M/1 queue
(`latency / (1 - u)`, u capped at 0.95), and that inflated figure is the "measured" latency the
engine sees. Cloud outages are given as time ranges; the cost breaker opens while a budget of the
device's zone (see `cost.budgets`) has spent its limit within its rolling window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from policies.cost import bytes_leaving_device, cloud_inference_usd, edge_usd_per_hour, estimate
from policies.decision import Decision
from policies.engine import decide, escalate
from policies.model import Budget, Lane, Policy, Transform
from policies.request import DeviceState, LocalResult, Request, Route
from policies.traces import TraceRecord

__all__ = ["Outcome", "RouteSummary", "SimulationOptions", "SimulationReport", "TaskSummary", "simulate"]

MAX_QUEUE_UTILIZATION = 0.95


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulationOptions(_Frozen):
    zone: str
    devices: int = Field(default=1, ge=1)
    model_memory_available_mb: float | None = Field(default=None, ge=0.0)  # None: edge.model_memory_mb
    base_utilization: float = Field(default=0.0, ge=0.0, le=1.0)  # load from work outside the trace
    utilization_window_s: float = Field(default=60.0, gt=0.0)
    cloud_outages: tuple[tuple[float, float], ...] = ()  # [start_s, end_s) ranges with no cloud


class Outcome(_Frozen):
    request_id: str
    task: str
    at_s: float
    route: Route
    escalated: bool
    degraded: bool
    zone: str | None
    latency_ms: float | None  # None when rejected
    slo_met: bool
    local_usd: float
    cloud_usd: float
    bytes_out: int


class RouteSummary(_Frozen):
    route: Route
    count: int
    p50_ms: float | None
    p95_ms: float | None
    cloud_usd: float
    bytes_out: int


class TaskSummary(_Frozen):
    task: str
    count: int
    local: int
    cloud: int
    fallback: int
    reject: int
    escalated: int
    p50_ms: float | None
    p95_ms: float | None
    slo_met_share: float


class SimulationReport(_Frozen):
    requests: int
    duration_hours: float
    routes: tuple[RouteSummary, ...]
    tasks: tuple[TaskSummary, ...]
    escalations: int
    slo_misses: int
    breaker_trips: int
    edge_usd: float  # the device pool's full cost over the trace's duration
    local_inference_usd: float  # the share of it the local inferences occupied
    cloud_usd: float
    total_usd: float  # edge_usd + cloud_usd
    always_cloud_usd: float  # every request on the cloud's full model, in the device's zone
    bytes_leaving_device: int
    always_cloud_bytes: int  # every request sent raw
    outcomes: tuple[Outcome, ...]

    @property
    def savings_vs_always_cloud(self) -> float:
        return 1.0 - self.total_usd / self.always_cloud_usd if self.always_cloud_usd > 0 else 0.0


def simulate(trace: Iterable[TraceRecord], policy: Policy, options: SimulationOptions) -> SimulationReport:
    records = sorted(trace, key=lambda r: r.at_s)
    sim = _Simulation(policy, options)
    outcomes = tuple(sim.step(record) for record in records)
    last = records[-1].at_s if records else 0.0
    duration_hours = max(1.0, math.ceil(last / 3600.0))
    edge_usd = options.devices * edge_usd_per_hour(policy) * duration_hours
    cloud_usd = sum(o.cloud_usd for o in outcomes)
    return SimulationReport(
        requests=len(outcomes),
        duration_hours=duration_hours,
        routes=tuple(_route_summary(route, outcomes) for route in Route),
        tasks=tuple(_task_summary(task, outcomes) for task in sorted({o.task for o in outcomes})),
        escalations=sum(o.escalated for o in outcomes),
        slo_misses=sum(not o.slo_met for o in outcomes),
        breaker_trips=sim.breaker_trips,
        edge_usd=edge_usd,
        local_inference_usd=sum(o.local_usd for o in outcomes),
        cloud_usd=cloud_usd,
        total_usd=edge_usd + cloud_usd,
        always_cloud_usd=sum(_always_cloud_usd(policy, options.zone, r.request) for r in records),
        bytes_leaving_device=sum(o.bytes_out for o in outcomes),
        always_cloud_bytes=sum(bytes_leaving_device(Transform.RAW, r.request.input_bytes, policy) for r in records),
        outcomes=outcomes,
    )


class _Simulation:
    def __init__(self, policy: Policy, options: SimulationOptions) -> None:
        self.policy = policy
        self.options = options
        self.memory = (
            options.model_memory_available_mb
            if options.model_memory_available_mb is not None
            else policy.edge.model_memory_mb
        )
        self.busy: deque[tuple[float, float]] = deque()  # (start_s, busy_s) of local runs
        self.budgets = [b for b in policy.cost.budgets if b.zone == options.zone]
        self.spend: dict[str, deque[tuple[float, float]]] = {b.name: deque() for b in policy.cost.budgets}
        self.open_budgets: set[str] = set()
        self.breaker_trips = 0

    # -- device state

    def _utilization(self, now: float) -> float:
        window = self.options.utilization_window_s
        while self.busy and self.busy[0][0] < now - window:
            self.busy.popleft()
        busy = sum(seconds for _, seconds in self.busy)
        return min(1.0, self.options.base_utilization + busy / (window * self.options.devices))

    def _device(self, now: float, lane: Lane) -> DeviceState:
        util = self._utilization(now)
        inflation = 1.0 / (1.0 - min(util, MAX_QUEUE_UTILIZATION))
        latencies = {
            m.name: m.local_latency_ms * inflation for m in self.policy.models if m.local_latency_ms is not None
        }
        reachable = not any(start <= now < end for start, end in self.options.cloud_outages)
        return DeviceState(
            zone=self.options.zone,
            utilization=util,
            local_latency_ms=latencies,
            cloud_reachable=reachable,
            breaker_open=any(b.name in self.open_budgets for b in self.budgets if self._breaker_applies(b, lane)),
            model_memory_available_mb=self.memory,
        )

    def _breaker_applies(self, budget: Budget, lane: Lane) -> bool:
        return budget.lane is None or budget.lane is lane

    # -- one request

    def step(self, record: TraceRecord) -> Outcome:
        now, request = record.at_s, record.request
        self._refresh_budgets(now)
        device = self._device(now, request.lane or self._lane(request))
        decision = decide(request, device, self.policy)

        first = estimate(decision, request, device, self.policy)
        latency, local_usd, cloud_usd, bytes_out = first.latency_ms, first.local_usd, first.cloud_usd, first.bytes_out
        escalated, degraded, final = False, decision.degraded, decision
        if decision.route is Route.CLOUD:
            self._charge(decision, now, cloud_usd)
        elif decision.route in (Route.LOCAL, Route.FALLBACK):
            assert decision.model is not None and latency is not None
            self.busy.append((now, latency / 1000.0))
            if record.local_confidence is not None:
                result = LocalResult(
                    request=request,
                    device=device,
                    model=decision.model,
                    confidence=record.local_confidence,
                    route=decision.route,
                )
                follow = escalate(result, self.policy)
                degraded = follow.degraded
                if follow.route is Route.CLOUD:
                    second = estimate(follow, request, device, self.policy)
                    assert second.latency_ms is not None
                    escalated, final = True, follow
                    latency += second.latency_ms
                    cloud_usd, bytes_out = second.cloud_usd, second.bytes_out
                    self._charge(follow, now, cloud_usd)

        slo = self.policy.tasks[request.task].latency_slo_ms if request.task in self.policy.tasks else 0.0
        if request.max_latency_ms is not None:
            slo = min(slo, request.max_latency_ms)
        return Outcome(
            request_id=request.id,
            task=request.task,
            at_s=now,
            route=decision.route,
            escalated=escalated,
            degraded=degraded,
            zone=final.zone,
            latency_ms=latency,
            slo_met=latency is not None and latency <= slo,
            local_usd=local_usd,
            cloud_usd=cloud_usd,
            bytes_out=bytes_out,
        )

    def _lane(self, request: Request) -> Lane:
        task = self.policy.tasks.get(request.task)
        return task.lane if task is not None else Lane.INTERACTIVE

    def _charge(self, decision: Decision, now: float, usd: float) -> None:
        for budget in self.policy.cost.budgets:
            if budget.zone == decision.zone and self._breaker_applies(budget, decision.lane):
                self.spend[budget.name].append((now, usd))
        self._refresh_budgets(now)

    def _refresh_budgets(self, now: float) -> None:
        for budget in self.budgets:
            entries = self.spend[budget.name]
            while entries and entries[0][0] <= now - budget.window_hours * 3600.0:
                entries.popleft()
            spent = sum(usd for _, usd in entries)
            if spent >= budget.limit_usd and budget.name not in self.open_budgets:
                self.open_budgets.add(budget.name)
                self.breaker_trips += 1
            elif spent < budget.limit_usd:
                self.open_budgets.discard(budget.name)


# ------------------------------------------------------------------------------------------ summaries


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _latencies(outcomes: Iterable[Outcome]) -> list[float]:
    return [o.latency_ms for o in outcomes if o.latency_ms is not None]


def _route_summary(route: Route, outcomes: tuple[Outcome, ...]) -> RouteSummary:
    mine = [o for o in outcomes if o.route is route]
    lat = _latencies(mine)
    return RouteSummary(
        route=route,
        count=len(mine),
        p50_ms=_percentile(lat, 50),
        p95_ms=_percentile(lat, 95),
        cloud_usd=sum(o.cloud_usd for o in mine),
        bytes_out=sum(o.bytes_out for o in mine),
    )


def _task_summary(task: str, outcomes: tuple[Outcome, ...]) -> TaskSummary:
    mine = [o for o in outcomes if o.task == task]
    lat = _latencies(mine)
    return TaskSummary(
        task=task,
        count=len(mine),
        local=sum(o.route is Route.LOCAL for o in mine),
        cloud=sum(o.route is Route.CLOUD for o in mine),
        fallback=sum(o.route is Route.FALLBACK for o in mine),
        reject=sum(o.route is Route.REJECT for o in mine),
        escalated=sum(o.escalated for o in mine),
        p50_ms=_percentile(lat, 50),
        p95_ms=_percentile(lat, 95),
        slo_met_share=sum(o.slo_met for o in mine) / len(mine),
    )


def _always_cloud_usd(policy: Policy, zone: str, request: Request) -> float:
    task = policy.tasks.get(request.task)
    if task is None:
        return 0.0
    model = policy.model(task.model)
    zones = [zone] if zone in policy.cost.cloud else sorted(policy.cost.cloud)
    lane = request.lane or task.lane
    return min(cloud_inference_usd(model, z, lane, policy).total_usd for z in zones)
