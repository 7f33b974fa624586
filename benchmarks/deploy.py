"""What locking Redis down costs: TLS + ACL users + AOF (everysec / always) against a plain Redis.

    python -m benchmarks.deploy [--jobs 3000] [--singles 300]

Each configuration is a fresh Redis 7 (Debian's redis-server, or HYB_TEST_REDIS7_SERVER) started from
`hybrid deploy` files on the local disk (fsync is real). The workload is the edge's: sealed jobs
submitted with the real `Producer` as `edge-<zone>` — in chunks of 500 (one APPEND script call each)
and one at a time (one round trip and, with `always`, one fsync per job) — plus a new connection
(TCP or TLS handshake, AUTH, PING). The baseline is measured in the same run: plain TCP, default user,
no AOF. Writes benchmarks/results/deploy.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.report import machine, write_result
from broker.connection import connect
from broker.embedded import free_port
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import JobSpec, Sealer
from broker.producer import Producer
from hybrid.deploy.acl import write_acl
from hybrid.deploy.certs import write_certs
from hybrid.deploy.redis_conf import RedisConfOptions, render_redis_conf

ZONE = "bench"
RESULT = Path(__file__).parent / "results" / "deploy.json"


def _binary() -> str:
    for path in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            if "v=7" in out or "v=8" in out:
                return path
    raise SystemExit("needs redis-server >= 7 with TLS (Debian package redis-server)")


class Server:
    def __init__(self, binary: str, conf: str, url: str, workdir: Path) -> None:
        (workdir / "redis.conf").write_text(conf)
        self.url = url
        self.proc = subprocess.Popen([binary, str(workdir / "redis.conf")], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                if connect(url, timeout_s=0.5).ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit(f"redis-server did not start ({url.split('@')[-1]})")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


def _measure(url: str, sealer: Sealer, jobs: int, singles: int) -> dict[str, float]:
    client = connect(url)
    producer = Producer(client, sealer, ZONE, chunk=500)
    spec = JobSpec(task="classify", inputs={"text": "What is the capital of Bangladesh? " * 3})
    producer.submit_many([spec] * 50)  # warm up: script loaded, group created
    t0 = time.perf_counter()
    producer.submit_many([spec] * jobs)
    bulk_s = time.perf_counter() - t0
    lat = []
    for _ in range(singles):
        t = time.perf_counter()
        producer.submit(spec)
        lat.append(time.perf_counter() - t)
    handshakes = []
    for _ in range(20):
        t = time.perf_counter()
        c = connect(url)
        c.ping()
        handshakes.append(time.perf_counter() - t)
        c.close()
    client.close()
    return {
        "bulk_jobs_per_s": jobs / bulk_s,
        "single_p50_ms": statistics.median(lat) * 1000,
        "single_p99_ms": sorted(lat)[int(len(lat) * 0.99) - 1] * 1000,
        "single_jobs_per_s": singles / sum(lat),
        "connect_ms": statistics.median(handshakes) * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--singles", type=int, default=300)
    args = ap.parse_args()
    binary = _binary()
    root = Path(tempfile.mkdtemp(prefix="hyb-bench-deploy-", dir=Path(__file__).parent / "results"))
    try:
        keyring = root / "keyring.json"
        LocalKeyring.init_zone(keyring, ZONE)
        sealer = Sealer(Envelope(LocalKeyring(keyring, zones=[ZONE])))
        acl = write_acl([ZONE], root / "users.acl", env={})
        certs = write_certs(root / "tls", clients=["client"])
        crt, key = certs.clients["client"]
        tls_q = f"?ssl_ca_certs={certs.ca_cert}&ssl_certfile={crt}&ssl_keyfile={key}"
        rows: list[dict[str, Any]] = []
        configs = [
            ("plain, no ACL, no AOF (baseline)", "plain", None),
            ("plain, no ACL, AOF always", "plain", "always"),
            ("TLS + ACL, AOF everysec (default)", "tls", "everysec"),
            ("TLS + ACL, AOF always", "tls", "always"),
        ]
        for name, mode, fsync in configs:
            d = Path(tempfile.mkdtemp(dir=root))
            port = free_port()
            if mode == "plain":
                conf = (
                    f'port {port}\nbind 127.0.0.1\ndir {d}\nsave ""\n'
                    f"appendonly {'yes' if fsync else 'no'}\nappendfsync {fsync or 'everysec'}\n"
                )
                url = f"redis://127.0.0.1:{port}/0"
            else:
                opts = RedisConfOptions(
                    tls_port=port, bind="127.0.0.1", data_dir=str(d), aclfile=str(acl.acl_path),
                    cert_dir=str(root / "tls"), appendfsync="always" if fsync == "always" else "everysec",
                )  # fmt: skip
                conf = render_redis_conf(opts).replace('logfile ""', f"logfile {d / 'redis.log'}")
                url = f"rediss://edge-{ZONE}:{acl.passwords[f'edge-{ZONE}']}@127.0.0.1:{port}/0{tls_q}"
            server = Server(binary, conf, url, d)
            try:
                rows.append({"config": name, **_measure(url, sealer, args.jobs, args.singles)})
            finally:
                server.stop()
        base = rows[0]
        for row in rows:
            row["bulk_ratio"] = row["bulk_jobs_per_s"] / base["bulk_jobs_per_s"]
            row["single_ratio"] = row["single_jobs_per_s"] / base["single_jobs_per_s"]
        header = (
            f"{'configuration':<36} {'bulk jobs/s':>12} {'ratio':>6} {'1-by-1 p50 ms':>14} {'p99 ms':>8}"
            f" {'ratio':>6} {'connect ms':>11}"
        )
        print(header)
        for r in rows:
            print(
                f"{r['config']:<36} {r['bulk_jobs_per_s']:>12,.0f} {r['bulk_ratio']:>6.2f} {r['single_p50_ms']:>14.3f}"
                f" {r['single_p99_ms']:>8.3f} {r['single_ratio']:>6.2f} {r['connect_ms']:>11.2f}"
            )
        write_result(
            RESULT,
            {
                "benchmark": "deploy",
                "config": {**machine(), "redis": binary, "jobs": args.jobs, "singles": args.singles},
                "rows": rows,
            },
        )
        print(f"wrote {RESULT}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
