"""The local actuator of the autoscaler: starts and stops worker processes on this machine.

`hybrid worker pool --min 1 --max N` runs a `Supervisor`. Every `interval_s` it

1. restarts workers that died (a crash or a SIGKILL: their jobs are reclaimed by the others),
2. observes the zone (backlog, measured rate, budget cap) and asks the `Autoscaler`,
3. starts workers up to the decision, or sends SIGTERM to the newest ones above it — they drain
   (finish and acknowledge what they hold) and exit on their own; a worker still alive after
   `grace_s` is killed, and what it held is reclaimed.

Workers are ordinary `hybrid worker run` processes (same options), named `<prefix>-<n>`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpu_worker.autoscale import Autoscaler, Decision, Observation

log = logging.getLogger(__name__)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    started: float
    stopping_since: float | None = None


@dataclass
class PoolStats:
    started: int = 0
    stopped: int = 0  # drained on request
    restarted: int = 0  # died without being asked
    killed: int = 0  # did not drain within the grace period
    decisions: list[Decision] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        command: Callable[[str], Sequence[str]],
        autoscaler: Autoscaler,
        observe: Callable[[int, float], Observation],
        *,
        prefix: str = "pool",
        interval_s: float = 2.0,
        grace_s: float = 30.0,
        env: dict[str, str] | None = None,
        log_dir: str | None = None,
    ) -> None:
        self.command = command  # worker name → argv
        self.autoscaler = autoscaler
        self.observe = observe  # (replicas, now) → Observation
        self.prefix = prefix
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.env = env
        self.log_dir = log_dir
        self.stats = PoolStats()
        self._procs: list[_Proc] = []
        self._next = 1
        # a control step and a shutdown never interleave, and nothing starts once shutdown began:
        # `hybrid up` steps from a thread of its own while its main thread shuts the pool down
        self._lock = threading.RLock()
        self._closed = False

    @property
    def running(self) -> list[str]:
        return [p.name for p in self._procs if p.stopping_since is None]

    def pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self._procs}

    # -- one control step ---------------------------------------------------------------------------

    def step(self, now: float | None = None) -> Decision:
        with self._lock:
            return self._step(now)

    def _step(self, now: float | None) -> Decision:
        now = time.monotonic() if now is None else now
        self._reap(now)
        active = [p for p in self._procs if p.stopping_since is None]
        decision = self.autoscaler.decide(self.observe(len(active), now))
        self.stats.decisions.append(decision)
        del self.stats.decisions[:-100]
        if decision.replicas > len(active):
            for _ in range(decision.replicas - len(active)):
                self._start()
            log.info("scaled up to %d: %s", decision.replicas, decision.reason)
        elif decision.replicas < len(active):
            for p in sorted(active, key=lambda p: p.started)[decision.replicas :]:
                self._stop(p, now)
            log.info("scaling down to %d: %s", decision.replicas, decision.reason)
        return decision

    def _start(self, name: str | None = None) -> None:
        if self._closed:
            return
        if name is None:
            name = f"{self.prefix}-{self._next}"
            self._next += 1
        out = open(os.path.join(self.log_dir, f"{name}.log"), "ab") if self.log_dir else subprocess.DEVNULL  # noqa: SIM115
        argv = list(self.command(name))
        try:
            with deferred_interrupts():  # started and recorded, or neither: never an orphan
                popen = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
                )
                self._procs.append(_Proc(name, popen, time.monotonic()))
        finally:
            if self.log_dir:
                out.close()  # type: ignore[union-attr]
        self.stats.started += 1

    def _stop(self, p: _Proc, now: float) -> None:
        p.stopping_since = now
        _signal(p.popen, signal.SIGTERM)

    def _reap(self, now: float) -> None:
        for p in list(self._procs):
            code = p.popen.poll()
            if code is None:
                if p.stopping_since is not None and now - p.stopping_since > self.grace_s:
                    _signal(p.popen, signal.SIGKILL)
                    p.popen.wait()
                    self.stats.killed += 1
                    self._procs.remove(p)
                continue
            self._procs.remove(p)
            if p.stopping_since is not None:
                self.stats.stopped += 1
            else:  # died on its own: replace it under the same name
                log.warning("worker %s exited with %s; restarting it", p.name, code)
                self.stats.restarted += 1
                self._start(p.name)

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event, on_step: Callable[[Decision], None] | None = None) -> PoolStats:
        try:
            while not stop.is_set():
                decision = self.step()
                if on_step:
                    on_step(decision)
                stop.wait(self.interval_s)
        finally:
            self.shutdown()
        return self.stats

    def shutdown(self) -> None:
        """SIGTERM every worker, wait for them to drain (up to `grace_s`), kill what is left. Safe to
        call from any thread and more than once; no worker is started after it (a step under way
        finishes first, and what it started is stopped with the rest)."""
        with self._lock:
            self._closed = True
            now = time.monotonic()
            for p in self._procs:
                if p.stopping_since is None:
                    self._stop(p, now)
            deadline = now + self.grace_s
            for p in list(self._procs):
                try:
                    p.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
                    self.stats.stopped += 1
                except subprocess.TimeoutExpired:
                    _signal(p.popen, signal.SIGKILL)
                    p.popen.wait()
                    self.stats.killed += 1
                self._procs.remove(p)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block is done, then act on them as before.

    For starting a child and recording it: a Ctrl-C that lands inside `subprocess.Popen` (which waits
    for the child's exec) raises there and loses the `Popen` object, so the child runs on, an orphan
    nobody stops. Outside the main thread (where Python does not run signal handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    previous = {sig: signal.signal(sig, lambda n, f: caught.append((n, f))) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for num, frame in caught[:1]:
            first = signal.Signals(num)
            handler = previous[first]
            if callable(handler):
                handler(num, frame)  # e.g. Python's default for SIGINT: raise KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                signal.raise_signal(first)


def _signal(popen: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(sig)


__all__ = ["PoolStats", "Supervisor", "deferred_interrupts"]
