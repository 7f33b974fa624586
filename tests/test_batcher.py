"""The dynamic batcher, without sleeps: batches are forced by the forming rule, a huge delay, or close().

Every wait on a future or event has a timeout, so a bug fails a test instead of hanging it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import FrozenInstanceError

import pytest
from prometheus_client import CollectorRegistry

import gpu_worker
from broker.errors import HybridError
from gpu_worker import (
    BatcherClosed,
    BatcherError,
    BatchPolicy,
    BatchSizeMismatch,
    DynamicBatcher,
    Expired,
    QueueFull,
)

WAIT = 5.0  # seconds: the most any test waits for something that must happen
NEVER_MS = 3_600_000.0  # a queue delay no test lives to see


class Recorder:
    """A batch function that records its calls, optionally transforms, and can be held on a gate."""

    def __init__(self, transform: Callable[[str], str] = str.upper, gate: threading.Event | None = None) -> None:
        self.calls: list[list[str]] = []
        self.called = threading.Event()
        self.transform = transform
        self.gate = gate

    def __call__(self, batch: list[str]) -> Sequence[str]:
        self.calls.append(list(batch))
        self.called.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "test never opened the gate"
        return [self.transform(x) for x in batch]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make() -> Iterator[Callable[..., DynamicBatcher[str, str]]]:
    made: list[DynamicBatcher[str, str]] = []

    def _make(
        fn: Callable[[list[str]], Sequence[str]], clock: Callable[[], float] = time.monotonic, **kw: float
    ) -> DynamicBatcher[str, str]:
        b = DynamicBatcher(fn, BatchPolicy(**kw), clock=clock)  # type: ignore[arg-type]
        made.append(b)
        return b

    yield _make
    for b in made:
        b.close(drain=False, timeout=WAIT)


def results(futures: Sequence[Future[str]]) -> list[str]:
    return [f.result(timeout=WAIT) for f in futures]


def test_nothing_runs_until_the_batch_is_full(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    fn = Recorder()
    b = make(fn, max_batch_size=4, preferred_min=4, max_queue_delay_ms=NEVER_MS)
    futures = [b.submit(x) for x in "abc"]
    assert not fn.called.is_set()
    assert not any(f.done() for f in futures)
    assert not fn.called.wait(0.05)  # still nothing a moment later: 3 < preferred_min, delay far off
    futures.append(b.submit("d"))
    assert results(futures) == ["A", "B", "C", "D"]
    assert fn.calls == [["a", "b", "c", "d"]]


def test_the_delay_flushes_a_partial_batch(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    fn = Recorder()
    b = make(fn, max_batch_size=32, preferred_min=8, max_queue_delay_ms=20)
    assert results(b.submit_many(["a", "b", "c"])) == ["A", "B", "C"]
    assert fn.calls == [["a", "b", "c"]]
    assert b.stats().batch_sizes == {3: 1}


def test_results_map_back_to_their_futures(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    fn = Recorder(transform=lambda x: f"<{x}>")
    b = make(fn, max_batch_size=8, preferred_min=8, max_queue_delay_ms=1)
    items = [f"job{i}" for i in range(50)]
    futures = b.submit_many(items[:20]) + [b.submit(x) for x in items[20:]]
    assert results(futures) == [f"<{x}>" for x in items]
    assert all(len(call) <= 8 for call in fn.calls)
    assert sorted(x for call in fn.calls for x in call) == sorted(items)


def test_a_poison_job_fails_alone(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    def fn(batch: list[str]) -> list[str]:
        calls.append(batch)
        if "poison" in batch:
            raise ValueError("cannot digest poison")
        return [x.upper() for x in batch]

    calls: list[list[str]] = []
    b = make(fn, max_batch_size=3, preferred_min=3, max_queue_delay_ms=NEVER_MS)
    ok1, bad, ok2 = b.submit_many(["a", "poison", "b"])
    assert ok1.result(timeout=WAIT) == "A"
    assert ok2.result(timeout=WAIT) == "B"
    with pytest.raises(ValueError, match="cannot digest poison"):
        bad.result(timeout=WAIT)
    assert calls == [["a", "poison", "b"], ["a"], ["poison"], ["b"]]
    s = b.stats()
    assert (s.isolations, s.failed, s.batches) == (1, 1, 1)


def test_a_lone_failing_job_is_not_retried(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    calls: list[list[str]] = []

    def fn(batch: list[str]) -> list[str]:
        calls.append(batch)
        raise KeyError("boom")

    b = make(fn, max_batch_size=1, preferred_min=1)
    with pytest.raises(KeyError):
        b.submit("x").result(timeout=WAIT)
    assert calls == [["x"]]
    assert b.stats().isolations == 0


def test_jobs_past_their_deadline_are_not_run(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    clock, fn = FakeClock(), Recorder()
    b = make(fn, max_batch_size=4, preferred_min=4, max_queue_delay_ms=NEVER_MS, clock=clock)
    late = b.submit("late", deadline=clock.now + 1)
    on_time = b.submit("on_time", deadline=clock.now + 100)
    no_deadline = b.submit("none")
    clock.now += 5  # "late" misses its deadline before its batch forms
    last = b.submit("last", deadline=clock.now)  # a deadline equal to now has passed too
    assert results([on_time, no_deadline]) == ["ON_TIME", "NONE"]
    for f in (late, last):
        with pytest.raises(Expired):
            f.result(timeout=WAIT)
    assert fn.calls == [["on_time", "none"]]
    s = b.stats()
    assert (s.expired, s.items, s.batch_sizes) == (2, 2, {2: 1})


def test_a_batch_of_only_expired_jobs_never_calls_fn(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    clock, fn = FakeClock(), Recorder()
    b = make(fn, max_batch_size=2, preferred_min=2, max_queue_delay_ms=NEVER_MS, clock=clock)
    futures = b.submit_many(["a", "b"], [clock.now - 1, clock.now - 2])
    for f in futures:
        assert isinstance(f.exception(timeout=WAIT), Expired)
    assert fn.calls == []
    assert b.stats().batches == 0


def test_a_full_queue_refuses_and_keeps_nothing(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    b = make(fn, max_batch_size=1, preferred_min=1, max_queue=2, max_queue_delay_ms=0)
    running = b.submit("0")
    assert fn.called.wait(WAIT)  # the dispatcher is now held inside fn with "0"; the queue is empty
    queued = [b.submit("1"), b.submit("2")]
    with pytest.raises(QueueFull) as err:
        b.submit("3")
    assert (err.value.offered, err.value.free, err.value.limit) == (1, 0, 2)
    assert isinstance(err.value, RuntimeError)
    assert b.stats().queued == 2
    gate.set()
    assert results([running, *queued]) == ["0", "1", "2"]
    assert b.stats().rejected == 1


def test_submit_many_is_all_or_nothing(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    fn = Recorder()
    b = make(fn, max_batch_size=2, preferred_min=2, max_queue=2, max_queue_delay_ms=NEVER_MS)
    first = b.submit("a")  # waits: 1 < preferred_min and the delay is far off
    with pytest.raises(QueueFull):
        b.submit_many(["b", "c"])  # one place free, two offered: neither is taken
    assert b.stats().queued == 1
    assert results([first, *b.submit_many(["b"])]) == ["A", "B"]
    assert fn.calls == [["a", "b"]]
    with pytest.raises(ValueError, match="deadlines"):
        b.submit_many(["x"], [None, None])


def test_a_length_mismatch_fails_the_whole_batch(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    b = make(lambda batch: batch[:-1], max_batch_size=3, preferred_min=3, max_queue_delay_ms=NEVER_MS)
    futures = b.submit_many(["a", "b", "c"])
    for f in futures:
        exc = f.exception(timeout=WAIT)
        assert isinstance(exc, BatchSizeMismatch)
        assert (exc.expected, exc.got) == (3, 2)
    assert b.stats().failed == 3


def test_close_with_drain_runs_what_is_queued(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    fn = Recorder()
    b = make(fn, max_batch_size=32, preferred_min=32, max_queue_delay_ms=NEVER_MS)
    futures = b.submit_many(["a", "b", "c"])
    b.close(drain=True, timeout=WAIT)
    assert [f.result(timeout=0) for f in futures] == ["A", "B", "C"]
    with pytest.raises(BatcherClosed):
        b.submit("late")
    b.close()  # twice is harmless


def test_close_without_drain_fails_what_is_queued(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    fn = Recorder()
    b = make(fn, max_batch_size=32, preferred_min=32, max_queue_delay_ms=NEVER_MS)
    futures = b.submit_many(["a", "b", "c"])
    b.close(drain=False, timeout=WAIT)
    for f in futures:
        assert isinstance(f.exception(timeout=0), BatcherClosed)
    assert fn.calls == []
    assert b.stats().closed == 3


def test_close_timeout_fails_what_has_not_started(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    gate = threading.Event()
    fn = Recorder(gate=gate)
    b = make(fn, max_batch_size=1, preferred_min=1, max_queue_delay_ms=0)
    running = b.submit("a")
    assert fn.called.wait(WAIT)
    queued = b.submit("b")
    b.close(drain=True, timeout=0.05)  # the dispatcher is held in fn: the timeout runs out
    assert isinstance(queued.exception(timeout=0), BatcherClosed)
    gate.set()
    assert running.result(timeout=WAIT) == "A"  # the running batch still delivers
    assert fn.calls == [["a"]]


def test_a_context_manager_drains_on_exit() -> None:
    with DynamicBatcher(Recorder(), BatchPolicy(max_batch_size=4, preferred_min=4, max_queue_delay_ms=NEVER_MS)) as b:
        futures = b.submit_many(["a", "b"])
    assert results(futures) == ["A", "B"]


def test_a_job_cancelled_by_its_caller_is_skipped(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    fn = Recorder()
    b = make(fn, max_batch_size=3, preferred_min=3, max_queue_delay_ms=NEVER_MS)
    a, dropped = b.submit("a"), b.submit("dropped")
    assert dropped.cancel()
    c = b.submit("c")
    assert results([a, c]) == ["A", "C"]
    assert fn.calls == [["a", "c"]]
    with pytest.raises(CancelledError):
        dropped.result(timeout=0)


def test_stats_count_the_formed_batches(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    fn = Recorder()
    b = make(fn, max_batch_size=4, preferred_min=4, max_queue_delay_ms=NEVER_MS)
    futures = b.submit_many([str(i) for i in range(10)])  # 4 + 4 run at once; 2 wait for close
    results(futures[:8])
    b.close(drain=True, timeout=WAIT)
    results(futures)
    s = b.stats()
    assert s.batch_sizes == {4: 2, 2: 1}
    assert (s.submitted, s.batches, s.items, s.queued, s.expired, s.failed) == (10, 3, 10, 0, 0, 0)
    assert s.queue_wait_s.count == 10 and s.batch_s.count == 3
    assert s.batch_s.total >= 0 and s.queue_wait_s.mean >= 0
    assert s.queue_wait_s.bounds[-1] == float("inf")
    with pytest.raises(FrozenInstanceError):
        s.batches = 0  # type: ignore[misc]


def test_prometheus_histograms_go_to_the_given_registry() -> None:
    registry = CollectorRegistry()
    policy = BatchPolicy(max_batch_size=2, preferred_min=2, max_queue_delay_ms=NEVER_MS)
    with DynamicBatcher(Recorder(), policy, registry=registry) as b:
        results(b.submit_many(["a", "b"]))
    assert registry.get_sample_value("hybrid_worker_batch_size_count") == 1
    assert registry.get_sample_value("hybrid_worker_batch_size_sum") == 2
    assert registry.get_sample_value("hybrid_worker_queue_wait_seconds_count") == 2
    assert registry.get_sample_value("hybrid_worker_batch_seconds_count") == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"preferred_min": 0}, "preferred_min"),
        ({"max_batch_size": 4, "preferred_min": 5}, "preferred_min"),
        ({"max_queue_delay_ms": -1}, "max_queue_delay_ms"),
        ({"max_queue_delay_ms": float("nan")}, "max_queue_delay_ms"),
        ({"max_queue_delay_ms": float("inf")}, "max_queue_delay_ms"),
        ({"max_queue": 31}, "max_queue"),
    ],
)
def test_policy_rejects_bad_values(kw: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchPolicy(**kw)  # type: ignore[arg-type]


def test_policy_defaults_and_unknown_keys() -> None:
    p = BatchPolicy()
    assert (p.max_batch_size, p.preferred_min, p.max_queue_delay_ms, p.max_queue) == (32, 8, 10.0, 1024)
    with pytest.raises(TypeError):
        BatchPolicy(max_batchsize=16)  # type: ignore[call-arg]


def test_errors_are_rooted() -> None:
    for cls in (QueueFull, Expired, BatcherClosed, BatchSizeMismatch):
        assert issubclass(cls, BatcherError) and issubclass(cls, HybridError) and issubclass(cls, RuntimeError)


def test_public_surface() -> None:
    assert gpu_worker.__all__ == sorted(gpu_worker.__all__)
    for name in gpu_worker.__all__:
        assert hasattr(gpu_worker, name), name


def test_importable_without_torch() -> None:
    code = "import sys, gpu_worker; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_isolation_rechecks_deadlines(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    clock = FakeClock()

    def fn(batch: list[str]) -> list[str]:
        if len(batch) > 1:
            clock.now += 5  # the failed batch took long enough for "a" to miss its deadline
            raise RuntimeError("batch failed")
        return [x.upper() for x in batch]

    b = make(fn, max_batch_size=2, preferred_min=2, max_queue_delay_ms=NEVER_MS, clock=clock)
    a, c = b.submit_many(["a", "c"], [clock.now + 1, None])
    assert isinstance(a.exception(timeout=WAIT), Expired)
    assert c.result(timeout=WAIT) == "C"
    s = b.stats()
    assert (s.isolations, s.expired, s.failed) == (1, 1, 0)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # it is meant to die
def test_a_dying_dispatcher_leaves_no_future_hanging(make: Callable[..., DynamicBatcher[str, str]]) -> None:
    gate, started = threading.Event(), threading.Event()

    def fn(batch: list[str]) -> list[str]:
        started.set()
        assert gate.wait(WAIT)
        raise SystemExit("the model process is going away")

    b = make(fn, max_batch_size=1, preferred_min=1, max_queue_delay_ms=0)
    running = b.submit("a")
    assert started.wait(WAIT)
    queued = b.submit("b")
    gate.set()
    assert isinstance(running.exception(timeout=WAIT), SystemExit)
    assert isinstance(queued.exception(timeout=WAIT), BatcherClosed)
    with pytest.raises(BatcherClosed):
        b.submit("c")
    b.close(timeout=WAIT)  # joins the dead thread, so its exception is reported inside this test
