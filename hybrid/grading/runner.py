"""The grading driver: pipelined, paced, resumable submission of a file of items, and collection.

`GradeRun.run` keeps up to `window` jobs in flight: it submits in chunks while there is room and
collects results from its reply stream in between. When admission refuses (`Backpressure`, or
`BudgetExceeded` from an open budget breaker) it keeps what was not sent, says so through
`on_progress` ("paused: backpressure, retry in 2.0 s"), goes on collecting, and retries after the
advised time — the admission script admits a lane again only below its low watermark. Nothing is
dropped: every item ends with a result row, or stays without one (a timeout) for the next resume.

The driver is task-agnostic: `task` (default `grade`) and an optional `feedback_task` get
`{"question_id", "answer"}`; any other task (e.g. the built-in `text_stats`) gets
`{"text": answer, "question_id"}`. Answers that are not `public` are PII-tokenized on this host
before sealing (a batch host is an edge of its own zone); outputs are detokenized before writing.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from broker import keys
from broker.client import Client
from broker.connection import redis_errors
from broker.errors import AdmissionRefused, BudgetExceeded
from broker.ids import new_ulid
from broker.message import JobSpec
from broker.schema import JobResult, LaneName
from hybrid.grading.io import Item, Reject, write_rejects, write_rows
from hybrid.grading.state import RunRegistry, RunState, job_id_for

NATIVE_TASKS = frozenset({"grade", "feedback"})
_MGET_CHUNK = 500
_HEARTBEAT_S = 5.0
_GIVEN_UP = ("timeout", "dead_lettered")

ProgressFn = Callable[[int, int, str | None], None]
"""`on_progress(done, total, pause)`: items with a result, items in the run, and why it is paused (or None)."""


class Tokenizer(Protocol):
    """What the driver needs of `edge_agent.pii.PiiTokenizer`."""

    def tokenize(self, text: str) -> Any: ...  # has `.text`

    def detokenize_obj(self, obj: Any) -> Any: ...


def inputs_for(task: str, item: Item, answer: str) -> dict[str, Any]:
    """The job inputs of one item for `task`."""
    if task in NATIVE_TASKS:
        return {"question_id": item.question_id, "answer": answer}
    return {"text": answer, "question_id": item.question_id}


@dataclass
class GradeConfig:
    task: str = "grade"
    feedback_task: str | None = "feedback"
    model: str = "default"
    lane: LaneName = "batch"
    window: int = 2000  # jobs in flight at most
    chunk: int = 250  # jobs per submit call
    item_timeout_s: float = 3600.0  # a job without a result this long is left for the next resume
    recheck_s: float = 2.0  # look for stored results when no notification came for this long
    dlq_check_s: float = 5.0  # how often to look for in-flight jobs in the dead-letter stream
    max_pause_s: float = 30.0  # retry a refused submit at least this often (an operator may close a breaker)
    usd_per_gpu_hour: float | None = None  # for the cost estimate from worker-seconds


@dataclass
class Summary:
    run_id: str
    status: str = "running"
    items: int = 0
    rejected: int = 0
    already_done: int = 0
    ok: int = 0
    failed: int = 0
    timed_out: int = 0
    dead_lettered: int = 0
    submitted_jobs: int = 0
    pauses: int = 0
    paused_s: float = 0.0
    duration_s: float = 0.0
    items_per_s: float = 0.0
    worker_s: float = 0.0
    cost_usd_est: float | None = None
    spend_usd: float = 0.0
    pause_reasons: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Flight:
    item: Item
    kind: str
    since: float


class GradeRun:
    """One run over one input: submit what has no result, collect, write the output in input order."""

    def __init__(
        self,
        client: Client,
        state: RunState,
        *,
        config: GradeConfig | None = None,
        tokenizer: Tokenizer | None = None,
        registry: RunRegistry | None = None,
        spend: Callable[[Sequence[str]], float] | None = None,
        on_progress: ProgressFn | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.state = state
        self.config = config or GradeConfig()
        self.tokenizer = tokenizer
        self.registry = registry
        self.spend = spend
        self.on_progress = on_progress
        self.clock = clock
        self.kinds = [("g", self.config.task)] + (
            [("f", self.config.feedback_task)] if self.config.feedback_task else []
        )
        self._dlq_cursor = "0-0"
        self._next_dlq_check = 0.0

    # -- the run -------------------------------------------------------------------------------

    def run(
        self,
        items: Sequence[Item],
        rejects: Sequence[Reject],
        *,
        run_id: str,
        output: Path,
        rejects_path: Path | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Summary:
        summary = Summary(run_id=run_id, items=len(items), rejected=len(rejects))
        started_wall, started = time.time(), self.clock()
        if rejects_path is not None:
            write_rejects(rejects_path, rejects)
        tenants = sorted({i.tenant for i in items})
        spend_before = self.spend(tenants) if self.spend else 0.0
        first = self.registry.get(run_id) if self.registry is not None else None
        when = {"resumed": started_wall} if first is not None else {"started": started_wall}
        self._register(run_id, status="running", heartbeat=started_wall, finished=None, **when, **(meta or {}))
        try:
            rows = self._drive(items, run_id, summary, started)
        except BaseException as exc:
            summary.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            summary.error = f"{type(exc).__name__}: {exc}"
            summary.duration_s = round(self.clock() - started, 3)
            self._finish(run_id, summary)
            raise
        write_rows(output, [rows[i.id] for i in items])
        summary.duration_s = round(self.clock() - started, 3)
        done_now = summary.ok + summary.failed - summary.already_done
        summary.items_per_s = round(done_now / summary.duration_s, 1) if summary.duration_s > 0 else 0.0
        if self.spend:
            summary.spend_usd = round(max(0.0, self.spend(tenants) - spend_before), 6)
        if self.config.usd_per_gpu_hour is not None:
            summary.cost_usd_est = round(summary.worker_s / 3600 * self.config.usd_per_gpu_hour, 6)
        if summary.timed_out or summary.dead_lettered:
            summary.status = "incomplete"
        elif summary.failed or summary.rejected:
            summary.status = "completed_with_errors"
        else:
            summary.status = "completed"
        self._finish(run_id, summary)
        return summary

    def _register(self, run_id: str, **fields: Any) -> None:
        if self.registry is not None:
            self.registry.update(run_id, **fields)

    def _finish(self, run_id: str, summary: Summary) -> None:
        # never hide the run's own outcome behind a registry failure
        with contextlib.suppress(Exception):
            doc = {k: v for k, v in summary.as_dict().items() if k != "run_id"}
            self._register(run_id, finished=time.time(), heartbeat=time.time(), **doc)

    def _drive(self, items: Sequence[Item], run_id: str, summary: Summary, started: float) -> dict[str, dict[str, Any]]:
        cfg = self.config
        known = self.state.load(i.id for i in items)
        rows: dict[str, dict[str, Any]] = {}
        for item in items:
            st = known.get(item.id)
            if st is not None and st.result is not None:
                rows[item.id] = st.result
                self._count(summary, st.result)
        summary.already_done = len(rows)
        total = len(items)
        todo = [i for i in items if i.id not in rows]
        # results stored before a crash: collect them before submitting anything again
        resumed = [i for i in todo if (st := known.get(i.id)) is not None and st.submitted]
        partial: dict[str, dict[str, JobResult]] = {}
        jobs_of = {job_id_for(run_id, i.id, k): (i, k) for i in resumed for k, _ in self.kinds}
        for job_id, result in self.client.get_results(list(jobs_of)).items():
            item, kind = jobs_of[job_id]
            partial.setdefault(item.id, {})[kind] = result
        self._settle(
            run_id, [i for i in resumed if len(partial.get(i.id, {})) == len(self.kinds)], partial, rows, summary
        )

        queue: deque[tuple[Item, str]] = deque(
            (i, k) for i in todo if i.id not in rows for k, _ in self.kinds if k not in partial.get(i.id, {})
        )
        flights: dict[str, _Flight] = {}
        answers: dict[str, str] = {}
        paused_until = 0.0
        pause: str | None = None
        pause_started = 0.0
        last_full = self.clock()
        last_beat = 0.0
        self._progress(len(rows), total, None)
        while queue or flights:
            now = self.clock()
            if pause is not None and now >= paused_until and not queue:
                pause = None
            if queue and now >= paused_until and len(flights) < cfg.window:
                n = min(cfg.chunk, cfg.window - len(flights), len(queue))
                batch = [queue.popleft() for _ in range(n)]
                specs = [self._spec(run_id, item, kind, answers) for item, kind in batch]
                by_id = {s.job_id: b for s, b in zip(specs, batch, strict=True)}
                try:
                    sent = self.client.submit_many(specs)
                    if pause is not None:
                        summary.paused_s += now - pause_started
                        pause = None
                except AdmissionRefused as exc:
                    sent = list(exc.submitted)
                    unsent_ids = [s.job_id for s in exc.unsent if s.job_id is not None]
                    queue.extendleft(reversed([by_id[j] for j in unsent_ids]))
                    wait = min(exc.retry_after_s, cfg.max_pause_s)
                    paused_until = now + wait
                    reason = (
                        "budget breaker open" if isinstance(exc, BudgetExceeded) else f"backpressure ({exc.reason})"
                    )
                    if pause is None:
                        summary.pauses += 1
                        pause_started = now
                        key = "budget" if isinstance(exc, BudgetExceeded) else exc.reason or "backpressure"
                        summary.pause_reasons[key] = summary.pause_reasons.get(key, 0) + 1
                    pause = f"paused: {reason}, retry in {wait:.1f} s"
                if sent:
                    self.state.mark_submitted(sorted({by_id[j][0].id for j in sent}))
                    summary.submitted_jobs += len(sent)
                    for j in sent:
                        item, kind = by_id[j]
                        flights[j] = _Flight(item, kind, now)
                self._progress(len(rows), total, pause)
            can_submit = bool(queue) and len(flights) < cfg.window and self.clock() >= paused_until
            wait_s = 0.0 if can_submit else max(0.0, min(1.0, paused_until - self.clock()) if queue else 1.0)
            if not flights:
                if wait_s > 0:
                    time.sleep(min(wait_s, 0.25))
                continue
            ready = self.client.notifications(wait_s, count=5000) & flights.keys()
            if not ready and self.clock() - last_full >= cfg.recheck_s:
                ready = set(flights)
                last_full = self.clock()
            if ready:
                got = self.client.get_results(sorted(ready))
                finished: list[Item] = []
                for job_id, result in got.items():
                    flight = flights.pop(job_id)
                    kinds = partial.setdefault(flight.item.id, {})
                    kinds[flight.kind] = result
                    if len(kinds) == len(self.kinds):
                        finished.append(flight.item)
                self._settle(run_id, finished, partial, rows, summary)
                for item in finished:
                    answers.pop(item.id, None)
            self._expire(flights, partial, rows, summary, run_id)
            if pause is not None:
                left = paused_until - self.clock()
                shown = pause.rsplit(", retry in", 1)[0]
                pause = f"{shown}, retry in {max(left, 0):.1f} s" if left > 0 else f"{shown}, retrying"
            self._progress(len(rows), total, pause)
            if self.registry is not None and time.time() - last_beat >= _HEARTBEAT_S:
                last_beat = time.time()
                self._register(run_id, heartbeat=last_beat, done=len(rows), items=total)
        with redis_errors():
            self.client.close()
        return rows

    # -- pieces --------------------------------------------------------------------------------

    def _spec(self, run_id: str, item: Item, kind: str, answers: dict[str, str]) -> JobSpec:
        answer = answers.get(item.id)
        if answer is None:
            answer = item.answer
            if self.tokenizer is not None and item.sensitivity != "public":
                answer = self.tokenizer.tokenize(answer).text
            answers[item.id] = answer
        task = dict(self.kinds)[kind]
        return JobSpec(
            task=task,
            inputs=inputs_for(task, item, answer),
            model=self.config.model,
            tenant=item.tenant,
            lane=self.config.lane,
            sensitivity=item.sensitivity,  # type: ignore[arg-type]
            job_id=job_id_for(run_id, item.id, kind),
        )

    def _row(self, run_id: str, item: Item, results: Mapping[str, JobResult]) -> dict[str, Any]:
        grade = results.get("g")
        fb = results.get("f")
        errors = [
            f"{name}: {r.error or r.status}" for name, r in (("grade", grade), ("feedback", fb)) if r and not r.ok
        ]
        grade_out = self._clear(grade.output) if grade is not None and grade.ok else None
        feedback: Any = None
        if fb is not None and fb.ok:
            out = self._clear(fb.output)
            feedback = out.get("feedback", out.get("text", out)) if isinstance(out, dict) else out
        score = grade_out.get("score") if isinstance(grade_out, dict) else None
        return {
            "id": item.id,
            "student": item.student or None,
            "tenant": item.tenant,
            "question_id": item.question_id,
            "status": "ok" if not errors else "error",
            "score": score,
            "grade": grade_out,
            "feedback": feedback,
            "error": "; ".join(errors) or None,
            "job_id": job_id_for(run_id, item.id, "g"),
            "_worker_s": sum((r.finished_ms - r.started_ms) / 1000 for r in results.values()),
            "_batch": [f"{r.worker}@{r.finished_ms}" for r in results.values()],
        }

    def _clear(self, output: Any) -> Any:
        return self.tokenizer.detokenize_obj(output) if self.tokenizer is not None else output

    def _settle(
        self,
        run_id: str,
        finished: Iterable[Item],
        partial: dict[str, dict[str, JobResult]],
        rows: dict[str, dict[str, Any]],
        summary: Summary,
    ) -> None:
        new: list[tuple[str, dict[str, Any]]] = []
        batches: dict[str, float] = {}
        for item in finished:
            raw = self._row(run_id, item, partial.pop(item.id))
            for b in raw.pop("_batch"):
                batches[b] = max(batches.get(b, 0.0), raw["_worker_s"])
            raw.pop("_worker_s")
            rows[item.id] = raw
            new.append((item.id, raw))
            self._count(summary, raw)
        summary.worker_s = round(summary.worker_s + sum(batches.values()), 3)
        if new:
            self.state.record(new)

    @staticmethod
    def _count(summary: Summary, row: Mapping[str, Any]) -> None:
        if row.get("status") == "ok":
            summary.ok += 1
        else:
            summary.failed += 1

    def _expire(
        self,
        flights: dict[str, _Flight],
        partial: dict[str, dict[str, JobResult]],
        rows: dict[str, dict[str, Any]],
        summary: Summary,
        run_id: str,
    ) -> None:
        """Stop waiting for jobs that were dead-lettered, or have no result after `item_timeout_s` (no
        worker serves them?): their items get a `dead_lettered`/`timeout` row and are left for a resume."""
        limit = self.clock() - self.config.item_timeout_s
        given_up = {
            j: ("timeout", f"no result after {self.config.item_timeout_s:g} s (see `hybrid dlq list`); run again")
            for j, f in flights.items()
            if f.since < limit
        }
        if flights and self.clock() >= self._next_dlq_check:
            self._next_dlq_check = self.clock() + self.config.dlq_check_s
            for job_id, why in self._dead_lettered(flights).items():
                given_up[job_id] = ("dead_lettered", f"dead-lettered ({why}); see `hybrid dlq list`, run again")
        for job_id, (status, error) in given_up.items():
            flight = flights.pop(job_id, None)
            if flight is None or flight.item.id in rows:
                continue
            partial.pop(flight.item.id, None)
            if status == "timeout":
                summary.timed_out += 1
            else:
                summary.dead_lettered += 1
            rows[flight.item.id] = {
                "id": flight.item.id, "student": flight.item.student or None, "tenant": flight.item.tenant,
                "question_id": flight.item.question_id, "status": status, "score": None, "grade": None,
                "feedback": None, "error": error, "job_id": job_id_for(run_id, flight.item.id, "g"),
            }  # fmt: skip
        # the item's other job is not waited for any longer
        if given_up:
            for j in [j for j, f in flights.items() if rows.get(f.item.id, {}).get("status") in _GIVEN_UP]:
                flights.pop(j)

    def _dead_lettered(self, flights: Mapping[str, _Flight]) -> dict[str, str]:
        """In-flight job ids that reached the dead-letter stream since the last look, with why."""
        out: dict[str, str] = {}
        stream = keys.dlq_stream(self.client.zone)
        while True:
            with redis_errors():
                resp: Any = self.client.redis.xrange(stream, min=f"({self._dlq_cursor}", max="+", count=500)
            for eid, fields in resp:
                self._dlq_cursor = eid.decode()
                job_id = fields.get(b"job_id", b"").decode()
                if job_id in flights and fields.get(b"reason") != b"replayed":  # replayed: a copy; the job has a result
                    out[job_id] = f"{fields.get(b'reason', b'').decode()}: {fields.get(b'detail', b'').decode()}"
            if len(resp) < 500:
                return out

    def _progress(self, done: int, total: int, pause: str | None) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total, pause)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + new_ulid()[-6:].lower()


def reply_name(run_id: str) -> str:
    """The reply stream of a run: the same across resumes, so notices sent while it was down are read."""
    return f"grade-{run_id}"


__all__ = ["NATIVE_TASKS", "GradeConfig", "GradeRun", "Summary", "Tokenizer", "inputs_for", "new_run_id", "reply_name"]
