"""The breaker state machine (pure, injectable clock) and the edge's in-memory reachability breaker."""

from __future__ import annotations

import random

import pytest

from broker.breaker import (
    Breaker,
    BreakerPolicy,
    BreakerState,
    ConstantBackoff,
    ExponentialBackoff,
    State,
    allow,
    effective,
    failure,
    force,
    success,
)


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def test_closed_open_half_open_closed() -> None:
    policy = BreakerPolicy(cooldown=ConstantBackoff(10), trickle=3)
    st = BreakerState()
    assert allow(st, 0, policy) == (True, st)
    st = failure(st, 0, policy)
    assert effective(st, 0) is State.OPEN and st.until_ms == 10_000
    assert allow(st, 9_999, policy)[0] is False
    assert effective(st, 10_000) is State.HALF_OPEN
    ok, st = allow(st, 10_000, policy, n=2)  # the trickle: 3 requests in all
    assert ok and st.state is State.HALF_OPEN and st.trickle_left == 1
    assert allow(st, 10_001, policy, n=2)[0] is False  # more than what is left
    ok, st = allow(st, 10_002, policy)
    assert ok and st.trickle_left == 0
    assert allow(st, 10_003, policy)[0] is False  # trickle spent: wait for the verdict
    st = success(st, 10_004)
    assert st.state is State.CLOSED and st.trips == 0
    assert allow(st, 10_005, policy, n=1000)[0] is True


def test_a_failed_probe_reopens_for_longer() -> None:
    policy = BreakerPolicy(cooldown=ExponentialBackoff(base_s=1, cap_s=8, jitter=0), trickle=1)
    st = failure(BreakerState(), 0, policy)
    ends = [st.until_ms]
    for _ in range(5):
        now = st.until_ms
        ok, st = allow(st, now, policy)
        assert ok  # the probe
        st = failure(st, now, policy)
        ends.append(st.until_ms - now)
    assert ends == [1000, 2000, 4000, 8000, 8000, 8000]  # doubling, capped


def test_success_during_cool_down_changes_nothing() -> None:
    policy = BreakerPolicy(cooldown=ConstantBackoff(10))
    st = failure(BreakerState(), 0, policy)
    assert success(st, 5_000) == st
    assert failure(st, 5_000, policy) == st  # already open: the cool-down is not extended


def test_failure_threshold_counts_consecutive_failures() -> None:
    policy = BreakerPolicy(cooldown=ConstantBackoff(1), failure_threshold=3)
    st = failure(failure(BreakerState(), 0, policy), 0, policy)
    assert effective(st, 0) is State.CLOSED
    st = success(st, 0)  # a success resets the count
    st = failure(failure(st, 0, policy), 0, policy)
    assert effective(st, 0) is State.CLOSED
    assert effective(failure(st, 0, policy), 0) is State.OPEN


def test_forced_states_hold_until_released() -> None:
    policy = BreakerPolicy(cooldown=ConstantBackoff(1))
    st = force(BreakerState(), State.OPEN, 0)
    assert allow(st, 10**9, policy)[0] is False
    st = force(failure(st, 0, policy), State.CLOSED, 0)
    assert allow(st, 1, policy)[0] is True and st.state is State.OPEN  # the machine still knows
    st = force(st, None, 2)
    assert effective(st, 2) is State.OPEN and effective(st, 1000) is State.HALF_OPEN


def test_state_round_trips_through_text() -> None:
    st = force(failure(BreakerState(), 5, BreakerPolicy()), State.CLOSED, 6)
    assert BreakerState.loads(st.dumps()) == st
    assert BreakerState.loads(None) == BreakerState()


def test_exponential_backoff_jitter_stays_in_its_band() -> None:
    backoff = ExponentialBackoff(base_s=2, cap_s=60, jitter=0.5, rng=random.Random(7))
    for attempt in range(1, 10):
        full = min(60, 2 * 2 ** (attempt - 1))
        draws = {backoff.delay_s(attempt) for _ in range(50)}
        assert all(full / 2 <= d <= full for d in draws)
        assert len(draws) > 1  # jittered, so a fleet does not retry in step


def test_edge_reachability_breaker_backs_off_then_probes() -> None:
    clock = FakeClock()
    changes: list[tuple[State, State]] = []
    edge = Breaker(
        BreakerPolicy(cooldown=ExponentialBackoff(base_s=1, cap_s=30, jitter=0), trickle=1, failure_threshold=2),
        clock=clock,
        on_change=lambda old, new: changes.append((old, new)),
    )
    assert edge.allow()
    edge.record_failure()
    assert edge.allow()  # one failure is under the threshold
    edge.record_failure()
    assert edge.state is State.OPEN and not edge.allow()  # cloud unreachable: use the local fallback
    assert edge.retry_after_s() == pytest.approx(1.0)
    clock.ms += 1000
    assert edge.allow()  # the probe
    assert not edge.allow()  # only one
    edge.record_failure()
    clock.ms += 1999
    assert not edge.allow()  # second trip: two seconds
    clock.ms += 1
    assert edge.allow()
    edge.record_success()
    assert edge.state is State.CLOSED and edge.allow() and edge.allow()
    assert changes == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]
