"""The policy file's schema: frozen pydantic v2 models that refuse unknown keys.

Field-level rules (ranges, patterns) live on the fields; rules that tie sections together (a task's
model exists, an edge-eligible model fits the edge, every zone referenced is defined, every
sensitivity level has a rule) are checked by `Policy`'s model validator, which reports each problem
with its own location so the loader can point at the line of the file that holds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

__all__ = [
    "LANES",
    "SENSITIVITY_ORDER",
    "TRANSFORM_ORDER",
    "ZONE_PATTERN",
    "Budget",
    "Capacity",
    "CloudPrice",
    "CostSpec",
    "CrossCheckError",
    "DataRule",
    "EdgeCost",
    "EdgeSpec",
    "Endpoint",
    "Lane",
    "LaneCost",
    "ModelSpec",
    "ModelVersion",
    "Policy",
    "RoutingSpec",
    "Runtime",
    "Sensitivity",
    "TaskSpec",
    "Transform",
    "ZoneSpec",
]

ZONE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
"""Zone names end up inside Redis Cluster hash tags (`hyb:{<zone>}:...`), hence the tight alphabet."""

ZoneName = Annotated[str, StringConstraints(pattern=ZONE_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


class Sensitivity(StrEnum):
    PUBLIC = "public"
    PERSONAL = "personal"
    SENSITIVE = "sensitive"


SENSITIVITY_ORDER: tuple[Sensitivity, ...] = (Sensitivity.PUBLIC, Sensitivity.PERSONAL, Sensitivity.SENSITIVE)
"""Least to most sensitive. A request without a tag is treated as the last one."""


class Lane(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


LANES: tuple[Lane, ...] = (Lane.INTERACTIVE, Lane.BATCH)


class Runtime(StrEnum):
    ONNX = "onnx"
    TORCH = "torch"


class Transform(StrEnum):
    """What is done to a payload before it leaves the device."""

    RAW = "raw"
    TOKENIZE = "tokenize"
    EMBED = "embed"


TRANSFORM_ORDER: tuple[Transform, ...] = (Transform.RAW, Transform.TOKENIZE, Transform.EMBED)
"""Least to most protective: an embedding exposes less than tokenized text, which exposes less than raw."""


class Capacity(StrEnum):
    ON_DEMAND = "on_demand"
    SPOT = "spot"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------- edge


class EdgeSpec(_Frozen):
    """What the edge device class (Pi 5 + AI HAT) can do."""

    device: str = Field(default="Raspberry Pi 5 + AI HAT+ 2", min_length=1)
    model_memory_mb: Positive
    runtimes: tuple[Runtime, ...] = Field(default=(Runtime.ONNX,), min_length=1)
    tokenize_latency_ms: NonNegative = 5.0
    embed_latency_ms: NonNegative = 80.0
    embedding_bytes: int = Field(default=3072, ge=0)

    @field_validator("runtimes")
    @classmethod
    def _no_torch_on_edge(cls, value: tuple[Runtime, ...]) -> tuple[Runtime, ...]:
        if Runtime.TORCH in value:
            raise ValueError("the edge never runs torch (edge installs exclude it); use onnx")
        if len(set(value)) != len(value):
            raise ValueError("runtimes are listed more than once")
        return value


class RoutingSpec(_Frozen):
    utilization_threshold: Fraction = 0.7


# ------------------------------------------------------------------------------------ tasks, models


class TaskSpec(_Frozen):
    model: Name
    edge_model: Name | None = None
    lane: Lane = Lane.INTERACTIVE
    latency_slo_ms: Positive
    confidence_threshold: Fraction
    accepts_embedding: bool = False


class ModelVersion(_Frozen):
    version: Name
    canary_percent: float = Field(ge=0.0, le=100.0)


class ModelSpec(_Frozen):
    name: Name
    task: Name
    size_mb: Positive
    runtime: Runtime
    ops_supported_locally: bool
    edge_eligible: bool
    fallback: Name | None = None
    local_latency_ms: Positive | None = None
    cloud_latency_ms: Positive | None = None
    cloud_gpu_ms: Positive | None = None
    output_bytes: int = Field(default=1024, ge=0)
    versions: tuple[ModelVersion, ...] = Field(min_length=1)

    @field_validator("versions")
    @classmethod
    def _versions_split_to_100(cls, value: tuple[ModelVersion, ...]) -> tuple[ModelVersion, ...]:
        names = [v.version for v in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"version {duplicates[0]!r} is listed more than once")
        total = sum(v.canary_percent for v in value)
        if abs(total - 100.0) > 1e-6:
            raise ValueError(f"canary_percent values add up to {total:g}, they must add up to 100")
        return value


# --------------------------------------------------------------------------------- data, residency


class DataRule(_Frozen):
    """What a sensitivity level requires before its payload may leave the device."""

    transform: Transform
    in_zone_only: bool
    never_leave_device: bool = False
    require_enclave: bool = False

    def strictness(self) -> tuple[int, int, int, int]:
        return (
            TRANSFORM_ORDER.index(self.transform),
            int(self.in_zone_only),
            int(self.never_leave_device),
            int(self.require_enclave),
        )


class Endpoint(_Frozen):
    name: Name
    url: str = Field(pattern=r"^(rediss?|https?)://\S+$")
    lanes: tuple[Lane, ...] = Field(min_length=1)
    enclave: bool = False


class ZoneSpec(_Frozen):
    region: str = Field(min_length=1)
    rtt_ms: NonNegative
    endpoints: tuple[Endpoint, ...] = Field(min_length=1)

    @field_validator("endpoints")
    @classmethod
    def _unique_endpoints(cls, value: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        names = [e.name for e in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"endpoint {name!r} is listed more than once")
        return value


# --------------------------------------------------------------------------------------------- cost


class EdgeCost(_Frozen):
    hardware_usd: NonNegative
    amortization_months: Positive
    power_watts: NonNegative
    electricity_usd_per_kwh: NonNegative
    maintenance_usd_per_month: NonNegative = 0.0
    sources: dict[str, str] = Field(default_factory=dict)  # field → the public list price it comes from


class CloudPrice(_Frozen):
    on_demand_usd_per_hour: NonNegative
    spot_usd_per_hour: NonNegative
    egress_usd_per_gb: NonNegative
    instance: str | None = None  # the instance type priced, e.g. "g4dn.xlarge (1x T4), ap-south-1"
    sources: dict[str, str] = Field(default_factory=dict)  # field → the public list price it comes from

    def gpu_usd_per_hour(self, capacity: Capacity) -> float:
        return self.spot_usd_per_hour if capacity is Capacity.SPOT else self.on_demand_usd_per_hour


class Budget(_Frozen):
    name: Name
    zone: ZoneName
    lane: Lane | None = None
    window_hours: Positive
    limit_usd: Positive


class LaneCost(_Frozen):
    """How a lane's GPUs are bought and how busy they are kept.

    `gpu_utilization` is the share of billed GPU time that does useful work: an interactive pool kept
    warm for latency idles much of the time, a nightly batch packs its GPUs. Each inference carries
    its share of the idle time: billed GPU time = `cloud_gpu_ms / gpu_utilization`.
    """

    capacity: Capacity
    gpu_utilization: float = Field(gt=0.0, le=1.0)


def _default_lanes() -> dict[Lane, LaneCost]:
    return {
        Lane.INTERACTIVE: LaneCost(capacity=Capacity.ON_DEMAND, gpu_utilization=0.35),
        Lane.BATCH: LaneCost(capacity=Capacity.SPOT, gpu_utilization=0.9),
    }


class CostSpec(_Frozen):
    edge: EdgeCost
    cloud: dict[ZoneName, CloudPrice]
    lanes: dict[Lane, LaneCost] = Field(default_factory=_default_lanes)
    message_overhead_bytes: int = Field(default=512, ge=0)
    budgets: tuple[Budget, ...] = ()

    def lane(self, lane: Lane) -> LaneCost:
        return self.lanes.get(lane) or _default_lanes()[lane]


# ------------------------------------------------------------------------------------------- policy

Loc = tuple[str | int, ...]


class CrossCheckError(ValueError):
    """Raised by `Policy`'s validator; carries every (location, message) it found."""

    def __init__(self, issues: list[tuple[Loc, str]]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in issues))


class Policy(_Frozen):
    version: Literal[1]
    edge: EdgeSpec
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    tasks: dict[Name, TaskSpec] = Field(min_length=1)
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    data_classes: dict[Sensitivity, DataRule]
    zones: dict[ZoneName, ZoneSpec] = Field(min_length=1)
    cost: CostSpec

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def has_model(self, name: str) -> bool:
        return any(spec.name == name for spec in self.models)

    @model_validator(mode="after")
    def _cross_check(self) -> Policy:
        issues = list(_cross_issues(self))
        if issues:
            raise CrossCheckError(issues)
        return self


def _cross_issues(p: Policy) -> Iterator[tuple[Loc, str]]:
    yield from _model_issues(p)
    yield from _task_issues(p)
    yield from _data_class_issues(p)
    yield from _zone_issues(p)


def _model_issues(p: Policy) -> Iterator[tuple[Loc, str]]:
    seen: set[str] = set()
    by_name = {m.name: m for m in p.models}
    for i, m in enumerate(p.models):
        if m.name in seen:
            yield ("models", i, "name"), f"model {m.name!r} is defined more than once"
        seen.add(m.name)
        if m.task not in p.tasks:
            yield ("models", i, "task"), f"task {m.task!r} of model {m.name!r} is not defined under tasks"
        if m.edge_eligible:
            if m.size_mb > p.edge.model_memory_mb:
                yield (
                    ("models", i, "size_mb"),
                    (
                        f"model {m.name!r} is edge-eligible but its {m.size_mb:g} MB exceed the edge's "
                        f"{p.edge.model_memory_mb:g} MB for models (edge.model_memory_mb)"
                    ),
                )
            if m.runtime not in p.edge.runtimes:
                yield (
                    ("models", i, "runtime"),
                    (
                        f"model {m.name!r} is edge-eligible but runtime {m.runtime.value!r} is not one the edge "
                        f"runs ({', '.join(r.value for r in p.edge.runtimes)})"
                    ),
                )
            if m.local_latency_ms is None:
                yield (
                    ("models", i, "edge_eligible"),
                    (f"model {m.name!r} is edge-eligible but has no local_latency_ms to compare with SLOs"),
                )
        if m.fallback is not None:
            fb = by_name.get(m.fallback)
            if fb is None:
                yield ("models", i, "fallback"), f"fallback model {m.fallback!r} is not defined under models"
            elif fb.name == m.name:
                yield ("models", i, "fallback"), f"model {m.name!r} cannot be its own fallback"
            elif not fb.edge_eligible:
                yield (
                    ("models", i, "fallback"),
                    (f"fallback {fb.name!r} of {m.name!r} must be edge-eligible: it runs when the cloud cannot"),
                )
            elif fb.task != m.task:
                yield (
                    ("models", i, "fallback"),
                    (f"fallback {fb.name!r} serves task {fb.task!r}, not {m.task!r} like {m.name!r}"),
                )


def _task_issues(p: Policy) -> Iterator[tuple[Loc, str]]:
    by_name = {m.name: m for m in p.models}
    for name, task in p.tasks.items():
        model = by_name.get(task.model)
        if model is None:
            yield ("tasks", name, "model"), f"model {task.model!r} is not defined under models"
        elif model.task != name:
            yield ("tasks", name, "model"), f"model {model.name!r} serves task {model.task!r}, not {name!r}"
        elif model.cloud_latency_ms is None or model.cloud_gpu_ms is None:
            yield (
                ("tasks", name, "model"),
                (
                    f"model {model.name!r} serves offloaded {name!r} requests and needs cloud_latency_ms "
                    "and cloud_gpu_ms"
                ),
            )
        if task.edge_model is not None:
            edge = by_name.get(task.edge_model)
            if edge is None:
                yield ("tasks", name, "edge_model"), f"model {task.edge_model!r} is not defined under models"
            elif not edge.edge_eligible:
                yield ("tasks", name, "edge_model"), f"model {edge.name!r} is not edge-eligible"
            elif edge.task != name:
                yield ("tasks", name, "edge_model"), (f"model {edge.name!r} serves task {edge.task!r}, not {name!r}")


def _data_class_issues(p: Policy) -> Iterator[tuple[Loc, str]]:
    for level in SENSITIVITY_ORDER:
        if level not in p.data_classes:
            yield ("data_classes",), f"sensitivity level {level.value!r} has no rule"
    sensitive = p.data_classes.get(Sensitivity.SENSITIVE)
    if sensitive is not None and sensitive.transform is Transform.RAW and not sensitive.never_leave_device:
        yield (
            ("data_classes", "sensitive", "transform"),
            ("sensitive data may not leave the device raw: use tokenize or embed, or never_leave_device"),
        )
    defined = [level for level in SENSITIVITY_ORDER if level in p.data_classes]
    for lower, higher in pairwise(defined):
        lo, hi = p.data_classes[lower], p.data_classes[higher]
        for field, lo_key, hi_key in zip(
            ("transform", "in_zone_only", "never_leave_device", "require_enclave"),
            lo.strictness(),
            hi.strictness(),
            strict=True,
        ):
            if hi_key < lo_key:
                yield (
                    ("data_classes", higher.value, field),
                    (
                        f"{higher.value!r} must be at least as strict as {lower.value!r}: "
                        f"{field} is {getattr(hi, field)!s} but {getattr(lo, field)!s} for {lower.value!r}"
                    ),
                )


def _zone_issues(p: Policy) -> Iterator[tuple[Loc, str]]:
    for zone in p.cost.cloud:
        if zone not in p.zones:
            yield ("cost", "cloud", zone), f"zone {zone!r} is priced here but not defined under zones"
    for zone in p.zones:
        if zone not in p.cost.cloud:
            yield ("zones", zone), f"zone {zone!r} has no prices under cost.cloud"
    for i, budget in enumerate(p.cost.budgets):
        if budget.zone not in p.zones:
            yield ("cost", "budgets", i, "zone"), f"zone {budget.zone!r} is not defined under zones"
    names = [b.name for b in p.cost.budgets]
    for i, budget in enumerate(p.cost.budgets):
        if names.index(budget.name) != i:
            yield ("cost", "budgets", i, "name"), f"budget {budget.name!r} is defined more than once"
