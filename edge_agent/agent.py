"""The edge agent's request path: sensitivity → `policies.decide` → local, cloud or fallback.

    text, task, sensitivity? ──► sensitivity: the caller's tag, else the PII detector
                                 (PII found → `personal`, none → `config.clean_sensitivity`)
                             ──► policies.decide(request, cached device state, policy)
        local    run the classifier on the device; `policies.escalate` on its confidence: below the
                 task's threshold the request is also offloaded (cascade) and, for an interactive
                 caller, the local answer comes back at once marked `provisional` with the job id
        cloud    minimize (tokenize PII into the vault, or send an embedding where the task takes
                 one), seal for the zone, append to its stream; wait up to `cloud_wait_s` for the
                 result, open it and detokenize it — or hand back the job id (`/v1/jobs/{id}`)
        fallback the distilled fallback model, marked `fallback`
        reject   a 422 with the engine's reasons

Cloud failures: an unreachable broker trips the reachability breaker (`broker.breaker.Breaker`,
exponential backoff with jitter, then a half-open probe); `Backpressure` and `BudgetExceeded` are
refusals. A synchronous request then gets the fallback answer; an asynchronous one is sealed into the
durable outbox and replayed, in order, by a background thread once the broker takes jobs again.

The device state handed to the engine is cached: utilization from `DeviceMonitor` (refreshed in the
background), model latencies measured at start, the breaker's view of the cloud.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker import keys
from broker.admission import Admission, AdmissionPolicy, Entry
from broker.breaker import STATE_VALUE, Breaker, BreakerPolicy, ExponentialBackoff, State
from broker.client import Client
from broker.connection import ensure_group, redis_errors
from broker.errors import (
    Backpressure,
    BudgetExceeded,
    ConfigError,
    HybridError,
    MessageError,
    RedisUnavailable,
    UnknownKey,
)
from broker.ids import new_ulid
from broker.ledger import CostBreaker, Ledger
from broker.message import JobSpec, Sealer, new_job_id
from broker.registry import ModelRegistry, ModelRegistryError
from broker.scripts import APPEND
from edge_agent.device import DeviceMonitor, Snapshot
from edge_agent.metrics import EdgeMetrics
from edge_agent.models.runtime import CLASSIFIER
from edge_agent.outbox import Outbox, OutboxFull, OutboxItem
from edge_agent.pii import PiiDetector, PiiTokenizer, Roster, Span
from edge_agent.vault import Vault
from policies import DeviceState, Lane, LocalResult, Policy, Request, Route, Sensitivity, Transform, decide, escalate
from policies.decision import Decision

log = logging.getLogger(__name__)

SensitivityName = Literal["public", "personal", "sensitive"]
Mode = Literal["auto", "sync", "async"]

LOCAL_TASKS = frozenset({"question-classification"})
"""Tasks this device can answer itself (classifier locally, the distilled fallback as fallback)."""

MODEL_NAMES = {"qclf-bn-distil": CLASSIFIER}
"""Default map from the policy's edge model names to the names of the models-dir registry."""

UNAVAILABLE_MS = float("inf")
"""The measured latency the engine is told for a model the device does not carry: never within an SLO."""


class BadRequest(ValueError):
    """The request cannot be served as given (HTTP 400/413/422)."""

    def __init__(self, message: str, status: int = 400, reason: str = "invalid") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class ServiceUnavailable(HybridError):
    """Nothing can serve the request right now (HTTP 503): outbox full, no local model and no cloud."""


@dataclass(frozen=True)
class EdgeRequest:
    text: str
    task: str
    sensitivity: SensitivityName | None = None
    mode: Mode = "auto"
    interactive: bool | None = None  # None: the task's lane decides
    tenant: str | None = None
    request_id: str | None = None
    max_latency_ms: float | None = None


@dataclass
class AgentConfig:
    device_id: str = "edge-1"
    zone: str = "local"
    tenant: str = "default"
    max_text_chars: int = 8192
    cloud_wait_s: float = 3.0
    clean_sensitivity: SensitivityName = "public"  # untagged text with no PII found
    replay_interval_s: float = 1.0
    monitor_refresh_s: float = 2.0
    outbox_max_items: int = 10_000
    outbox_max_bytes: int = 64 << 20
    redis_timeout_s: float = 1.0
    # policy edge model name → registry model name, for the canary version the decision names
    model_names: dict[str, str] = field(default_factory=lambda: dict(MODEL_NAMES))
    breaker: BreakerPolicy = field(
        default_factory=lambda: BreakerPolicy(
            cooldown=ExponentialBackoff(base_s=1.0, cap_s=60.0, jitter=0.5), trickle=1, failure_threshold=1
        )
    )


class Monitor(Protocol):
    """What the agent needs of a device monitor (`edge_agent.device.DeviceMonitor`)."""

    def snapshot(self) -> Snapshot: ...
    def start(self) -> Any: ...
    def stop(self) -> None: ...


class CloudFailure(Exception):
    """A submit that did not reach the cloud; `reason` is a metrics label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class EdgeAgent:
    def __init__(
        self,
        models: Any,
        policy: Policy,
        config: AgentConfig,
        *,
        state_dir: Path | str,
        sealer: Sealer | None = None,
        redis_url: str | None = None,
        roster: Roster | None = None,
        admission_policy: AdmissionPolicy | None = None,
        budget_gate: bool = False,
        monitor: Monitor | None = None,
        bench: Mapping[str, Mapping[str, float]] | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.models = models
        self.policy = policy
        self.config = config
        keys.check_zone(config.zone)
        self.state_dir = Path(state_dir)
        self.detector = PiiDetector(roster)
        self.vault = Vault.open(self.state_dir)
        self.tokenizer = PiiTokenizer(self.detector, self.vault)
        self.outbox = Outbox(
            self.state_dir / "outbox.sqlite", max_items=config.outbox_max_items, max_bytes=config.outbox_max_bytes
        )
        self.metrics = EdgeMetrics()
        self.monitor: Monitor = monitor or DeviceMonitor(config.monitor_refresh_s)
        self._lock = threading.Lock()
        self.breaker = Breaker(config.breaker, clock=clock)
        self.sealer = sealer
        self.redis: redis.Redis | None = None
        if redis_url and sealer is not None:
            self.redis = redis.Redis.from_url(
                redis_url,
                decode_responses=False,
                socket_connect_timeout=config.redis_timeout_s,
                socket_timeout=config.redis_timeout_s + 5,
                retry=Retry(NoBackoff(), 0),
            )
        # admission (watermarks, rates) and the zone's cost breaker, when asked for: refusals → fallback/outbox
        self.admission_policy = admission_policy or (AdmissionPolicy() if budget_gate else None)
        self.budget_gate = budget_gate
        self._admissions: dict[str, Admission] = {}
        self._clients: dict[str, Client] = {}
        self._grouped: set[str] = set()
        self._append = self.redis.register_script(APPEND) if self.redis is not None else None
        self._budget_until = 0.0
        self.latency_ms = self._latencies(bench or {})
        self.totals = {"offload_bytes": 0, "offloaded_jobs": 0, "pii_values_left": 0, "pii_tokenized": 0}
        self.metrics.bind(
            outbox_jobs=lambda: float(len(self.outbox)),
            outbox_bytes=lambda: float(self.outbox.nbytes()),
            breaker=lambda: float(STATE_VALUE[self.breaker_state()]),
            utilization=lambda: self.monitor.snapshot().utilization,
        )
        self._stop = threading.Event()
        self._replayer: threading.Thread | None = None
        self._variants: dict[str, Any] = {}  # classifier version → models running it (loaded lazily)
        self._unusable: set[str] = set()  # classifier versions that failed verification or loading
        self._variants_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> EdgeAgent:
        self.monitor.start()
        if self._replayer is None and self.redis is not None:
            self._replayer = threading.Thread(target=self._replay_loop, name="edge-outbox-replay", daemon=True)
            self._replayer.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._replayer is not None:
            self._replayer.join(timeout=10)
            self._replayer = None
        self.monitor.stop()
        if self.redis is not None:
            self.redis.close()
        self.outbox.close()
        self.vault.close()

    # -- device state -----------------------------------------------------------------------------

    def _latencies(self, bench: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Measured p50s under the policy's model names; models the device does not carry are unavailable."""
        out: dict[str, float] = {}
        for name, task in self.policy.tasks.items():
            if task.edge_model is None:
                continue
            if name in LOCAL_TASKS:
                if "classifier" in bench:
                    out[task.edge_model] = float(bench["classifier"]["p50_ms"])
            else:
                out[task.edge_model] = UNAVAILABLE_MS
        for model in self.policy.models:
            if model.edge_eligible and model.name not in out and model.task not in LOCAL_TASKS:
                out[model.name] = UNAVAILABLE_MS
        return out

    def breaker_state(self) -> State:
        with self._lock:
            return self.breaker.state

    def device_state(self) -> DeviceState:
        snap = self.monitor.snapshot()
        reachable = self.redis is not None and self.breaker_state() is not State.OPEN
        return DeviceState(
            zone=self.config.zone,
            utilization=snap.utilization,
            local_latency_ms=self.latency_ms,
            cloud_reachable=reachable,
            breaker_open=time.monotonic() < self._budget_until,
            model_memory_available_mb=min(self.policy.edge.model_memory_mb, snap.memory_available_mb),
        )

    # -- the request path -------------------------------------------------------------------------

    def handle(self, req: EdgeRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        self._validate(req)
        spans: list[Span] | None = None
        if req.sensitivity is not None:
            sensitivity, source = req.sensitivity, "caller"
        else:
            spans = self.detector.detect(req.text)
            sensitivity, source = ("personal" if spans else self.config.clean_sensitivity), "detected"
        task = self.policy.tasks[req.task]
        lane = task.lane if req.interactive is None else (Lane.INTERACTIVE if req.interactive else Lane.BATCH)
        request = Request(
            id=req.request_id or new_ulid(),
            task=req.task,
            sensitivity=Sensitivity(sensitivity),
            lane=lane,
            tenant=req.tenant or self.config.tenant,
            input_bytes=len(req.text.encode()),
            max_latency_ms=req.max_latency_ms,
        )
        device = self.device_state()
        decision = decide(request, device, self.policy)
        mode = req.mode if req.mode != "auto" else ("sync" if decision.lane.value == "interactive" else "async")
        out: dict[str, Any] = {
            "request_id": request.id,
            "task": req.task,
            "sensitivity": {"level": sensitivity, "source": source},
            "mode": mode,
        }
        route = decision.route
        if route is Route.REJECT:
            self.metrics.requests.labels(req.task, "reject", "rejected").inc()
            raise BadRequest("; ".join(decision.reasons), status=422, reason="rejected")
        if route is Route.LOCAL:
            self._local(req, request, device, decision, spans, mode, out)
        elif route is Route.CLOUD:
            self._cloud(req, decision, spans, mode, out)
        else:
            self._fallback_route(req, request, device, decision, spans, mode, out)
        out.setdefault("decision", _decision_doc(decision))
        elapsed = time.perf_counter() - t0
        out["latency_ms"] = round(elapsed * 1000, 3)
        self.metrics.request_seconds.labels(req.task, out["route"]).observe(elapsed)
        self.metrics.requests.labels(req.task, out["route"], out["status"]).inc()
        return out

    def _validate(self, req: EdgeRequest) -> None:
        if not isinstance(req.text, str) or not req.text.strip():
            self.metrics.bad_requests.labels("v1", "empty").inc()
            raise BadRequest("text is empty", reason="empty")
        if len(req.text) > self.config.max_text_chars:
            self.metrics.bad_requests.labels("v1", "too_large").inc()
            raise BadRequest(
                f"text is {len(req.text)} characters, over the limit of {self.config.max_text_chars}",
                status=413,
                reason="too_large",
            )
        if req.task not in self.policy.tasks:
            self.metrics.bad_requests.labels("v1", "unknown_task").inc()
            known = ", ".join(sorted(self.policy.tasks))
            raise BadRequest(f"unknown task {req.task!r} (known: {known})", reason="unknown_task")

    def _classifier(self, decision: Decision) -> tuple[Any, str | None]:
        """The models to classify with and the classifier version they run: the version the decision
        names (the policy's canary) when the registry holds it installed, not retired, and it verifies;
        the registry's active version otherwise."""
        name = self.config.model_names.get(decision.model or "")
        root = getattr(self.models, "models_dir", None)
        loaded: Mapping[str, str] = getattr(self.models, "versions", {})
        if name != CLASSIFIER or root is None or not hasattr(self.models, "with_classifier_version"):
            return self.models, loaded.get(name or "")
        registry = ModelRegistry(root)
        try:
            # a one-version split: that version when it may serve, else the active one
            version = registry.select(
                name, decision.request_id, [(decision.version, 100.0)] if decision.version else None
            )
        except ModelRegistryError as exc:
            log.warning("model registry %s: %s; serving the loaded %s", root, exc, name)
            return self.models, loaded.get(name)
        return self._models_at(version, loaded.get(name))

    def _models_at(self, version: str, loaded: str | None) -> tuple[Any, str | None]:
        if version == loaded:
            return self.models, version
        with self._variants_lock:
            models = self._variants.get(version)
            if models is None and version not in self._unusable:
                try:
                    models = self.models.with_classifier_version(version)
                except (HybridError, OSError, ValueError, KeyError) as exc:
                    self._unusable.add(version)
                    log.error("classifier version %s cannot serve (%s); serving %s", version, exc, loaded)
                else:
                    self._variants[version] = models
        return (models, version) if models is not None else (self.models, loaded)

    def _run_local(self, kind: str, text: str, models: Any = None) -> tuple[str, float]:
        models = models if models is not None else self.models
        fn = models.classify if kind == "classifier" else models.fallback
        t0 = time.perf_counter()
        label, confidence = fn([text])[0]
        self.metrics.inference_seconds.labels(kind).observe(time.perf_counter() - t0)
        return str(label), float(confidence)

    def _local(
        self,
        req: EdgeRequest,
        request: Request,
        device: DeviceState,
        decision: Decision,
        spans: list[Span] | None,
        mode: str,
        out: dict[str, Any],
    ) -> None:
        if req.task not in LOCAL_TASKS:  # the engine was told such models are unavailable; defensive
            raise ServiceUnavailable(f"this device carries no model for task {req.task!r}")
        models, version = self._classifier(decision)
        label, confidence = self._run_local("classifier", req.text, models)
        registry_name = self.config.model_names.get(decision.model or "", decision.model or "")
        self.metrics.local_versions.labels(registry_name, version or "unknown").inc()
        local = {
            "label": label,
            "confidence": round(confidence, 4),
            "model": decision.model,
            "version": version,  # the classifier version that answered (the canary's when it may serve)
        }
        follow = escalate(
            LocalResult(request=request, device=device, model=decision.model or "", confidence=confidence), self.policy
        )
        out.update(route="local", result=local, provisional=False, fallback=False, status="done")
        if follow.route is not Route.CLOUD:
            out["degraded"] = follow.degraded
            out["decision"] = _decision_doc(decision, follow)
            return
        # cascade: the confidence is under the task's threshold
        self.metrics.cascades.labels(req.task).inc()
        out["decision"] = _decision_doc(decision, follow)
        interactive = follow.lane.value == "interactive" and mode == "sync"
        try:
            job_id, wire = self._offload(req, follow, spans, queue_on_failure=not interactive, meta={"local": local})
        except CloudFailure as exc:
            out.update(degraded=True, cascade={"status": "failed", "reason": str(exc)})
            return
        except ServiceUnavailable as exc:
            out.update(degraded=True, cascade={"status": "refused", "reason": str(exc)})
            return
        out["cascade"] = {"job_id": job_id, "status": wire}
        if interactive:
            out.update(provisional=True, job_id=job_id, status="provisional")
        elif mode == "async" or wire != "submitted":
            out.update(provisional=True, job_id=job_id, status="queued" if wire == "queued" else "pending")
        else:
            self._await(job_id, follow.zone or "", out, keep_local=True, transform=follow.transform.value)

    def _cloud(
        self, req: EdgeRequest, decision: Decision, spans: list[Span] | None, mode: str, out: dict[str, Any]
    ) -> None:
        try:
            job_id, wire = self._offload(req, decision, spans, queue_on_failure=mode == "async")
        except CloudFailure as exc:
            self._answer_with_fallback(req, exc.reason, str(exc), out)
            return
        out.update(route="cloud", job_id=job_id, provisional=False, fallback=False)
        if wire != "submitted" or mode == "async":
            out.update(status="queued" if wire == "queued" else "pending", result=None)
            return
        self._await(job_id, decision.zone or "", out, keep_local=False)

    def _fallback_route(
        self,
        req: EdgeRequest,
        request: Request,
        device: DeviceState,
        decision: Decision,
        spans: list[Span] | None,
        mode: str,
        out: dict[str, Any],
    ) -> None:
        cloud_down = not device.cloud_reachable or device.breaker_open
        if mode == "async" and cloud_down:
            # an asynchronous job waits in the outbox for the cloud the policy would pick
            plan = decide(
                request, device.model_copy(update={"cloud_reachable": True, "breaker_open": False}), self.policy
            )
            if plan.route is Route.CLOUD:
                try:
                    job_id, wire = self._offload(req, plan, spans, queue_on_failure=True, force_queue=True)
                except CloudFailure as exc:
                    decision = decision.model_copy(update={"reasons": (*decision.reasons, str(exc))})
                else:
                    out.update(route="cloud", job_id=job_id, status=wire, result=None)
                    out.update(provisional=False, fallback=False)
                    out["decision"] = _decision_doc(decision, plan)
                    return
        if req.task not in LOCAL_TASKS:
            raise ServiceUnavailable(
                f"the cloud cannot take this {req.task!r} request now and this device has no local model for it: "
                + "; ".join(decision.reasons[-2:])
            )
        reason = "unreachable" if not device.cloud_reachable else ("budget" if device.breaker_open else "policy")
        self._answer_with_fallback(req, reason, "; ".join(decision.reasons[-2:]), out)

    def _answer_with_fallback(self, req: EdgeRequest, reason: str, detail: str, out: dict[str, Any]) -> None:
        if req.task not in LOCAL_TASKS:
            raise ServiceUnavailable(f"cloud unavailable ({detail}) and no local model for task {req.task!r}")
        label, confidence = self._run_local("fallback", req.text)
        self.metrics.fallbacks.labels(reason).inc()
        out.update(
            route="fallback",
            status="fallback",
            fallback=True,
            provisional=False,
            degraded=True,
            fallback_reason=f"{reason}: {detail}",
            result={"label": label, "confidence": round(confidence, 4), "model": "fallback"},
        )

    # -- offloading -------------------------------------------------------------------------------

    def _minimize(
        self, text: str, spans: list[Span] | None, transform: Transform
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """The inputs that leave the device, and PII counts: `{"tokenized": n}` or `{"left": n}`."""
        if transform is Transform.EMBED:
            vec = np.asarray(self.models.embed([text])[0], dtype=np.float32)
            return {"embedding_f16": vec.astype("<f2").tobytes(), "dim": int(vec.shape[0])}, {}
        if transform is Transform.TOKENIZE:
            tok = self.tokenizer.tokenize(text)
            for typ, n in tok.counts().items():
                self.metrics.pii_tokenized.labels(typ).inc(n)
            self.totals["pii_tokenized"] += len(tok.spans)
            return {"text": tok.text}, {}
        found = spans if spans is not None else self.detector.detect(text)
        return {"text": text}, _count(found)

    def _offload(
        self,
        req: EdgeRequest,
        decision: Decision,
        spans: list[Span] | None,
        *,
        queue_on_failure: bool,
        force_queue: bool = False,
        meta: Mapping[str, Any] | None = None,
    ) -> tuple[str, str]:
        """Seal and send (or queue) one job; returns (job id, "submitted" | "queued")."""
        if self.redis is None or self.sealer is None:
            raise CloudFailure("unreachable", "no broker configured on this device")
        zone = decision.zone or self.config.zone
        inputs, left = self._minimize(req.text, spans, decision.transform)
        spec = JobSpec(
            task=decision.task,
            inputs=inputs,
            model=decision.model or "default",
            tenant=req.tenant or self.config.tenant,
            lane=decision.lane.value,
            sensitivity=decision.sensitivity.value,
            options={"version": decision.version} if decision.version else {},
            job_id=new_job_id(),
            trace_id=(req.request_id or "")[:64] or None,
        )
        client = self._client(zone)
        try:
            header, h, b = self.sealer.seal_job(zone, spec, client.name)
        except (UnknownKey, ConfigError) as exc:  # the device holds no key of that zone
            raise CloudFailure("no_key", f"cannot seal for zone {zone}: {exc}") from None
        job_id = header.job_id
        meta_doc = {"transform": decision.transform.value, **dict(meta or {})}
        # an async job queues behind what already waits, to keep their order; a sync one tries at once
        queue_first = force_queue or (queue_on_failure and len(self.outbox) > 0)
        if not queue_first:
            try:
                self._send_checked(zone, spec.lane, spec.tenant, job_id, h, b)
            except CloudFailure:
                if not queue_on_failure:
                    raise
            else:
                self._account(zone, decision.transform, len(h) + len(b), left)
                self.outbox.record_job(job_id, decision.task, zone, "submitted", meta_doc)
                return job_id, "submitted"
        try:
            self.outbox.put_sealed(job_id, zone, spec.lane, spec.tenant, h, b)
        except OutboxFull as exc:
            self.metrics.outbox_refused.inc()
            raise ServiceUnavailable(str(exc)) from None
        meta_doc["left"] = left
        self.outbox.record_job(job_id, decision.task, zone, "queued", meta_doc)
        return job_id, "queued"

    def _account(self, zone: str, transform: Transform, nbytes: int, left: Mapping[str, int]) -> None:
        self.metrics.offload_bytes.labels(zone, transform.value).inc(nbytes)
        self.metrics.offloaded_jobs.labels(zone, transform.value).inc()
        self.totals["offload_bytes"] += nbytes
        self.totals["offloaded_jobs"] += 1
        for typ, n in left.items():
            self.metrics.pii_left.labels(typ).inc(n)
            self.totals["pii_values_left"] += n

    def _send_checked(self, zone: str, lane: str, tenant: str, job_id: str, h: bytes, b: bytes) -> None:
        """Send through the breaker: refused while open, a failure trips it, a success closes it."""
        with self._lock:
            allowed = self.breaker.allow()
        if not allowed:
            raise CloudFailure(
                "breaker_open", f"cloud breaker open, next probe in {self.breaker.retry_after_s():.1f} s"
            )
        try:
            self._send_sealed(zone, lane, tenant, job_id, h, b)
        except RedisUnavailable as exc:
            with self._lock:
                self.breaker.record_failure()
            raise CloudFailure("unreachable", str(exc)) from None
        except BudgetExceeded as exc:
            self._budget_until = time.monotonic() + exc.retry_after_s
            with self._lock:
                self.breaker.record_success()  # the broker answered
            raise CloudFailure("budget", str(exc)) from None
        except Backpressure as exc:
            with self._lock:
                self.breaker.record_success()
            raise CloudFailure("backpressure", str(exc)) from None
        with self._lock:
            self.breaker.record_success()

    def _send_sealed(self, zone: str, lane: str, tenant: str, job_id: str, h: bytes, b: bytes) -> None:
        assert self.redis is not None and self._append is not None
        stream = keys.jobs_stream(zone, lane)
        with redis_errors(f"the broker of zone {zone}"):
            if stream not in self._grouped:
                ensure_group(self.redis, stream, keys.GROUP)
                self._grouped.add(stream)
            if self.admission_policy is not None:
                adm = self._admissions.get(zone)
                if adm is None:
                    gate = CostBreaker(Ledger(self.redis, zone)) if self.budget_gate else None
                    adm = self._admissions[zone] = Admission(self.redis, zone, self.admission_policy, gate=gate)
                adm.admit([Entry(job_id, tenant, stream, h, b)])
            else:
                self._append(keys=[stream], args=[1, h, b])

    def _client(self, zone: str) -> Client:
        client = self._clients.get(zone)
        if client is None:
            assert self.redis is not None and self.sealer is not None
            client = Client(self.redis, self.sealer, zone, name=f"edge-{self.config.device_id}", recheck_s=0.05)
            self._clients[zone] = client
        return client

    # -- results ----------------------------------------------------------------------------------

    def _await(
        self, job_id: str, zone: str, out: dict[str, Any], *, keep_local: bool, transform: str = Transform.RAW.value
    ) -> None:
        try:
            result = self._client(zone).result(job_id, timeout=self.config.cloud_wait_s)
        except (HybridError, redis.RedisError) as exc:
            status = "provisional" if keep_local else "pending"
            out.update(
                job_id=job_id, status=status, provisional=keep_local, cloud={"status": "pending", "detail": str(exc)}
            )
            return
        self.outbox.set_state(job_id, "done" if result.ok else "failed")
        doc = self._result_doc(result)
        answer = doc["output"]
        if keep_local:
            local = out.get("result")
            answer, answered_by = refine(local, doc["output"], transform)
            out.update(route="cloud", local_result=local, cloud_result=doc["output"], answered_by=answered_by)
        out.update(job_id=job_id, status="done" if result.ok else "error", result=answer, provisional=False)
        if not result.ok:
            out["error"] = doc["error"]

    def _result_doc(self, result: Any) -> dict[str, Any]:
        return {
            "output": self.tokenizer.detokenize_obj(_plain(result.output)),
            "error": self.tokenizer.detokenize(result.error) if result.error else None,
            "worker": result.worker,
        }

    def job(self, job_id: str) -> dict[str, Any] | None:
        """What this device knows of one of its offloaded jobs (None: not one of ours)."""
        rec = self.outbox.job(job_id)
        if rec is None:
            return None
        doc: dict[str, Any] = {"job_id": job_id, "task": rec.task, "zone": rec.zone, "status": rec.state}
        if "local" in rec.meta:
            doc["local_result"] = rec.meta["local"]
        if rec.state == "queued":
            doc["outbox_depth"] = len(self.outbox)
            return doc
        if self.redis is None or self.sealer is None:
            return doc
        try:
            result = self._client(rec.zone).get_result(job_id)
        except RedisUnavailable as exc:
            doc["detail"] = f"cannot reach the broker: {exc}"
            return doc
        except MessageError as exc:
            doc.update(status="failed", error=f"result cannot be opened: {exc}")
            return doc
        if result is None:
            doc["status"] = "pending"
            return doc
        if rec.state == "submitted":
            self.outbox.set_state(job_id, "done" if result.ok else "failed")
        d = self._result_doc(result)
        answer = d["output"]
        if "local" in rec.meta and result.ok:  # a cascade: the device answered first
            answer, answered_by = refine(rec.meta["local"], d["output"], str(rec.meta.get("transform", "raw")))
            doc.update(cloud_result=d["output"], answered_by=answered_by)
        doc.update(status="done" if result.ok else "failed", result=answer, error=d["error"], worker=d["worker"])
        return doc

    # -- the outbox -------------------------------------------------------------------------------

    def replay_outbox(self) -> int:
        """Send what waits in the outbox, in order, while the broker takes it; returns how many went."""
        if self.redis is None or len(self.outbox) == 0:
            return 0
        sent = 0

        def send(item: OutboxItem) -> None:
            nonlocal sent
            self._send_checked(item.zone, item.lane, item.tenant, item.job_id, item.h, item.b)
            rec = self.outbox.job(item.job_id)
            left = rec.meta.get("left", {}) if rec else {}
            self._account(
                item.zone, Transform((rec.meta if rec else {}).get("transform", "raw")), len(item.h) + len(item.b), left
            )
            self.outbox.set_state(item.job_id, "submitted")
            self.metrics.outbox_replayed.inc()
            sent += 1

        try:
            self.outbox.replay(send)
        except CloudFailure as exc:
            log.debug("outbox replay paused after %d job(s): %s", sent, exc)
        return sent

    def _replay_loop(self) -> None:
        while not self._stop.wait(self.config.replay_interval_s):
            try:
                self.replay_outbox()
            except Exception:  # pragma: no cover - keep replaying whatever goes wrong once
                log.exception("outbox replay failed")

    def stats(self) -> dict[str, Any]:
        return {
            **self.totals,
            "outbox_jobs": len(self.outbox),
            "breaker": self.breaker_state().value,
            "utilization": round(self.monitor.snapshot().utilization, 3),
        }


def _count(spans: list[Span]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in spans:
        out[s.type] = out.get(s.type, 0) + 1
    return out


def _plain(obj: Any) -> Any:
    """A result output made JSON-safe (bytes become a note of their length)."""
    if isinstance(obj, bytes):
        return {"bytes": len(obj)}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def _decision_doc(decision: Decision, follow: Decision | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "route": decision.route.value,
        "model": decision.model,
        "version": decision.version,
        "zone": decision.zone,
        "transform": decision.transform.value,
        "lane": decision.lane.value,
        "degraded": decision.degraded,
        "reasons": list(decision.reasons),
    }
    if follow is not None:
        doc["then"] = _decision_doc(follow)
    return doc


def refine(local: Any, cloud: Any, transform: str) -> tuple[Any, str]:
    """The answer a cascade ends with, and who gave it ("cloud" or "local").

    A cascade asks the cloud to refine a low-confidence local answer, and its answer normally wins.
    But when the question left the device only as an embedding (`personal` data: the cloud's head
    saw less than the device's classifier, which read the text), the cloud's answer replaces the
    device's only if it is the more confident of the two. The pilot measured why: on questions with
    PII the embedding head was right 58 % of the time against 89 % for the device alone."""
    if (
        transform == Transform.EMBED.value
        and isinstance(local, Mapping)
        and isinstance(cloud, Mapping)
        and isinstance(local.get("confidence"), int | float)
        and isinstance(cloud.get("confidence"), int | float)
        and cloud["confidence"] < local["confidence"]
    ):
        return local, "local"
    return cloud, "cloud"


__all__ = [
    "LOCAL_TASKS",
    "AgentConfig",
    "BadRequest",
    "CloudFailure",
    "EdgeAgent",
    "EdgeRequest",
    "ServiceUnavailable",
    "refine",
]
