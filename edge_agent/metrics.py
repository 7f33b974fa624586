"""The edge agent's Prometheus metrics, on a registry of its own (one per agent, so tests can run many).

Labels are bounded sets (task and model names from the policy, routes, zones, PII types, reasons);
they never carry user content, request ids or job ids.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hybrid_edge_requests",
            "Requests handled, by task, route and outcome",
            ["task", "route", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "hybrid_edge_request_duration_seconds", "Time to answer a request", ["task", "route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "hybrid_edge_inference_duration_seconds", "On-device model run time (batch 1)", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.offload_bytes = Counter(
            "hybrid_edge_offload_bytes", "Bytes that left the device (sealed header + body)", ["zone", "transform"],
            registry=r,
        )  # fmt: skip
        self.offloaded_jobs = Counter(
            "hybrid_edge_offloaded_jobs", "Jobs sent to the cloud", ["zone", "transform"], registry=r
        )
        self.pii_tokenized = Counter(
            "hybrid_edge_pii_tokenized", "PII values replaced by tokens before offload", ["type"], registry=r
        )
        self.pii_left = Counter(
            "hybrid_edge_pii_values_left_device", "Detected PII values that left the device in clear (raw offloads)",
            ["type"], registry=r,
        )  # fmt: skip
        self.local_versions = Counter(
            "hybrid_edge_local_model_versions", "Local classifier answers, by registry model and version that served",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.cascades = Counter("hybrid_edge_cascades", "Low-confidence local answers escalated", ["task"], registry=r)
        self.fallbacks = Counter(
            "hybrid_edge_fallbacks", "Answers from the distilled fallback, by why", ["reason"], registry=r
        )
        self.outbox_refused = Counter(
            "hybrid_edge_outbox_refused", "Jobs refused because the outbox was full", registry=r
        )
        self.outbox_replayed = Counter("hybrid_edge_outbox_replayed", "Jobs replayed from the outbox", registry=r)
        self.bad_requests = Counter(
            "hybrid_edge_bad_requests", "Requests refused as invalid", ["api", "reason"], registry=r
        )
        self.outbox_jobs = Gauge("hybrid_edge_outbox_jobs", "Jobs waiting in the outbox", registry=r)
        self.outbox_bytes = Gauge("hybrid_edge_outbox_bytes", "Bytes waiting in the outbox", registry=r)
        self.breaker_state = Gauge(
            "hybrid_edge_breaker_state", "Cloud reachability breaker: 0 closed, 1 half-open, 2 open", registry=r
        )
        self.utilization = Gauge("hybrid_edge_utilization_ratio", "Device utilization (cached sample)", registry=r)

    def bind(
        self,
        *,
        outbox_jobs: Callable[[], float],
        outbox_bytes: Callable[[], float],
        breaker: Callable[[], float],
        utilization: Callable[[], float],
    ) -> None:
        self.outbox_jobs.set_function(outbox_jobs)
        self.outbox_bytes.set_function(outbox_bytes)
        self.breaker_state.set_function(breaker)
        self.utilization.set_function(utilization)


__all__ = ["EdgeMetrics"]
