"""The `hybrid` command line as a person uses it: real processes, readable errors, meaningful exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import redis

from broker import keys
from broker.client import Client
from broker.consumer import Consumer
from broker.embedded import EmbeddedRedis
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import JobSpec, Sealer


def hybrid(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HYB_") and k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "hybrid", *args], env={**base, **(env or {})}, capture_output=True, text=True,
        timeout=60, input=stdin,
    )  # fmt: skip


def test_help_explains_the_commands() -> None:
    out = hybrid("--help")
    assert out.returncode == 0
    for command in ("keys", "dlq", "worker", "submit", "demo"):
        assert command in out.stdout
    assert "HYB_" in out.stdout


def test_keys_init_rotate_list(tmp_path: Path) -> None:
    ring = str(tmp_path / "ring.json")
    assert hybrid("keys", "init", "--zone", "bd-dhaka", "--keyring", ring).returncode == 0
    assert stat.S_IMODE(os.stat(ring).st_mode) == 0o600
    rotated = hybrid("keys", "rotate", "--zone", "bd-dhaka", "--keyring", ring)
    assert rotated.returncode == 0 and "bd-dhaka/v2" in rotated.stdout
    listed = json.loads(hybrid("keys", "list", "--json", env={"HYB_KEYRING": ring}).stdout)
    assert [(k["kid"], k["current"]) for k in listed] == [("bd-dhaka/v1", False), ("bd-dhaka/v2", True)]
    assert "key" not in listed[0]  # never prints key material


def test_keys_errors_are_one_readable_line(tmp_path: Path) -> None:
    ring = tmp_path / "ring.json"
    bad_zone = hybrid("keys", "init", "--zone", "Not A Zone", "--keyring", str(ring))
    assert bad_zone.returncode == 2 and "invalid zone" in bad_zone.stderr and "Traceback" not in bad_zone.stderr
    assert hybrid("keys", "init", "--zone", "z", "--keyring", str(ring)).returncode == 0
    os.chmod(ring, 0o644)
    readable = hybrid("keys", "list", "--keyring", str(ring))
    assert readable.returncode == 2 and "chmod 600" in readable.stderr and "Traceback" not in readable.stderr
    no_zone = hybrid("keys", "rotate", "--keyring", str(ring))
    assert no_zone.returncode == 2 and "--zone" in no_zone.stderr


def test_unreachable_redis_exits_69(tmp_path: Path) -> None:
    out = hybrid("dlq", "list", "--redis-url", "redis://127.0.0.1:1/0", "--zone", "z")
    assert out.returncode == 69 and "not reachable" in out.stderr and "Traceback" not in out.stderr
    assert hybrid("dlq", "list", "--zone", "z").returncode == 2  # no URL at all


def test_submit_rejects_bad_json(redis_server: EmbeddedRedis, keyring_path: Path, zone: str) -> None:
    env = {"REDIS_URL": redis_server.url, "HYB_ZONE": zone, "HYB_KEYRING": str(keyring_path)}
    out = hybrid("submit", "--task", "echo", "--input", "{not json", env=env)
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_submit_worker_and_dlq_round_trip(
    redis_server: EmbeddedRedis, r: redis.Redis, sealer: Sealer, keyring_path: Path, zone: str
) -> None:
    env = {"REDIS_URL": redis_server.url, "HYB_ZONE": zone, "HYB_KEYRING": str(keyring_path)}
    # a tampered message waits in the stream next to the job we submit
    _, hb, body = sealer.seal_job(zone, JobSpec(task="echo", inputs={"x": 1}))
    r.xadd(keys.jobs_stream(zone, "interactive"), {b"h": hb, b"b": body[:-1] + bytes([body[-1] ^ 1])})
    text = "আমি বাংলায় গান গাই"
    sub = hybrid("submit", "--task", "text_stats", "--input", json.dumps({"text": text}), env=env)
    assert sub.returncode == 0
    job_id = sub.stdout.strip()
    work = hybrid("worker", "run", "--burst", "--name", "cli-worker", env=env)
    assert work.returncode == 0, work.stderr
    assert "1 results" in work.stderr and "1 dead-lettered" in work.stderr
    assert hybrid("worker", "run", "--tasks", "embed,translate", env=env).returncode == 2

    listed = [json.loads(line) for line in hybrid("dlq", "list", "--json", env=env).stdout.splitlines()]
    assert [x["reason"] for x in listed] == ["tampered"]
    shown = json.loads(hybrid("dlq", "show", listed[0]["id"], env=env).stdout)
    assert shown["header"]["zone"] == zone and shown["reason"] == "tampered"
    assert hybrid("dlq", "show", "0-1", env=env).returncode == 2
    assert hybrid("dlq", "replay", listed[0]["id"], env=env).returncode == 0
    assert r.xlen(keys.jobs_stream(zone, "interactive")) == 1
    assert hybrid("dlq", "replay", "0-1", env=env).returncode == 1
    Consumer(r, Sealer(Envelope(LocalKeyring(keyring_path))), zone, "w").fetch(block_ms=0)  # back to the DLQ
    assert hybrid("dlq", "purge", env=env, stdin="n\n").stdout.strip().endswith("nothing deleted")
    assert "deleted 1" in hybrid("dlq", "purge", "--yes", env=env).stdout

    result = Client(r, sealer, zone).result(job_id, timeout=5)
    assert result.output == {"chars": len(text), "words": 4} and result.worker == "cli-worker"
