"""Routing policy as data: the decision map (YAML → pydantic), the engine, the cost model, simulation.

Pure: no I/O besides reading a policy file, and no import of the project's other packages.

    policy = load_policy("policies/default.yaml")
    decision = decide(request, device_state, policy)       # local / cloud / fallback / reject
    follow = escalate(local_result, policy)                 # the confidence cascade
    report = simulate(elearning_trace(days=1, seed=7), policy, SimulationOptions(zone="in-wb"))
"""

from policies.canary import canary_bucket, choose_version
from policies.cost import (
    CloudCost,
    Estimate,
    bytes_leaving_device,
    cloud_inference_usd,
    cloud_latency_ms,
    edge_usd_per_hour,
    estimate,
    local_inference_usd,
)
from policies.decision import Decision
from policies.engine import decide, escalate
from policies.loader import (
    PolicyError,
    PolicyIssue,
    default_policy_text,
    dump_policy,
    load_default_policy,
    load_policy,
    parse_policy,
)
from policies.model import (
    LANES,
    SENSITIVITY_ORDER,
    ZONE_PATTERN,
    Capacity,
    Lane,
    ModelSpec,
    Policy,
    Runtime,
    Sensitivity,
    TaskSpec,
    Transform,
)
from policies.request import DeviceState, LocalResult, Request, Route
from policies.simulate import Outcome, SimulationOptions, SimulationReport, simulate
from policies.traces import (
    TraceError,
    TraceRecord,
    dump_trace_jsonl,
    elearning_trace,
    generate_trace,
    parse_trace_jsonl,
    parse_trace_spec,
)

__all__ = [
    "LANES",
    "SENSITIVITY_ORDER",
    "ZONE_PATTERN",
    "Capacity",
    "CloudCost",
    "Decision",
    "DeviceState",
    "Estimate",
    "Lane",
    "LocalResult",
    "ModelSpec",
    "Outcome",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "Request",
    "Route",
    "Runtime",
    "Sensitivity",
    "SimulationOptions",
    "SimulationReport",
    "TaskSpec",
    "TraceError",
    "TraceRecord",
    "Transform",
    "bytes_leaving_device",
    "canary_bucket",
    "choose_version",
    "cloud_inference_usd",
    "cloud_latency_ms",
    "decide",
    "default_policy_text",
    "dump_policy",
    "dump_trace_jsonl",
    "edge_usd_per_hour",
    "elearning_trace",
    "escalate",
    "estimate",
    "generate_trace",
    "load_default_policy",
    "load_policy",
    "local_inference_usd",
    "parse_policy",
    "parse_trace_jsonl",
    "parse_trace_spec",
    "simulate",
]
