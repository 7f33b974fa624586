"""The routing engine: the decision map of docs/policies.md, applied to one request.

Pure and deterministic: the same request, device state and policy always give the same decision,
on any machine (canary versions come from a stable hash of the request id). Every check appends a
sentence to the decision's reasons, naming the rule and the numbers it compared.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.canary import BUCKETS, choose_version
from policies.cost import cloud_inference_usd
from policies.decision import Decision
from policies.model import SENSITIVITY_ORDER, Lane, ModelSpec, Policy, Sensitivity, TaskSpec, Transform
from policies.request import DeviceState, LocalResult, Request, Route

__all__ = ["decide", "escalate"]

MOST_SENSITIVE: Sensitivity = SENSITIVITY_ORDER[-1]


@dataclass(frozen=True)
class _Context:
    request: Request
    device: DeviceState
    policy: Policy
    task_name: str
    task: TaskSpec
    sensitivity: Sensitivity
    lane: Lane


@dataclass(frozen=True)
class _Plan:
    zone: str
    endpoint: str
    transform: Transform


def decide(request: Request, device: DeviceState, policy: Policy) -> Decision:
    """Where `request` runs: locally, in the cloud, on the distilled fallback, or nowhere."""
    reasons: list[str] = []
    ctx = _context(request, device, policy, reasons)
    if ctx is None:
        return _reject(request, reasons)

    slo = ctx.task.latency_slo_ms
    if request.max_latency_ms is not None and request.max_latency_ms < slo:
        reasons.append(f"request asks for {request.max_latency_ms:g} ms, tighter than the task SLO {slo:g} ms")
        slo = request.max_latency_ms

    # 1. Local: an eligible model, utilization under the threshold, the SLO met on the device.
    local = policy.model(ctx.task.edge_model or ctx.task.model)
    local_eligible = _eligible(local, device, reasons)
    if local_eligible:
        threshold = policy.routing.utilization_threshold
        util_ok = device.utilization < threshold
        op = "<" if util_ok else "≥"
        reasons.append(f"local utilization {device.utilization:.2f} {op} threshold {threshold:.2f}")
        latency, source = _local_latency(local, device)
        slo_ok = latency <= slo
        op = "≤" if slo_ok else ">"
        reasons.append(f"{source} local latency of {local.name!r} {latency:g} ms {op} SLO {slo:g} ms")
        if util_ok and slo_ok:
            return _run_locally(ctx, local, Route.LOCAL, degraded=False, reasons=reasons)

    # 2. Offload: minimize the payload as its sensitivity requires, pick an endpoint that may take it.
    plan = _offload_plan(ctx, reasons)
    if plan is not None:
        return _offload(ctx, plan, reasons)

    # 3. The cloud cannot take it: the distilled fallback, or the local model over its threshold.
    return _when_offload_impossible(ctx, local if local_eligible else None, reasons)


def escalate(result: LocalResult, policy: Policy) -> Decision:
    """The confidence cascade: keep a local answer, or send the request to the cloud's full model.

    The decision's route is `local`/`fallback` (keep the answer computed on the device, as it was
    routed) or `cloud` (run the task's full model there, payload transformed as the decision says).
    """
    reasons: list[str] = []
    ctx = _context(result.request, result.device, policy, reasons)
    if ctx is None:
        return _reject(result.request, reasons)
    if result.route not in (Route.LOCAL, Route.FALLBACK):
        reasons.append(f"only local or fallback results can be escalated, not {result.route.value!r} ones")
        return _reject(result.request, reasons, ctx=ctx)
    if not policy.has_model(result.model):
        reasons.append(f"model {result.model!r} of the result is not defined in the policy")
        return _reject(result.request, reasons, ctx=ctx)
    ran = policy.model(result.model)
    kept_degraded = result.route is Route.FALLBACK

    threshold = ctx.task.confidence_threshold
    if result.confidence >= threshold:
        reasons.append(
            f"confidence {result.confidence:.2f} ≥ threshold {threshold:.2f} for {ctx.task_name!r}: "
            "keep the local answer"
        )
        return _run_locally(ctx, ran, result.route, degraded=kept_degraded, reasons=reasons)

    reasons.append(f"confidence {result.confidence:.2f} < threshold {threshold:.2f} for {ctx.task_name!r}: escalate")
    if ran.name == ctx.task.model:
        reasons.append(f"{ran.name!r} is already the task's full model: nothing larger to escalate to")
        return _run_locally(ctx, ran, result.route, degraded=True, reasons=reasons)
    plan = _offload_plan(ctx, reasons)
    if plan is not None:
        return _offload(ctx, plan, reasons)
    reasons.append("cannot escalate: keeping the low-confidence local answer, marked degraded")
    return _run_locally(ctx, ran, result.route, degraded=True, reasons=reasons)


# ----------------------------------------------------------------------------------------- the steps


def _context(request: Request, device: DeviceState, policy: Policy, reasons: list[str]) -> _Context | None:
    task = policy.tasks.get(request.task)
    if task is None:
        known = ", ".join(sorted(policy.tasks))
        reasons.append(f"task {request.task!r} is not defined in the policy (known: {known})")
        return None
    if request.sensitivity is None:
        sensitivity = MOST_SENSITIVE
        reasons.append(f"request has no sensitivity tag: treated as {sensitivity.value!r}, the most sensitive")
    else:
        sensitivity = request.sensitivity
    lane = request.lane or task.lane
    return _Context(request, device, policy, request.task, task, sensitivity, lane)


def _eligible(model: ModelSpec, device: DeviceState, reasons: list[str]) -> bool:
    if not model.edge_eligible:
        reasons.append(f"model {model.name!r} is not edge-eligible ({model.size_mb:g} MB, {model.runtime.value})")
        return False
    if not model.ops_supported_locally:
        reasons.append(f"model {model.name!r} uses operators the edge runtime does not support")
        return False
    if model.size_mb > device.model_memory_available_mb:
        reasons.append(
            f"model {model.name!r} needs {model.size_mb:g} MB, the device has "
            f"{device.model_memory_available_mb:g} MB available for models"
        )
        return False
    reasons.append(
        f"model {model.name!r} is eligible locally ({model.size_mb:g} MB ≤ "
        f"{device.model_memory_available_mb:g} MB available, {model.runtime.value})"
    )
    return True


def _local_latency(model: ModelSpec, device: DeviceState) -> tuple[float, str]:
    measured = device.local_latency_ms.get(model.name)
    if measured is not None:
        return measured, "measured"
    assert model.local_latency_ms is not None  # guaranteed for edge-eligible models by the policy checks
    return model.local_latency_ms, "estimated"


def _offload_plan(ctx: _Context, reasons: list[str]) -> _Plan | None:
    policy, device, level = ctx.policy, ctx.device, ctx.sensitivity.value
    rule = policy.data_classes[ctx.sensitivity]
    if rule.never_leave_device:
        reasons.append(f"{level!r} data never leaves the device (data_classes.{level}.never_leave_device)")
        return None

    transform = rule.transform
    if transform is Transform.EMBED and not ctx.task.accepts_embedding:
        reasons.append(f"{level!r} data may leave only as an embedding, and task {ctx.task_name!r} does not accept one")
        return None
    if transform is Transform.TOKENIZE and ctx.task.accepts_embedding:
        transform = Transform.EMBED
        reasons.append(f"{level!r} data must be tokenized; task {ctx.task_name!r} takes an embedding instead")
    else:
        reasons.append(f"{level!r} data may leave the device as {transform.value!r}")

    model = policy.model(ctx.task.model)
    if rule.in_zone_only:
        if device.zone not in policy.zones:
            reasons.append(f"{level!r} data must stay in the device's zone, and zone {device.zone!r} is not defined")
            return None
        zones = [device.zone]
    else:
        zones = sorted(
            policy.zones,
            key=lambda z: (cloud_inference_usd(model, z, ctx.lane, policy).total_usd, z != device.zone, z),
        )

    for zone in zones:
        for endpoint in policy.zones[zone].endpoints:
            if ctx.lane in endpoint.lanes and (endpoint.enclave or not rule.require_enclave):
                _explain_zone(ctx, rule.in_zone_only, zone, len(zones), model, reasons)
                if not device.cloud_reachable:
                    reasons.append("the cloud is unreachable from the device")
                    return None
                if device.breaker_open:
                    reasons.append("the cost breaker is open: cloud calls are throttled")
                    return None
                return _Plan(zone, endpoint.name, transform)

    enclave = " with an enclave" if rule.require_enclave else ""
    reasons.append(f"no endpoint{enclave} serves lane {ctx.lane.value!r} in zone(s) {', '.join(zones)}")
    return None


def _explain_zone(
    ctx: _Context, in_zone_only: bool, zone: str, candidates: int, model: ModelSpec, reasons: list[str]
) -> None:
    if in_zone_only:
        reasons.append(f"{ctx.sensitivity.value!r} data stays in zone: target {zone!r}")
        return
    usd = cloud_inference_usd(model, zone, ctx.lane, ctx.policy).total_usd
    lane = ctx.lane.value
    if candidates > 1:
        reasons.append(f"zone {zone!r} is the cheapest with an endpoint for lane {lane!r} (${usd:.3g} per inference)")
    else:
        reasons.append(f"zone {zone!r} serves lane {lane!r} (${usd:.3g} per inference)")


def _when_offload_impossible(ctx: _Context, local: ModelSpec | None, reasons: list[str]) -> Decision:
    full = ctx.policy.model(ctx.task.model)
    if full.fallback is not None:
        fallback = ctx.policy.model(full.fallback)
        if _eligible(fallback, ctx.device, reasons):
            reasons.append(f"running the distilled fallback {fallback.name!r}, marked as fallback")
            return _run_locally(ctx, fallback, Route.FALLBACK, degraded=True, reasons=reasons)
    else:
        reasons.append(f"model {full.name!r} has no distilled fallback")
    if local is not None:
        reasons.append(f"running {local.name!r} locally although it is over its threshold")
        return _run_locally(ctx, local, Route.LOCAL, degraded=True, reasons=reasons)
    reasons.append("no local model can serve the request and it cannot be offloaded: rejected")
    return _reject(ctx.request, reasons, ctx=ctx)


# -------------------------------------------------------------------------------------- the outcomes


def _run_locally(ctx: _Context, model: ModelSpec, route: Route, *, degraded: bool, reasons: list[str]) -> Decision:
    version = _version(model, ctx.request.id, reasons)
    return Decision(
        request_id=ctx.request.id,
        task=ctx.task_name,
        route=route,
        transform=Transform.RAW,
        model=model.name,
        version=version,
        zone=None,
        endpoint=None,
        lane=ctx.lane,
        sensitivity=ctx.sensitivity,
        degraded=degraded,
        reasons=tuple(reasons),
    )


def _offload(ctx: _Context, plan: _Plan, reasons: list[str]) -> Decision:
    model = ctx.policy.model(ctx.task.model)
    version = _version(model, ctx.request.id, reasons)
    return Decision(
        request_id=ctx.request.id,
        task=ctx.task_name,
        route=Route.CLOUD,
        transform=plan.transform,
        model=model.name,
        version=version,
        zone=plan.zone,
        endpoint=plan.endpoint,
        lane=ctx.lane,
        sensitivity=ctx.sensitivity,
        degraded=False,
        reasons=tuple(reasons),
    )


def _reject(request: Request, reasons: list[str], ctx: _Context | None = None) -> Decision:
    return Decision(
        request_id=request.id,
        task=request.task,
        route=Route.REJECT,
        transform=Transform.RAW,
        model=None,
        version=None,
        zone=None,
        endpoint=None,
        lane=ctx.lane if ctx else (request.lane or Lane.INTERACTIVE),
        sensitivity=ctx.sensitivity if ctx else (request.sensitivity or MOST_SENSITIVE),
        degraded=False,
        reasons=tuple(reasons),
    )


def _version(model: ModelSpec, request_id: str, reasons: list[str]) -> str:
    version, bucket = choose_version(model, request_id)
    if len(model.versions) > 1:
        share = next(v.canary_percent for v in model.versions if v.version == version)
        reasons.append(f"version {version} of {model.name!r} (canary bucket {bucket} of {BUCKETS}, share {share:g}%)")
    return version
