"""The worker's consumer loop: fetch → route → batch per (task, model) → store results → acknowledge.

Two threads share one `broker.Consumer`:

- the **reader** (the caller's thread) fetches jobs (interactive lane before batch, reclaimed jobs
  first), answers at once the jobs that need no model run — deadline passed (`expired` result),
  unknown task/model, inputs the runner refuses (error result) — and hands the rest to the
  runner's `DynamicBatcher`. It keeps at most `max_in_flight` jobs between fetch and result;
- the **completer** gathers finished futures and writes their sealed results and acknowledgements
  in one `Consumer.complete` call per group (results are SET NX, so a job run twice still has one
  result).

A batch that raises is retried job by job inside the batcher, so a poison job fails only itself.
Unopenable messages never get here: the consumer dead-letters them. `drain()` (SIGTERM) stops the
reader, lets every job in hand finish and be acknowledged, and returns within the grace period;
what is still running then stays pending and is reclaimed by another worker (XAUTOCLAIM).

Each batch's run time is charged to the job's tenants as GPU-seconds: a Prometheus counter and,
with a `Ledger`, the zone's shared cost ledger (flushed by the completer, not per job).
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from broker import keys
from broker.consumer import Consumer, Delivery, Outcome
from broker.errors import DeadlinePassed, HybridError, RedisUnavailable
from broker.ledger import Ledger
from broker.message import now_ms
from gpu_worker.batcher import BatcherClosed, BatchPolicy, DynamicBatcher
from gpu_worker.runners.base import ModelRunner, UnknownTask

log = logging.getLogger(__name__)

RunnerKey = tuple[str, str]  # (task, model)


@dataclass
class WorkerStats:
    fetched: int = 0
    completed: int = 0
    expired: int = 0
    rejected: int = 0  # unknown task/model or invalid inputs: error result without a model run
    failed: int = 0  # the model raised for this job (after isolation)
    complete_failures: int = 0  # result writes that failed (jobs left pending, reclaimed later)
    abandoned: int = 0  # dropped unrun at shutdown: no result, left pending for another worker
    busy_s: float = 0.0  # time spent inside run_batch
    batch_sizes: Counter[int] = field(default_factory=Counter)


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None, zone: str) -> None:
        self.zone = zone
        self.registry = registry
        if registry is None:
            self.jobs = self.gpu_seconds = None
            self.in_flight = self.ready = None
            return
        self.jobs = PromCounter(
            "hybrid_worker_jobs",
            "Jobs finished by this worker, by outcome",
            ["zone", "task", "outcome"],
            registry=registry,
        )
        self.gpu_seconds = PromCounter(
            "hybrid_worker_gpu_seconds", "Accelerator seconds spent running batches", ["zone", "task", "device"],
            registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge("hybrid_worker_in_flight_jobs", "Jobs fetched and not yet completed", registry=registry)
        self.ready = Gauge(
            "hybrid_worker_ready", "1 once every model is loaded and the worker consumes", registry=registry
        )

    def job(self, task: str, outcome: str) -> None:
        if self.jobs is not None:
            self.jobs.labels(self.zone, task, outcome).inc()


class Worker:
    """Serves `runners` from one zone's streams through `consumer`."""

    def __init__(
        self,
        consumer: Consumer,
        runners: Iterable[ModelRunner],
        *,
        max_in_flight: int = 128,
        policies: Mapping[RunnerKey, BatchPolicy] | None = None,
        ledger: Ledger | None = None,
        registry: CollectorRegistry | None = None,
        heartbeat_s: float = 5.0,
        redis_outage_s: float = 30.0,
    ) -> None:
        self.consumer = consumer
        self.zone = consumer.zone
        self.name = consumer.name
        self.runners: dict[RunnerKey, ModelRunner] = {}
        self.default_model: dict[str, str] = {}
        self._aliases: dict[RunnerKey, RunnerKey] = {}
        for r in runners:
            self.runners[(r.task, r.model)] = r
            self.default_model.setdefault(r.task, r.model)
            for alias in r.aliases:
                self._aliases[alias] = (r.task, r.model)
        if not self.runners:
            raise ValueError("a worker needs at least one runner")
        self.max_in_flight = max_in_flight
        self.policies = dict(policies or {})
        self.ledger = ledger
        self.heartbeat_s = heartbeat_s
        self.redis_outage_s = redis_outage_s  # ride out a Redis restart this long before exiting
        self._down_since: float | None = None
        self.stats = WorkerStats()
        self.ready = threading.Event()
        self.draining = threading.Event()
        self._metrics = _Metrics(registry, self.zone)
        self._registry = registry
        self._batchers: dict[RunnerKey, DynamicBatcher[Delivery, dict[str, Any]]] = {}
        self._done: queue.Queue[tuple[Delivery, Outcome, str] | None] = queue.Queue()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._spend: defaultdict[str, float] = defaultdict(float)  # tenant → GPU-seconds not yet in the ledger
        self._spend_lock = threading.Lock()
        self._stop = threading.Event()
        self._completer: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self._held: set[tuple[str, bytes]] = set()  # (stream, entry id) fetched and not yet completed
        self._last_touch = time.monotonic()
        self.load_s: dict[str, float] = {}

    # -- start-up -----------------------------------------------------------------------------------

    def load(self) -> None:
        """Load every model once; the worker counts as capacity (`ready`) only afterwards."""
        for key, runner in self.runners.items():
            started = time.perf_counter()
            runner.load()
            self.load_s[f"{key[0]}/{key[1]}"] = time.perf_counter() - started
            info = runner.info()
            policy = self.policies.get(key) or BatchPolicy(
                max_batch_size=info.max_batch_size,
                preferred_min=min(info.preferred_min, info.max_batch_size),
                max_queue_delay_ms=info.max_queue_delay_ms,
                max_queue=max(self.max_in_flight, info.max_batch_size),
            )
            self._batchers[key] = DynamicBatcher(
                self._batch_fn(runner),
                policy,
                clock=time.time,
                registry=self._registry,
                labels={"task": key[0], "model": key[1]},
                name=f"batcher-{key[0]}-{key[1]}",
            )
            log.info(
                "loaded %s/%s on %s (%s) in %.2fs", *key, info.device, info.dtype, self.load_s[f"{key[0]}/{key[1]}"]
            )
        self.consumer.ensure_groups()
        self.ready.set()
        if self._metrics.ready is not None:
            self._metrics.ready.set(1)
        self._heartbeat(force=True)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"task": i.task, "model": i.model, "device": i.device, "dtype": i.dtype, "max_batch_size": i.max_batch_size}
            for i in (r.info() for r in self.runners.values())
        ]

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, *, burst: bool = False, grace_s: float = 30.0) -> WorkerStats:
        """Consume until `stop` is set (then drain for up to `grace_s`), or with `burst` until no job is left."""
        stop = stop or threading.Event()
        if not self.ready.is_set():
            self.load()
        self._completer = threading.Thread(target=self._complete_loop, name="completer", daemon=True)
        self._completer.start()
        try:
            while not stop.is_set():
                room = self._wait_for_room(stop)
                if room == 0:
                    self._keep_alive()
                    continue
                block = 0 if burst else None
                try:
                    deliveries = self.consumer.fetch(count=min(room, self.consumer.count), block_ms=block)
                except RedisUnavailable as exc:
                    if not self._ride_out(exc, stop):
                        raise
                    continue
                self._down_since = None
                if not deliveries:
                    self._heartbeat()
                    self._keep_alive()
                    if burst and self._idle():
                        break
                    continue
                self._dispatch(deliveries)
                self._heartbeat()
                self._keep_alive()
        finally:
            self.drain(grace_s)
        return self.stats

    def _ride_out(self, exc: RedisUnavailable, stop: threading.Event) -> bool:
        """Redis went away (a restart, a failover): wait and read again for up to `redis_outage_s`; False
        once that is spent (the caller exits, and a supervisor or Kubernetes restarts the worker). Jobs whose
        results could not be stored meanwhile stay pending and are reclaimed after min-idle."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning("Redis unavailable, retrying for up to %.0f s: %s", self.redis_outage_s, exc)
        if now - self._down_since > self.redis_outage_s:
            return False
        stop.wait(0.5)
        return True

    def _wait_for_room(self, stop: threading.Event) -> int:
        with self._cond:
            if self._in_flight >= self.max_in_flight:
                self._cond.wait(timeout=0.5)  # woken by the completer; the timeout only re-checks `stop`
            return max(self.max_in_flight - self._in_flight, 0) if not stop.is_set() else 0

    def _idle(self) -> bool:
        with self._cond:
            while self._in_flight:
                self._cond.wait(timeout=1.0)
        return True

    def _dispatch(self, fetched: Sequence[Delivery]) -> None:
        with self._cond:  # a reclaim may hand back a job this worker still holds: it runs once here
            deliveries = [d for d in fetched if (d.stream, d.entry_id) not in self._held]
            self._held.update((d.stream, d.entry_id) for d in deliveries)
            self._in_flight += len(deliveries)
        self.stats.fetched += len(deliveries)
        self._gauge()
        groups: dict[RunnerKey, list[Delivery]] = {}
        now = now_ms()
        for d in deliveries:
            h = d.job.header
            if h.deadline_ms is not None and h.deadline_ms <= now:
                self._finish(
                    d, DeadlinePassed(f"deadline passed {now - h.deadline_ms} ms before a worker got it"), "expired"
                )
                continue
            key = self._route(h.task, h.model)
            runner = self.runners.get(key)
            if runner is None:
                served = ", ".join(f"{t}/{m}" for t, m in sorted(self.runners))
                self._finish(
                    d, UnknownTask(f"no runner for task {h.task!r} model {h.model!r} (serves: {served})"), "rejected"
                )
                continue
            try:
                runner.check(d.job.payload.inputs)
            except (HybridError, TypeError, ValueError, KeyError) as exc:
                self._finish(d, exc, "rejected")
                continue
            groups.setdefault(key, []).append(d)
        for key, items in groups.items():
            deadlines = [d.job.header.deadline_ms / 1000 if d.job.header.deadline_ms else None for d in items]
            futures = self._batchers[key].submit_many(items, deadlines)
            for d, fut in zip(items, futures, strict=True):
                fut.add_done_callback(functools.partial(self._settled, d))

    def _settled(self, delivery: Delivery, fut: Future[dict[str, Any]]) -> None:
        self._finish(delivery, *_outcome(fut))

    def _route(self, task: str, model: str) -> RunnerKey:
        """The runner for a job's (task, model): exact, then an alias, then the task's default model."""
        if (task, model) in self.runners:
            return task, model
        alias = self._aliases.get((task, model)) or self._aliases.get((task, "*"))
        if alias is not None:
            return alias
        return (task, self.default_model.get(task, model)) if model == "default" else (task, model)

    def _finish(self, delivery: Delivery, outcome: Outcome, kind: str) -> None:
        self._done.put((delivery, outcome, kind))

    # -- running a batch ---------------------------------------------------------------------------

    def _batch_fn(self, runner: ModelRunner) -> Any:
        device = runner.info().device
        task = runner.task

        def run(items: list[Delivery]) -> list[dict[str, Any]]:
            started = time.perf_counter()
            try:
                return runner.run_batch([d.job.payload.inputs for d in items])
            finally:
                spent = time.perf_counter() - started
                self.stats.busy_s += spent
                self.stats.batch_sizes[len(items)] += 1
                if self._metrics.gpu_seconds is not None:
                    self._metrics.gpu_seconds.labels(self.zone, task, device).inc(spent)
                with self._spend_lock:
                    for d in items:
                        self._spend[d.job.header.tenant] += spent / len(items)

        return run

    # -- completing --------------------------------------------------------------------------------

    def _complete_loop(self) -> None:
        while True:
            first = self._done.get()
            if first is None:
                return
            group = [first]
            stop_after = False
            while len(group) < 256:
                try:
                    nxt = self._done.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop_after = True
                    break
                group.append(nxt)
            self._complete(group)
            if stop_after:
                return

    def _complete(self, group: list[tuple[Delivery, Outcome, str]]) -> None:
        # Jobs the batcher dropped unrun at shutdown get no result: they stay pending for reclaim.
        done = [(d, o) for d, o, kind in group if kind != "abandoned"]
        try:
            self.consumer.complete(done)
        except Exception:
            self.stats.complete_failures += len(done)
            log.exception("storing %d results failed; their jobs stay pending and will be reclaimed", len(done))
        else:
            for d, _, kind in group:
                self._count(d.job.header.task, kind)
        with self._cond:
            self._in_flight -= len(group)
            self._held.difference_update((d.stream, d.entry_id) for d, _, _ in group)
            self._cond.notify_all()
        self._gauge()
        self._flush_spend()

    def _count(self, task: str, kind: str) -> None:
        if kind == "abandoned":
            self.stats.abandoned += 1
            return
        self.stats.completed += 1
        if kind == "expired":
            self.stats.expired += 1
        elif kind == "rejected":
            self.stats.rejected += 1
        elif kind == "error":
            self.stats.failed += 1
        self._metrics.job(task, kind)

    def _gauge(self) -> None:
        if self._metrics.in_flight is not None:
            self._metrics.in_flight.set(self._in_flight)

    def _flush_spend(self) -> None:
        if self.ledger is None:
            return
        with self._spend_lock:
            spend, self._spend = dict(self._spend), defaultdict(float)
        if not spend:
            return
        try:
            self.ledger.record(self.name, spend)
        except Exception:
            log.exception("could not record %.3f GPU-seconds in the ledger", sum(spend.values()))

    def _keep_alive(self) -> None:
        """Every third of the reclaim idle time, mark held jobs as still being worked on."""
        now = time.monotonic()
        if now - self._last_touch < self.consumer.min_idle_ms / 3000:
            return
        self._last_touch = now
        with self._cond:
            held = list(self._held)
        if held:
            try:
                self.consumer.touch(held)
            except Exception as exc:  # advisory: at worst another worker runs the job too (one result)
                log.warning("could not refresh %d held jobs: %s", len(held), exc)

    # -- heartbeat and drain -----------------------------------------------------------------------

    def _heartbeat(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_heartbeat < self.heartbeat_s:
            return
        self._last_heartbeat = now
        beat = {
            "ready": self.ready.is_set() and not self.draining.is_set(),
            "completed": self.stats.completed,
            "busy_s": round(self.stats.busy_s, 4),
            "in_flight": self._in_flight,
            "models": [f"{t}/{m}" for t, m in self.runners],
            "ts_ms": now_ms(),
        }
        try:
            self.consumer.client.hset(keys.worker_heartbeats(self.zone), self.name, json.dumps(beat))
        except Exception as exc:  # a heartbeat is advisory; the loop goes on
            log.debug("heartbeat failed: %s", exc)

    def drain(self, grace_s: float = 30.0) -> bool:
        """Stop taking jobs, finish and acknowledge those in hand within `grace_s`. True if all were."""
        self.draining.set()
        if self._metrics.ready is not None:
            self._metrics.ready.set(0)
        self.consumer.release_quietly()  # entries read ahead and not taken: to the next reclaim at once
        deadline = time.monotonic() + grace_s
        with self._cond:
            while self._in_flight and time.monotonic() < deadline:
                self._cond.wait(timeout=max(deadline - time.monotonic(), 0.0))
            clean = self._in_flight == 0
        for b in self._batchers.values():
            b.close(drain=False, timeout=0.1)
        if self._completer is not None and self._completer.is_alive():
            self._done.put(None)
            self._completer.join(timeout=max(deadline - time.monotonic(), 1.0))
        try:
            self.consumer.client.hdel(keys.worker_heartbeats(self.zone), self.name)
        except Exception as exc:
            log.debug("could not remove heartbeat: %s", exc)
        if not clean:
            log.warning(
                "drain: %d job(s) still running after %.1fs; left pending for reclaim", self._in_flight, grace_s
            )
        return clean


def _outcome(fut: Future[dict[str, Any]]) -> tuple[Outcome, str]:
    exc = fut.exception()
    if exc is None:
        return fut.result(), "ok"
    if isinstance(exc, BatcherClosed):
        return exc, "abandoned"
    return exc, "expired" if isinstance(exc, DeadlinePassed) else "error"


__all__ = ["RunnerKey", "Worker", "WorkerStats"]
