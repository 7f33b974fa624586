"""RQ baseline: N no-op jobs through one `rq worker --worker-class rq.worker.SimpleWorker`.

Runs inside the RQ peer environment (stdlib + rq only; never the project's packages). The worker is
RQ's own CLI in a child process, with this file's directory on its path so that it can import
``rq_peer.noop``. Once the worker has run one warm-up job, the clock starts at the first enqueue
(``Queue.enqueue_many``, one pipeline per 100 jobs, as RQ's docs suggest for bulk enqueueing) and
stops when every job's result record exists; the results are then read back and checked, untimed.

Prints one JSON line on stdout: {"peer", "jobs", "seconds", "jobs_per_s", "enqueue_seconds", "config"}
("seconds" is the timed span; "enqueue_seconds" the part of it until the last enqueue returned).
Everything it creates in Redis (its own database, default 13, names carrying a per-run token) is
deleted at the end; a SIGTERM still stops the worker and cleans up. ``--verbose`` prints phase times.
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
from collections.abc import Callable
from pathlib import Path
from typing import IO

import redis
import rq
from redis import Redis
from rq import Queue
from rq.results import Result
from runner_common import (
    BenchFailure,
    log_tail,
    make_payload,
    peer_main,
    stop_worker,
    url_with_db,
    wait_for_keys,
)

PEER = "rq"
DEFAULT_DB = 13
ENQUEUE_BATCH = 100
HERE = Path(__file__).resolve().parent

# Where RQ stores a job's results (a stream per job); rq's own helper, typed for mypy.
result_key: Callable[[str], str] = Result.get_key


def noop(arg: str) -> int:
    """The benchmark job: trivial on purpose, so that only queue overhead is measured."""
    return len(arg)


def cleanup(client: Redis, token: str, queue_key: str, worker_key: str) -> int:
    """Delete only what this run created: every key naming its token, and its members of RQ's sets."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"*{token}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += client.unlink(*batch)
            batch.clear()
    if batch:
        removed += client.unlink(*batch)
    client.srem("rq:queues", queue_key)
    client.srem("rq:workers", worker_key)
    return removed


def run(args: argparse.Namespace) -> dict[str, object]:
    url = url_with_db(args.redis_url, args.db)
    deadline = time.monotonic() + args.timeout
    token = uuid.uuid4().hex[:12]
    queue_name = f"bench-{token}"
    worker_name = f"bench-{token}-w"
    payload = make_payload(args.payload_bytes)
    func = f"{Path(__file__).stem}.noop"

    client = Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchFailure(f"cannot reach Redis at {url}: {exc}") from exc
    queue = Queue(queue_name, connection=client)
    log_fd, log_name = tempfile.mkstemp(prefix="rq-peer-worker-", suffix=".log")
    log_path = Path(log_name)
    log: IO[bytes] = os.fdopen(log_fd, "wb")
    worker_cmd = [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--worker-class",
        "rq.worker.SimpleWorker",
        "--url",
        url,
        "--name",
        worker_name,
        "--path",
        str(HERE),
        "--quiet",  # WARNING level: no two log lines per job
        queue_name,
    ]
    phases: dict[str, float] = {}
    spawned = time.perf_counter()
    worker = subprocess.Popen(worker_cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        try:
            # Warm-up: proves the worker is up, connected and has imported the job function.
            warm_id = f"{token}-warmup"
            queue.enqueue_many([Queue.prepare_data(func, (payload,), job_id=warm_id, result_ttl=600)])
            wait_for_keys(client, [result_key(warm_id)], deadline, worker, "warm-up job")
            phases["worker_ready"] = time.perf_counter() - spawned

            job_ids = [f"{token}-{i}" for i in range(args.jobs)]
            result_keys = [result_key(job_id) for job_id in job_ids]
            started = time.perf_counter()
            for first in range(0, args.jobs, ENQUEUE_BATCH):
                if time.monotonic() > deadline:
                    raise BenchFailure(f"enqueue: timed out after {first}/{args.jobs} jobs")
                batch = job_ids[first : first + ENQUEUE_BATCH]
                queue.enqueue_many(
                    [Queue.prepare_data(func, (payload,), job_id=job_id, result_ttl=600) for job_id in batch]
                )
            phases["enqueue"] = time.perf_counter() - started
            wait_for_keys(client, result_keys, deadline, worker, "benchmark jobs")
            seconds = phases["timed"] = time.perf_counter() - started

            # Untimed: every job succeeded and returned what the no-op returns (RQ's own Result records).
            verify_started = time.perf_counter()
            bad = 0
            for first in range(0, args.jobs, 500):
                chunk = job_ids[first : first + 500]
                pipe = client.pipeline(transaction=False)
                for job_id in chunk:
                    pipe.xrevrange(result_key(job_id), "+", "-", count=1)
                for job_id, entries in zip(chunk, pipe.execute(), strict=True):
                    if not entries:
                        bad += 1
                        continue
                    result_id, fields = entries[0]
                    result = Result.restore(job_id, result_id.decode(), fields, connection=client)
                    if result.type != Result.Type.SUCCESSFUL or result.return_value != len(payload):
                        bad += 1
            if bad:
                raise BenchFailure(f"{bad}/{args.jobs} jobs did not finish with the expected result")
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
        with contextlib.suppress(redis.RedisError):
            cleanup(client, token, queue.key, f"rq:worker:{worker_name}")
        client.close()
        phases["stop_cleanup"] = time.perf_counter() - stopping
        if args.verbose:
            print(f"{PEER}_peer phases: " + ", ".join(f"{k}={v:.3f}s" for k, v in phases.items()), file=sys.stderr)

    config = (
        f"rq {rq.__version__} (redis-py {redis.__version__}): 1 SimpleWorker via "
        f"`rq worker --worker-class rq.worker.SimpleWorker --quiet` (no fork per job), "
        f"enqueue_many pipelines of {ENQUEUE_BATCH}, pickle serializer; timed first enqueue -> all "
        f"results stored, worker warmed by 1 job"
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
    return int(peer_main(PEER, __doc__, DEFAULT_DB, run, argv=argv))


if __name__ == "__main__":
    sys.exit(main())
