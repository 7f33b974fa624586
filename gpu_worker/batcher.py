"""Dynamic batcher: jobs go in one at a time, a dispatcher thread runs them through the model in batches.

Each job gets a `Future`. The dispatcher waits on a condition (never polls) and forms a batch by this rule,
checked whenever jobs arrive, when the oldest job's wait runs out, and after every batch:

1. at least `preferred_min` jobs are queued  → run the oldest `min(queued, max_batch_size)` now;
2. 1 ≤ queued < `preferred_min`              → wait until the oldest has waited `max_queue_delay_ms`
                                               (the wait shrinks as it ages), then run what is there;
3. the batcher is closing with drain         → run what is queued at once, no waiting.

`preferred_min == max_batch_size` gives the plain "batch full or timeout" rule. Jobs whose deadline has
passed when their batch forms are failed with `Expired` and not run. If the batch function raises, each
job of that batch is retried alone, so one poison job fails only its own future. The idea is Ray Serve's
`_BatchQueue`; the bounded queue and the deadlines are ours. docs/batcher.md has the details.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as PromHistogram

from broker.errors import DeadlinePassed, HybridError

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class BatcherError(HybridError, RuntimeError):
    """Root of the batcher's errors (a `HybridError`, and a `RuntimeError`)."""


class QueueFull(BatcherError):
    """The bounded queue has no room: nothing was enqueued, the caller still holds every job it offered."""

    def __init__(self, offered: int, free: int, limit: int) -> None:
        super().__init__(f"batcher queue is full: {offered} job(s) offered, {free} of {limit} places free")
        self.offered, self.free, self.limit = offered, free, limit


class Expired(BatcherError, DeadlinePassed):
    """The job's deadline had passed when its batch formed; it was not run."""

    def __init__(self, deadline: float, now: float) -> None:
        super().__init__(f"deadline {deadline:.3f} passed {now - deadline:.3f}s before the job could run")
        self.deadline, self.now = deadline, now


class BatcherClosed(BatcherError):
    """The batcher is closed, or was closed without drain (or past its timeout) before this job ran."""


class BatchSizeMismatch(BatcherError):
    """The batch function returned a different number of results than it was given jobs."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"batch function returned {got} result(s) for {expected} job(s)")
        self.expected, self.got = expected, got


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchPolicy:
    """How batches are formed; see the module docstring for the rule."""

    max_batch_size: int = 32
    preferred_min: int = 8
    max_queue_delay_ms: float = 10.0
    max_queue: int = 1024  # jobs waiting for a batch (not those running); more raise `QueueFull`

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if not 1 <= self.preferred_min <= self.max_batch_size:
            raise ValueError(
                f"preferred_min must be between 1 and max_batch_size ({self.max_batch_size}), got {self.preferred_min}"
            )
        if not 0 <= self.max_queue_delay_ms < math.inf:  # NaN fails too
            raise ValueError(f"max_queue_delay_ms must be finite and at least 0, got {self.max_queue_delay_ms}")
        if self.max_queue < self.max_batch_size:
            raise ValueError(f"max_queue must be at least max_batch_size ({self.max_batch_size}), got {self.max_queue}")


@dataclass(frozen=True)
class Histogram:
    """`counts[i]` observations fell in `(bounds[i-1], bounds[i]]`; the last bound is +inf."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclass(frozen=True)
class BatcherStats:
    submitted: int  # jobs accepted into the queue
    rejected: int  # jobs refused with `QueueFull`
    queued: int  # jobs waiting now
    batches: int  # batches handed to the batch function (retries of single jobs not counted)
    items: int  # jobs in those batches
    expired: int  # jobs failed with `Expired`, never run
    closed: int  # jobs failed with `BatcherClosed`
    isolations: int  # batches that raised and were retried job by job
    failed: int  # jobs whose future got an error from the batch function (poison, size mismatch)
    batch_sizes: Mapping[int, int]  # formed batch size → number of batches
    queue_wait_s: Histogram  # per job run: time from submit to its batch forming
    batch_s: Histogram  # per batch: time to settle every future of it, retries included


class _Recorder:
    def __init__(self, bounds: Sequence[float], prom: PromHistogram | None) -> None:
        self.bounds = (*bounds, math.inf)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.prom = prom

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        if self.prom is not None:
            self.prom.observe(value)

    def snapshot(self) -> Histogram:
        return Histogram(self.bounds, tuple(self.counts), self.total)


_SHARED: dict[tuple[int, str], PromHistogram] = {}
_SHARED_LOCK = threading.Lock()


def _prom(
    registry: CollectorRegistry | None,
    name: str,
    doc: str,
    buckets: Sequence[float],
    labels: Mapping[str, str] | None = None,
) -> PromHistogram | None:
    """The batcher's histogram on `registry`; with `labels`, the child of one labelled histogram that
    every batcher on that registry shares (one per model in a worker: task, model)."""
    if registry is None:
        return None
    if not labels:
        return PromHistogram(name, doc, buckets=buckets, registry=registry)
    with _SHARED_LOCK:
        family = _SHARED.get((id(registry), name))
        if family is None:
            family = PromHistogram(name, doc, sorted(labels), buckets=buckets, registry=registry)
            _SHARED[(id(registry), name)] = family
    return family.labels(**labels)


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: Future[R]
    deadline: float | None
    enqueued: float  # time.monotonic()


class DynamicBatcher(Generic[T, R]):
    """Runs `fn(list[T]) -> Sequence[R]` (one result per job, in order) on batches formed by `policy`.

    `clock` is what deadlines are measured on (e.g. `time.time` for epoch-second deadlines); queue delays
    always use `time.monotonic`. With `registry`, Prometheus histograms `hybrid_worker_batch_size`,
    `hybrid_worker_queue_wait_seconds` and `hybrid_worker_batch_seconds` are registered on it; with `labels`
    too (e.g. task, model), every batcher on the registry shares one labelled family of each.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        policy: BatchPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
        labels: Mapping[str, str] | None = None,
        name: str = "batcher",
    ) -> None:
        self._fn = fn
        self.policy = policy or BatchPolicy()
        self._clock = clock
        self._queue: deque[_Pending[T, R]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._counts: Counter[str] = Counter()
        self._sizes: Counter[int] = Counter()
        self._size_prom = _prom(registry, "hybrid_worker_batch_size", "Jobs per formed batch", SIZE_BUCKETS, labels)
        self._wait = _Recorder(
            TIME_BUCKETS, _prom(registry, "hybrid_worker_queue_wait_seconds", "Submit to batch", TIME_BUCKETS, labels)
        )
        self._exec = _Recorder(
            TIME_BUCKETS, _prom(registry, "hybrid_worker_batch_seconds", "Batch run", TIME_BUCKETS, labels)
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------------

    def submit(self, item: T, deadline: float | None = None) -> Future[R]:
        """Queue one job; raises `QueueFull` (job not taken) or `BatcherClosed`."""
        return self.submit_many([item], [deadline])[0]

    def submit_many(self, items: Sequence[T], deadlines: Sequence[float | None] | None = None) -> list[Future[R]]:
        """Queue jobs all together or not at all (`QueueFull`), so they can share a batch."""
        deadlines = [None] * len(items) if deadlines is None else deadlines
        if len(deadlines) != len(items):
            raise ValueError(f"{len(deadlines)} deadlines given for {len(items)} jobs")
        now = time.monotonic()
        pending: list[_Pending[T, R]] = [_Pending(it, Future(), d, now) for it, d in zip(items, deadlines, strict=True)]
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            free = self.policy.max_queue - len(self._queue)
            if len(pending) > free:
                self._counts["rejected"] += len(pending)
                raise QueueFull(len(pending), free, self.policy.max_queue)
            self._queue.extend(pending)
            self._counts["submitted"] += len(pending)
            self._cond.notify()
        return [p.future for p in pending]

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs. With `drain`, run what is queued first; without, fail it with `BatcherClosed`.
        Waits up to `timeout` for the dispatcher; jobs still queued then are failed too. A batch already
        running always finishes and delivers its results. Closing twice is harmless."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            dropped = [] if drain else self._pop_all()
        self._fail(dropped, BatcherClosed("closed before the job ran"), "closed")
        if threading.current_thread() is self._thread:  # closed from the batch function: cannot wait
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                dropped = self._pop_all()
            self._fail(dropped, BatcherClosed(f"not run within the close timeout of {timeout}s"), "closed")

    def __enter__(self) -> DynamicBatcher[T, R]:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def stats(self) -> BatcherStats:
        with self._cond:
            c = self._counts
            return BatcherStats(
                submitted=c["submitted"],
                rejected=c["rejected"],
                queued=len(self._queue),
                batches=c["batches"],
                items=c["items"],
                expired=c["expired"],
                closed=c["closed"],
                isolations=c["isolations"],
                failed=c["failed"],
                batch_sizes=dict(self._sizes),
                queue_wait_s=self._wait.snapshot(),
                batch_s=self._exec.snapshot(),
            )

    # -- the dispatcher thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._execute(batch)
        finally:  # only non-empty if the loop died: nobody may wait forever
            with self._cond:
                self._closed = True
                dropped = self._pop_all()
            self._fail(dropped, BatcherClosed("the batcher's dispatcher stopped"), "closed")

    def _next_batch(self) -> list[_Pending[T, R]] | None:
        """Block until the forming rule says run; fail the expired jobs; return the rest, or None to stop."""
        delay = self.policy.max_queue_delay_ms / 1000
        with self._cond:
            while True:
                n = len(self._queue)
                if n >= self.policy.preferred_min or (n and self._closed):
                    break
                if self._closed:
                    return None
                if n == 0:
                    self._cond.wait()
                    continue
                left = delay - (time.monotonic() - self._queue[0].enqueued)
                if left <= 0:
                    break
                self._cond.wait(left)
            now, formed_at = self._clock(), time.monotonic()
            live: list[_Pending[T, R]] = []
            dead: list[_Pending[T, R]] = []
            while self._queue and len(live) < self.policy.max_batch_size:
                p = self._queue.popleft()
                if p.future.set_running_or_notify_cancel():  # False: cancelled by its caller, skip it
                    (dead if p.deadline is not None and p.deadline <= now else live).append(p)
            self._counts["expired"] += len(dead)
            if live:
                self._counts["batches"] += 1
                self._counts["items"] += len(live)
                self._sizes[len(live)] += 1
                if self._size_prom is not None:
                    self._size_prom.observe(len(live))
                for p in live:
                    self._wait.observe(formed_at - p.enqueued)
        for p in dead:
            p.future.set_exception(Expired(p.deadline or 0.0, now))
        return live

    def _execute(self, batch: list[_Pending[T, R]]) -> None:
        if not batch:
            return
        started = time.monotonic()
        try:
            self._settle(batch)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, …: leave no future hanging
            self._fail(batch, exc, "failed")
            raise
        finally:
            with self._cond:
                self._exec.observe(time.monotonic() - started)

    def _settle(self, batch: list[_Pending[T, R]]) -> None:
        try:
            results = list(self._fn([p.item for p in batch]))
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc, "failed")
            else:
                self._isolate(batch, exc)
            return
        if len(results) != len(batch):
            self._fail(batch, BatchSizeMismatch(len(batch), len(results)), "failed")
            return
        for p, result in zip(batch, results, strict=True):
            p.future.set_result(result)

    def _isolate(self, live: list[_Pending[T, R]], exc: Exception) -> None:
        """The batch raised: run each job alone, so only the poison ones fail (with their own error)."""
        log.warning("a batch of %d raised %r; retrying its jobs one by one", len(live), exc)
        with self._cond:
            self._counts["isolations"] += 1
        for p in live:
            now = self._clock()
            if p.deadline is not None and p.deadline <= now:
                self._fail([p], Expired(p.deadline, now), "expired")
                continue
            try:
                results = list(self._fn([p.item]))
                if len(results) != 1:
                    raise BatchSizeMismatch(1, len(results))
            except Exception as single:
                self._fail([p], single, "failed")
            else:
                p.future.set_result(results[0])

    def _pop_all(self) -> list[_Pending[T, R]]:
        """Take every queued job (call with the lock held); those cancelled by their caller are left out."""
        taken = [p for p in self._queue if p.future.set_running_or_notify_cancel()]
        self._queue.clear()
        return taken

    def _fail(self, pending: Sequence[_Pending[T, R]], exc: BaseException, counter: str) -> None:
        pending = [p for p in pending if not p.future.done()]
        if not pending:
            return
        with self._cond:
            self._counts[counter] += len(pending)
        for p in pending:
            p.future.set_exception(exc)
