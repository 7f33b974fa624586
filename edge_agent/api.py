"""The device's HTTP API (FastAPI): Open Inference Protocol v2, the app's `/v1` endpoints, `/metrics`.

Open Inference Protocol v2 (KServe / Triton), so `tritonclient.http` works unchanged:

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/{name}[/versions/{v}]            metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer      JSON, or the binary tensor extension
                                                     (`Inference-Header-Content-Length`)

Models: `embedding` (TEXT BYTES [n] → EMBEDDING FP32 [n, 384]), `classifier` and `fallback`
(TEXT BYTES [n] → LABEL BYTES [n], CONFIDENCE FP32 [n]). Inputs may also be shaped [n, 1].

The app:

    POST /v1/requests   {"text", "task", "sensitivity"?, "mode"?: auto|sync|async, "interactive"?,
                         "tenant"?, "request_id"?, "max_latency_ms"?} → decision + result (200), or a
                         job id (202) for an offload still running or waiting in the outbox
    GET  /v1/jobs/{id}  an offloaded job's state and, once done, its detokenized result
    GET  /metrics       Prometheus text format

Every error is `{"error": "<what is wrong>"}` with a 4xx/5xx status; the agent keeps serving.
"""

from __future__ import annotations

import gzip
import json
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.errors import HybridError
from edge_agent.agent import BadRequest, EdgeAgent, EdgeRequest, ServiceUnavailable

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_BATCH = 64
MAX_BODY_BYTES = 8 << 20
SERVER_NAME = "hybrid-edge"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class V2Model:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    run: Callable[[list[str]], dict[str, tuple[str, np.ndarray]]]  # texts → output name → (datatype, array)


def _v2_models(agent: EdgeAgent) -> dict[str, V2Model]:
    models = agent.models
    text_in = [TensorSpec("TEXT", "BYTES", [-1])]

    def embed(texts: list[str]) -> dict[str, tuple[str, np.ndarray]]:
        return {"EMBEDDING": ("FP32", np.asarray(models.embed(texts), dtype=np.float32))}

    def classify_with(fn: Callable[[list[str]], list[tuple[str, float]]]) -> Callable[..., Any]:
        def run(texts: list[str]) -> dict[str, tuple[str, np.ndarray]]:
            pairs = fn(texts)
            labels = np.array([p[0].encode() for p in pairs], dtype=object)
            conf = np.array([p[1] for p in pairs], dtype=np.float32)
            return {"LABEL": ("BYTES", labels), "CONFIDENCE": ("FP32", conf)}

        return run

    cls_out = [TensorSpec("LABEL", "BYTES", [-1]), TensorSpec("CONFIDENCE", "FP32", [-1])]
    return {
        "embedding": V2Model("embedding", text_in, [TensorSpec("EMBEDDING", "FP32", [-1, 384])], embed),
        "classifier": V2Model("classifier", text_in, cls_out, classify_with(models.classify)),
        "fallback": V2Model("fallback", text_in, cls_out, classify_with(models.fallback)),
    }


def _model_version(agent: EdgeAgent, name: str) -> str:
    versions: dict[str, str] = dict(getattr(agent.models, "versions", {}) or {})
    if name in versions:
        return str(versions[name])
    for key, value in versions.items():  # registry names such as "minilm-int8" or "qclf-fallback"
        if name in key or (name == "embedding" and "minilm" in key):
            return str(value)
    return "1"


class V1Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    task: str = Field(min_length=1, max_length=64)
    sensitivity: Literal["public", "personal", "sensitive"] | None = None
    mode: Literal["auto", "sync", "async"] = "auto"
    interactive: bool | None = None
    tenant: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    request_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    max_latency_ms: float | None = Field(default=None, gt=0)


def _first_error(exc: ValidationError | RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "(body)"
    return f"{loc}: {first.get('msg', 'invalid')}"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is {len(body)} bytes, over the limit of {MAX_BODY_BYTES}")
    enc = request.headers.get("content-encoding", "").lower()
    try:
        if enc == "gzip":
            body = gzip.decompress(body)
        elif enc == "deflate":
            body = zlib.decompress(body)
        elif enc not in ("", "identity"):
            raise ApiError(415, f"unsupported Content-Encoding {enc!r} (use gzip, deflate or none)")
    except (OSError, zlib.error, EOFError) as exc:
        raise ApiError(400, f"request body is not valid {enc}: {exc}") from None
    return body


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"{what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    return doc


def _decode_bytes_tensor(raw: bytes, count: int, name: str) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise ApiError(400, f"input {name!r}: binary data holds fewer than {count} elements")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ApiError(400, f"input {name!r}: binary element runs past the end of its data")
        out.append(raw[pos : pos + n])
        pos += n
    if pos != len(raw):
        raise ApiError(400, f"input {name!r}: {len(raw) - pos} bytes of binary data left over after {count} elements")
    return out


def _encode_bytes_tensor(items: np.ndarray) -> bytes:
    parts = []
    for item in items.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for d in data:
            out += _flatten(d)
        return out
    return [data]


class V2Infer:
    """Parses one v2 infer request (JSON or binary) into texts, and encodes the response."""

    def __init__(self, agent: EdgeAgent, model: V2Model) -> None:
        self.agent = agent
        self.model = model

    def texts(self, body: bytes, header_length: str | None) -> tuple[list[str], dict[str, Any]]:
        if header_length is not None:
            try:
                hlen = int(header_length)
            except ValueError:
                raise ApiError(400, f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
            if not 0 < hlen <= len(body):
                raise ApiError(400, f"{HEADER_LENGTH} {hlen} is outside the body of {len(body)} bytes")
            doc, binary = _json_object(body[:hlen], "inference header"), body[hlen:]
        else:
            doc, binary = _json_object(body, "request body"), b""
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(400, "'inputs' must be a non-empty list")
        expected = {t.name for t in self.model.inputs}
        names = [i.get("name") if isinstance(i, dict) else None for i in inputs]
        if sorted(map(str, names)) != sorted(expected):
            raise ApiError(400, f"model {self.model.name!r} takes inputs {sorted(expected)}, got {names}")
        spec = inputs[0]
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if datatype != "BYTES":
            raise ApiError(400, f"input {name!r} must have datatype BYTES, got {datatype!r}")
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or len(shape) not in (1, 2)
            or (len(shape) == 2 and shape[1] != 1)
        ):
            raise ApiError(400, f"input {name!r} must have shape [n] or [n, 1], got {shape!r}")
        count = shape[0]
        if not 1 <= count <= MAX_BATCH:
            raise ApiError(400, f"input {name!r}: batch of {count}, allowed 1 to {MAX_BATCH}")
        params = spec.get("parameters") or {}
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size != len(binary):
                raise ApiError(
                    400, f"input {name!r}: binary_data_size {size!r} but {len(binary)} bytes follow the header"
                )
            raw_items = _decode_bytes_tensor(binary, count, str(name))
        else:
            if "data" not in spec:
                raise ApiError(400, f"input {name!r} has no 'data' and no binary data")
            flat = _flatten(spec["data"])
            if len(flat) != count:
                raise ApiError(400, f"input {name!r}: shape {shape} needs {count} elements, 'data' holds {len(flat)}")
            if not all(isinstance(x, str) for x in flat):
                raise ApiError(400, f"input {name!r}: BYTES data must be strings in JSON")
            raw_items = [x.encode("utf-8", "surrogatepass") for x in flat]
        texts: list[str] = []
        limit = self.agent.config.max_text_chars
        for i, item in enumerate(raw_items):
            try:
                text = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ApiError(400, f"input {name!r} element {i} is not valid UTF-8 (byte {exc.start})") from None
            if not text.strip():
                raise ApiError(400, f"input {name!r} element {i} is empty")
            if len(text) > limit:
                raise ApiError(413, f"input {name!r} element {i} is {len(text)} characters, over the limit of {limit}")
            texts.append(text)
        return texts, doc

    def response(self, doc: dict[str, Any], outputs: dict[str, tuple[str, np.ndarray]]) -> Response:
        wanted = doc.get("outputs")
        default_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
        if wanted is None:
            chosen = [(n, default_binary) for n in outputs]
        else:
            if not isinstance(wanted, list):
                raise ApiError(400, "'outputs' must be a list")
            chosen = []
            for o in wanted:
                oname = o.get("name") if isinstance(o, dict) else None
                if oname not in outputs:
                    raise ApiError(400, f"model {self.model.name!r} has no output {oname!r} (has {sorted(outputs)})")
                chosen.append((oname, bool((o.get("parameters") or {}).get("binary_data", default_binary))))
        out_docs: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for oname, binary in chosen:
            datatype, arr = outputs[oname]
            entry: dict[str, Any] = {"name": oname, "datatype": datatype, "shape": list(arr.shape)}
            if binary:
                blob = _encode_bytes_tensor(arr) if datatype == "BYTES" else arr.astype("<f4").tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            elif datatype == "BYTES":
                entry["data"] = [b.decode() if isinstance(b, bytes) else str(b) for b in arr.reshape(-1)]
            else:
                entry["data"] = [float(x) for x in arr.reshape(-1)]
            out_docs.append(entry)
        header: dict[str, Any] = {
            "model_name": self.model.name,
            "model_version": _model_version(self.agent, self.model.name),
            "outputs": out_docs,
        }
        if "id" in doc:
            header["id"] = doc["id"]
        head = json.dumps(header, separators=(",", ":")).encode()
        if not blobs:
            return Response(head, media_type="application/json")
        return Response(
            head + b"".join(blobs),
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(len(head))},
        )


def create_app(agent: EdgeAgent, *, ready: Callable[[], bool] | None = None) -> FastAPI:
    """The FastAPI app serving `agent` (start the agent's background threads yourself: `agent.start()`)."""
    app = FastAPI(title="Hybrid edge agent", docs_url=None, redoc_url=None, openapi_url=None)
    models = _v2_models(agent)
    is_ready = ready or (lambda: True)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        api = "v2" if request.url.path.startswith("/v2") else "v1"
        agent.metrics.bad_requests.labels(api, str(exc.status)).inc()
        return _error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        if exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return _error(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _first_error(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    def _model(name: str, version: str | None = None) -> V2Model:
        model = models.get(name)
        if model is None:
            raise ApiError(404, f"unknown model {name!r} (models: {', '.join(sorted(models))})")
        if version not in (None, "", _model_version(agent, name)):
            raise ApiError(404, f"model {name!r} has no version {version!r} (serving {_model_version(agent, name)})")
        return model

    # -- Open Inference Protocol v2 -------------------------------------------------------------

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready_() -> Response:
        if not is_ready():
            return _error(503, "not ready: models are still loading")
        return JSONResponse({"ready": True})

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        from edge_agent.device import runtime_versions

        return {
            "name": SERVER_NAME,
            "version": runtime_versions()["hybrid-ai-stack"] or "0",
            "extensions": ["binary_tensor_data"],
        }

    def _metadata(name: str, version: str | None) -> dict[str, Any]:
        m = _model(name, version)
        return {
            "name": m.name,
            "versions": [_model_version(agent, name)],
            "platform": "onnxruntime_onnx" if name == "embedding" else "hybrid_edge",
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.outputs],
        }

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        return _metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        return _metadata(name, version)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        _model(name)
        return JSONResponse({"name": name, "ready": is_ready()}, status_code=200 if is_ready() else 503)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_version_ready(name: str, version: str) -> Response:
        _model(name, version)
        return JSONResponse({"name": name, "ready": is_ready()}, status_code=200 if is_ready() else 503)

    async def _infer(request: Request, name: str, version: str | None) -> Response:
        model = _model(name, version)
        body = await _read_body(request)
        infer = V2Infer(agent, model)
        texts, doc = infer.texts(body, request.headers.get(HEADER_LENGTH))
        t0 = time.perf_counter()
        outputs = await run_in_threadpool(model.run, texts)
        agent.metrics.inference_seconds.labels(name).observe(time.perf_counter() - t0)
        return infer.response(doc, outputs)

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str) -> Response:
        return await _infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(request: Request, name: str, version: str) -> Response:
        return await _infer(request, name, version)

    # -- the app's API --------------------------------------------------------------------------

    @app.post("/v1/requests")
    async def requests_(request: Request) -> Response:
        doc = _json_object(await _read_body(request), "request body")
        try:
            body = V1Body.model_validate(doc)
        except ValidationError as exc:
            raise ApiError(400, _first_error(exc)) from None
        req = EdgeRequest(
            text=body.text,
            task=body.task,
            sensitivity=body.sensitivity,
            mode=body.mode,
            interactive=body.interactive,
            tenant=body.tenant,
            request_id=body.request_id,
            max_latency_ms=body.max_latency_ms,
        )
        try:
            out = await run_in_threadpool(agent.handle, req)
        except BadRequest as exc:
            raise ApiError(exc.status, str(exc)) from None
        except ServiceUnavailable as exc:
            return _error(503, str(exc), headers={"Retry-After": "5"})
        except HybridError as exc:
            return _error(503, f"{type(exc).__name__}: {exc}")
        status = 202 if out.get("status") in ("queued", "pending") else 200
        return JSONResponse(out, status_code=status)

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str) -> Response:
        if not 1 <= len(job_id) <= 96 or not job_id.replace("-", "").replace("_", "").isalnum():
            raise ApiError(400, f"invalid job id {job_id[:100]!r}")
        doc = await run_in_threadpool(agent.job, job_id)
        if doc is None:
            raise ApiError(404, f"no job {job_id!r} on this device")
        return JSONResponse(doc)

    @app.get("/v1/device")
    async def device() -> dict[str, Any]:
        return agent.stats()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(agent.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class ServerThread:
    """uvicorn serving an app in a daemon thread (tests, the edge benchmark)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=120
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="edge-http", daemon=True)
        self.host = host
        self.port = port

    def start(self, timeout_s: float = 10.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        if self.port == 0:
            sockets = [s for srv in self.server.servers for s in srv.sockets]
            self.port = int(sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(app: FastAPI, port: int = 0, host: str = "127.0.0.1") -> ServerThread:
    """Start `app` on `host:port` (0: a free port) in a background thread; `.url`, `.stop()`."""
    return ServerThread(app, host, port).start()


__all__ = ["ServerThread", "create_app", "serve_in_thread"]
