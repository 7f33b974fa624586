"""arq baseline: N no-op jobs through one arq Worker tuned for throughput (poll_delay 5 ms, max_jobs 100).

Runs inside the arq peer environment (stdlib + arq only; never the project's packages). The worker
is this same file started again with ``--worker``: it builds its settings and hands them to
``arq.worker.run_worker``, which is what the ``arq`` command line does. Once the worker has run one
warm-up job, the clock starts at the first ``enqueue_job`` (up to 32 in flight on the pool) and
stops when every job's result key exists; the results are then read back and checked, untimed.

Prints one JSON line on stdout: {"peer", "jobs", "seconds", "jobs_per_s", "enqueue_seconds", "config"}
("seconds" is the timed span; "enqueue_seconds" the part of it until the last enqueue returned).
Everything it creates in Redis (its own database, default 14, names carrying a per-run token) is
deleted at the end; a SIGTERM still stops the worker and cleans up. ``--verbose`` prints phase times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

import arq
import redis
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import result_key_prefix
from arq.jobs import Job, JobStatus, deserialize_result
from arq.worker import run_worker
from runner_common import (
    CHECK_CHUNK,
    POLL_S,
    BenchFailure,
    log_tail,
    make_payload,
    peer_main,
    stop_worker,
    url_with_db,
)

PEER = "arq"
DEFAULT_DB = 14
POLL_DELAY_S = 0.005
MAX_JOBS = 100
ENQUEUE_CONCURRENCY = 32
RESULT_TTL_S = 600


async def noop(ctx: dict[str, Any], arg: str) -> int:
    """The benchmark job: trivial on purpose, so that only queue overhead is measured."""
    return len(arg)


def worker_main(url: str, queue_name: str) -> None:
    """The worker process: arq's own run_worker with the worker settings, as the `arq` CLI would."""
    settings: dict[str, Any] = {
        "functions": [noop],
        "redis_settings": RedisSettings.from_dsn(url),
        "queue_name": queue_name,
        "poll_delay": POLL_DELAY_S,
        "max_jobs": MAX_JOBS,
        "keep_result": RESULT_TTL_S,
        "handle_signals": True,
    }
    run_worker(settings)


async def wait_for_keys(
    pool: ArqRedis,
    keys: list[str],
    deadline: float,
    worker: subprocess.Popen[bytes],
    what: str,
) -> None:
    """Wait until every key exists, checking them in order a chunk at a time (results arrive ~FIFO)."""
    done = 0
    while done < len(keys):
        chunk = keys[done : done + CHECK_CHUNK]
        if await pool.exists(*chunk) == len(chunk):
            done += len(chunk)
            continue
        if worker.poll() is not None:
            raise BenchFailure(f"{what}: the worker exited (status {worker.returncode}) at {done}/{len(keys)}")
        if time.monotonic() > deadline:
            stored = done
            for first in range(done, len(keys), 1000):
                stored += await pool.exists(*keys[first : first + 1000])
            raise BenchFailure(f"{what}: timed out with {stored}/{len(keys)} results stored")
        await asyncio.sleep(POLL_S)


async def cleanup(pool: ArqRedis, token: str) -> int:
    """Delete only what this run created: every key naming its token (queue, jobs, results, health)."""
    removed = 0
    batch: list[bytes] = []
    async for key in pool.scan_iter(match=f"*{token}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += await pool.unlink(*batch)
            batch.clear()
    if batch:
        removed += await pool.unlink(*batch)
    return removed


async def produce_and_measure(
    args: argparse.Namespace,
    url: str,
    token: str,
    queue_name: str,
    worker: subprocess.Popen[bytes],
    phases: dict[str, float],
) -> None:
    """Warm up, time the benchmark jobs and check their results; fills `phases` (seconds)."""
    spawned = time.perf_counter()
    deadline = time.monotonic() + args.timeout
    payload = make_payload(args.payload_bytes)
    # SIGTERM (the caller gave up) cancels this task, so the finally below still stops the worker and
    # deletes our keys; raising from a plain signal handler inside the event loop would skip that.
    loop = asyncio.get_running_loop()
    this_task = asyncio.current_task()
    if this_task is not None:
        loop.add_signal_handler(signal.SIGTERM, this_task.cancel)
    try:
        settings = dataclasses.replace(RedisSettings.from_dsn(url), conn_retries=1)  # fail fast
        pool = await create_pool(settings, default_queue_name=queue_name)
    except (OSError, redis.RedisError) as exc:
        raise BenchFailure(f"cannot reach Redis at {url}: {exc}") from exc
    except asyncio.CancelledError:
        raise BenchFailure("terminated (SIGTERM)") from None
    try:
        # Warm-up: proves the worker is up and polling this queue.
        warm_id = f"{token}-warmup"
        if await pool.enqueue_job("noop", payload, _job_id=warm_id) is None:
            raise BenchFailure("warm-up job id already taken")
        await wait_for_keys(pool, [result_key_prefix + warm_id], deadline, worker, "warm-up job")
        phases["worker_ready"] = time.perf_counter() - spawned

        job_ids = [f"{token}-{i}" for i in range(args.jobs)]
        result_keys = [result_key_prefix + job_id for job_id in job_ids]
        pending = iter(job_ids)

        async def enqueuer() -> None:
            # ENQUEUE_CONCURRENCY of these share one iterator, so that many enqueue_job calls are in flight.
            for job_id in pending:
                if time.monotonic() > deadline:
                    raise BenchFailure("enqueue: timed out")
                if await pool.enqueue_job("noop", payload, _job_id=job_id) is None:
                    raise BenchFailure(f"job id {job_id} already taken")

        started = time.perf_counter()
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(ENQUEUE_CONCURRENCY):
                    group.create_task(enqueuer())
        except ExceptionGroup as failures:
            first = failures.exceptions[0]
            raise first if isinstance(first, BenchFailure) else BenchFailure(f"enqueue: {first!r}") from None
        phases["enqueue"] = time.perf_counter() - started
        await wait_for_keys(pool, result_keys, deadline, worker, "benchmark jobs")
        phases["timed"] = time.perf_counter() - started

        # Untimed: every job completed successfully and returned what the no-op returns.
        verify_started = time.perf_counter()
        bad = 0
        for first in range(0, args.jobs, 500):
            for raw in await pool.mget(result_keys[first : first + 500]):
                info = deserialize_result(raw) if raw is not None else None
                if info is None or not info.success or info.result != len(payload):
                    bad += 1
        if bad:
            raise BenchFailure(f"{bad}/{args.jobs} jobs did not complete with the expected result")
        if await Job(job_ids[-1], pool, _queue_name=queue_name).status() != JobStatus.complete:
            raise BenchFailure("arq does not report the last job as complete")
        phases["verify"] = time.perf_counter() - verify_started
    except asyncio.CancelledError:
        raise BenchFailure("terminated (SIGTERM)") from None
    finally:
        loop.add_signal_handler(signal.SIGTERM, lambda: None)  # a second SIGTERM must not cut the cleanup
        stopping = time.perf_counter()
        stop_worker(worker)  # before cleanup, so the worker does not write anything back afterwards
        with contextlib.suppress(OSError, redis.RedisError):
            await cleanup(pool, token)
        await pool.aclose()
        phases["stop_cleanup"] = time.perf_counter() - stopping


def run(args: argparse.Namespace) -> dict[str, object]:
    url = url_with_db(args.redis_url, args.db)
    token = uuid.uuid4().hex[:12]
    queue_name = f"arq:queue:bench-{token}"
    log_fd, log_name = tempfile.mkstemp(prefix="arq-peer-worker-", suffix=".log")
    log_path = Path(log_name)
    log: IO[bytes] = os.fdopen(log_fd, "wb")
    worker_cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--redis-url", url, "--queue", queue_name]
    worker = subprocess.Popen(worker_cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    phases: dict[str, float] = {}
    try:
        asyncio.run(produce_and_measure(args, url, token, queue_name, worker, phases))
    except BenchFailure as exc:
        tail = log_tail(log_path)
        raise BenchFailure(f"{exc}\n--- worker log ---\n{tail}" if tail else str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on we are cleaning up anyway
        stop_worker(worker)
        log.close()
        with contextlib.suppress(OSError):
            log_path.unlink()
        if args.verbose:
            print(f"{PEER}_peer phases: " + ", ".join(f"{k}={v:.3f}s" for k, v in phases.items()), file=sys.stderr)

    seconds = phases["timed"]
    config = (
        f"arq {arq.VERSION} (redis-py {redis.__version__}): 1 Worker process, poll_delay="
        f"{POLL_DELAY_S * 1000:g} ms, max_jobs={MAX_JOBS}, async no-op, pickle serializer; enqueue_job "
        f"with {ENQUEUE_CONCURRENCY} in flight; timed first enqueue -> all results stored, worker warmed by 1 job"
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
    return int(peer_main(PEER, __doc__, DEFAULT_DB, run, worker=("queue", worker_main), argv=argv))


if __name__ == "__main__":
    sys.exit(main())
