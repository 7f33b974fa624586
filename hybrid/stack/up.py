"""`hybrid up`: the whole stack on this machine, started in order and stopped in reverse.

    data dir ─ redis/ (AOF)  keyring.json  keys/model-signing.pem(.pub)  models/  cloud-heads/
               edges/<device>/ (vault, outbox)  logs/<process>.log

Start: check the data dir and the ports → Redis (embedded, AOF, or `--redis-url` after a ping) →
keyring (a KEK per zone, created on first run) → edge models (built, signed and activated on first
run, verified on every run) → per zone a worker pool under the local autoscaler
(`gpu_worker.supervisor.Supervisor`, workers = `hybrid.stack.cloud_worker` processes with a health
port each) → N edge agents (`hybrid.stack.edge_main`: the edge agent and its HTTP API, device
`edge-<i>`, zones taken in turn from the policy) → the jobs API → the exporter with the status page.

Stop (Ctrl-C, SIGTERM, or `Stack.stop()`): the pools drain their workers (SIGTERM: finish and
acknowledge what they hold), then the edge agents, the API and the exporter get SIGTERM (SIGKILL to
their process group after a grace period), Redis last. Every child runs in its own session (process
group) and exits by itself if `hybrid up` dies (`hybrid.stack.child` watches its parent).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from broker.errors import ConfigError, HybridError, RedisUnavailable

DEFAULT_DATA_DIR = Path("~/.local/share/hybrid-ai-stack")
STOP_GRACE_S = 10.0


def default_data_dir() -> Path:
    env = os.environ.get("HYB_DATA_DIR")
    return Path(env).expanduser() if env else DEFAULT_DATA_DIR.expanduser()


@dataclass
class StackConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    redis_url: str | None = None
    edges: int = 2
    policy_path: Path | None = None
    host: str = "127.0.0.1"
    edge_port: int = 8700  # first edge; the others take the next ports (0: free ports)
    api_port: int = 8080  # 0: a free port
    status_port: int = 9470  # 0: a free port
    workers_min: int = 1
    workers_max: int = 2
    autoscale_interval_s: float = 1.0
    scale_down_delay_s: float = 30.0
    cloud_wait_s: float = 3.0
    bench_runs: int = 5
    start_timeout_s: float = 180.0
    cloud_models: str = "full"  # full: the worker package's torch runners; light: ONNX (quick runs, tests)
    feedback_tokens: int = 48  # the feedback runner's default max_new_tokens (what the grading driver gets)
    roster: Path | None = field(default_factory=lambda: _repo_file("data", "pii", "roster.yaml"))


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    url: str | None = None


@dataclass
class EdgeInfo:
    device_id: str
    zone: str
    url: str


def _repo_file(*parts: str) -> Path | None:
    path = Path(__file__).resolve().parents[2].joinpath(*parts)
    return path if path.exists() else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            raise ConfigError(
                f"port {port} on {host} for the {what} {why}; pick another with its --*-port option"
            ) from None


def check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"data dir {path} is not writable ({exc.strerror or exc}); pass --data-dir with a directory you own"
        ) from None


def _cli_argv(module: str, obj: str, *args: str) -> list[str]:
    """Run a command object of ours in a fresh interpreter that exits when `hybrid up` is gone."""
    return [sys.executable, "-m", "hybrid.stack.child", module, obj, *args]


class Stack:
    """What `hybrid up` starts. `start()` then `stop()`; or use as a context manager."""

    def __init__(self, config: StackConfig, *, progress: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.data_dir = config.data_dir.expanduser()
        self.say = progress or (lambda _m: None)
        self.redis_url = config.redis_url
        self.embedded: Any = None
        self.children: list[Child] = []
        self.edges: list[EdgeInfo] = []
        self.api_url = ""
        self.status_url = ""
        self.zones: list[str] = []
        self.worker_ports: dict[str, int] = {}
        self._pools: list[tuple[Any, threading.Thread]] = []
        self._pool_stop = threading.Event()
        self._stopped = False
        self.models_built = False
        self._reserved: set[int] = set()

    def _free_port(self) -> int:
        """A free port not handed out before by this stack (the kernel may offer a just-closed one again)."""
        while True:
            port = free_port(self.config.host)
            if port not in self._reserved:
                self._reserved.add(port)
                return port

    # -- paths ---------------------------------------------------------------------------------------

    @property
    def keyring(self) -> Path:
        return self.data_dir / "keyring.json"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def signing_key(self) -> Path:
        return self.data_dir / "keys" / "model-signing.pem"

    @property
    def verify_key(self) -> Path:
        from broker.registry import _public_path

        return _public_path(self.signing_key)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HYB_MODEL_SIGNING_KEY=str(self.signing_key),
            HYB_MODEL_VERIFY_KEY=str(self.verify_key),
            HYB_MODELS_DIR=str(self.models_dir),
            HYB_KEYRING=str(self.keyring),
            HYB_LOG_LEVEL="WARNING",
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("HYB_CONFIG", None)
        return env

    # -- start ---------------------------------------------------------------------------------------

    def start(self) -> Stack:
        c = self.config
        from policies import PolicyError, load_default_policy, load_policy

        try:
            policy = load_policy(c.policy_path) if c.policy_path else load_default_policy()
        except PolicyError as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
        self.zones = list(policy.zones)
        if c.edges < 1:
            raise ConfigError("--edges must be at least 1")
        check_data_dir(self.data_dir)
        self.log_dir.mkdir(exist_ok=True)
        ports = self._plan_ports()
        self._start_redis()
        self._init_keys()
        self._ensure_models()
        for zone in self.zones:
            self._start_pool(zone)
        for i in range(c.edges):
            self._start_edge(i, self.zones[i % len(self.zones)], ports["edges"][i])
        self._start_api(ports["api"])
        self._start_exporter(ports["status"])
        self._wait_ready()
        return self

    def _plan_ports(self) -> dict[str, Any]:
        c = self.config
        edges = [self._free_port() if c.edge_port == 0 else c.edge_port + i for i in range(c.edges)]
        api = self._free_port() if c.api_port == 0 else c.api_port
        status = self._free_port() if c.status_port == 0 else c.status_port
        self._reserved.update([*edges, api, status])
        for i, p in enumerate(edges):
            check_port(c.host, p, f"edge agent {i + 1}")
        check_port(c.host, api, "jobs API")
        check_port(c.host, status, "status page")
        if len({*edges, api, status}) != len(edges) + 2:
            raise ConfigError("the edge, API and status-page ports overlap; give each its own")
        return {"edges": edges, "api": api, "status": status}

    def _start_redis(self) -> None:
        from broker.connection import connect

        if self.redis_url:
            self.say(f"using Redis at {self.redis_url}")
            try:
                client = connect(self.redis_url, timeout_s=2.0)
                client.ping()
                client.close()
            except Exception as exc:
                raise RedisUnavailable(
                    f"Redis at {self.redis_url} does not answer ({type(exc).__name__}: {exc})"
                ) from None
            return
        from broker.embedded import EmbeddedRedis

        self.embedded = EmbeddedRedis(self.data_dir / "redis", appendonly=True)  # known to `stop` before it starts
        self.embedded.start()
        self.redis_url = self.embedded.url
        self.say(f"Redis {self.embedded.version()} (embedded, AOF in {self.data_dir / 'redis'}) at {self.redis_url}")

    def _init_keys(self) -> None:
        from broker.keyring import LocalKeyring

        have: set[str] = set()
        if self.keyring.exists():
            have = {k.zone for k in LocalKeyring(self.keyring).list_keys()}
        for zone in self.zones:
            if zone not in have:
                info = LocalKeyring.init_zone(self.keyring, zone)
                self.say(f"created key {info.kid} in {self.keyring}")

    def _ensure_models(self) -> None:
        from broker.registry import ModelRegistryError, ModelVerificationError
        from edge_agent.models.runtime import EDGE_MODELS, EMBEDDER_FP32

        os.environ["HYB_MODEL_SIGNING_KEY"] = str(self.signing_key)
        os.environ["HYB_MODEL_VERIFY_KEY"] = str(self.verify_key)
        if not self.models_dir.exists() or not any(self.models_dir.iterdir()):
            self._build_models()
            return
        from broker.registry import ModelRegistry, load_verify_key

        try:
            reg = ModelRegistry(self.models_dir)
            key = load_verify_key(str(self.verify_key))
            for name in (*EDGE_MODELS, EMBEDDER_FP32):
                reg.verify(name, None, verify_key=key)
        except (ModelRegistryError, ModelVerificationError, HybridError, OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(
                f"models dir {self.models_dir} is corrupted or incomplete ({first}); delete it and run again to rebuild"
            ) from None
        self.say(f"edge models verified in {self.models_dir}")

    def _build_models(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from edge_agent.models.build import build_models

        steps = 5
        with Progress(
            TextColumn("building edge models"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            transient=False,
            console=_stderr_console(),
        ) as bar:
            task = bar.add_task("starting", total=steps)

            def step(msg: str) -> None:
                bar.update(task, advance=1 if bar.tasks[0].description != "starting" else 0, description=msg)

            try:
                report = build_models(self.models_dir, signing_key=self.signing_key, progress=step)
            except BaseException:
                import shutil

                shutil.rmtree(self.models_dir, ignore_errors=True)
                raise
            bar.update(task, completed=steps, description="signed and installed")
        self.models_built = True
        acc = report.accuracy
        self.say(f"edge models built and signed (key {report.key_id}); test accuracy {acc}")

    def _spawn(self, name: str, argv: Sequence[str], url: str | None = None) -> Child:
        from gpu_worker.supervisor import deferred_interrupts

        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        try:
            with deferred_interrupts():  # started and recorded (so `stop` stops it), or neither
                popen = subprocess.Popen(
                    list(argv),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env(),
                    start_new_session=True,
                )
                child = Child(name, popen, url)
                self.children.append(child)
        finally:
            log.close()
        return child

    def _start_pool(self, zone: str) -> None:
        from broker.connection import connect
        from broker.ledger import CostBreaker, Ledger
        from gpu_worker.autoscale import Autoscaler, ScalePolicy, observe
        from gpu_worker.supervisor import Supervisor

        assert self.redis_url
        c = self.config
        client = connect(self.redis_url)
        breaker = CostBreaker(Ledger(client, zone))

        def command(name: str) -> list[str]:
            port = self.worker_ports.get(name) or self._free_port()
            self.worker_ports[name] = port
            return [
                *self._child_argv("hybrid.stack.cloud_worker", zone),
                "--name",
                name,
                "--health-port",
                str(port),
                "--cloud-models",
                c.cloud_models,
                "--feedback-tokens",
                str(c.feedback_tokens),
            ]

        sup = Supervisor(
            command,
            Autoscaler(
                ScalePolicy(
                    min_replicas=c.workers_min,
                    max_replicas=c.workers_max,
                    target_latency_s=5.0,
                    scale_down_delay_s=c.scale_down_delay_s,
                )
            ),
            lambda replicas, now: observe(client, zone, replicas, now, breaker=breaker),
            prefix=f"worker-{zone}",
            interval_s=c.autoscale_interval_s,
            grace_s=STOP_GRACE_S,
            env={**self.env(), "HYB_ZONE": zone},
            log_dir=str(self.log_dir),
        )
        thread = threading.Thread(target=self._pool_loop, args=(sup,), name=f"pool-{zone}", daemon=True)
        self._pools.append((sup, thread))  # before its first workers start: a Ctrl-C from here on stops them
        sup.step()  # the first workers start now
        thread.start()
        self.say(f"worker pool for zone {zone}: {c.workers_min}..{c.workers_max} workers (local autoscaler)")

    def _pool_loop(self, sup: Any) -> None:
        while not self._pool_stop.wait(self.config.autoscale_interval_s):
            with contextlib.suppress(Exception):  # Redis may be going away at shutdown
                sup.step()

    def _child_argv(self, module: str, zone: str) -> list[str]:
        """The start of a worker's or an edge's command line: what every child of the stack shares."""
        return [
            sys.executable, "-m", "hybrid.stack.child", module, "main",
            "--redis-url", str(self.redis_url), "--zone", zone, "--keyring", str(self.keyring),
            "--models-dir", str(self.models_dir), "--verify-key", str(self.verify_key),
        ]  # fmt: skip

    def _start_edge(self, i: int, zone: str, port: int) -> None:
        c = self.config
        device = f"edge-{i + 1}"
        state = self.data_dir / "edges" / device
        (state / "npu-utilization").unlink(missing_ok=True)  # a drill's leftover from an interrupted run
        argv = [
            *self._child_argv("hybrid.stack.edge_main", zone),
            "--state-dir",
            str(state),
            "--device-id",
            device,
            "--host",
            c.host,
            "--port",
            str(port),
            "--bench-runs",
            str(c.bench_runs),
            "--cloud-wait-s",
            str(c.cloud_wait_s),
            *(["--policy", str(c.policy_path)] if c.policy_path else []),
            *(["--roster", str(c.roster)] if c.roster else []),
        ]
        url = f"http://{c.host}:{port}"
        self._spawn(device, argv, url)
        self.edges.append(EdgeInfo(device, zone, url))

    def _start_api(self, port: int) -> None:
        argv = _cli_argv(
            "hybrid.commands_api",
            "api",
            "serve",
            "--redis-url",
            str(self.redis_url),
            "--zone",
            self.zones[0],
            "--keyring",
            str(self.keyring),
            "--host",
            self.config.host,
            "--port",
            str(port),
        )
        self.api_url = f"http://{self.config.host}:{port}"
        self._spawn("api", argv, self.api_url)

    def _start_exporter(self, port: int) -> None:
        zones = [a for z in self.zones for a in ("--zone", z)]
        argv = _cli_argv(
            "hybrid.commands_sre",
            "exporter",
            "--redis-url",
            str(self.redis_url),
            *zones,
            "--interval",
            "1",
            "--host",
            self.config.host,
            "--port",
            str(port),
        )
        self.status_url = f"http://{self.config.host}:{port}/"
        self._spawn("status", argv, self.status_url)

    def _wait_ready(self) -> None:
        probes = [(ch, f"{ch.url}/v2/health/ready") for ch in self.children if ch.name.startswith("edge-")]
        probes += [(ch, f"{ch.url}/openapi.json") for ch in self.children if ch.name == "api"]
        probes += [(ch, f"{ch.url}api/status") for ch in self.children if ch.name == "status"]
        deadline = time.monotonic() + self.config.start_timeout_s
        pending = list(probes)
        with httpx.Client(timeout=1.0) as http:
            while pending:
                for ch, url in list(pending):
                    if ch.popen.poll() is not None:
                        raise HybridError(f"{ch.name} exited at start: {self._log_tail(ch.name)}")
                    with contextlib.suppress(httpx.HTTPError):
                        if http.get(url).status_code == 200:
                            pending.remove((ch, url))
                            self.say(f"{ch.name} ready at {ch.url}")
                if not pending:
                    break
                if time.monotonic() > deadline:
                    names = ", ".join(ch.name for ch, _ in pending)
                    raise HybridError(
                        f"not ready after {self.config.start_timeout_s:.0f} s: {names} (logs in {self.log_dir})"
                    )
                time.sleep(0.1)
            self.wait_workers(http, deadline)

    def wait_workers(self, http: httpx.Client, deadline: float) -> None:
        while True:
            ready = 0
            for port in list(self.worker_ports.values()):
                with contextlib.suppress(httpx.HTTPError):
                    ready += http.get(f"http://127.0.0.1:{port}/ready").status_code == 200
            if ready >= len(self.zones) * max(self.config.workers_min, 1):
                self.say(f"{ready} worker(s) ready")
                return
            if time.monotonic() > deadline:
                raise HybridError(f"workers not ready in time (logs in {self.log_dir})")
            time.sleep(0.1)

    def _log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines() if ln.strip()]
            return lines[-1][:300] if lines else "(empty log)"
        return "(no log)"

    # -- what is running ------------------------------------------------------------------------------

    def set_device_load(self, npu_utilization: float | None) -> None:
        """Emulate another app on every device's accelerator (None: idle again); see `edge_main.ProcessMonitor`."""
        for e in self.edges:
            path = self.data_dir / "edges" / e.device_id / "npu-utilization"
            if npu_utilization is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{npu_utilization}\n")

    def worker_metrics_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}/metrics" for p in self.worker_ports.values()]

    def pids(self) -> list[int]:
        out = [ch.popen.pid for ch in self.children if ch.popen.poll() is None]
        for sup, _ in self._pools:
            out += list(sup.pids().values())
        if self.embedded is not None and self.embedded.pid:
            out.append(self.embedded.pid)
        return out

    def urls(self) -> dict[str, Any]:
        return {
            "redis": self.redis_url,
            "edges": [{"device": e.device_id, "zone": e.zone, "url": e.url} for e in self.edges],
            "api": self.api_url,
            "status_page": self.status_url,
            "workers_metrics": self.worker_metrics_urls(),
            "data_dir": str(self.data_dir),
            "logs": str(self.log_dir),
        }

    # -- stop ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._pool_stop.set()
        for sup, thread in self._pools:  # 1. drain the workers
            if thread.is_alive():  # not started when Ctrl-C came during the pool's first step
                thread.join(timeout=self.config.autoscale_interval_s + 5)
            with contextlib.suppress(Exception):
                sup.shutdown()
        for ch in self.children:  # 2. edges, API, status page
            _signal_group(ch.popen, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for ch in self.children:
            try:
                ch.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(ch.popen, signal.SIGKILL)
                ch.popen.wait()
            _signal_group(ch.popen, signal.SIGKILL)  # anything the child left in its group
        if self.embedded is not None:  # 3. Redis last
            self.embedded.stop()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(popen: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


__all__ = ["DEFAULT_DATA_DIR", "EdgeInfo", "Stack", "StackConfig", "check_data_dir", "check_port", "default_data_dir"]
