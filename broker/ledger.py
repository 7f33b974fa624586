"""The cost ledger, the price table, budgets, and the cost circuit breaker.

Workers report the GPU-seconds of each batch (split by tenant) under their instance class and
market; the price table turns them into US dollars, added (as integer micro-dollars) to per-minute
buckets in Redis shared by every worker of the zone:

    hyb:{<zone>}:spend:global            minute → µUSD      (buckets older than a day are pruned)
    hyb:{<zone>}:spend:tenant:<name>     minute → µUSD

Budgets (USD per `hour` or `day`, rolling, for scope `global` or `tenant:<name>`) live in
`hyb:{<zone>}:budgets`; each scope's breaker state (the machine of `broker.breaker`) in
`hyb:{<zone>}:breaker`. `CostBreaker.check` is the `BudgetGate` admission asks: an open breaker
refuses cloud-bound jobs with `BudgetExceeded` (local inference never asks it). `evaluate` trips
breakers whose budget is spent, closes half-open ones whose spend is back under budget, and raises
the 80 % / 100 % alerts as metrics and log events. Times come from an injectable clock (ms).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from broker import breaker, keys
from broker.breaker import BreakerPolicy, BreakerState, ConstantBackoff, State
from broker.connection import redis_errors
from broker.errors import BudgetExceeded, ConfigError
from broker.settings import load_model_file

log = logging.getLogger(__name__)

WINDOWS: dict[str, int] = {"hour": 60, "day": 1440}
"""Rolling budget windows, in minutes."""
Market = Literal["on_demand", "spot"]
MAX_BUDGET_USD = 10_000_000.0
ALERT_LEVELS = (0.8, 1.0)
_MICRO = 1_000_000

_Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
_GpuHourUsd = Annotated[float, Field(gt=0, le=1000)]  # no GPU costs more than $1000/hour: a typo


class ClassPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    on_demand_usd_per_gpu_hour: _GpuHourUsd
    spot_usd_per_gpu_hour: _GpuHourUsd


class ZonePrices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    egress_usd_per_gb: float = Field(ge=0, le=10)
    classes: dict[_Name, ClassPrice] = Field(min_length=1)


class PriceTable(BaseModel):
    """Prices per zone and instance class. `PriceTable.load(path)` reads TOML or YAML; defects name file and field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zones: dict[Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")], ZonePrices] = Field(
        min_length=1
    )

    @classmethod
    def load(cls, path: Path | str) -> PriceTable:
        return load_model_file(path, cls)

    def zone(self, zone: str) -> ZonePrices:
        if not self.zones:
            raise ConfigError("no price table was given: GPU-seconds cannot be priced")
        if zone not in self.zones:
            raise ConfigError(f"price table has no zone {zone!r} (has {', '.join(sorted(self.zones))})")
        return self.zones[zone]

    def usd_per_gpu_hour(self, zone: str, instance_class: str, market: Market) -> float:
        prices = self.zone(zone).classes.get(instance_class)
        if prices is None:
            known = ", ".join(sorted(self.zone(zone).classes))
            raise ConfigError(f"unknown instance class {instance_class!r} in zone {zone} (known: {known})")
        return prices.spot_usd_per_gpu_hour if market == "spot" else prices.on_demand_usd_per_gpu_hour


def check_scope(scope: str) -> str:
    """`global` or `tenant:<name>`."""
    if scope == "global" or (scope.startswith("tenant:") and 0 < len(scope) - 7 <= 64 and " " not in scope):
        return scope
    raise ValueError(f"invalid budget scope {scope!r}: use 'global' or 'tenant:<name>'")


def check_window(window: str) -> str:
    if window not in WINDOWS:
        raise ValueError(f"invalid budget window {window!r}: use {' or '.join(WINDOWS)}")
    return window


def check_budget(usd: float) -> float:
    if not math.isfinite(usd) or usd <= 0 or usd > MAX_BUDGET_USD:
        raise ValueError(f"invalid budget {usd!r} USD: it must be above 0 and at most {MAX_BUDGET_USD:,.0f}")
    return usd


class BudgetMetrics:
    """Prometheus metrics of spend, budgets and breakers (`registry` defaults to the global one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else REGISTRY
        labels = ["zone", "scope", "window"]
        self.spend = Gauge("hybrid_budget_spend_usd", "Spend in the rolling window, USD.", labels, registry=reg)
        self.limit = Gauge("hybrid_budget_limit_usd", "Budget of the rolling window, USD.", labels, registry=reg)
        self.used = Gauge("hybrid_budget_used_ratio", "Spend divided by budget.", labels, registry=reg)
        self.alerts = Counter(
            "hybrid_budget_alerts", "Budget alerts raised (level 0.8 or 1.0).", [*labels, "level"], registry=reg
        )
        self.state = Gauge(
            "hybrid_breaker_state", "Breaker state: 0 closed, 1 half-open, 2 open.", ["zone", "scope"], registry=reg
        )
        self.transitions = Counter(
            "hybrid_breaker_transitions", "Breaker state changes.", ["zone", "scope", "to"], registry=reg
        )
        self.gpu_seconds = Counter(
            "hybrid_ledger_gpu_seconds", "GPU-seconds recorded.", ["zone", "instance_class", "market"], registry=reg
        )
        self.unknown_writes = Counter(
            "hybrid_ledger_unknown_worker_writes",
            "Ledger writes from workers never registered.",
            ["zone"],
            registry=reg,
        )


@dataclass(frozen=True)
class Charge:
    worker: str
    usd_by_tenant: dict[str, float]
    usd: float
    flagged: bool  # the worker was not registered: recorded at the price it reported (or the zone's highest)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Ledger:
    """Spend of one zone in rolling windows, shared by every worker through Redis."""

    def __init__(
        self,
        client: redis.Redis,
        zone: str,
        prices: PriceTable | None = None,
        *,
        clock: Callable[[], int] | None = None,
        metrics: BudgetMetrics | None = None,
    ) -> None:
        self.client = client
        self.zone = keys.check_zone(zone)
        self.prices = prices or PriceTable.model_construct(zones={})  # reading spend and budgets needs no prices
        self.clock = clock or _wall_ms
        self.metrics = metrics

    # -- workers and spend -------------------------------------------------------------------------

    def register_worker(self, worker: str, instance_class: str, market: Market) -> None:
        """Declare a worker's instance class (refused if the price table does not know it)."""
        self.prices.zone(self.zone)
        self.prices.usd_per_gpu_hour(self.zone, instance_class, market)
        with redis_errors():
            self.client.hset(
                keys.ledger_workers(self.zone), keys.check_name(worker, "worker"), f"{instance_class}|{market}"
            )

    def record(
        self,
        worker: str,
        gpu_seconds: Mapping[str, float],
        *,
        egress_bytes: int = 0,
        instance_class: str | None = None,
        market: Market = "on_demand",
    ) -> Charge:
        """Add one batch's cost: `gpu_seconds` by tenant, plus egress (shared in proportion).

        A worker that never registered is recorded anyway — at the class it names if the table knows
        it, else at the zone's highest on-demand price — and flagged in `hyb:{<zone>}:ledger:flags`."""
        zone_prices = self.prices.zone(self.zone)
        if any(not math.isfinite(s) or s < 0 for s in gpu_seconds.values()) or egress_bytes < 0:
            raise ValueError("GPU-seconds and egress bytes must be finite and not negative")
        with redis_errors():
            known: Any = self.client.hget(keys.ledger_workers(self.zone), worker)
        flagged = known is None
        if known is not None:
            instance_class, m = known.decode().split("|")
            market = "spot" if m == "spot" else "on_demand"
        if instance_class in zone_prices.classes:
            per_hour = self.prices.usd_per_gpu_hour(self.zone, instance_class, market)
        else:
            per_hour = max(c.on_demand_usd_per_gpu_hour for c in zone_prices.classes.values())
            instance_class, market = "unknown", "on_demand"
        total_s = sum(gpu_seconds.values())
        egress_usd = egress_bytes / 1e9 * zone_prices.egress_usd_per_gb
        usd = {
            t: s / 3600 * per_hour + (egress_usd * s / total_s if total_s else egress_usd / len(gpu_seconds))
            for t, s in gpu_seconds.items()
        }
        minute = str(self.clock() // 60_000)
        ttl_s = (WINDOWS["day"] + 60) * 60
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            for tenant, amount in usd.items():
                for scope in ("global", f"tenant:{tenant}"):
                    pipe.hincrby(keys.spend(self.zone, scope), minute, round(amount * _MICRO))
                    pipe.expire(keys.spend(self.zone, scope), ttl_s)
            if flagged:
                pipe.hincrby(keys.ledger_flags(self.zone), worker, 1)
            pipe.execute()
        if flagged:
            log.warning("ledger: write from unknown worker %r in zone %s (recorded, flagged)", worker, self.zone)
        if self.metrics:
            self.metrics.gpu_seconds.labels(self.zone, instance_class, market).inc(total_s)
            if flagged:
                self.metrics.unknown_writes.labels(self.zone).inc()
        return Charge(worker, usd, sum(usd.values()), flagged)

    def spend(self, scope: str) -> dict[str, float]:
        """USD spent by `scope` in each window, summed from minute buckets (and pruning older ones)."""
        key = keys.spend(self.zone, check_scope(scope))
        with redis_errors():
            buckets: Any = self.client.hgetall(key)
        now_min = self.clock() // 60_000
        out = dict.fromkeys(WINDOWS, 0.0)
        stale: list[bytes] = []
        for field, value in buckets.items():
            age = now_min - int(field)
            if age >= max(WINDOWS.values()):
                stale.append(field)
                continue
            for window, minutes in WINDOWS.items():
                if age < minutes:
                    out[window] += int(value) / _MICRO
        if stale:
            with redis_errors():
                self.client.hdel(key, *stale)
        return out

    def flagged(self) -> dict[str, int]:
        """Writes from unknown workers, by worker name."""
        with redis_errors():
            raw: Any = self.client.hgetall(keys.ledger_flags(self.zone))
        return {k.decode(): int(v) for k, v in raw.items()}

    # -- budgets -----------------------------------------------------------------------------------

    def set_budget(self, scope: str, window: str, usd: float | None) -> None:
        """Set (or with None, remove) the budget of `scope` over `window`."""
        field = f"{check_scope(scope)}|{check_window(window)}"
        with redis_errors():
            if usd is None:
                self.client.hdel(keys.budgets(self.zone), field)
            else:
                self.client.hset(keys.budgets(self.zone), field, repr(check_budget(usd)))

    def budgets(self) -> dict[tuple[str, str], float]:
        with redis_errors():
            raw: Any = self.client.hgetall(keys.budgets(self.zone))
        out: dict[tuple[str, str], float] = {}
        for field, value in raw.items():
            scope, window = field.decode().rsplit("|", 1)
            out[(scope, window)] = float(value)
        return out


@dataclass(frozen=True)
class ScopeStatus:
    scope: str
    state: State
    forced: State | None
    spend: dict[str, float]  # by window
    budget: dict[str, float]  # by window (only windows with a budget)


class CostBreaker:
    """One breaker per budget scope, its state in Redis; `check` is the `BudgetGate` of admission."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        cooldown_s: float = 300.0,
        trickle: int = 10,
        probe_s: float = 60.0,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.ledger = ledger
        self.client = ledger.client
        self.zone = ledger.zone
        self.policy = BreakerPolicy(cooldown=ConstantBackoff(cooldown_s), trickle=trickle, failure_threshold=1)
        self.probe_ms = int(probe_s * 1000)  # half-open that long with spend still under budget: close
        self.clock = clock or ledger.clock
        self.metrics = ledger.metrics
        self.key = keys.breaker_state(self.zone)

    def states(self, scopes: list[str]) -> dict[str, BreakerState]:
        with redis_errors():
            raw: Any = self.client.hmget(self.key, scopes) if scopes else []
        return {s: BreakerState.loads(r) for s, r in zip(scopes, raw, strict=True)}

    def check(self, tenants: Mapping[str, int]) -> None:
        """Raise `BudgetExceeded` unless every scope of the batch (global, each tenant) admits it."""
        counts = {"global": sum(tenants.values()), **{f"tenant:{t}": n for t, n in tenants.items()}}
        now = self.clock()
        for scope, st in self.states(list(counts)).items():
            state = breaker.effective(st, now)
            if state is State.CLOSED:
                continue
            if state is State.HALF_OPEN and st.forced is None and self._take_trickle(scope, counts[scope], now):
                continue
            raise BudgetExceeded(
                f"budget of {scope} in zone {self.zone} is spent: breaker {state.value.replace('_', '-')}"
                + (" (forced)" if st.forced else ""),
                breaker.retry_after_s(st, now),
                reason="budget",
                limit=scope,
            )

    def _take_trickle(self, scope: str, n: int, now: int) -> bool:
        taken = self._update(scope, lambda st: breaker.allow(st, now, self.policy, n))
        return bool(taken)

    def _update(self, scope: str, fn: Callable[[BreakerState], tuple[object, BreakerState]]) -> object:
        """Apply `fn` to a scope's state atomically (WATCH/MULTI); returns fn's first value."""
        out: list[object] = []

        def tx(pipe: Any) -> None:
            old = BreakerState.loads(pipe.hget(self.key, scope))
            value, new = fn(old)
            out[:] = [value, old, new]
            pipe.multi()
            if new != old:
                pipe.hset(self.key, scope, new.dumps())

        with redis_errors():
            self.client.transaction(tx, self.key)
        value, old, new = out
        assert isinstance(old, BreakerState) and isinstance(new, BreakerState)
        now = self.clock()
        before, after = breaker.effective(old, now), breaker.effective(new, now)
        if before is not after:
            log.warning("cost breaker %s of zone %s: %s → %s", scope, self.zone, before.value, after.value)
            if self.metrics:
                self.metrics.transitions.labels(self.zone, scope, after.value).inc()
        if self.metrics:
            self.metrics.state.labels(self.zone, scope).set(breaker.STATE_VALUE[after])
        return value

    def force(self, scope: str, state: State | None) -> None:
        """An operator holds a scope's breaker open or closed (None: back to automatic)."""
        now = self.clock()
        self._update(check_scope(scope), lambda st: (None, breaker.force(st, state, now)))

    def status(self) -> list[ScopeStatus]:
        """Spend, budgets and breaker state of `global` and of every scope with a budget or a breaker (read only)."""
        budgets = self.ledger.budgets()
        with redis_errors():
            fields: Any = self.client.hkeys(self.key)
        known = {f.decode() for f in fields if not f.startswith(b"alert|")}
        scopes = sorted({s for s, _ in budgets} | known | {"global"})
        now = self.clock()
        out: list[ScopeStatus] = []
        for scope, st in self.states(scopes).items():
            limits = {w: usd for (s, w), usd in budgets.items() if s == scope}
            out.append(ScopeStatus(scope, breaker.effective(st, now), st.forced, self.ledger.spend(scope), limits))
        return out

    def evaluate(self) -> list[ScopeStatus]:
        """Compare spend with budgets; trip, close, alert. Returns `status()` as it is afterwards."""
        for s in self.status():
            over = any(s.spend[w] >= usd for w, usd in s.budget.items())
            self._alert(s.scope, s.spend, s.budget)
            self._update(s.scope, functools.partial(self._step, over=over, now=self.clock()))
        return self.status()

    def _step(self, st: BreakerState, *, over: bool, now: int) -> tuple[None, BreakerState]:
        """Over budget: trip (again, from half-open). Half-open for `probe_s` and still under: close."""
        state = breaker.effective(replace(st, forced=None), now)
        if over and state is not State.OPEN:
            return None, breaker.failure(st, now, self.policy)
        if not over and state is State.HALF_OPEN and now >= st.until_ms + self.probe_ms:
            return None, breaker.success(st, now)
        return None, st

    def _alert(self, scope: str, spend: dict[str, float], limits: dict[str, float]) -> None:
        for window, usd in limits.items():
            ratio = spend[window] / usd
            level = max((lv for lv in ALERT_LEVELS if ratio >= lv), default=0.0)
            field = f"alert|{scope}|{window}"
            with redis_errors():
                previous = float(self.client.hget(self.key, field) or 0)
                if level != previous:
                    self.client.hset(self.key, field, repr(level))
            if level > previous:
                log.warning(
                    "budget alert: %s spent %.2f of %.2f USD per %s in zone %s (%d %%)",
                    scope, spend[window], usd, window, self.zone, round(level * 100),
                )  # fmt: skip
                if self.metrics:
                    self.metrics.alerts.labels(self.zone, scope, window, f"{level:g}").inc()
            if self.metrics:
                self.metrics.spend.labels(self.zone, scope, window).set(spend[window])
                self.metrics.limit.labels(self.zone, scope, window).set(usd)
                self.metrics.used.labels(self.zone, scope, window).set(ratio)


__all__ = [
    "ALERT_LEVELS",
    "WINDOWS",
    "BudgetMetrics",
    "Charge",
    "ClassPrice",
    "CostBreaker",
    "Ledger",
    "Market",
    "PriceTable",
    "ScopeStatus",
    "ZonePrices",
    "check_budget",
    "check_scope",
    "check_window",
]
