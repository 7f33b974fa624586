"""The jobs HTTP API: a real uvicorn on a free port, real Redis, a real consumer, httpx as the client."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from click.testing import CliRunner

from broker.admission import AdmissionPolicy, LaneLimits
from broker.breaker import State
from broker.embedded import EmbeddedRedis
from broker.ledger import CostBreaker, Ledger
from broker.message import Sealer
from broker.settings import load_settings
from hybrid.api_server import ApiConfig, TokenStore, create_app
from hybrid.cli import cli
from tests.test_grading import Handler, worker

Serve = Callable[..., str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve(redis_server: EmbeddedRedis, r: redis.Redis, zone: str, keyring_path: Path) -> Iterator[Serve]:
    """Start the API (with the given policy/config) on a free port; returns its base URL."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(policy: AdmissionPolicy | None = None, config: ApiConfig | None = None) -> str:
        settings = load_settings(redis_url=redis_server.url, zone=zone, keyring=str(keyring_path))
        app = create_app(settings, r, policy=policy, config=config)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_submit_wait_and_the_auth_matrix(serve: Serve, r: redis.Redis, zone: str, sealer: Sealer) -> None:
    base = serve()
    store = TokenStore(r, zone)
    a, _ = store.create("school-a")
    b, _ = store.create("school-b")
    job = {"task": "text_stats", "inputs": {"text": "আমার সোনার বাংলা, I love you"}}
    with httpx.Client(base_url=base, timeout=30) as http, worker(r, sealer, zone, Handler()):
        for headers in ({}, auth("hyb_not-a-token"), auth("nonsense"), {"Authorization": "Basic eDp5"}):
            res = http.post("/v1/jobs", json=job, headers=headers)
            assert res.status_code == 401 and res.json() == {"error": "missing or unknown API token"}
        res = http.post("/v1/jobs", json=job, headers=auth(a))
        assert res.status_code == 202
        job_id = res.json()["job_id"]
        res = http.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 20}, headers=auth(a))
        assert res.status_code == 200
        body = res.json()
        assert (
            body["status"] == "ok" and body["output"] == {"chars": 28, "words": 6} and body["worker"] == "test-worker"
        )
        assert http.get(f"/v1/jobs/{job_id}", headers=auth(a)).json()["output"]["words"] == 6
        # another tenant's job is indistinguishable from one that does not exist
        missing = http.get("/v1/jobs/01HZZZZZZZZZZZZZZZZZZZZZZZ", headers=auth(b))
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/wait?timeout=0"):
            res = http.get(path, headers=auth(b))
            assert res.status_code == 404 and res.json() == missing.json() == {"error": "no such job"}
        assert http.get(f"/v1/jobs/{job_id}").status_code == 401
        many = http.post("/v1/jobs", json={"jobs": [job, {**job, "task": "echo"}, job]}, headers=auth(b))
        assert many.status_code == 202
        ids = many.json()["job_ids"]
        assert len(set(ids)) == 3
        views = [http.get(f"/v1/jobs/{i}/wait", params={"timeout": 20}, headers=auth(b)).json() for i in ids]
        assert [v["status"] for v in views] == ["ok"] * 3 and views[1]["output"] == job["inputs"]
    # the job carried the token's tenant
    assert r.get(f"hyb:{{{zone}}}:api:job:{job_id}") == b"school-a"


def test_pending_result_and_wait_timeout(serve: Serve, r: redis.Redis, zone: str) -> None:
    base = serve()
    token, _ = TokenStore(r, zone).create("t1")
    with httpx.Client(base_url=base, timeout=30) as http:
        job_id = http.post("/v1/jobs", json={"task": "noop", "inputs": {}}, headers=auth(token)).json()["job_id"]
        assert http.get(f"/v1/jobs/{job_id}", headers=auth(token)).json() == {
            "job_id": job_id, "status": "pending", "output": None, "error": None, "worker": None,
            "started_ms": None, "finished_ms": None,
        }  # fmt: skip
        started = time.monotonic()
        res = http.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 0.3}, headers=auth(token))
        assert res.json()["status"] == "pending" and 0.3 <= time.monotonic() - started < 10
        res = http.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 61}, headers=auth(token))
        assert res.status_code == 422 and "timeout" in res.json()["error"]


def test_bad_requests_get_clear_4xx(serve: Serve, r: redis.Redis, zone: str) -> None:
    base = serve(config=ApiConfig(max_body_bytes=4096))
    token, _ = TokenStore(r, zone).create("t1")
    h = {**auth(token), "Content-Type": "application/json"}
    with httpx.Client(base_url=base, timeout=30) as http:
        res = http.post("/v1/jobs", content=b'{"task": "echo", "inputs": {', headers=h)
        assert res.status_code == 400 and res.json()["error"].startswith("request body is not valid JSON")
        res = http.post("/v1/jobs", json={"task": "", "inputs": {}}, headers=h)
        assert res.status_code == 422 and "error" in res.json()
        res = http.post("/v1/jobs", json={"task": "echo", "inputs": {}, "tenant": "someone-else"}, headers=h)
        assert res.status_code == 422 and "tenant" in res.json()["error"]
        res = http.post("/v1/jobs", json={"jobs": []}, headers=h)
        assert res.status_code == 422
        res = http.post("/v1/jobs", json={"task": "echo", "inputs": {"text": "x" * 5000}}, headers=h)
        assert res.status_code == 413 and res.json() == {"error": "request body over the limit of 4096 bytes"}

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"task": "echo", "inputs": {"text": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}}'

        res = http.post("/v1/jobs", content=chunks(), headers=h)
        assert res.status_code == 413 and "over the limit" in res.json()["error"]
        res = http.post("/v1/jobs", json={"task": "echo", "inputs": {"text": "small"}}, headers=h)
        assert res.status_code == 202


def test_backpressure_is_429_with_retry_after(serve: Serve, r: redis.Redis, zone: str) -> None:
    policy = AdmissionPolicy(lanes={"interactive": LaneLimits(high=3, low=1)}, retry_after_s=1.5)
    base = serve(policy=policy)
    token, _ = TokenStore(r, zone).create("t1")
    job = {"task": "echo", "inputs": {"n": 1}}
    with httpx.Client(base_url=base, timeout=30) as http:
        codes = [http.post("/v1/jobs", json=job, headers=auth(token)).status_code for _ in range(3)]
        assert codes == [202, 202, 202]  # no worker: the backlog is at the high watermark now
        res = http.post("/v1/jobs", json=job, headers=auth(token))
        assert res.status_code == 429 and res.headers["Retry-After"] == "2"
        body = res.json()
        assert body["reason"] == "watermark" and body["retry_after_s"] == 1.5 and body["submitted"] == []
        assert "high watermark" in body["error"]
    assert r.xlen(f"hyb:{{{zone}}}:jobs:interactive") == 3  # the refused job was not appended


def test_open_budget_breaker_is_402_with_reason(serve: Serve, r: redis.Redis, zone: str) -> None:
    base = serve()
    token, _ = TokenStore(r, zone).create("spender")
    CostBreaker(Ledger(r, zone)).force("tenant:spender", State.OPEN)
    with httpx.Client(base_url=base, timeout=30) as http:
        res = http.post("/v1/jobs", json={"task": "echo", "inputs": {}}, headers=auth(token))
        assert res.status_code == 402 and int(res.headers["Retry-After"]) >= 1
        body = res.json()
        assert body["reason"] == "budget" and body["limit"] == "tenant:spender" and "breaker open" in body["error"]


def test_openapi_document_describes_the_api(serve: Serve) -> None:
    doc = httpx.get(serve() + "/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/wait"} <= set(doc["paths"])
    post = doc["paths"]["/v1/jobs"]["post"]
    assert {"202", "401", "402", "413", "429"} <= set(post["responses"])
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


def test_token_cli_prints_once_stores_hash_and_revokes(
    serve: Serve, r: redis.Redis, redis_server: EmbeddedRedis, zone: str
) -> None:
    runner = CliRunner()
    base_args = ["--redis-url", redis_server.url, "--zone", zone]
    res = runner.invoke(cli, ["api", "token", "create", *base_args, "--tenant", "school-x", "--name", "lms"])
    assert res.exit_code == 0, res.output
    token = res.output.splitlines()[0]
    assert token.startswith("hyb_") and len(token) > 40
    stored: Any = r.hgetall(f"hyb:{{{zone}}}:api:tokens")
    assert token.encode() not in b"".join([*stored.keys(), *stored.values()])
    listed = runner.invoke(cli, ["api", "token", "list", *base_args, "--json"])
    info = json.loads(listed.output.splitlines()[0])
    assert info["tenant"] == "school-x" and info["name"] == "lms"
    base = serve()
    assert httpx.post(base + "/v1/jobs", json={"task": "noop", "inputs": {}}, headers=auth(token)).status_code == 202
    assert runner.invoke(cli, ["api", "token", "revoke", *base_args, info["id"]]).exit_code == 0
    assert httpx.post(base + "/v1/jobs", json={"task": "noop", "inputs": {}}, headers=auth(token)).status_code == 401
    res = runner.invoke(cli, ["api", "token", "revoke", *base_args, info["id"]])
    assert res.exit_code == 2 and "no token" in res.output


# -- property-based: Schemathesis against the OpenAPI document ------------------------------------------

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402


def test_schemathesis_finds_no_server_error_or_undocumented_response(serve: Serve, r: redis.Redis, zone: str) -> None:
    """Generated requests (valid and invalid) never get a 5xx, and every response matches the document."""
    base = serve()
    token, _ = TokenStore(r, zone).create("fuzz")
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    tested = []
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for mode, result in ((m, res) for m in modes for res in schema.get_all_operations()):
        operation = result.ok()
        if mode is schemathesis.GenerationMode.NEGATIVE and not operation.label.startswith(("POST", "GET /v1")):
            continue  # nothing to get wrong in a request without parameters or body
        tested.append(f"{operation.label} {mode.value}")

        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))  # type: ignore[untyped-decorator]
        @hypothesis.settings(max_examples=25, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))  # type: ignore[untyped-decorator]
        def check(case: Any) -> None:
            # schema-valid bodies may still not fit the wire format (an integer beyond 64 bits in
            # `inputs`, a header over 1 KiB from long non-ASCII task/model names): 422 by design
            case.call_and_validate(headers=auth(token), excluded_checks=[positive_data_acceptance])

        check()
    ops = ("POST /v1/jobs", "GET /v1/jobs/{job_id}", "GET /v1/jobs/{job_id}/wait")
    assert {f"{op} {m.value}" for op in ops for m in modes} <= set(tested)
