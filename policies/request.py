"""What the engine is asked about: a request, the device's state, a local result to escalate."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from policies.model import Lane, Sensitivity

__all__ = ["DeviceState", "LocalResult", "Request", "Route"]


class Route(StrEnum):
    LOCAL = "local"
    CLOUD = "cloud"
    FALLBACK = "fallback"
    REJECT = "reject"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Request(_Frozen):
    """A request as the edge agent sees it before routing. No user content, only its metadata."""

    id: str = Field(min_length=1, max_length=128)
    task: str = Field(min_length=1)
    sensitivity: Sensitivity | None = None  # missing → treated as the most sensitive level
    lane: Lane | None = None  # missing → the task's lane
    tenant: str | None = None
    input_bytes: int = Field(default=0, ge=0)
    max_latency_ms: float | None = Field(default=None, gt=0)  # tighter than the task's SLO, if given


class DeviceState(_Frozen):
    """The device's view of itself and of the cloud at decision time."""

    zone: str = Field(min_length=1)
    utilization: float = Field(ge=0.0, le=1.0)
    local_latency_ms: dict[str, float] = Field(default_factory=dict)  # measured, per model name
    cloud_reachable: bool = True
    breaker_open: bool = False
    model_memory_available_mb: float = Field(ge=0.0)


class LocalResult(_Frozen):
    """A result computed on the device, handed to `escalate` for the confidence cascade."""

    request: Request
    device: DeviceState
    model: str
    confidence: float = Field(ge=0.0, le=1.0)
    route: Route = Route.LOCAL
