"""What the engine answers: where a request runs, in what form, and why."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from policies.model import Lane, Sensitivity, Transform
from policies.request import Route

__all__ = ["Decision"]


class Decision(BaseModel):
    """One routing decision.

    `transform` is what happens to the payload before it leaves the device; it is `raw` for the local
    routes, where nothing leaves. `zone` and `endpoint` are set for `cloud` only. `degraded` marks an
    answer that is worse than the policy intends (a distilled fallback, a local run over its
    threshold, a low-confidence answer that could not be escalated). `reasons` lists, in order, each
    rule that was checked and the numbers it compared.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str
    task: str
    route: Route
    transform: Transform
    model: str | None
    version: str | None
    zone: str | None
    endpoint: str | None
    lane: Lane
    sensitivity: Sensitivity
    degraded: bool
    reasons: tuple[str, ...]
