"""The pilot's cost model: what an arm costs per hour of trace, from the policy's price table.

Per-inference pricing (`policies.cost`) spreads idle GPU time over inferences with a utilization
factor; for an A/B comparison on a short trace that hides what dominates a real bill: the GPU
instances an arm keeps **warm** so that interactive answers come back in time. This model bills
instance time explicitly (documented in docs/up-demo-pilot.md):

- interactive pool, per zone, on-demand: `wall_hours x instances`, where
  `instances = max(warm_min, busy_gpu_s / (wall_s x interactive utilization))` and `warm_min` is 1
  when the arm sends the zone latency-critical interactive requests (a user waits for the cloud's
  answer), else 0. A cascade does not make a user wait — the device already answered, the cloud
  answer refines it — so an arm whose interactive cloud traffic is only cascades keeps no warm
  instance: its cloud seconds are billed as busy time / utilization;
- batch lane (essays), per zone, spot: `busy_gpu_s / batch utilization`;
- GPU busy seconds per job are the policy model's `cloud_gpu_ms` (what a T4 would spend), not the
  CPU seconds of this machine's CPU workers (those are reported beside them);
- egress: bytes leaving the devices x the zone's $/GB (the answers coming back are counted the same
  way by `policies.cost`; here the measured request bytes are used);
- edge: devices x the device-hour (hardware amortized over its life, maintenance, power) for the
  arm that needs the AI HAT (hybrid). The always-cloud arm is charged no edge hardware: its devices
  only need to be terminals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policies import Policy
from policies.cost import edge_usd_per_hour
from policies.model import Lane


@dataclass(frozen=True)
class CloudJob:
    zone: str
    lane: str  # interactive | batch
    model: str
    latency_critical: bool  # a user waits for this answer


class CostModel:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def gpu_s(self, model: str) -> float:
        spec = next((m for m in self.policy.models if m.name == model), None)
        return float(spec.cloud_gpu_ms or 0.0) / 1000.0 if spec is not None else 0.0

    def price_table(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        e = self.policy.cost.edge
        for field in (
            "hardware_usd",
            "amortization_months",
            "power_watts",
            "electricity_usd_per_kwh",
            "maintenance_usd_per_month",
        ):
            rows.append({"item": f"edge {field}", "value": getattr(e, field), "source": e.sources.get(field, "")})
        rows.append(
            {
                "item": "edge device-hour (derived)",
                "value": round(edge_usd_per_hour(self.policy), 5),
                "source": "hardware / (months x 730 h) + maintenance / 730 h + W / 1000 x $/kWh",
            }
        )
        for zone, p in self.policy.cost.cloud.items():
            for field in ("on_demand_usd_per_hour", "spot_usd_per_hour", "egress_usd_per_gb"):
                rows.append(
                    {
                        "item": f"{zone} {field}",
                        "value": getattr(p, field),
                        "source": p.sources.get(field, ""),
                        "instance": p.instance or "",
                    }
                )
        return rows

    def arm_cost(
        self, jobs: Iterable[CloudJob], *, wall_s: float, egress_bytes: Mapping[str, float], edge_devices: int
    ) -> dict[str, Any]:
        wall_h = wall_s / 3600.0
        lanes = self.policy.cost
        util_i = lanes.lane(Lane.INTERACTIVE).gpu_utilization
        util_b = lanes.lane(Lane.BATCH).gpu_utilization
        busy: dict[tuple[str, str], float] = {}
        critical: set[str] = set()
        counts: dict[str, int] = {}
        for j in jobs:
            busy[(j.zone, j.lane)] = busy.get((j.zone, j.lane), 0.0) + self.gpu_s(j.model)
            counts[j.lane] = counts.get(j.lane, 0) + 1
            if j.latency_critical and j.lane == "interactive":
                critical.add(j.zone)
        zones: dict[str, Any] = {}
        gpu_usd = 0.0
        for zone, price in self.policy.cost.cloud.items():
            bi, bb = busy.get((zone, "interactive"), 0.0), busy.get((zone, "batch"), 0.0)
            warm_min = 1.0 if zone in critical else 0.0
            if wall_s > 0 and warm_min:
                instances = max(warm_min, bi / (wall_s * util_i))
                inter_usd = instances * wall_h * price.on_demand_usd_per_hour
            else:
                instances = 0.0
                inter_usd = bi / util_i / 3600.0 * price.on_demand_usd_per_hour
            batch_usd = bb / util_b / 3600.0 * price.spot_usd_per_hour
            egress_usd = float(egress_bytes.get(zone, 0.0)) / 1e9 * price.egress_usd_per_gb
            zones[zone] = {
                "warm_instances": round(instances, 3),
                "interactive_busy_gpu_s": round(bi, 4),
                "batch_busy_gpu_s": round(bb, 4),
                "interactive_usd": inter_usd,
                "batch_usd": batch_usd,
                "egress_usd": egress_usd,
            }
            gpu_usd += inter_usd + batch_usd
        egress = sum(z["egress_usd"] for z in zones.values())
        edge = edge_devices * edge_usd_per_hour(self.policy) * wall_h
        total = gpu_usd + egress + edge
        per_hour = total / wall_h if wall_h > 0 else 0.0
        return {
            "cloud_gpu_usd": gpu_usd,
            "egress_usd": egress,
            "edge_usd": edge,
            "total_usd": total,
            "usd_per_hour_of_trace": per_hour,
            "busy_gpu_s": sum(busy.values()),
            "jobs_by_lane": counts,
            "zones": zones,
            "wall_s": wall_s,
        }

    def run_cost(
        self, *, gpu_busy_s: float, wall_s: float, warm_gpus: int, edges: int, egress_bytes: float
    ) -> dict[str, float]:
        """A rough bill for the demo: `warm_gpus` on-demand instances for the run plus egress and edge."""
        wall_h = wall_s / 3600.0
        prices = list(self.policy.cost.cloud.values())
        od = sum(p.on_demand_usd_per_hour for p in prices) / max(len(prices), 1)
        eg = sum(p.egress_usd_per_gb for p in prices) / max(len(prices), 1)
        gpu = warm_gpus * wall_h * od
        egress = egress_bytes / 1e9 * eg
        edge = edges * edge_usd_per_hour(self.policy) * wall_h
        return {
            "cloud_gpu_usd": gpu,
            "egress_usd": egress,
            "edge_usd": edge,
            "total_usd": gpu + egress + edge,
            "measured_worker_cpu_s": gpu_busy_s,
        }


__all__ = ["CloudJob", "CostModel"]
