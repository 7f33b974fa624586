"""The device's view of itself: cached utilization, a capability report, and its heartbeat in Redis.

`DeviceMonitor` samples psutil in a background thread at most every `refresh_s` seconds; the request
path reads the cached `snapshot()` and never measures. Utilization is the CPU's busy fraction; when a
Hailo NPU is present (`/dev/hailo*`) it is reported, and `npu_utilization` may be fed by an external
sampler (the HailoRT monitor) through `set_npu_utilization`, in which case the busier of the two counts.

`capabilities(models)` benchmarks each edge model at start (p50/p95 over a few runs at batch 1) and
records RAM, cores, NPU presence and runtime versions. `Heartbeat` writes that report, with the live
utilization, to `hyb:{<zone>}:device:<device_id>` with a TTL, so a device that stops beating drops
out of `hybrid devices` by itself.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

import psutil
import redis

from broker import keys
from broker.connection import redis_errors

log = logging.getLogger(__name__)


class _Models(Protocol):
    versions: dict[str, str]

    def embed(self, texts: list[str]) -> Any: ...
    def classify(self, texts: list[str]) -> list[tuple[str, float]]: ...
    def fallback(self, texts: list[str]) -> list[tuple[str, float]]: ...


def npu_devices() -> list[str]:
    return sorted(glob.glob("/dev/hailo*"))


@dataclass(frozen=True)
class Snapshot:
    cpu_utilization: float  # 0..1
    npu_utilization: float | None
    memory_available_mb: float
    memory_total_mb: float
    taken_at: float  # time.monotonic()

    @property
    def utilization(self) -> float:
        if self.npu_utilization is None:
            return self.cpu_utilization
        return max(self.cpu_utilization, self.npu_utilization)


class DeviceMonitor:
    """Cached device utilization; `start()` refreshes it in a daemon thread every `refresh_s` seconds."""

    def __init__(self, refresh_s: float = 2.0) -> None:
        self.refresh_s = refresh_s
        self.npu = npu_devices()
        self._npu_util: float | None = None
        psutil.cpu_percent(interval=None)  # prime the counter: the next call measures since now
        self._snap = self._sample()
        self.samples = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> Snapshot:
        vm = psutil.virtual_memory()
        return Snapshot(
            cpu_utilization=min(max(psutil.cpu_percent(interval=None) / 100.0, 0.0), 1.0),
            npu_utilization=self._npu_util,
            memory_available_mb=vm.available / 2**20,
            memory_total_mb=vm.total / 2**20,
            taken_at=time.monotonic(),
        )

    def set_npu_utilization(self, value: float | None) -> None:
        self._npu_util = None if value is None else min(max(value, 0.0), 1.0)

    def refresh(self) -> Snapshot:
        self._snap = self._sample()
        self.samples += 1
        return self._snap

    def snapshot(self) -> Snapshot:
        return self._snap

    def start(self) -> DeviceMonitor:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edge-device-monitor", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception:  # pragma: no cover - psutil failing must not kill the agent
                log.exception("device sampling failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.refresh_s + 1)
            self._thread = None


class FixedMonitor:
    """A monitor that reports a fixed utilization: benchmarks and tests, where the request path must not
    depend on how busy the machine running them is."""

    def __init__(self, utilization: float = 0.1, memory_available_mb: float = 4096.0) -> None:
        self.utilization = utilization
        self.memory_available_mb = memory_available_mb

    def snapshot(self) -> Snapshot:
        mem = self.memory_available_mb
        return Snapshot(self.utilization, None, mem, 2 * mem, time.monotonic())

    def start(self) -> FixedMonitor:
        return self

    def stop(self) -> None:
        pass


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p95_ms": round(_percentile(samples, 0.95), 3),
        "runs": runs,
    }


SAMPLE_TEXTS = ("What is the derivative of x squared?", "পরীক্ষা কবে শুরু হবে?")


def benchmark_models(models: _Models, runs: int = 20) -> dict[str, dict[str, float]]:
    """p50/p95 ms per edge model at batch 1 (alternating an English and a Bengali question)."""
    out: dict[str, dict[str, float]] = {}
    for name, fn in (("embedding", models.embed), ("classifier", models.classify), ("fallback", models.fallback)):
        i = iter(range(10**9))
        out[name] = time_calls(lambda fn=fn, i=i: fn([SAMPLE_TEXTS[next(i) % 2]]), runs)  # type: ignore[misc]
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def runtime_versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "tokenizers": _version("tokenizers"),
        "numpy": _version("numpy"),
        "hybrid-ai-stack": _version("hybrid-ai-stack"),
    }


def capabilities(
    models: _Models | None, *, device_id: str, zone: str, runs: int = 20, bench: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The device's capability report (benchmarks the models unless `bench` is given)."""
    vm = psutil.virtual_memory()
    npu = npu_devices()
    return {
        "device_id": device_id,
        "zone": zone,
        "hostname": platform.node(),
        "machine": platform.machine(),
        "cores": os.cpu_count() or 1,
        "ram_mb": round(vm.total / 2**20),
        "npu": {"present": bool(npu), "devices": npu},
        "runtimes": runtime_versions(),
        "models": dict(models.versions) if models is not None else {},
        "latency_ms": dict(bench) if bench is not None else (benchmark_models(models, runs) if models else {}),
        "started_ms": time.time_ns() // 1_000_000,
    }


class Heartbeat:
    """Writes the capability report plus live figures to Redis every `interval_s`, with a TTL of `ttl_s`."""

    def __init__(
        self,
        client: redis.Redis,
        zone: str,
        device_id: str,
        report: Mapping[str, Any],
        *,
        live: Callable[[], Mapping[str, Any]] | None = None,
        interval_s: float = 10.0,
        ttl_s: int = 30,
    ) -> None:
        if ttl_s <= interval_s:
            raise ValueError(f"heartbeat TTL ({ttl_s} s) must be longer than its interval ({interval_s} s)")
        self.client = client
        self.key = keys.edge_device(zone, device_id)
        self.report = dict(report)
        self.live = live
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        doc = dict(self.report)
        if self.live is not None:
            doc.update(self.live())
        doc["heartbeat_ms"] = time.time_ns() // 1_000_000
        with redis_errors():
            self.client.set(self.key, json.dumps(doc, separators=(",", ":")), ex=self.ttl_s)
        self.beats += 1

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edge-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as exc:  # Redis away: try again next interval
                log.debug("heartbeat failed: %s", exc)
            if self._stop.wait(self.interval_s):
                return

    def stop(self, *, remove: bool = False) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if remove:
            try:
                with redis_errors():
                    self.client.delete(self.key)
            except Exception:
                pass


def list_devices(client: redis.Redis, zone: str | None = None) -> list[dict[str, Any]]:
    """Every device whose heartbeat has not expired, in `zone` or in all zones; sorted by zone, id."""
    pattern = f"{keys.zone_prefix(zone)}:device:*" if zone else f"{keys.PREFIX}:{{*}}:device:*"
    out: list[dict[str, Any]] = []
    with redis_errors():
        found = list(client.scan_iter(match=pattern, count=500))
        values = client.mget(found) if found else []
        ttls = [client.ttl(k) for k in found]
    for raw, ttl in zip(values, ttls, strict=True):
        if raw is None:
            continue
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if isinstance(doc, dict):
            doc["ttl_s"] = ttl
            out.append(doc)
    return sorted(out, key=lambda d: (str(d.get("zone")), str(d.get("device_id"))))


__all__ = [
    "DeviceMonitor",
    "FixedMonitor",
    "Heartbeat",
    "Snapshot",
    "benchmark_models",
    "capabilities",
    "list_devices",
    "npu_devices",
    "runtime_versions",
    "time_calls",
]
