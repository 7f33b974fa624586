"""What the three peer runners share. They run as scripts inside their own venvs (stdlib and redis-py
only there), so this sits beside them and is imported by its file name, not as a package module."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import Redis

POLL_S = 0.005
CHECK_CHUNK = 256
STOP_GRACE_S = 10.0


class BenchFailure(Exception):
    pass


def url_with_db(url: str, db: int) -> str:
    """`url` pointed at database `db` (db < 0 keeps the URL's own)."""
    if db < 0:
        return url
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"] + [("db", str(db))]
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path=f"/{db}"))


def make_payload(size: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return (alphabet * (size // len(alphabet) + 1))[:size]


def log_tail(path: Path, limit: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text if len(text) <= limit else "..." + text[-limit:]


def wait_for_keys(
    client: Redis,
    keys: Sequence[str | bytes],
    deadline: float,
    worker: subprocess.Popen[bytes],
    what: str,
) -> None:
    """Block until every key exists, checking them in order a chunk at a time (results arrive ~FIFO)."""
    done = 0
    while done < len(keys):
        chunk = keys[done : done + CHECK_CHUNK]
        if client.exists(*chunk) == len(chunk):
            done += len(chunk)
            continue
        if worker.poll() is not None:
            raise BenchFailure(f"{what}: the worker exited (status {worker.returncode}) at {done}/{len(keys)}")
        if time.monotonic() > deadline:
            stored = done
            for first in range(done, len(keys), 1000):
                stored += client.exists(*keys[first : first + 1000])
            raise BenchFailure(f"{what}: timed out with {stored}/{len(keys)} results stored")
        time.sleep(POLL_S)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the peer's own warm shutdown; SIGKILL if it lingers."""
    if worker.poll() is not None:
        return
    worker.terminate()
    try:
        worker.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def on_sigterm(signum: int, frame: object) -> None:
    """The caller gave up on us: unwind through the finally blocks (stop the worker, delete our keys)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    raise BenchFailure("terminated (SIGTERM)")
