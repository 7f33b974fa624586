"""Fault-injection pieces shared by the chaos benchmark (`python -m benchmarks.chaos`) and tests/test_chaos_*.py.

- `FixedPool`: a `gpu_worker.supervisor.Supervisor` held at N `hybrid worker run --tasks chaos` processes
  (it restarts any that die, under the same name) and `kill_random` — the chaos driver's SIGKILL;
- `TcpProxy`: a loopback TCP proxy we control, to cut a client off from Redis (`cut`) and let it back
  (`restore`) without touching the server;
- `RedisCluster`: three `redis-server --cluster-enabled yes` masters on loopback, joined with
  `redis-cli --cluster create`, each stopped by its PID;
- result accounting: `collect_results` (MGET + open, in chunks), `reply_duplicates` (job ids notified
  more than once on a reply stream), `exec_summary` (executions per job from the chaos runner's logs).

Every process here is started by us and stopped by PID; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from broker import keys
from broker.connection import redis_errors
from broker.embedded import free_port
from broker.errors import MessageError
from broker.message import JobSpec, Sealer
from broker.schema import JobResult
from gpu_worker.autoscale import Autoscaler, Observation, ScalePolicy
from gpu_worker.runners.chaos import EXEC_DIR_ENV, read_exec_counts
from gpu_worker.supervisor import Supervisor

REDIS7_CANDIDATES = ("/usr/bin/redis-server",)


# -- jobs and their accounting ----------------------------------------------------------------------


def chaos_specs(prefix: str, n: int, ms: float, *, lane: str = "batch", start: int = 0) -> list[JobSpec]:
    """`n` chaos jobs with job ids `<prefix>-<i>` (given, so a resubmission is the same job)."""
    return [
        JobSpec(
            task="chaos",
            inputs={"id": f"{prefix}-{i}", "i": i, "ms": ms},
            model="builtin",
            lane=lane,  # type: ignore[arg-type]
            job_id=f"{prefix}-{i}",
            tenant="chaos",
        )
        for i in range(start, start + n)
    ]


def collect_results(r: redis.Redis, sealer: Sealer, zone: str, job_ids: Sequence[str]) -> dict[str, JobResult]:
    """The stored results of `job_ids` (missing ones left out); each opened and checked."""
    out: dict[str, JobResult] = {}
    with redis_errors():
        for i in range(0, len(job_ids), 500):
            chunk = list(job_ids[i : i + 500])
            values: Any = r.mget([keys.result_key(zone, j) for j in chunk])
            for jid, stored in zip(chunk, values, strict=True):
                if stored is not None:
                    out[jid] = sealer.open_result(zone, jid, stored)
    return out


def count_results(r: redis.Redis, zone: str, job_ids: Sequence[str]) -> int:
    n = 0
    for i in range(0, len(job_ids), 1000):
        n += int(r.exists(*[keys.result_key(zone, j) for j in job_ids[i : i + 1000]]))
    return n


def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.2) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step_s)


def reply_duplicates(r: redis.Redis, zone: str, reply_name: str) -> tuple[int, int]:
    """(job ids notified, notifications beyond the first per job id) on a producer's reply stream."""
    seen: Counter[str] = Counter()
    cursor = "-"
    while True:
        rows: Any = r.xrange(keys.reply_stream(zone, reply_name), min=cursor, count=1000)
        if not rows:
            break
        for _eid, fields in rows:
            seen.update(j for j in fields.get(b"jobs", b"").decode().split(",") if j)
        last = rows[-1][0].decode()
        ms, seq = last.split("-")
        cursor = f"{ms}-{int(seq) + 1}"
    return len(seen), sum(c - 1 for c in seen.values())


@dataclass
class ExecSummary:
    executed: int  # distinct jobs that ran at least once
    executions: int  # runs in total
    re_executions: int  # runs beyond the first, over all jobs
    jobs_run_more_than_once: int


def exec_summary(exec_dir: Path, job_ids: Sequence[str] | None = None) -> ExecSummary:
    counts = read_exec_counts(exec_dir)
    if job_ids is not None:
        wanted = set(job_ids)
        counts = {k: v for k, v in counts.items() if k in wanted}
    return ExecSummary(
        executed=len(counts),
        executions=sum(counts.values()),
        re_executions=sum(c - 1 for c in counts.values()),
        jobs_run_more_than_once=sum(1 for c in counts.values() if c > 1),
    )


def check_outputs(results: dict[str, JobResult], prefix: str) -> int:
    """Results whose output is not the one their job asked for (must be 0)."""
    bad = 0
    for jid, res in results.items():
        if res.status != "ok" or f"{prefix}-{res.output.get('i')}" != jid:
            bad += 1
    return bad


# -- worker processes ----------------------------------------------------------------------------------


def worker_argv(
    redis_url: str, zone: str, keyring: Path, name: str, *, min_idle_ms: int, count: int = 32, max_in_flight: int = 64
) -> list[str]:
    return [
        sys.executable, "-m", "hybrid", "worker", "run", "--redis-url", redis_url, "--zone", zone,
        "--keyring", str(keyring), "--name", name, "--tasks", "chaos", "--count", str(count),
        "--max-in-flight", str(max_in_flight), "--min-idle-ms", str(min_idle_ms), "--grace", "10",
    ]  # fmt: skip


def worker_env(exec_dir: Path) -> dict[str, str]:
    return {**os.environ, EXEC_DIR_ENV: str(exec_dir), "HYB_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}


class FixedPool:
    """N chaos workers kept alive by the real `Supervisor` (a fixed-size autoscaler)."""

    def __init__(
        self,
        redis_url: str,
        zone: str,
        keyring: Path,
        exec_dir: Path,
        log_dir: Path,
        *,
        replicas: int,
        min_idle_ms: int,
        prefix: str = "chaos",
        count: int = 32,
        max_in_flight: int = 64,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.kills = 0
        self.supervisor = Supervisor(
            lambda name: worker_argv(redis_url, zone, keyring, name, min_idle_ms=min_idle_ms, count=count,
                                     max_in_flight=max_in_flight),
            Autoscaler(ScalePolicy(min_replicas=replicas, max_replicas=replicas, scale_down_delay_s=0)),
            lambda n, now: Observation(backlog=0, replicas=n, now_s=now),
            prefix=prefix, interval_s=0.25, grace_s=15.0, env=worker_env(exec_dir), log_dir=str(log_dir),
        )  # fmt: skip

    def step(self) -> None:
        self.supervisor.step()

    def kill_random(self, rng: random.Random) -> str | None:
        """SIGKILL one running worker at random (the supervisor restarts it at its next step)."""
        running = [p for p in self.supervisor._procs if p.stopping_since is None and p.popen.poll() is None]
        if not running:
            return None
        victim = rng.choice(running)
        with contextlib.suppress(ProcessLookupError):
            victim.popen.send_signal(signal.SIGKILL)
        self.kills += 1
        return victim.name

    def shutdown(self) -> None:
        self.supervisor.shutdown()

    def refused_duplicates(self) -> int:
        """'N duplicate results refused', summed over the workers that exited cleanly (their logs)."""
        total = 0
        for path in self.log_dir.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if " duplicate results refused" in line:
                    with contextlib.suppress(ValueError, IndexError):
                        total += int(line.split(" duplicate results refused")[0].rsplit(" ", 1)[1])
        return total


# -- a TCP proxy we control ---------------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`. `cut()` resets every connection and refuses new ones (the
    listening socket closes: connection refused); `restore()` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.connections = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> TcpProxy:
        self._stop.clear()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        sock.settimeout(0.1)
        self._listener = sock
        self._thread = threading.Thread(target=self._accept_loop, args=(sock,), name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        a.setblocking(False)
        b.setblocking(False)
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        return
                    key.data.setblocking(True)
                    key.data.sendall(data)
                    key.data.setblocking(False)
        except OSError:
            return
        finally:
            sel.close()
            self._drop(a, b)

    def _drop(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._pairs.remove((a, b))
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            pairs, self._pairs = list(self._pairs), []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()


# -- a Redis Cluster on loopback ------------------------------------------------------------------------


def redis7_binaries() -> tuple[str, str] | None:
    """(redis-server, redis-cli) of Redis >= 7, if installed (the cluster needs redis-cli --cluster)."""
    for server in REDIS7_CANDIDATES:
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        if os.access(server, os.X_OK) and os.access(cli, os.X_OK):
            out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
            version = out.split("v=")[1].split()[0] if "v=" in out else "0"
            if int(version.split(".")[0]) >= 7:
                return server, cli
    return None


@dataclass
class RedisCluster:
    """Three masters, no replicas, on free loopback ports; `kill(i)` is a crash of master i."""

    base_dir: Path
    masters: int = 3
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)

    def start(self, timeout_s: float = 30.0) -> RedisCluster:
        found = redis7_binaries()
        if found is None:
            raise RuntimeError("a Redis Cluster needs redis-server and redis-cli >= 7 (/usr/bin)")
        server, cli = found
        self.ports = [_cluster_port() for _ in range(self.masters)]
        try:
            self._start_nodes(server, cli, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self, server: str, cli: str, timeout_s: float) -> None:
        for port in self.ports:
            d = self.base_dir / str(port)
            d.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(self._args(server, port, d), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in self.ports:
            if not wait_until(lambda p=port: redis.Redis(port=p).ping(), 10, 0.05):  # type: ignore[misc]
                raise RuntimeError(f"cluster node on port {port} did not start")
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run([cli, "--cluster", "create", *nodes, "--cluster-yes"], check=True, capture_output=True,
                       timeout=timeout_s)  # fmt: skip

        def ok() -> bool:
            info = redis.Redis(port=self.ports[0]).cluster("info")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text or (isinstance(info, dict) and info.get("cluster_state") == "ok")

        if not wait_until(ok, timeout_s, 0.1):
            raise RuntimeError("the cluster did not reach cluster_state:ok")

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def port_of_slot(self, slot: int) -> int:
        for start, end, master, *_ in redis.Redis(port=self.ports[0]).execute_command("CLUSTER SLOTS"):  # type: ignore[no-untyped-call]
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise LookupError(f"no node serves slot {slot}")

    def restart(self, port: int, timeout_s: float = 30.0) -> None:
        """Start a killed master again on its data directory (it reloads its AOF and cluster config)."""
        found = redis7_binaries()
        assert found is not None
        i = self.ports.index(port)
        d = self.base_dir / str(port)
        self.procs[i] = subprocess.Popen(self._args(found[0], port, d), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)  # fmt: skip
        if not wait_until(lambda: redis.Redis(port=port).ping(), timeout_s, 0.05):
            raise RuntimeError(f"cluster node on port {port} did not come back")

    @staticmethod
    def _args(server: str, port: int, d: Path) -> list[str]:
        return [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000", "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--logfile", str(d / "redis.log"),
                "--cluster-require-full-coverage", "no"]  # fmt: skip

    def kill(self, port: int) -> None:
        i = self.ports.index(port)
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.procs[i] = None


def _cluster_port() -> int:
    """A free port at most 55535 whose cluster bus port (+10000) is free as well."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of a key (CRC16/XMODEM of its hash tag, mod 16384)."""
    s = key.find("{")
    if s != -1:
        e = key.find("}", s + 1)
        if e > s + 1:
            key = key[s + 1 : e]
    crc = 0
    for byte in key.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


def openable(sealer: Sealer, zone: str, fields: dict[bytes, bytes]) -> str:
    """'' if a stream entry opens, else the dead-letter reason it would get."""
    try:
        sealer.open_job(zone, fields)
    except MessageError as exc:
        return exc.reason
    return ""


__all__ = [
    "ExecSummary",
    "FixedPool",
    "RedisCluster",
    "TcpProxy",
    "chaos_specs",
    "check_outputs",
    "collect_results",
    "count_results",
    "exec_summary",
    "key_slot",
    "openable",
    "redis7_binaries",
    "reply_duplicates",
    "wait_until",
    "worker_argv",
    "worker_env",
]
