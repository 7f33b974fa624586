"""`hybrid grade`: input parsing, pipelined paced runs, resume after a kill, RQ schedules — real Redis,
a real consumer (thread) and, for the kill, the real `hybrid grade run` process."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from broker.admission import AdmissionPolicy, LaneLimits
from broker.breaker import State
from broker.consumer import Consumer
from broker.embedded import EmbeddedRedis
from broker.ledger import CostBreaker, Ledger
from broker.message import Job, Sealer
from broker.settings import load_settings
from hybrid.cli import cli
from hybrid.grading.io import read_items
from hybrid.grading.job import RunRequest, execute
from hybrid.grading.state import RunRegistry, state_path_for

# -- a worker for the tests: the broker's consumer loop with a handler of ours ---------------------


class Handler:
    """text_stats / echo like the built-in tasks; records every job it ran and every input it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.runs: Counter[str] = Counter()
        self.texts: list[str] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, jobs: list[Job]) -> Sequence[Mapping[str, Any] | BaseException]:
        if self.delay_s:
            time.sleep(self.delay_s * len(jobs))  # simulated model time per job
        if any(job.payload.inputs.get("question_id") == "poison" for job in jobs):
            raise RuntimeError("the model crashes on this batch")  # left unacknowledged: redelivered
        out: list[Mapping[str, Any] | BaseException] = []
        for job in jobs:
            inputs = job.payload.inputs
            with self.lock:
                self.runs[job.job_id] += 1
                self.texts.append(str(inputs.get("text", inputs.get("answer", ""))))
            if inputs.get("question_id") == "no-such-question":
                out.append(LookupError("unknown question id 'no-such-question'"))
            elif job.header.task == "text_stats":
                out.append({"chars": len(inputs["text"]), "words": len(inputs["text"].split())})
            else:
                out.append(dict(inputs))
        return out


@contextmanager
def worker(
    r: redis.Redis, sealer: Sealer, zone: str, handler: Handler, count: int = 64, **options: Any
) -> Iterator[Consumer]:
    consumer = Consumer(r, sealer, zone, "test-worker", count=count, block_ms=50, **options)
    consumer.ensure_groups()
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(handler,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(timeout=10)


def write_jsonl(path: Path, records: list[Any]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records))


def items(n: int, *, email: bool = False) -> list[dict[str, Any]]:
    return [
        {"id": f"item-{i}", "student": f"s{i % 37}", "question_id": f"q{i % 5}",
         "answer": f"answer {i} is photosynthesis" + (f" — mail me at student{i}@example.com" if email else "")}
        for i in range(n)
    ]  # fmt: skip


def settings_for(redis_server: EmbeddedRedis, zone: str, keyring_path: Path) -> Any:
    return load_settings(redis_url=redis_server.url, zone=zone, keyring=str(keyring_path))


# -- input ---------------------------------------------------------------------------------------------


def test_jsonl_rejects_carry_line_numbers_and_duplicates_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    write_jsonl(
        path,
        [
            {"id": "a", "question_id": "q1", "answer": "one"},
            "{not json",
            {"id": "b", "question_id": "q1"},
            "",
            {"id": "a", "question_id": "q2", "answer": "again"},
            {"id": "c", "question_id": "q1", "answer": "x", "sensitivity": "secret"},
            "[1, 2]",
            {"id": "d", "question_id": "q1", "answer": "ok", "tenant": "school-7", "sensitivity": "public"},
        ],
    )
    got, rejects = read_items(path, "fallback")
    assert [i.id for i in got] == ["a", "d"]
    assert got[1].tenant == "school-7" and got[0].tenant == "fallback" and got[1].sensitivity == "public"
    assert [(r.line, r.error.split(":")[0].split(" (")[0]) for r in rejects] == [
        (2, "not valid JSON"),
        (3, "field 'answer' is missing, empty or not text"),
        (5, "duplicate item id 'a'"),
        (6, "field 'sensitivity' must be one of public, personal, sensitive, not 'secret'"),
        (7, "expected an object with id, question_id and answer, got list"),
    ]
    assert "first on line 1" in rejects[2].error


def test_csv_line_numbers_count_physical_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "student", "question_id", "answer"])
        w.writerow(["a", "s1", "q1", "a multi\nline answer"])  # lines 2-3
        w.writerow(["b", "s2", "q1"])  # line 4: a column short
        w.writerow(["c", "s3", "q2", "fine"])  # line 5
    got, rejects = read_items(path)
    assert [(i.id, i.line) for i in got] == [("a", 2), ("c", 5)]
    assert [(r.line, r.error) for r in rejects] == [(4, "expected 4 columns, got 3")]
    (tmp_path / "bad.csv").write_text("name,answer\nx,y\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_items(tmp_path / "bad.csv")


# -- runs ----------------------------------------------------------------------------------------------


def test_run_grades_in_input_order_with_pii_tokenized_and_restored(
    r: redis.Redis, redis_server: EmbeddedRedis, zone: str, keyring_path: Path, sealer: Sealer, tmp_path: Path
) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "grades.csv"
    records: list[Any] = items(300, email=True)
    records.insert(10, "{broken")
    records.append({"id": "odd", "question_id": "no-such-question", "answer": "x", "sensitivity": "public"})
    write_jsonl(inp, records)
    handler = Handler()
    request = RunRequest(input=str(inp), output=str(out), rejects=str(tmp_path / "rej.jsonl"), task="text_stats",
                         feedback_task="echo", window=100, chunk=40)  # fmt: skip
    with worker(r, sealer, zone, handler):
        summary = execute(request, settings_for(redis_server, zone, keyring_path), r)
    assert (summary.items, summary.ok, summary.failed, summary.rejected) == (301, 300, 1, 1)
    assert summary.status == "completed_with_errors"
    rows = list(csv.DictReader(out.open()))
    assert [row["id"] for row in rows] == [f"item-{i}" for i in range(300)] + ["odd"]
    first = rows[0]
    assert json.loads(first["grade"])["words"] == len(records[0]["answer"].split()) == 9
    assert "student0@example.com" in first["feedback"]  # detokenized on the way out
    assert rows[-1]["status"] == "error" and "unknown question id" in rows[-1]["error"]
    # nothing left this host in clear: the workers saw tokens, not addresses
    assert not any("@example.com" in t for t in handler.texts)
    assert sum("⟨PII:EMAIL:" in t for t in handler.texts) == 600
    rejects = [json.loads(x) for x in (tmp_path / "rej.jsonl").read_text().splitlines()]
    assert [x["line"] for x in rejects] == [11]
    assert RunRegistry(r, zone).get(summary.run_id)["status"] == "completed_with_errors"  # type: ignore[index]


def test_backpressure_pauses_shows_it_and_loses_nothing(
    r: redis.Redis, redis_server: EmbeddedRedis, zone: str, keyring_path: Path, sealer: Sealer, tmp_path: Path
) -> None:
    policy = tmp_path / "admission.yaml"
    policy.write_text(
        "lanes:\n  batch: {high: 60, low: 20}\n  interactive: {high: 100, low: 50}\nretry_after_s: 0.05\n"
    )
    assert AdmissionPolicy.load(policy).lanes["batch"] == LaneLimits(high=60, low=20)
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, items(400))
    seen: list[str] = []
    backlog: list[int] = []

    def on_progress(done: int, total: int, pause: str | None) -> None:
        if pause:
            seen.append(pause)
        backlog.append(int(r.xlen(f"hyb:{{{zone}}}:jobs:batch")))

    request = RunRequest(input=str(inp), output=str(tmp_path / "out.jsonl"), task="text_stats", feedback_task=None,
                         window=400, chunk=25, admission=str(policy), pii=False)  # fmt: skip
    handler = Handler(delay_s=0.0005)
    with worker(r, sealer, zone, handler, count=10):
        summary = execute(request, settings_for(redis_server, zone, keyring_path), r, on_progress=on_progress)
    assert summary.ok == 400 and summary.pauses >= 1 and summary.pause_reasons.get("watermark", 0) >= 1
    assert any(p.startswith("paused: backpressure (watermark), retry in") for p in seen)
    assert max(backlog) <= 60 + 25  # never past the high watermark by more than a chunk
    assert sorted(handler.runs) == sorted(set(handler.runs)) and len(handler.runs) == 400
    assert all(n == 1 for n in handler.runs.values())


def test_open_budget_breaker_pauses_until_closed(
    r: redis.Redis, redis_server: EmbeddedRedis, zone: str, keyring_path: Path, sealer: Sealer, tmp_path: Path
) -> None:
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, [{**x, "tenant": "school-9"} for x in items(50)])
    cost = CostBreaker(Ledger(r, zone))
    cost.force("tenant:school-9", State.OPEN)
    seen: list[str] = []

    def on_progress(done: int, total: int, pause: str | None) -> None:
        if pause and not seen:
            seen.append(pause)
            cost.force("tenant:school-9", None)  # the operator closes it; the run notices and goes on

    request = RunRequest(input=str(inp), output=str(tmp_path / "out.jsonl"), task="text_stats", feedback_task=None,
                         pii=False)  # fmt: skip
    with worker(r, sealer, zone, Handler()):
        summary = execute(request, settings_for(redis_server, zone, keyring_path), r, on_progress=on_progress)
    assert seen and seen[0].startswith("paused: budget breaker open, retry in")
    assert summary.ok == 50 and summary.pause_reasons == {"budget": 1}


def test_bound_run_id_is_kept_and_a_foreign_one_refused(
    r: redis.Redis, redis_server: EmbeddedRedis, zone: str, keyring_path: Path, sealer: Sealer, tmp_path: Path
) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, items(5))
    settings = settings_for(redis_server, zone, keyring_path)
    req = RunRequest(
        input=str(inp), output=str(out), run_id="night-1", task="text_stats", feedback_task=None, pii=False
    )
    with worker(r, sealer, zone, Handler()):
        assert execute(req, settings, r).run_id == "night-1"
        req.run_id = None
        again = execute(req, settings, r)
    assert again.run_id == "night-1" and again.already_done == 5 and again.submitted_jobs == 0
    req.run_id = "night-2"
    with pytest.raises(ValueError, match="belongs to run 'night-1'"):
        execute(req, settings, r)


def _done(state: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT count(*) FROM items WHERE result IS NOT NULL").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_kill_halfway_and_resume_grades_every_item_exactly_once(
    r: redis.Redis, redis_server: EmbeddedRedis, zone: str, keyring_path: Path, sealer: Sealer, tmp_path: Path
) -> None:
    n = 2000
    inp, out = tmp_path / "in.jsonl", tmp_path / "grades.jsonl"
    records: list[Any] = items(n, email=True)
    malformed = {101: "{oops", 702: json.dumps({"id": "item-3", "question_id": "q", "answer": "dup"}), 1500: "[]"}
    for line in sorted(malformed):
        records.insert(line - 1, malformed[line])
    write_jsonl(inp, records)
    cmd = [sys.executable, "-m", "hybrid", "grade", "run", "--redis-url", redis_server.url, "--zone", zone,
           "--keyring", str(keyring_path), "--input", str(inp), "--output", str(out), "--task", "text_stats",
           "--feedback-task", "echo", "--window", "200", "--chunk", "50"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    handler = Handler(delay_s=0.0015)
    state = state_path_for(out)
    with worker(r, sealer, zone, handler, count=50):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while _done(state) < n // 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the kill: {proc.stdout.read().decode()[-2000:]}"  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done_at_kill = _done(state)
        assert n // 2 <= done_at_kill < n and not out.exists()
        resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr  # 1: the rejected lines
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["already_done"] >= done_at_kill and summary["items"] == n and summary["ok"] == n
    assert summary["submitted_jobs"] <= 2 * (n - summary["already_done"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"item-{i}" for i in range(n)]  # every item once, in input order
    assert all(row["status"] == "ok" and row["grade"]["words"] >= 4 for row in rows)
    assert all(f"student{i}@example.com" in row["feedback"] for i, row in enumerate(rows))
    # one stored result per job: a job resubmitted after the kill was not graded into a second result
    assert len(handler.runs) == 2 * n
    assert sum(handler.runs.values()) - 2 * n <= 2 * 200  # re-runs only of what was in flight at the kill
    rejects = [json.loads(x) for x in Path(f"{out}.rejects.jsonl").read_text().splitlines()]
    assert [x["line"] for x in rejects] == sorted(malformed)
    assert [x["raw"] for x in rejects] == [malformed[k] for k in sorted(malformed)]
    runs = RunRegistry(r, zone).list()
    assert [x["status"] for x in runs] == ["completed_with_errors"] and runs[0]["ok"] == n


# -- CLI -----------------------------------------------------------------------------------------------


def test_cli_bad_input_is_a_usage_error_and_runs_are_listed(
    r: redis.Redis, redis_server: EmbeddedRedis, zone: str, keyring_path: Path, sealer: Sealer, tmp_path: Path
) -> None:
    runner = CliRunner()
    base = ["--redis-url", redis_server.url, "--zone", zone, "--keyring", str(keyring_path)]
    res = runner.invoke(cli, ["grade", "run", *base, "--input", str(tmp_path / "in.txt"), "--output", "o.jsonl"])
    assert res.exit_code == 2 and "name it .jsonl or .csv" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["grade", "run", *base, "--input", str(tmp_path / "nope.jsonl"), "--output", "o.jsonl"])
    assert res.exit_code == 2 and "does not exist" in res.output
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, items(20))
    with worker(r, sealer, zone, Handler()):
        res = runner.invoke(cli, ["grade", "run", *base, "--input", str(inp), "--output", str(tmp_path / "o.csv"),
                                  "--task", "text_stats", "--no-feedback", "--run-id", "cli-run"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["grade", "runs", *base, "--json"])
    assert res.exit_code == 0
    runs = [json.loads(x) for x in res.output.splitlines()]
    assert [(x["run_id"], x["status"], x["ok"]) for x in runs] == [("cli-run", "completed", 20)]
    res = runner.invoke(
        cli, ["grade", "schedule", *base, "--cron", "61 * * * *", "--input", str(inp), "--output", "x.jsonl"]
    )
    assert res.exit_code == 2 and "invalid cron expression" in res.output


# -- RQ schedules --------------------------------------------------------------------------------------


def test_scheduled_run_is_enqueued_at_its_time_and_run_by_an_rq_worker(
    r: redis.Redis, redis_server: EmbeddedRedis, zone: str, keyring_path: Path, sealer: Sealer, tmp_path: Path
) -> None:
    from rq import Queue, SimpleWorker
    from rq.registry import ScheduledJobRegistry

    from hybrid.grading.schedule import QUEUE, Schedule, add_schedule, list_schedules, occurrence_ids

    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, items(30))
    request = RunRequest(input=str(inp), output=str(tmp_path / "grades-{date}.jsonl"), task="text_stats",
                         feedback_task=None, pii=False)  # fmt: skip
    schedule = Schedule(f"n-{zone}"[:32], "*/5 * * * *", zone, request, keyring=str(keyring_path))
    # an injectable "now" 10 minutes back: the next occurrence is already due
    past = datetime.now(UTC) - timedelta(minutes=10)
    job, when = add_schedule(r, schedule, now=past)
    assert when <= datetime.now(UTC) and job.id == occurrence_ids(schedule, when)[0]
    assert [s.name for s in list_schedules(r, zone)] == [schedule.name]
    queue = Queue(QUEUE, connection=r)
    assert job.id in ScheduledJobRegistry(queue=queue).get_job_ids()  # type: ignore[no-untyped-call]
    assert add_schedule(r, schedule, now=past)[0].id == job.id  # scheduling again does not duplicate it

    with worker(r, sealer, zone, Handler()):
        SimpleWorker([queue], connection=r).work(burst=True, with_scheduler=True)
    job.refresh()  # type: ignore[no-untyped-call]
    assert job.is_finished, job.latest_result()
    run_id = occurrence_ids(schedule, when)[1]
    record = RunRegistry(r, zone).get(run_id)
    assert record is not None and record["status"] == "completed" and record["ok"] == 30
    assert record["schedule"] == schedule.name and record["rq_job"] == job.id
    out = tmp_path / f"grades-{when:%Y-%m-%d}.jsonl"
    assert len(out.read_text().splitlines()) == 30
    # the run enqueued its next occurrence, in the future
    later = [j for j in ScheduledJobRegistry(queue=queue).get_job_ids() if j != job.id]  # type: ignore[no-untyped-call]
    assert len(later) == 1 and later[0].startswith(f"grade-{zone}-{schedule.name}-")


def test_run_registry_marks_a_silent_running_run_stale_and_keeps_its_start(r: redis.Redis, zone: str) -> None:
    registry = RunRegistry(r, zone)
    registry.update("crashed", status="running", started=1000.0, heartbeat=time.time() - 120)
    registry.update("alive", status="running", started=2000.0, heartbeat=time.time())
    assert [(x["run_id"], x["status"]) for x in registry.list()] == [("alive", "running"), ("crashed", "stale")]
    registry.update("crashed", status="running", resumed=3000.0, heartbeat=time.time())
    again = registry.get("crashed")
    assert again is not None and again["started"] == 1000.0 and again["status"] == "running"


def test_a_dead_lettered_item_is_not_waited_for_and_a_resume_retries_it(
    r: redis.Redis, redis_server: EmbeddedRedis, zone: str, keyring_path: Path, sealer: Sealer, tmp_path: Path
) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    records = items(12)
    records[4]["question_id"] = "poison"
    write_jsonl(inp, records)
    settings = settings_for(redis_server, zone, keyring_path)
    request = RunRequest(input=str(inp), output=str(out), task="text_stats", feedback_task=None, pii=False)
    poison = Handler()
    options = {"min_idle_ms": 20, "max_deliveries": 2, "reclaim_interval_s": 0.02}
    with worker(r, sealer, zone, poison, count=1, **options):
        summary = execute(request, settings, r)
    assert (summary.ok, summary.dead_lettered, summary.timed_out, summary.status) == (11, 1, 0, "incomplete")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[4]["status"] == "dead_lettered" and "max_deliveries" in rows[4]["error"]
    assert [x["status"] for x in rows[:4] + rows[5:]] == ["ok"] * 11
    # fixed, the model takes it: a resume submits only that item
    records[4]["question_id"] = "q4"
    write_jsonl(inp, records)
    with worker(r, sealer, zone, Handler()):
        again = execute(request, settings, r)
    assert (again.already_done, again.submitted_jobs, again.ok, again.status) == (11, 1, 12, "completed")
