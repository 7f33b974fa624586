"""The device's HTTP API with the real built models: tritonclient unchanged, /v1, /metrics, bad input."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from edge_agent.agent import EdgeAgent
from edge_agent.api import ServerThread, create_app, serve_in_thread
from tests import edge_support
from tests.edge_support import (
    make_agent,
    policy_for_zone,
)

TEXTS = ["What is the derivative of x squared?", "পরীক্ষা কবে শুরু হবে?"]

edge_models = edge_support.edge_models  # the session's real built models (fixture)


@pytest.fixture(scope="module")
def served(edge_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeAgent, ServerThread]]:
    zone = "api-test"
    agent = make_agent(
        edge_models,
        zone,
        tmp_path_factory.mktemp("edge-api"),
        policy=policy_for_zone(zone, question_classification=0.0),
        max_text_chars=500,
    ).start()
    server = serve_in_thread(create_app(agent))
    try:
        yield agent, server
    finally:
        server.stop()
        agent.close()


@pytest.fixture
def http(served: tuple[EdgeAgent, ServerThread]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1].url, timeout=30) as client:
        yield client


@pytest.fixture
def tc(served: tuple[EdgeAgent, ServerThread]) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"127.0.0.1:{served[1].port}")
    yield client
    client.close()


def text_input(texts: list[str], binary: bool) -> triton.InferInput:
    inp = triton.InferInput("TEXT", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return inp


def test_tritonclient_health_and_metadata(tc: triton.InferenceServerClient) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("embedding") and tc.is_model_ready("classifier") and tc.is_model_ready("fallback")
    meta = tc.get_model_metadata("embedding")
    assert meta["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][0]["name"] == "EMBEDDING" and meta["outputs"][0]["shape"] == [-1, 384]
    assert not tc.is_model_ready("gpt-7")


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_embedding(tc: triton.InferenceServerClient, edge_models: Any, binary: bool) -> None:
    out = triton.InferRequestedOutput("EMBEDDING", binary_data=binary)
    result = tc.infer("embedding", [text_input(TEXTS, binary)], outputs=[out])
    got = result.as_numpy("EMBEDDING")
    assert got.shape == (2, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, edge_models.embed(TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)


def test_tritonclient_infer_classifier_and_fallback(tc: triton.InferenceServerClient, edge_models: Any) -> None:
    for name, fn in (("classifier", edge_models.classify), ("fallback", edge_models.fallback)):
        outputs = [triton.InferRequestedOutput("LABEL", binary_data=True), triton.InferRequestedOutput("CONFIDENCE")]
        result = tc.infer(name, [text_input(TEXTS, True)], outputs=outputs)
        labels = [b.decode() for b in result.as_numpy("LABEL")]
        conf = result.as_numpy("CONFIDENCE")
        expected = fn(TEXTS)
        assert labels == [e[0] for e in expected]
        np.testing.assert_allclose(conf, [e[1] for e in expected], atol=1e-5)


def test_tritonclient_sees_our_errors(tc: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'gpt-7'"):
        tc.infer("gpt-7", [text_input(TEXTS, True)])
    with pytest.raises(InferenceServerException, match="datatype BYTES"):
        inp = triton.InferInput("TEXT", [2], "FP32")
        inp.set_data_from_numpy(np.zeros(2, dtype=np.float32))
        tc.infer("embedding", [inp])


def test_binary_request_by_hand(http: httpx.Client, edge_models: Any) -> None:
    data = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in TEXTS)
    header = {
        "inputs": [
            {"name": "TEXT", "datatype": "BYTES", "shape": [2, 1], "parameters": {"binary_data_size": len(data)}}
        ],
        "outputs": [{"name": "EMBEDDING", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    resp = http.post(
        "/v2/models/embedding/infer",
        content=head + data,
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 200
    hlen = int(resp.headers["Inference-Header-Content-Length"])
    meta = json.loads(resp.content[:hlen])
    (out,) = meta["outputs"]
    assert out["shape"] == [2, 384] and out["parameters"]["binary_data_size"] == 2 * 384 * 4
    vecs = np.frombuffer(resp.content[hlen:], dtype="<f4").reshape(2, 384)
    np.testing.assert_allclose(vecs, edge_models.embed(TEXTS), atol=1e-5)


def _infer_json(http: httpx.Client, model: str, inp: dict[str, Any]) -> httpx.Response:
    return http.post(f"/v2/models/{model}/infer", json={"inputs": [inp]})


@pytest.mark.parametrize(
    ("inp", "status", "message"),
    [
        ({"name": "TEXT", "datatype": "FP32", "shape": [1], "data": [1.0]}, 400, "datatype BYTES"),
        ({"name": "TEXT", "datatype": "BYTES", "shape": [2, 3], "data": ["a"] * 6}, 400, "shape [n] or [n, 1]"),
        ({"name": "TEXT", "datatype": "BYTES", "shape": [3], "data": ["a", "b"]}, 400, "needs 3 elements"),
        ({"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [7]}, 400, "must be strings"),
        ({"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["a"]}, 400, "takes inputs ['TEXT']"),
        ({"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": [" "]}, 400, "element 0 is empty"),
        ({"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x" * 501]}, 413, "over the limit of 500"),
        ({"name": "TEXT", "datatype": "BYTES", "shape": [0], "data": []}, 400, "batch of 0"),
        ({"name": "TEXT", "datatype": "BYTES", "shape": [1]}, 400, "no 'data'"),
    ],
)
def test_v2_bad_tensors(http: httpx.Client, inp: dict[str, Any], status: int, message: str) -> None:
    resp = _infer_json(http, "classifier", inp)
    assert resp.status_code == status
    assert message in resp.json()["error"]


def test_v2_bad_bodies(http: httpx.Client) -> None:
    resp = http.post("/v2/models/embedding/infer", content=b'{"inputs": [{"name": "TEXT", "data": ["\xff"]}]}')
    assert resp.status_code == 400 and "not valid UTF-8" in resp.json()["error"]
    bad_elem = struct.pack("<I", 2) + b"\xc3\x28"
    head = json.dumps(
        {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}
    ).encode()
    resp = http.post(
        "/v2/models/embedding/infer",
        content=head + bad_elem,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert resp.status_code == 400 and "element 0 is not valid UTF-8" in resp.json()["error"]
    resp = http.post(
        "/v2/models/embedding/infer", content=head + bad_elem, headers={"Inference-Header-Content-Length": "9999"}
    )
    assert resp.status_code == 400 and "outside the body" in resp.json()["error"]
    resp = http.post("/v2/models/embedding/infer", content=b"[1, 2]")
    assert resp.status_code == 400 and "JSON object" in resp.json()["error"]
    resp = http.get("/v2/models/nope")
    assert resp.status_code == 404 and "unknown model 'nope'" in resp.json()["error"]
    resp = http.get("/v2/models/embedding/versions/999/ready")
    assert resp.status_code == 404 and "no version '999'" in resp.json()["error"]
    assert http.get("/no/such/path").json() == {"error": "not found"}


def test_v1_request_local(http: httpx.Client, edge_models: Any) -> None:
    resp = http.post("/v1/requests", json={"text": TEXTS[1], "task": "question-classification"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["route"] == "local" and body["result"]["label"] in edge_models.labels
    assert body["decision"]["reasons"] and body["sensitivity"]["source"] == "detected"


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b'{"text": "hi"', 400, "not valid JSON"),
        (b'{"text": "\xff\xfe", "task": "question-classification"}', 400, "not valid UTF-8"),
        (json.dumps({"text": "", "task": "question-classification"}).encode(), 400, "text is empty"),
        (json.dumps({"text": "x" * 501, "task": "question-classification"}).encode(), 413, "over the limit of 500"),
        (json.dumps({"text": "hi", "task": "poetry"}).encode(), 400, "unknown task 'poetry'"),
        (json.dumps({"text": "hi", "task": "question-classification", "colour": 1}).encode(), 400, "colour"),
        (
            json.dumps({"text": "hi", "task": "question-classification", "sensitivity": "top"}).encode(),
            400,
            "sensitivity",
        ),
        (json.dumps({"text": 5, "task": "question-classification"}).encode(), 400, "text"),
    ],
)
def test_v1_bad_requests(http: httpx.Client, content: bytes, status: int, message: str) -> None:
    resp = http.post("/v1/requests", content=content, headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]


def test_v1_jobs_and_still_serving(http: httpx.Client) -> None:
    assert http.get("/v1/jobs/01JUNKNOWN").status_code == 404
    assert "invalid job id" in http.get("/v1/jobs/a%20b").json()["error"]
    assert http.get("/v2/health/live").status_code == 200  # after every bad request above
    assert http.post("/v1/requests", json={"text": "hello", "task": "question-classification"}).status_code == 200


def test_metrics_have_conventional_names_and_no_user_content(http: httpx.Client) -> None:
    secret = "Karim Hossain 01712-345678"
    rid = "req-visible-id-123"
    http.post("/v1/requests", json={"text": secret, "task": "question-classification", "request_id": rid})
    http.post("/v1/requests", json={"text": "", "task": "question-classification"})
    text = http.get("/metrics").text
    assert 'hybrid_edge_requests_total{outcome="done",route="local",task="question-classification"}' in text
    assert "hybrid_edge_request_duration_seconds_bucket" in text and "hybrid_edge_outbox_jobs" in text
    assert "hybrid_edge_bad_requests_total" in text and "hybrid_edge_breaker_state" in text
    assert "Karim" not in text and "01712" not in text and rid not in text


def test_create_app_is_usable_in_process(served: tuple[EdgeAgent, ServerThread], tmp_path: Path) -> None:
    server = served[1]
    assert server.port > 0 and server.url.startswith("http://127.0.0.1:")
    assert httpx.get(server.url + "/v2").json()["extensions"] == ["binary_tensor_data"]
