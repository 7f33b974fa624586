"""Nightly runs with RQ as the control plane: one RQ job per run, items through our streams.

`hybrid grade schedule --cron "0 1 * * *" --name nightly …` stores the schedule (a `RunRequest` and
the cron line) in Redis and enqueues the first run with `Queue.enqueue_at` at the next cron time.
An RQ worker started with its scheduler (`hybrid grade scheduler`, or `rq worker hybrid-grade
--with-scheduler`) moves the job to the queue when it is due and runs `run_scheduled`, which first
enqueues the following occurrence and then drives the submission (`hybrid.grading.job.execute`)
and records the outcome in the run registry (`hybrid grade runs`) and as the RQ job's result.

Each occurrence has a fixed RQ job id (`grade-<zone>-<name>-<YYYYmmddHHMM>`) and a fixed run id
(`<name>-<YYYYmmddHHMM>`): enqueuing an occurrence twice does nothing, and an occurrence whose job
died part-way is resumed, not repeated, by running it again (`hybrid grade run --run-id …`).
Output paths may contain `{run_id}` and `{date}` (the occurrence's UTC date, `YYYY-mm-dd`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from croniter import croniter
from rq import Queue, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from broker.connection import redis_errors
from broker.errors import ConfigError
from broker.keys import zone_prefix
from broker.settings import load_settings
from hybrid.grading.job import RunRequest, execute

QUEUE = "hybrid-grade"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
JOB_TIMEOUT_S = 12 * 3600


def schedules_key(zone: str) -> str:
    return f"{zone_prefix(zone)}:grade:schedules"


def check_cron(expr: str) -> str:
    if not croniter.is_valid(expr):
        raise ValueError(f"invalid cron expression {expr!r}: use five fields, e.g. '0 1 * * *' (01:00 every day)")
    return expr


@dataclass
class Schedule:
    name: str
    cron: str
    zone: str
    request: RunRequest
    keyring: str | None = None

    def dumps(self) -> str:
        return json.dumps(
            {"name": self.name, "cron": self.cron, "zone": self.zone, "keyring": self.keyring,
             "request": self.request.as_dict()}
        )  # fmt: skip

    @classmethod
    def loads(cls, raw: str | bytes) -> Schedule:
        doc = json.loads(raw)
        return cls(doc["name"], doc["cron"], doc["zone"], RunRequest.from_dict(doc["request"]), doc.get("keyring"))


def next_time(cron: str, after: datetime) -> datetime:
    """The first occurrence of `cron` (read in UTC) strictly after `after`."""
    base = after.astimezone(UTC).replace(tzinfo=None)
    nxt: datetime = croniter(cron, base).get_next(datetime)
    return nxt.replace(tzinfo=UTC)


def occurrence_ids(s: Schedule, when: datetime) -> tuple[str, str]:
    """(RQ job id, run id) of the occurrence of `s` at `when`."""
    stamp = when.astimezone(UTC).strftime("%Y%m%d%H%M")
    return f"grade-{s.zone}-{s.name}-{stamp}", f"{s.name}-{stamp}"


def enqueue_occurrence(conn: redis.Redis, s: Schedule, when: datetime) -> Job:
    """Put the run at `when` on RQ's schedule (once: an occurrence already there is returned as is)."""
    job_id, _ = occurrence_ids(s, when)
    try:
        return Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        pass
    queue = Queue(QUEUE, connection=conn)
    job: Job = queue.enqueue_at(
        when, run_scheduled, s.zone, s.name, when.isoformat(), job_id=job_id, job_timeout=JOB_TIMEOUT_S,
        result_ttl=30 * 86400, failure_ttl=30 * 86400, description=f"grading run {s.name} at {when.isoformat()}",
    )  # fmt: skip
    return job


def add_schedule(conn: redis.Redis, s: Schedule, *, now: datetime | None = None) -> tuple[Job, datetime]:
    """Store `s` (replacing one of the same name) and enqueue its next occurrence after `now`."""
    check_schedule_request(s)
    s.request.check()
    with redis_errors():
        conn.hset(schedules_key(s.zone), s.name, s.dumps())
    when = next_time(s.cron, now or datetime.now(UTC))
    return enqueue_occurrence(conn, s, when), when


def _bad_name(name: str) -> None:
    raise ValueError(f"invalid schedule name {name!r}: use 1-32 letters, digits, '_' or '-'")


def remove_schedule(conn: redis.Redis, zone: str, name: str) -> bool:
    """Forget a schedule; an occurrence already enqueued finds it gone and does nothing."""
    with redis_errors():
        return bool(conn.hdel(schedules_key(zone), name))


def list_schedules(conn: redis.Redis, zone: str) -> list[Schedule]:
    with redis_errors():
        raw: Any = conn.hgetall(schedules_key(zone))
    return [Schedule.loads(v) for _k, v in sorted(raw.items())]


def get_schedule(conn: redis.Redis, zone: str, name: str) -> Schedule | None:
    with redis_errors():
        raw: Any = conn.hget(schedules_key(zone), name)
    return Schedule.loads(raw) if raw else None


def _fill(path: str | None, run_id: str, when: datetime) -> str | None:
    if path is None:
        return None
    return path.replace("{run_id}", run_id).replace("{date}", when.strftime("%Y-%m-%d"))


def run_scheduled(zone: str, name: str, when_iso: str) -> dict[str, Any]:
    """The RQ job of one occurrence: enqueue the next one, run, return (and record) the summary."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_scheduled runs inside an RQ worker")
    conn = job.connection
    s = get_schedule(conn, zone, name)
    if s is None:
        return {"status": "unscheduled", "schedule": name}
    when = datetime.fromisoformat(when_iso)
    enqueue_occurrence(conn, s, next_time(s.cron, max(when, datetime.now(UTC))))
    _, run_id = occurrence_ids(s, when)
    req = s.request
    request = RunRequest.from_dict(
        {**req.as_dict(), "run_id": run_id, "output": _fill(req.output, run_id, when),
         "rejects": _fill(req.rejects, run_id, when)}
    )  # fmt: skip
    settings = load_settings(zone=zone, keyring=s.keyring)
    meta = {"schedule": name, "rq_job": job.id, "scheduled_for": when_iso}
    summary = execute(request, settings, conn, meta=meta)
    return summary.as_dict()


def check_schedule_request(s: Schedule) -> None:
    if not NAME_RE.match(s.name):
        _bad_name(s.name)
    check_cron(s.cron)
    if s.request.run_id is not None:
        raise ConfigError("a schedule names its runs itself (<name>-<YYYYmmddHHMM>): drop --run-id")


__all__ = [
    "QUEUE",
    "Schedule",
    "add_schedule",
    "check_schedule_request",
    "enqueue_occurrence",
    "get_schedule",
    "list_schedules",
    "next_time",
    "occurrence_ids",
    "remove_schedule",
    "run_scheduled",
    "schedules_key",
]
