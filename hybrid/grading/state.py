"""The state of a grading run: a local SQLite file next to the output, plus a run record in Redis.

The file (`<output>.state.sqlite`, mode 0600) is the run's memory across crashes: the run id, and per
item id its job ids, whether they were submitted and, once back, the result. Re-running with the
same input and output reads it and submits only items without a result. It lives on the submitting
host (not in Redis) because results in Redis expire (`result_ttl_s`) and a run may be resumed days
later; Redis holds only what other hosts need to see: the run record of `hybrid grade runs`.

Job ids are derived from the run id and the item id (`job_id_for`), so a resubmission after a crash
reuses the same ids: a job id has at most one stored result, so no item is ever graded twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from broker.connection import redis_errors
from broker.keys import zone_prefix

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}\Z")
STALE_AFTER_S = 60.0  # a "running" run whose heartbeat is older than this is shown as stale


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.match(run_id):
        raise ValueError(f"invalid run id {run_id!r}: use 1-48 letters, digits, '_' or '-'")
    return run_id


def job_id_for(run_id: str, item_id: str, kind: str) -> str:
    """The job id of one item's `kind` job (`g` grade, `f` feedback) in a run: stable across resumes."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=12).hexdigest()
    return f"gr.{run_id}.{digest}.{kind}"


def state_path_for(output: Path | str) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".state.sqlite")


@dataclass(frozen=True)
class ItemState:
    item_id: str
    submitted: bool
    result: dict[str, Any] | None


class RunState:
    """The SQLite state file of one run (one output file ↔ one run)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self.db = sqlite3.connect(self.path, isolation_level=None)
        if fresh:
            os.chmod(self.path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS items (item_id TEXT PRIMARY KEY, submitted INTEGER NOT NULL DEFAULT 0,"
            " result TEXT)"
        )

    # -- meta ----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def bind_run(self, run_id: str | None, make_id: Any) -> tuple[str, bool]:
        """The run id of this state file (`run_id` must match it if the file has one); True if resumed."""
        existing = self.get_meta("run_id")
        if existing is not None:
            if run_id is not None and run_id != existing:
                raise ValueError(
                    f"{self.path} belongs to run {existing!r}, not {run_id!r}: resume it with --run-id {existing}, "
                    "or write to another --output"
                )
            return existing, True
        chosen = check_run_id(run_id) if run_id is not None else str(make_id())
        self.set_meta("run_id", chosen)
        self.set_meta("created", str(time.time()))
        return chosen, False

    # -- items ---------------------------------------------------------------------------------

    def load(self, item_ids: Iterable[str]) -> dict[str, ItemState]:
        """State of the given items that the file knows."""
        out: dict[str, ItemState] = {}
        wanted = set(item_ids)
        for item_id, submitted, result in self.db.execute("SELECT item_id, submitted, result FROM items"):
            if item_id in wanted:
                out[item_id] = ItemState(item_id, bool(submitted), json.loads(result) if result else None)
        return out

    def mark_submitted(self, item_ids: Sequence[str]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO items (item_id, submitted) VALUES (?, 1) ON CONFLICT(item_id) DO UPDATE SET submitted = 1",
                [(i,) for i in item_ids],
            )

    def record(self, results: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Store finished items' output rows (one transaction)."""
        with self.db:
            self.db.executemany(
                "INSERT INTO items (item_id, submitted, result) VALUES (?, 1, ?)"
                " ON CONFLICT(item_id) DO UPDATE SET result = excluded.result",
                [(i, json.dumps(r, ensure_ascii=False)) for i, r in results],
            )

    def count_done(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM items WHERE result IS NOT NULL").fetchone()[0])

    def close(self) -> None:
        self.db.close()


# -- the run registry in Redis ---------------------------------------------------------------------


def runs_index(zone: str) -> str:
    return f"{zone_prefix(zone)}:grade:runs"


def run_key(zone: str, run_id: str) -> str:
    return f"{zone_prefix(zone)}:grade:run:{check_run_id(run_id)}"


class RunRegistry:
    """Run records (`hybrid grade runs`): one hash per run, indexed by start time."""

    def __init__(self, client: redis.Redis, zone: str) -> None:
        self.client = client
        self.zone = zone

    def update(self, run_id: str, **fields: Any) -> None:
        doc: dict[Any, Any] = {k: json.dumps(v) for k, v in fields.items()}
        with redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(run_key(self.zone, run_id), mapping=doc)
            if "started" in fields:
                pipe.zadd(runs_index(self.zone), {run_id: float(fields["started"])}, nx=True)
            pipe.execute()

    def get(self, run_id: str) -> dict[str, Any] | None:
        with redis_errors():
            raw: Any = self.client.hgetall(run_key(self.zone, run_id))
        if not raw:
            return None
        doc = {k.decode(): json.loads(v) for k, v in raw.items()}
        doc["run_id"] = run_id
        if doc.get("status") == "running" and time.time() - float(doc.get("heartbeat", 0)) > STALE_AFTER_S:
            doc["status"] = "stale"  # its process died without saying so: resume it
        return doc

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        with redis_errors():
            ids: Any = self.client.zrevrange(runs_index(self.zone), 0, limit - 1)
        docs = [self.get(i.decode()) for i in ids]
        return [d for d in docs if d is not None]


__all__ = [
    "ItemState",
    "RunRegistry",
    "RunState",
    "check_run_id",
    "job_id_for",
    "run_key",
    "runs_index",
    "state_path_for",
]
