"""The circuit breaker state machine, shared by the cost breaker and the edge's reachability breaker.

    closed ──trip──→ open ──cool-down over──→ half-open ──success──→ closed
                      ↑                           │
                      └───────────trip────────────┘   (a longer cool-down each time)

In half-open only a trickle of `trickle` requests is let through; their outcome decides. The
machine is pure: functions from a `BreakerState` and a time in ms to a new state — the cost breaker
keeps the state in Redis (`broker.ledger.CostBreaker`), the edge keeps it in memory (`Breaker`). An
operator may force a breaker open or closed; a forced state holds until it is released.

Cool-downs are tiny strategy objects: `ConstantBackoff` (the cost breaker) and `ExponentialBackoff`
with jitter (cloud reachability: the n-th consecutive trip waits about base·2ⁿ⁻¹, capped).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Protocol


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}
"""The number a `hybrid_breaker_state` gauge shows for each state."""


class Backoff(Protocol):
    def delay_s(self, attempt: int) -> float:
        """The cool-down after the `attempt`-th consecutive trip (1-based)."""
        ...


@dataclass(frozen=True)
class ConstantBackoff:
    seconds: float

    def delay_s(self, attempt: int) -> float:
        return self.seconds


@dataclass
class ExponentialBackoff:
    """base·2ⁿ⁻¹ capped at `cap_s`, then "equal jitter": a uniform draw from the upper `jitter` fraction."""

    base_s: float = 1.0
    cap_s: float = 300.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)

    def delay_s(self, attempt: int) -> float:
        full = min(self.cap_s, self.base_s * 2.0 ** max(attempt - 1, 0))
        return full * (1 - self.jitter) + self.rng.uniform(0, full * self.jitter)


@dataclass(frozen=True)
class BreakerPolicy:
    cooldown: Backoff = ConstantBackoff(60.0)
    trickle: int = 1  # requests let through in half-open
    failure_threshold: int = 1  # consecutive failures that trip a closed breaker


@dataclass(frozen=True)
class BreakerState:
    state: State = State.CLOSED
    until_ms: int = 0  # open: when the cool-down ends
    trips: int = 0  # consecutive trips without a close
    failures: int = 0  # consecutive failures while closed
    trickle_left: int = 0
    forced: State | None = None
    changed_ms: int = 0

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes | None) -> BreakerState:
        if not raw:
            return cls()
        d = json.loads(raw)
        d["state"] = State(d["state"])
        d["forced"] = State(d["forced"]) if d.get("forced") else None
        return cls(**d)


def effective(st: BreakerState, now_ms: int) -> State:
    """The state a request sees now: a forced state wins; an open breaker whose cool-down is over is half-open."""
    if st.forced is not None:
        return st.forced
    if st.state is State.OPEN and now_ms >= st.until_ms:
        return State.HALF_OPEN
    return st.state


def retry_after_s(st: BreakerState, now_ms: int) -> float:
    """How long a refused caller should wait: the rest of the cool-down (at least a second)."""
    return max((st.until_ms - now_ms) / 1000, 1.0)


def allow(st: BreakerState, now_ms: int, policy: BreakerPolicy, n: int = 1) -> tuple[bool, BreakerState]:
    """May `n` requests go through? Returns the answer and the state with any trickle spent."""
    state = effective(st, now_ms)
    if st.forced is not None:
        return state is State.CLOSED, st
    if state is State.CLOSED:
        return True, st
    if state is State.OPEN:
        return False, st
    if st.state is State.OPEN:  # the cool-down just ended
        st = replace(st, state=State.HALF_OPEN, trickle_left=policy.trickle, changed_ms=now_ms)
    if st.trickle_left >= n:
        return True, replace(st, trickle_left=st.trickle_left - n)
    return False, st


def failure(st: BreakerState, now_ms: int, policy: BreakerPolicy) -> BreakerState:
    """A failed request (cloud unreachable) or a spent budget: trip, or count towards tripping."""
    state = effective(st, now_ms)
    if state is State.OPEN and st.forced is None:
        return st
    if st.state is State.CLOSED and st.failures + 1 < policy.failure_threshold:
        return replace(st, failures=st.failures + 1)
    trips = st.trips + 1
    until = now_ms + int(policy.cooldown.delay_s(trips) * 1000)
    return replace(st, state=State.OPEN, until_ms=until, trips=trips, failures=0, trickle_left=0, changed_ms=now_ms)


def success(st: BreakerState, now_ms: int) -> BreakerState:
    """A request that went well (or a budget back under its limit after the trickle): close."""
    if st.state is State.CLOSED:
        return replace(st, failures=0) if st.failures else st
    if effective(replace(st, forced=None), now_ms) is State.OPEN:
        return st  # still cooling down: a late success of a request from before the trip changes nothing
    return replace(st, state=State.CLOSED, until_ms=0, trips=0, failures=0, trickle_left=0, changed_ms=now_ms)


def force(st: BreakerState, state: State | None, now_ms: int) -> BreakerState:
    """Hold the breaker open or closed (an operator's decision), or release it with None."""
    return replace(st, forced=state, changed_ms=now_ms)


class Breaker:
    """An in-memory breaker (the edge's cloud reachability breaker), with an injectable clock.

    `on_change(old, new)` is called on every change of the effective state (for metrics and logs)."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], int] | None = None,
        on_change: Callable[[State, State], None] | None = None,
    ) -> None:
        self.policy = policy or BreakerPolicy(cooldown=ExponentialBackoff(), trickle=1, failure_threshold=3)
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.on_change = on_change
        self._st = BreakerState()
        self._seen = State.CLOSED

    @property
    def state(self) -> State:
        return self._note(effective(self._st, self.clock()))

    def snapshot(self) -> BreakerState:
        return self._st

    def retry_after_s(self) -> float:
        return retry_after_s(self._st, self.clock())

    def allow(self, n: int = 1) -> bool:
        now = self.clock()
        ok, self._st = allow(self._st, now, self.policy, n)
        self._note(effective(self._st, now))
        return ok

    def record_failure(self) -> None:
        now = self.clock()
        self._st = failure(self._st, now, self.policy)
        self._note(effective(self._st, now))

    def record_success(self) -> None:
        now = self.clock()
        self._st = success(self._st, now)
        self._note(effective(self._st, now))

    def force(self, state: State | None) -> None:
        now = self.clock()
        self._st = force(self._st, state, now)
        self._note(effective(self._st, now))

    def _note(self, new: State) -> State:
        if new is not self._seen:
            old, self._seen = self._seen, new
            if self.on_change is not None:
                self.on_change(old, new)
        return new


__all__ = [
    "STATE_VALUE",
    "Backoff",
    "Breaker",
    "BreakerPolicy",
    "BreakerState",
    "ConstantBackoff",
    "ExponentialBackoff",
    "State",
    "allow",
    "effective",
    "failure",
    "force",
    "retry_after_s",
    "success",
]
