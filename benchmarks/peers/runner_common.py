"""What the three peer runners share. They run as scripts inside their own venvs (stdlib and redis-py
only there), so this sits beside them and is imported by its file name, not as a package module."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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


WorkerEntry = tuple[str, Callable[[str, str], None]]
"""(option name, function): the runner's worker is this script started again with `--worker --<option> V`."""


def peer_main(
    peer: str,
    doc: str | None,
    default_db: int,
    run: Callable[[argparse.Namespace], dict[str, object]],
    *,
    worker: WorkerEntry | None = None,
    argv: list[str] | None = None,
) -> int:
    """The command line every runner has: parse, run (or be the worker), print one JSON line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--payload-bytes", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline for all waits, seconds")
    parser.add_argument("--db", type=int, default=default_db, help="Redis database to use (-1: the URL's)")
    parser.add_argument("--verbose", action="store_true", help="print phase timings to stderr")
    if worker is not None:
        parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument(f"--{worker[0]}", dest="worker_arg", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if worker is not None and args.worker:
        if not args.worker_arg:
            parser.error(f"--worker needs --{worker[0]}")
        worker[1](args.redis_url, args.worker_arg)
        return 0
    if args.jobs < 1 or args.payload_bytes < 0:
        parser.error("--jobs must be >= 1 and --payload-bytes >= 0")
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = run(args)
    except BenchFailure as exc:
        print(f"{peer}_peer: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0
