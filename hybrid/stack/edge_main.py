"""One emulated edge device of `hybrid up`: the edge agent and its HTTP API in one process.

Wired like `hybrid edge serve`, with one difference that matters on a shared machine: the device's
utilization is this process's own CPU share (one core = 100 %), not the whole host's. On one machine
the host also runs Redis, the workers, the other "devices" and the load generator; a real Pi's
accelerator is busy only with its own requests, and that is what the routing policy's
`utilization_threshold` is about.

Run by `hybrid up` as `python -m hybrid.stack.edge_main …`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from pathlib import Path

import psutil

from edge_agent.device import Snapshot

NPU_FILE = "npu-utilization"


class ProcessMonitor:
    """Utilization = this process's CPU time per wall second over the last window, in [0, 1].

    The accelerator's utilization (on a Pi with an AI HAT: the Hailo driver's counter) is read from
    the file `npu_file` when it exists — one number in [0, 1]. `hybrid demo` writes it to emulate
    another app keeping the device's NPU busy; the agent then offloads, or falls back.
    """

    def __init__(self, refresh_s: float = 1.0, npu_file: Path | None = None) -> None:
        self.refresh_s = refresh_s
        self.npu_file = npu_file
        self._proc = psutil.Process()
        self._proc.cpu_percent(interval=None)
        self._snap = self._sample(0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, util: float) -> Snapshot:
        vm = psutil.virtual_memory()
        return Snapshot(min(max(util, 0.0), 1.0), None, vm.available / 2**20, vm.total / 2**20, time.monotonic())

    def _npu(self) -> float | None:
        if self.npu_file is None:
            return None
        try:
            return min(max(float(self.npu_file.read_text().strip()), 0.0), 1.0)
        except (OSError, ValueError):
            return None

    def snapshot(self) -> Snapshot:
        npu = self._npu()
        return self._snap if npu is None else dataclasses.replace(self._snap, npu_utilization=npu)

    def start(self) -> ProcessMonitor:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edge-process-monitor", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self._snap = self._sample(self._proc.cpu_percent(interval=None) / 100.0)

    def stop(self) -> None:
        self._stop.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hybrid.stack.edge_main")
    for flag in ("--redis-url", "--zone", "--keyring", "--models-dir", "--verify-key", "--state-dir", "--device-id"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--roster", default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bench-runs", type=int, default=5)
    ap.add_argument("--cloud-wait-s", type=float, default=3.0)
    a = ap.parse_args(argv)

    import uvicorn

    from broker.client import sealer_from_settings
    from broker.connection import connect
    from broker.keyring import LocalKeyring
    from broker.settings import load_settings
    from edge_agent.agent import AgentConfig, EdgeAgent
    from edge_agent.api import create_app
    from edge_agent.device import Heartbeat, benchmark_models, capabilities
    from edge_agent.models import EdgeModels
    from edge_agent.pii import Roster
    from policies import load_default_policy, load_policy

    settings = load_settings(redis_url=a.redis_url, zone=a.zone, keyring=a.keyring)
    policy = load_policy(a.policy) if a.policy else load_default_policy()
    models = EdgeModels.load(Path(a.models_dir), verify_key=a.verify_key)
    bench = benchmark_models(models, a.bench_runs)
    agent = EdgeAgent(
        models,
        policy,
        AgentConfig(device_id=a.device_id, zone=a.zone, cloud_wait_s=a.cloud_wait_s),
        state_dir=Path(a.state_dir),
        # the zones' KEKs: public data may go to the cheapest zone, personal data only to the device's own
        sealer=sealer_from_settings(settings, LocalKeyring(a.keyring, zones=list(policy.zones))),
        redis_url=a.redis_url,
        roster=Roster.load(Path(a.roster)) if a.roster else None,
        monitor=ProcessMonitor(npu_file=Path(a.state_dir) / NPU_FILE),
        bench=bench,
    ).start()
    report = capabilities(models, device_id=a.device_id, zone=a.zone, bench=bench)
    heartbeat = Heartbeat(
        connect(a.redis_url, timeout_s=2.0), a.zone, a.device_id, report, live=agent.stats, interval_s=2.0, ttl_s=6
    ).start()
    print(f"edge agent {a.device_id} (zone {a.zone}) on http://{a.host}:{a.port}", file=sys.stderr, flush=True)
    try:
        uvicorn.run(create_app(agent), host=a.host, port=a.port, log_level="warning", access_log=False)
    finally:
        heartbeat.stop(remove=True)
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
