"""What a path costs per inference: dollars, bytes leaving the device, and estimated latency.

Local: the edge device's hourly cost (hardware amortized over its life, maintenance, power) spread
over the time an inference occupies it. Cloud: GPU time billed at the zone's price for the lane's
capacity class (on-demand or spot), plus egress for the answer coming back. Formulas are in
docs/policies.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.decision import Decision
from policies.model import Lane, ModelSpec, Policy, Transform
from policies.request import DeviceState, Request, Route

__all__ = [
    "HOURS_PER_MONTH",
    "CloudCost",
    "Estimate",
    "bytes_leaving_device",
    "cloud_inference_usd",
    "cloud_latency_ms",
    "edge_usd_per_hour",
    "estimate",
    "local_inference_usd",
]

HOURS_PER_MONTH = 730.0
MS_PER_HOUR = 3_600_000.0
BYTES_PER_GB = 1_000_000_000.0


@dataclass(frozen=True)
class CloudCost:
    gpu_usd: float
    egress_usd: float

    @property
    def total_usd(self) -> float:
        return self.gpu_usd + self.egress_usd


def edge_usd_per_hour(policy: Policy) -> float:
    e = policy.cost.edge
    amortization = e.hardware_usd / (e.amortization_months * HOURS_PER_MONTH)
    maintenance = e.maintenance_usd_per_month / HOURS_PER_MONTH
    power = e.power_watts / 1000.0 * e.electricity_usd_per_kwh
    return amortization + maintenance + power


def local_inference_usd(model: ModelSpec, policy: Policy, latency_ms: float | None = None) -> float:
    """The edge's hourly cost times the time this inference holds the device."""
    ms = latency_ms if latency_ms is not None else model.local_latency_ms
    if ms is None:
        raise ValueError(f"model {model.name!r} has no local_latency_ms: it does not run on the edge")
    return edge_usd_per_hour(policy) * ms / MS_PER_HOUR


def cloud_inference_usd(model: ModelSpec, zone: str, lane: Lane, policy: Policy) -> CloudCost:
    """Billed GPU time at the zone's price for the lane's capacity class, plus egress of the answer."""
    if model.cloud_gpu_ms is None:
        raise ValueError(f"model {model.name!r} has no cloud_gpu_ms: it is not served in the cloud")
    price = policy.cost.cloud[zone]
    lane_cost = policy.cost.lane(lane)
    billed_ms = model.cloud_gpu_ms / lane_cost.gpu_utilization
    gpu = price.gpu_usd_per_hour(lane_cost.capacity) * billed_ms / MS_PER_HOUR
    answer_bytes = model.output_bytes + policy.cost.message_overhead_bytes
    return CloudCost(gpu_usd=gpu, egress_usd=price.egress_usd_per_gb * answer_bytes / BYTES_PER_GB)


def bytes_leaving_device(transform: Transform, input_bytes: int, policy: Policy) -> int:
    """The size of the sealed message: the payload as transformed, plus header and envelope."""
    payload = policy.edge.embedding_bytes if transform is Transform.EMBED else input_bytes
    return payload + policy.cost.message_overhead_bytes


def cloud_latency_ms(model: ModelSpec, zone: str, transform: Transform, policy: Policy) -> float:
    """Transform on the device, round trip to the zone, inference on the GPU (queueing not included)."""
    if model.cloud_latency_ms is None:
        raise ValueError(f"model {model.name!r} has no cloud_latency_ms: it is not served in the cloud")
    prepare = {
        Transform.RAW: 0.0,
        Transform.TOKENIZE: policy.edge.tokenize_latency_ms,
        Transform.EMBED: policy.edge.embed_latency_ms,
    }[transform]
    return prepare + policy.zones[zone].rtt_ms + model.cloud_latency_ms


@dataclass(frozen=True)
class Estimate:
    """What a decision is expected to cost: latency, dollars on each side, bytes leaving the device."""

    latency_ms: float | None  # None for a rejected request
    local_usd: float
    cloud_usd: float
    bytes_out: int


def estimate(decision: Decision, request: Request, device: DeviceState, policy: Policy) -> Estimate:
    """Expected latency, cost and bytes of `decision`; local latency is the device's measurement if
    it has one, else the policy's estimate."""
    if decision.route is Route.REJECT or decision.model is None:
        return Estimate(latency_ms=None, local_usd=0.0, cloud_usd=0.0, bytes_out=0)
    model = policy.model(decision.model)
    if decision.route is Route.CLOUD:
        assert decision.zone is not None
        return Estimate(
            latency_ms=cloud_latency_ms(model, decision.zone, decision.transform, policy),
            local_usd=0.0,
            cloud_usd=cloud_inference_usd(model, decision.zone, decision.lane, policy).total_usd,
            bytes_out=bytes_leaving_device(decision.transform, request.input_bytes, policy),
        )
    latency = device.local_latency_ms.get(model.name, model.local_latency_ms)
    return Estimate(
        latency_ms=latency,
        local_usd=local_inference_usd(model, policy, latency),
        cloud_usd=0.0,
        bytes_out=0,
    )
