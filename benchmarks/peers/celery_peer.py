"""Celery baseline: N no-op tasks through one `celery worker -P solo` with a Redis broker and result backend.

Runs inside the Celery peer environment (stdlib + celery[redis] only; never the project's packages).
The worker is this same file started again with ``--worker``: it builds the same app and calls
``app.worker_main`` (``celery worker`` in-process) with the solo pool, a prefetch multiplier of 64
(the Optimizing guide's advice for many short tasks) and gossip, mingle, heartbeat, remote control
and events off. Once the worker has run one warm-up task, the clock starts at the first
``apply_async`` and stops when every task's result key exists; the results are then read back and
checked, untimed.

Prints one JSON line on stdout: {"peer", "jobs", "seconds", "jobs_per_s", "enqueue_seconds", "config"}
("seconds" is the timed span; "enqueue_seconds" the part of it until the last enqueue returned).
Every key it creates in Redis (its own database, default 15) carries a per-run ``global_keyprefix``
and is deleted at the end; a SIGTERM still stops the worker and cleans up. ``--verbose`` prints phase
times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

import celery
import kombu
import redis
from celery import Celery
from celery.result import AsyncResult
from redis import Redis
from runner_common import (
    BenchFailure,
    log_tail,
    make_payload,
    peer_main,
    stop_worker,
    url_with_db,
    wait_for_keys,
)

PEER = "celery"
DEFAULT_DB = 15
PREFETCH_MULTIPLIER = 64
TASK_NAME = "bench.noop"
RESULT_TTL_S = 600


def noop(arg: str) -> int:
    """The benchmark task: trivial on purpose, so that only queue overhead is measured."""
    return len(arg)


def names(token: str) -> tuple[str, str]:
    """(key prefix, queue name) of one run; the prefix puts every broker and result key in its namespace."""
    return f"bench-{token}:", f"bench-{token}"


def make_app(url: str, token: str) -> tuple[Celery, Any]:
    """The app both sides use, configured for throughput of short tasks; returns (app, noop task)."""
    prefix, queue = names(token)
    app = Celery("hybrid_bench_peer", broker=url, backend=url, set_as_current=True)
    app.conf.update(
        task_default_queue=queue,
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        worker_disable_rate_limits=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        task_acks_late=False,
        result_expires=RESULT_TTL_S,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    task = app.task(name=TASK_NAME)(noop)
    return app, task


def worker_argv(token: str) -> list[str]:
    _, queue = names(token)
    return [
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--queues",
        queue,
        "--hostname",
        f"bench-{token}@%h",
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def worker_main(url: str, token: str) -> None:
    app, _ = make_app(url, token)
    app.worker_main(argv=worker_argv(token))


def cleanup(client: Redis, token: str) -> int:
    """Delete only what this run created: every key under its prefix or naming its queue."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"*{token}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += client.unlink(*batch)
            batch.clear()
    if batch:
        removed += client.unlink(*batch)
    return removed


def run(args: argparse.Namespace) -> dict[str, object]:
    url = url_with_db(args.redis_url, args.db)
    deadline = time.monotonic() + args.timeout
    token = uuid.uuid4().hex[:12]
    payload = make_payload(args.payload_bytes)

    client = Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchFailure(f"cannot reach Redis at {url}: {exc}") from exc
    app, task = make_app(url, token)
    backend = app.backend
    log_fd, log_name = tempfile.mkstemp(prefix="celery-peer-worker-", suffix=".log")
    log_path = Path(log_name)
    log: IO[bytes] = os.fdopen(log_fd, "wb")
    worker_cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--redis-url", url, "--token", token]
    phases: dict[str, float] = {}
    spawned = time.perf_counter()
    worker = subprocess.Popen(worker_cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        try:
            # Warm-up: proves the worker is up, consuming this queue, and storing results.
            warm_id = f"{token}-warmup"
            task.apply_async((payload,), task_id=warm_id)
            wait_for_keys(client, [backend.get_key_for_task(warm_id)], deadline, worker, "warm-up task")
            phases["worker_ready"] = time.perf_counter() - spawned

            task_ids = [f"{token}-{i}" for i in range(args.jobs)]
            result_keys = [backend.get_key_for_task(task_id) for task_id in task_ids]
            started = time.perf_counter()
            for i, task_id in enumerate(task_ids):
                if i % 100 == 0 and time.monotonic() > deadline:
                    raise BenchFailure(f"enqueue: timed out after {i}/{args.jobs} tasks")
                task.apply_async((payload,), task_id=task_id)
            phases["enqueue"] = time.perf_counter() - started
            wait_for_keys(client, result_keys, deadline, worker, "benchmark tasks")
            seconds = phases["timed"] = time.perf_counter() - started

            # Untimed: every task succeeded and returned what the no-op returns.
            verify_started = time.perf_counter()
            bad = 0
            for first in range(0, args.jobs, 500):
                for raw in client.mget(result_keys[first : first + 500]):
                    meta = backend.decode_result(raw) if raw is not None else None
                    if meta is None or meta.get("status") != "SUCCESS" or meta.get("result") != len(payload):
                        bad += 1
            if bad:
                raise BenchFailure(f"{bad}/{args.jobs} tasks did not succeed with the expected result")
            if AsyncResult(task_ids[-1], app=app).state != "SUCCESS":
                raise BenchFailure("celery does not report the last task as successful")
            phases["verify"] = time.perf_counter() - verify_started
        except BenchFailure as exc:
            tail = log_tail(log_path)
            raise BenchFailure(f"{exc}\n--- worker log ---\n{tail}" if tail else str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on we are cleaning up anyway
        stopping = time.perf_counter()
        stop_worker(worker)
        log.close()
        with contextlib.suppress(OSError):
            log_path.unlink()
        with contextlib.suppress(Exception):
            app.close()
        with contextlib.suppress(redis.RedisError):
            cleanup(client, token)
        client.close()
        phases["stop_cleanup"] = time.perf_counter() - stopping
        if args.verbose:
            print(f"{PEER}_peer phases: " + ", ".join(f"{k}={v:.3f}s" for k, v in phases.items()), file=sys.stderr)

    config = (
        f"celery {celery.__version__} (kombu {kombu.__version__}, redis-py {redis.__version__}): 1 worker "
        f"`-P solo -c 1`, worker_prefetch_multiplier={PREFETCH_MULTIPLIER}, acks early, "
        f"--without-gossip/mingle/heartbeat, remote control and events off, json serializer, Redis broker "
        f"+ Redis result backend; apply_async one by one; timed first enqueue -> all results stored, "
        f"worker warmed by 1 task"
    )
    return {
        "peer": PEER,
        "jobs": args.jobs,
        "seconds": round(seconds, 6),
        "jobs_per_s": round(args.jobs / seconds, 1),
        "enqueue_seconds": round(phases["enqueue"], 6),
        "config": config,
    }


def main(argv: list[str] | None = None) -> int:
    return int(peer_main(PEER, __doc__, DEFAULT_DB, run, worker=("token", worker_main), argv=argv))


if __name__ == "__main__":
    sys.exit(main())
