"""`hybrid devices` and `hybrid edge serve`: the fleet from Redis, a real serve process, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from click.testing import CliRunner, Result

from broker import keys
from broker.embedded import EmbeddedRedis, free_port
from edge_agent.device import Heartbeat, capabilities
from hybrid.cli import cli
from tests.edge_support import ROSTER, closed_port_url, wait_for


def hybrid(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HYB_") and k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "hybrid", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_devices_lists_the_fleet(r: redis.Redis, redis_server: EmbeddedRedis, zone: str) -> None:
    env = {"REDIS_URL": redis_server.url, "HYB_ZONE": zone, "COLUMNS": "200"}
    empty = hybrid("devices", env=env)
    assert empty.returncode == 0 and "no live edge devices" in empty.stdout
    bench = {"classifier": {"p50_ms": 3.25, "p95_ms": 4.5, "runs": 5}}
    for dev in ("pi-a", "pi-b"):
        Heartbeat(r, zone, dev, capabilities(None, device_id=dev, zone=zone, bench=bench), ttl_s=60).beat()
    table = hybrid("devices", env=env)
    assert table.returncode == 0, table.stderr
    assert "pi-a" in table.stdout and "pi-b" in table.stdout and "3.2/4.5 ms" in table.stdout
    doc = json.loads(hybrid("devices", "--json", env=env).stdout)
    assert [d["device_id"] for d in doc["devices"]] == ["pi-a", "pi-b"]
    assert doc["devices"][0]["cores"] >= 1 and 0 < doc["devices"][0]["ttl_s"] <= 60
    r.delete(keys.edge_device(zone, "pi-a"), keys.edge_device(zone, "pi-b"))


def test_devices_without_redis_is_a_clear_error() -> None:
    out = hybrid("devices", env={"REDIS_URL": closed_port_url()})
    assert out.returncode == 69 and "not reachable" in out.stderr and "Traceback" not in out.stderr
    out = hybrid("devices")
    assert out.returncode == 2 and "no Redis URL" in out.stderr


def test_serve_refuses_bad_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("HYB_") or v == "REDIS_URL"]:
        monkeypatch.delenv(var)
    runner = CliRunner()

    def serve(*args: str) -> Result:
        return runner.invoke(cli, ["edge", "serve", *args])

    bad_policy = tmp_path / "p.yaml"
    bad_policy.write_text("version: 1\ntasks: 7\n")
    out = serve("--policy", str(bad_policy))
    assert out.exit_code == 2 and "p.yaml" in out.output
    bad_roster = tmp_path / "r.yaml"
    bad_roster.write_text("students: 3")
    out = serve("--roster", str(bad_roster))
    assert out.exit_code == 2 and "roster" in out.output
    out = serve("--device-id", "no spaces please")
    assert out.exit_code == 2 and "invalid device id" in out.output
    out = serve("--models-dir", str(tmp_path / "nothing-here"))
    assert out.exit_code in (1, 2) and "error:" in out.output and isinstance(out.exception, SystemExit)
    out = serve("--port", "99999")
    assert out.exit_code == 2 and "99999" in out.output


@pytest.mark.slow
def test_serve_end_to_end(
    built_models_dir: Path,
    redis_server: EmbeddedRedis,
    r: redis.Redis,
    zone: str,
    keyring_path: Path,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYB_") and k != "REDIS_URL"}
    env.update(REDIS_URL=redis_server.url, HYB_ZONE=zone, HYB_KEYRING=str(keyring_path))
    env.update({k: v for k, v in os.environ.items() if k == "HYB_MODEL_VERIFY_KEY"})
    cmd = [
        sys.executable, "-m", "hybrid", "edge", "serve", "--models-dir", str(built_models_dir),
        "--state-dir", str(tmp_path / "state"), "--roster", str(ROSTER), "--device-id", "pi-e2e",
        "--port", str(port), "--bench-runs", "3", "--heartbeat-s", "0.5",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            try:
                return httpx.get(base + "/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout_s=90, what="hybrid edge serve to be ready")
        resp = httpx.post(base + "/v1/requests", json={"text": "When is the exam?", "task": "question-classification"})
        assert resp.status_code == 200 and resp.json()["route"] in ("local", "cloud", "fallback")
        wait_for(lambda: r.exists(keys.edge_device(zone, "pi-e2e")), what="the heartbeat")
        report = json.loads(r.get(keys.edge_device(zone, "pi-e2e")) or b"{}")
        assert report["device_id"] == "pi-e2e" and set(report["latency_ms"]) == {"embedding", "classifier", "fallback"}
        assert report["models"] and "present" in report["npu"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while r.exists(keys.edge_device(zone, "pi-e2e")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not r.exists(keys.edge_device(zone, "pi-e2e"))  # a clean stop takes the device out of the fleet


def test_serve_refuses_a_tampered_model(built_models_dir: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "models"
    shutil.copytree(built_models_dir, tampered)
    (weights,) = (tampered / "qclf-fallback").glob("*/weights.npz")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = CliRunner().invoke(cli, ["edge", "serve", "--models-dir", str(tampered), "--port", "0"])
    assert out.exit_code == 1 and "qclf-fallback" in out.output and isinstance(out.exception, SystemExit)


def test_rotate_key_and_purge_vault(tmp_path: Path) -> None:
    from edge_agent.vault import Vault

    runner = CliRunner()
    out = runner.invoke(cli, ["edge", "rotate-key", "--state-dir", str(tmp_path)])
    assert out.exit_code == 2 and "no device key file" in out.output
    vault = Vault.open(tmp_path)
    old = vault.token_for("EMAIL", "a@b.org")
    vault.close()
    out = runner.invoke(cli, ["edge", "rotate-key", "--state-dir", str(tmp_path)])
    assert out.exit_code == 0 and "epoch 2" in out.output
    vault = Vault.open(tmp_path)
    assert vault.token_for("EMAIL", "a@b.org") != old and vault.lookup([old]) == {old: "a@b.org"}
    vault.close()
    out = runner.invoke(cli, ["edge", "purge-vault", "--state-dir", str(tmp_path), "--older-than-days", "30"])
    assert out.exit_code == 0 and "removed 0 mapping(s); 2 left" in out.output
    out = runner.invoke(cli, ["edge", "purge-vault", "--state-dir", str(tmp_path / "x"), "--older-than-days", "1"])
    assert out.exit_code == 2 and "no vault" in out.output
