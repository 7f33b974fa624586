"""The device's durable outbox: jobs that could not be submitted wait here, in order, across restarts.

SQLite in WAL mode with `synchronous=FULL`: once `put` returns, the job survives a crash or power cut.
Each item is either a **sealed** job (clear header `h` and sealed body `b`, exactly the two stream
fields; nothing readable at rest but the header) or a job **spec** to seal at replay time (msgpack).
`replay(send)` hands items to `send` oldest first and deletes each one after `send` returns; the first
failure stops the replay, so order is kept and nothing is skipped. The outbox is bounded by item count
and bytes: a `put` over either limit raises `OutboxFull` and stores nothing.

The same file keeps a small job log (job id → task, zone, state, times) so `/v1/jobs/{id}` can answer
after a restart: `queued` (in the outbox), `submitted`, `done`/`failed` (result fetched). Entries not
`queued` and untouched for `job_log_retention_s` (3 days: results live 24 h in Redis) are pruned —
when the outbox opens and then at most hourly as jobs are recorded — so a device's log stays small.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack


class OutboxFull(Exception):
    """The outbox is at its item or byte limit; the job was not stored."""

    def __init__(self, items: int, nbytes: int, max_items: int, max_bytes: int) -> None:
        super().__init__(
            f"outbox full: {items} jobs / {nbytes} bytes held (limits {max_items} jobs / {max_bytes} bytes); "
            "the cloud has been unreachable for a while — retry later"
        )
        self.items = items
        self.nbytes = nbytes


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    job_id: str
    zone: str
    lane: str
    tenant: str
    kind: str  # "sealed" or "spec"
    h: bytes  # sealed: the clear header; spec: empty
    b: bytes  # sealed: the sealed body; spec: msgpack of the spec's fields
    created_ms: int

    def spec_fields(self) -> dict[str, Any]:
        if self.kind != "spec":
            raise ValueError("not a spec item")
        out: dict[str, Any] = msgpack.unpackb(self.b, raw=False)
        return out


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    task: str
    zone: str
    state: str  # queued | submitted | done | failed
    created_ms: int
    updated_ms: int
    meta: dict[str, Any]


JOB_LOG_RETENTION_S = 3 * 24 * 3600
PRUNE_EVERY_MS = 3600 * 1000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Outbox:
    def __init__(
        self,
        path: Path | str,
        *,
        max_items: int = 10_000,
        max_bytes: int = 64 << 20,
        job_log_retention_s: float = JOB_LOG_RETENTION_S,
    ) -> None:
        if job_log_retention_s <= 0:
            raise ValueError(f"job_log_retention_s must be positive, got {job_log_retention_s}")
        self.path = Path(path)
        self.job_log_retention_s = job_log_retention_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, zone TEXT NOT NULL,
                lane TEXT NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL, h BLOB NOT NULL, b BLOB NOT NULL,
                size INTEGER NOT NULL, created_ms INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS jobs (
                job_id TEXT PRIMARY KEY, task TEXT NOT NULL, zone TEXT NOT NULL, state TEXT NOT NULL,
                created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, meta BLOB NOT NULL);
            CREATE INDEX IF NOT EXISTS jobs_by_age ON jobs (updated_ms);
            """
        )
        self._pruned_ms = 0
        self.prune_jobs()

    # -- the queue --------------------------------------------------------------------------------

    def _put(self, job_id: str, zone: str, lane: str, tenant: str, kind: str, h: bytes, b: bytes) -> int:
        size = len(h) + len(b)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                items, nbytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
                if items + 1 > self.max_items or nbytes + size > self.max_bytes:
                    raise OutboxFull(items, nbytes, self.max_items, self.max_bytes)
                cur = self._db.execute(
                    "INSERT INTO outbox (job_id, zone, lane, tenant, kind, h, b, size, created_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, zone, lane, tenant, kind, h, b, size, _now_ms()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return int(cur.lastrowid or 0)

    def put_sealed(self, job_id: str, zone: str, lane: str, tenant: str, h: bytes, b: bytes) -> int:
        """Keep a sealed job (the two stream fields). Raises `OutboxFull`; a job id is kept once."""
        return self._put(job_id, zone, lane, tenant, "sealed", h, b)

    def put_spec(self, job_id: str, zone: str, lane: str, tenant: str, spec: Mapping[str, Any]) -> int:
        """Keep a job spec (its fields as a msgpack map) to seal when it is replayed."""
        return self._put(job_id, zone, lane, tenant, "spec", b"", msgpack.packb(dict(spec), use_bin_type=True))

    def peek(self, limit: int = 100) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, job_id, zone, lane, tenant, kind, h, b, created_ms FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxItem(*row) for row in rows]

    def replay(self, send: Callable[[OutboxItem], None], *, limit: int | None = None) -> int:
        """Send held jobs oldest first, deleting each once `send` returns. The first exception from
        `send` stops the replay and propagates; what was sent before it is gone from the outbox."""
        sent = 0
        while limit is None or sent < limit:
            batch = self.peek(min(100, limit - sent) if limit is not None else 100)
            if not batch:
                break
            for item in batch:
                send(item)
                with self._lock:
                    self._db.execute("DELETE FROM outbox WHERE seq = ?", (item.seq,))
                sent += 1
        return sent

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def nbytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])

    def contains(self, job_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM outbox WHERE job_id = ?", (job_id,)).fetchone() is not None

    # -- the job log ------------------------------------------------------------------------------

    def record_job(self, job_id: str, task: str, zone: str, state: str, meta: Mapping[str, Any] | None = None) -> None:
        now = _now_ms()
        packed = msgpack.packb(dict(meta or {}), use_bin_type=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET state=excluded.state,"
                " updated_ms=excluded.updated_ms, meta=excluded.meta",
                (job_id, task, zone, state, now, now, packed),
            )
        if now - self._pruned_ms >= PRUNE_EVERY_MS:
            self.prune_jobs()

    def prune_jobs(self, older_than_s: float | None = None) -> int:
        """Forget job-log entries not `queued` whose last change is older than `older_than_s`
        (default `job_log_retention_s`); returns how many. Queued jobs stay while they are in the outbox."""
        now = _now_ms()
        cutoff = now - int((self.job_log_retention_s if older_than_s is None else older_than_s) * 1000)
        with self._lock:
            cur = self._db.execute("DELETE FROM jobs WHERE state != 'queued' AND updated_ms < ?", (cutoff,))
            self._pruned_ms = now
        return int(cur.rowcount)

    def job_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def set_state(self, job_id: str, state: str) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET state = ?, updated_ms = ? WHERE job_id = ?", (state, _now_ms(), job_id))

    def job(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT job_id, task, zone, state, created_ms, updated_ms, meta FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        if row is None:
            return None
        return JobRecord(row[0], row[1], row[2], row[3], row[4], row[5], msgpack.unpackb(row[6], raw=False))

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["JOB_LOG_RETENTION_S", "JobRecord", "Outbox", "OutboxFull", "OutboxItem"]
