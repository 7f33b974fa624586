"""The durable outbox: order, bounds, survival across a restart (a reopened file), a failing replay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox, OutboxFull, OutboxItem


def test_replays_in_order_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    for i in range(5):
        box.put_sealed(f"job-{i}", "z1", "interactive", "t", b"h%d" % i, b"body-%d" % i)
    box.put_spec("job-5", "z1", "batch", "t", {"task": "echo", "inputs": {"text": "hi"}})
    box.close()

    box = Outbox(path)  # the agent restarted
    assert len(box) == 6
    sent: list[OutboxItem] = []
    assert box.replay(sent.append) == 6
    assert [i.job_id for i in sent] == [f"job-{i}" for i in range(6)]
    assert sent[0].h == b"h0" and sent[0].b == b"body-0" and sent[0].kind == "sealed"
    assert sent[5].spec_fields() == {"task": "echo", "inputs": {"text": "hi"}}
    assert len(box) == 0


def test_a_failure_stops_the_replay_and_keeps_the_rest_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(4):
        box.put_sealed(f"j{i}", "z", "interactive", "t", b"h", b"b")
    seen: list[str] = []

    def flaky(item: OutboxItem) -> None:
        if item.job_id == "j2":
            raise ConnectionError("broker away")
        seen.append(item.job_id)

    with pytest.raises(ConnectionError):
        box.replay(flaky)
    assert seen == ["j0", "j1"]
    assert [i.job_id for i in box.peek()] == ["j2", "j3"]
    box.replay(lambda item: seen.append(item.job_id))
    assert seen == ["j0", "j1", "j2", "j3"]


def test_bounded_by_items_and_bytes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_items=2, max_bytes=1000)
    box.put_sealed("a", "z", "batch", "t", b"h", b"x" * 10)
    box.put_sealed("b", "z", "batch", "t", b"h", b"x" * 10)
    with pytest.raises(OutboxFull, match="outbox full: 2 jobs"):
        box.put_sealed("c", "z", "batch", "t", b"h", b"x")
    assert len(box) == 2
    box.replay(lambda item: None, limit=1)
    with pytest.raises(OutboxFull, match="1000 bytes"):
        box.put_sealed("d", "z", "batch", "t", b"h", b"x" * 2000)
    box.put_sealed("e", "z", "batch", "t", b"h", b"x" * 10)
    assert [i.job_id for i in box.peek()] == ["b", "e"]


def test_job_log(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.record_job("j1", "summarization", "in-wb", "queued", {"transform": "tokenize"})
    box.set_state("j1", "submitted")
    rec = box.job("j1")
    assert rec is not None and rec.state == "submitted" and rec.meta == {"transform": "tokenize"}
    assert box.job("nope") is None


def test_nothing_lost_when_the_process_is_killed(tmp_path: Path) -> None:
    """A process that stores jobs and is killed with SIGKILL right after: every acknowledged put is there."""
    path = tmp_path / "o.sqlite"
    code = (
        "import os, sys; from edge_agent.outbox import Outbox\n"
        f"box = Outbox({str(path)!r})\n"
        "for i in range(50): box.put_sealed(f'k{i}', 'z', 'batch', 't', b'h', b'b' * 100)\n"
        "print('stored', flush=True); os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "stored" in proc.stdout
    assert [i.job_id for i in Outbox(path).peek(100)] == [f"k{i}" for i in range(50)]


def _age(box: Outbox, job_id: str, days: float) -> None:
    """Pretend `job_id` was last touched `days` ago (the log's clock is the wall clock)."""
    box._db.execute("UPDATE jobs SET updated_ms = updated_ms - ? WHERE job_id = ?", (int(days * 86_400_000), job_id))


def test_old_finished_jobs_are_pruned_and_queued_ones_kept(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", job_log_retention_s=2 * 86_400)
    for job_id, state in [("old-done", "done"), ("old-failed", "failed"), ("old-submitted", "submitted"),
                          ("old-queued", "queued"), ("new-done", "done")]:  # fmt: skip
        box.record_job(job_id, "classify", "z", state)
    for job_id in ("old-done", "old-failed", "old-submitted", "old-queued"):
        _age(box, job_id, 3)
    assert box.prune_jobs() == 3
    assert box.job("old-done") is None and box.job("old-failed") is None and box.job("old-submitted") is None
    assert box.job("old-queued") is not None and box.job("new-done") is not None  # still in the outbox / recent
    assert box.job_count() == 2
    box.close()


def test_the_log_is_pruned_when_the_outbox_opens(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.record_job("ancient", "grade", "z", "done")
    _age(box, "ancient", 30)
    box.close()
    reopened = Outbox(tmp_path / "o.db")
    assert reopened.job("ancient") is None and reopened.job_count() == 0
    reopened.close()


def test_retention_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="job_log_retention_s"):
        Outbox(tmp_path / "o.db", job_log_retention_s=0)
