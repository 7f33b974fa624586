"""The HTTP entry point for app backends that are not Python: `hybrid api serve`.

    POST /v1/jobs                      one job {"task", "inputs", ...} or many {"jobs": [...]} → 202
    GET  /v1/jobs/{job_id}             the result, or {"status": "pending"}
    GET  /v1/jobs/{job_id}/wait?timeout=30   the same, waiting up to `timeout` seconds (≤ 60)
    GET  /healthz                      200 when Redis answers
    GET  /openapi.json                 the OpenAPI document (and /docs)

Every /v1 call needs `Authorization: Bearer <token>`; a token belongs to one tenant and is stored
only as its SHA-256 (`TokenStore`; tokens are 256 random bits, so a fast hash is enough — no
password to stretch). Jobs carry the token's tenant; a job id of another tenant is answered 404,
exactly like one that does not exist. Refusals: 401 unknown token, 404, 413 body over the limit,
400 bad JSON, 422 a body that is not a job, 429 + `Retry-After` on backpressure, 402 + `Retry-After`
when the tenant's or the global budget breaker is open, 503 Redis unreachable. Every error body is
`{"error": "...", ...}`.

Waiting costs no polling: the server's one broker `Client` names its reply stream in each job it
submits, a thread reads that stream and wakes the waiters of the finished ids; a job submitted
through another server instance is found by looking for its stored result once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import redis
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker import keys
from broker.admission import Admission, AdmissionPolicy
from broker.client import Client, sealer_from_settings
from broker.connection import redis_errors
from broker.errors import AdmissionRefused, BudgetExceeded, PayloadTooLarge, RedisUnavailable
from broker.ids import new_ulid
from broker.ledger import CostBreaker, Ledger
from broker.message import JobSpec
from broker.schema import JobResult
from broker.settings import BrokerSettings

MAX_BODY_BYTES = 1 << 20
MAX_JOBS_PER_REQUEST = 500
MAX_WAIT_S = 60.0
TOKEN_PREFIX = "hyb_"


# -- tokens ----------------------------------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    token_id: str  # the first 12 hex digits of the hash: names a token without revealing it
    tenant: str
    name: str
    created: float


class TokenStore:
    """Per-tenant API tokens, stored as SHA-256 hashes in one Redis hash per zone."""

    def __init__(self, client: redis.Redis, zone: str) -> None:
        self.client = client
        self.key = f"{keys.zone_prefix(zone)}:api:tokens"

    def create(self, tenant: str, name: str = "") -> tuple[str, TokenInfo]:
        """A new token for `tenant`: returned once, only its hash is kept."""
        if not tenant or len(tenant) > 64 or not keys.check_name(tenant, "tenant"):
            raise ValueError(f"invalid tenant {tenant!r}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        info = TokenInfo(digest[:12], tenant, name, time.time())
        with redis_errors():
            self.client.hset(self.key, digest, json.dumps({"tenant": tenant, "name": name, "created": info.created}))
        return token, info

    def tenant_of(self, token: str) -> str | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            return None
        with redis_errors():
            raw: Any = self.client.hget(self.key, token_hash(token))
        return str(json.loads(raw)["tenant"]) if raw else None

    def list(self) -> list[TokenInfo]:
        with redis_errors():
            raw: Any = self.client.hgetall(self.key)
        out = []
        for digest, doc in raw.items():
            d = json.loads(doc)
            out.append(TokenInfo(digest.decode()[:12], d["tenant"], d.get("name", ""), float(d["created"])))
        return sorted(out, key=lambda t: t.created)

    def revoke(self, token_id: str) -> int:
        """Remove the token(s) whose id (hash prefix, ≥ 8 digits) is `token_id`; returns how many."""
        if len(token_id) < 8:
            raise ValueError("give at least 8 digits of the token id (see `hybrid api token list`)")
        with redis_errors():
            raw: Any = self.client.hkeys(self.key)
            gone = [d for d in raw if d.decode().startswith(token_id.lower())]
            return int(self.client.hdel(self.key, *gone)) if gone else 0


# -- request and response bodies -------------------------------------------------------------------


class JobIn(BaseModel):
    """One job. The tenant is the token's; ids are assigned by the server."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=64, examples=["text_stats"])
    inputs: dict[str, Any] = Field(examples=[{"text": "আমার সোনার বাংলা"}])
    model: str = Field(default="default", min_length=1, max_length=128)
    lane: Literal["interactive", "batch"] = "interactive"
    sensitivity: Literal["public", "personal", "sensitive"] = "sensitive"
    options: dict[str, Any] = Field(default_factory=dict)
    deadline_ms: int | None = Field(default=None, ge=0, lt=2**53, description="Absolute deadline, ms since the epoch.")


class JobsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobIn] = Field(min_length=1, max_length=MAX_JOBS_PER_REQUEST)


class Submitted(BaseModel):
    job_id: str


class SubmittedMany(BaseModel):
    job_ids: list[str]


class JobView(BaseModel):
    job_id: str
    status: Literal["pending", "ok", "error", "expired"]
    output: dict[str, Any] | None = None
    error: str | None = None
    worker: str | None = None
    started_ms: int | None = None
    finished_ms: int | None = None


class ErrorBody(BaseModel):
    error: str


def _view(job_id: str, result: JobResult | None) -> JobView:
    if result is None:
        return JobView(job_id=job_id, status="pending")
    return JobView(
        job_id=job_id, status=result.status, output=result.output, error=result.error, worker=result.worker,
        started_ms=result.started_ms, finished_ms=result.finished_ms,
    )  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, error: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, **extra}
        self.headers = headers or {}


# -- request size limit ----------------------------------------------------------------------------


class BodyLimit:
    """413 for a body over `max_bytes`, whether it says its length or streams (chunked) past it."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._reject(send)
                    return
        seen = 0
        started = False
        rejected = False

        async def counting_receive() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not started:
                    # answer 413 now; the app sees the client go away and whatever it sends is dropped
                    rejected = True
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"error": f"request body over the limit of {self.max_bytes} bytes"}).encode()
        await send(
            {"type": "http.response.start", "status": 413,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        )  # fmt: skip
        await send({"type": "http.response.body", "body": body})


# -- waiting for results ---------------------------------------------------------------------------


class Waiters:
    """Wakes waiting requests when the reply stream names their job (one reader thread per server)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._events: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cursor = f"{time.time_ns() // 1_000_000}-0"  # notices from now on

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="api-reply-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def register(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._events.setdefault(job_id, []).append((asyncio.get_running_loop(), event))
        return event

    def unregister(self, job_id: str, event: asyncio.Event) -> None:
        with self._lock:
            left = [(lp, e) for lp, e in self._events.get(job_id, []) if e is not event]
            if left:
                self._events[job_id] = left
            else:
                self._events.pop(job_id, None)

    def _run(self) -> None:
        r = self.client.redis
        while not self._stop.is_set():
            try:
                resp: Any = r.xread({self.client.reply_stream: self._cursor}, count=1000, block=500)
            except (redis.RedisError, OSError):
                self._stop.wait(1.0)
                continue
            for _stream, entries in resp or []:
                for eid, fields in entries:
                    self._cursor = eid
                    for job_id in fields.get(b"jobs", b"").decode().split(","):
                        with self._lock:
                            found = self._events.get(job_id, [])
                        for loop, event in found:
                            loop.call_soon_threadsafe(event.set)


# -- the app ---------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A tenant's API token (`hybrid api token create`).")


def tenant_of(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The tenant of the request's bearer token; 401 when there is none or it is unknown."""
    store: TokenStore = request.app.state.tokens
    tenant = store.tenant_of(creds.credentials) if creds is not None else None
    if tenant is None:
        raise ApiError(401, "missing or unknown API token", {"WWW-Authenticate": "Bearer"})
    return tenant


Tenant = Annotated[str, Depends(tenant_of)]


@dataclass
class ApiConfig:
    max_body_bytes: int = MAX_BODY_BYTES
    max_wait_s: float = MAX_WAIT_S
    recheck_s: float = 1.0


def create_app(
    settings: BrokerSettings,
    client: redis.Redis,
    *,
    policy: AdmissionPolicy | None = None,
    config: ApiConfig | None = None,
) -> FastAPI:
    cfg = config or ApiConfig()
    zone = settings.zone
    tokens = TokenStore(client, zone)
    admission = Admission(client, zone, policy or AdmissionPolicy(), gate=CostBreaker(Ledger(client, zone)))
    broker = Client(
        client, sealer_from_settings(settings), zone, name=f"api-{os.uname().nodename}-{os.getpid()}-{new_ulid()[-6:]}",
        admission=admission,
    )  # fmt: skip
    waiters = Waiters(broker)
    submit_lock = threading.Lock()
    ttl_s = settings.result_ttl_s

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        waiters.start()
        try:
            yield
        finally:
            waiters.stop()
            with contextlib.suppress(RedisUnavailable):
                broker.close()

    app = FastAPI(
        title="Hybrid AI Stack jobs API",
        version="1",
        description="Submit sealed jobs to the GPU workers of one zone and fetch their results.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.state.tokens = tokens
    refusals: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "missing or unknown API token"},
        413: {"model": ErrorBody, "description": "request body over the limit"},
        503: {"model": ErrorBody, "description": "Redis unreachable"},
    }

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": f"request body is not valid JSON: {first.get('msg')}"}, status_code=400)
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "(body)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return JSONResponse({"error": f"{loc}: {first.get('msg')}{more}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RedisUnavailable)
    async def _redis_down(_req: Request, exc: RedisUnavailable) -> JSONResponse:
        return JSONResponse(
            {"error": f"the broker is unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"}
        )

    def owner_key(job_id: str) -> str:
        return f"{keys.zone_prefix(zone)}:api:job:{job_id}"

    def submit(tenant: str, jobs: list[JobIn]) -> list[str]:
        specs = [
            JobSpec(task=j.task, inputs=j.inputs, model=j.model, tenant=tenant, lane=j.lane, sensitivity=j.sensitivity,
                    options=j.options, deadline_ms=j.deadline_ms, job_id=new_ulid())
            for j in jobs
        ]  # fmt: skip
        ids = [s.job_id for s in specs if s.job_id is not None]
        with redis_errors():
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.set(owner_key(job_id), tenant, ex=ttl_s)
            pipe.execute()
        try:
            with submit_lock:
                return broker.submit_many(specs)
        except AdmissionRefused as exc:
            sent = set(exc.submitted)
            with redis_errors():
                unsent = [owner_key(j) for j in ids if j not in sent]
                if unsent:
                    client.delete(*unsent)
            wait = max(1, math.ceil(exc.retry_after_s))
            extra = {"reason": exc.reason, "limit": exc.limit, "retry_after_s": exc.retry_after_s,
                     "submitted": exc.submitted}  # fmt: skip
            if isinstance(exc, BudgetExceeded):
                raise ApiError(402, str(exc), {"Retry-After": str(wait)}, **extra) from None
            raise ApiError(429, str(exc), {"Retry-After": str(wait)}, **extra) from None
        except PayloadTooLarge as exc:
            raise ApiError(413, str(exc)) from None
        except (ValueError, OverflowError, TypeError) as exc:  # e.g. an integer msgpack cannot hold
            raise ApiError(422, f"job cannot be sealed: {exc}") from None

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=Submitted | SubmittedMany,
        responses={
            **refusals,
            400: {"model": ErrorBody, "description": "not valid JSON"},
            402: {"model": ErrorBody, "description": "budget breaker open (Retry-After)"},
            422: {"model": ErrorBody, "description": "not a job"},
            429: {"model": ErrorBody, "description": "backpressure (Retry-After)"},
        },
    )
    def post_jobs(body: JobIn | JobsIn, tenant: Tenant) -> Submitted | SubmittedMany:
        """Submit one job, or up to 500 as {"jobs": [...]}; returns their ids (202)."""
        if isinstance(body, JobsIn):
            return SubmittedMany(job_ids=submit(tenant, body.jobs))
        return Submitted(job_id=submit(tenant, [body])[0])

    def owned(tenant: str, job_id: str) -> None:
        if len(job_id) > 96:
            raise ApiError(404, "no such job")
        with redis_errors():
            owner: Any = client.get(owner_key(job_id))
        if owner is None or owner.decode() != tenant:
            raise ApiError(404, "no such job")  # another tenant's job looks exactly like a missing one

    def fetch(job_id: str) -> JobResult | None:
        with submit_lock:
            return broker.get_result(job_id)

    not_found: dict[int | str, dict[str, Any]] = {
        **refusals,
        404: {"model": ErrorBody, "description": "no such job"},
        422: {"model": ErrorBody, "description": "bad parameter"},
    }

    @app.get("/v1/jobs/{job_id}", response_model=JobView, responses=not_found)
    def get_job(job_id: str, tenant: Tenant) -> JobView:
        """The job's result, or status `pending`."""
        owned(tenant, job_id)
        return _view(job_id, fetch(job_id))

    @app.get("/v1/jobs/{job_id}/wait", response_model=JobView, responses=not_found)
    async def wait_job(
        job_id: str,
        tenant: Tenant,
        timeout: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait at most.")] = 30.0,
    ) -> JobView:
        """Wait up to `timeout` seconds for the result; status `pending` if it is not there by then."""
        timeout = min(timeout, cfg.max_wait_s)
        await run_in_threadpool(owned, tenant, job_id)
        event = waiters.register(job_id)
        try:
            deadline = time.monotonic() + timeout
            while True:
                result = await run_in_threadpool(fetch, job_id)
                left = deadline - time.monotonic()
                if result is not None or left <= 0:
                    return _view(job_id, result)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout=min(left, cfg.recheck_s))
                event.clear()
        finally:
            waiters.unregister(job_id, event)

    @app.get("/healthz", responses={503: {"model": ErrorBody}})
    def healthz() -> dict[str, str]:
        with redis_errors():
            client.ping()
        return {"status": "ok", "zone": zone}

    return app


def serve(app: FastAPI, host: str, port: int, *, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["ApiConfig", "BodyLimit", "JobIn", "JobView", "JobsIn", "TokenStore", "create_app", "serve", "token_hash"]
