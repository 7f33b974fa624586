"""One grading run from a plain, JSON-serializable request: used by `hybrid grade run` and by the
RQ job that a schedule enqueues, so both take exactly the same path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import redis

from broker.admission import Admission, AdmissionPolicy
from broker.client import Client, sealer_from_settings
from broker.errors import ConfigError
from broker.ledger import CostBreaker, Ledger
from broker.settings import BrokerSettings
from hybrid.grading.io import format_of, read_items
from hybrid.grading.runner import GradeConfig, GradeRun, ProgressFn, Summary, Tokenizer, new_run_id, reply_name
from hybrid.grading.state import RunRegistry, RunState, state_path_for


@dataclass
class RunRequest:
    input: str
    output: str
    rejects: str | None = None
    run_id: str | None = None
    tenant: str = "default"
    task: str = "grade"
    feedback_task: str | None = "feedback"
    model: str = "default"
    window: int = 2000
    chunk: int = 250
    item_timeout_s: float = 3600.0
    pii: bool = True
    vault: str | None = None  # PII vault directory [default: <output>.pii/]
    roster: str | None = None  # names to tokenize (edge_agent.pii.Roster file)
    admission: str | None = None  # admission policy file (TOML/YAML) [default: built-in limits]
    usd_per_gpu_hour: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRequest:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown run option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def check(self) -> None:
        format_of(self.input, "input")
        format_of(self.output, "output")
        if Path(self.input).resolve() == Path(self.output).resolve():
            raise ValueError("--output must not be the input file")
        if not 1 <= self.chunk <= 5000 or not 1 <= self.window <= 1_000_000:
            raise ValueError("--chunk must be 1..5000 and --window 1..1000000")


def make_tokenizer(request: RunRequest) -> Tokenizer:
    """The edge agent's PII tokenizer with a vault on this host (kept across resumes)."""
    try:
        from edge_agent.pii import PiiDetector, PiiTokenizer, Roster
        from edge_agent.vault import Vault
    except ImportError as exc:  # phonenumbers & co. come with the [edge] extra
        raise ConfigError(
            f"PII tokenization needs the edge extra ({exc}): pip install 'hybrid-ai-stack[edge]', or pass --no-pii "
            "if every answer is public"
        ) from None
    vault_dir = (
        Path(request.vault) if request.vault else Path(request.output).with_name(Path(request.output).name + ".pii")
    )
    roster = Roster.load(request.roster) if request.roster else None
    return PiiTokenizer(PiiDetector(roster), Vault.open(vault_dir))


def tenant_spend(client: redis.Redis, zone: str) -> Any:
    ledger = Ledger(client, zone)

    def spend(tenants: Sequence[str]) -> float:
        return sum(ledger.spend(f"tenant:{t}")["day"] for t in tenants)

    return spend


def execute(
    request: RunRequest,
    settings: BrokerSettings,
    client: redis.Redis,
    *,
    on_progress: ProgressFn | None = None,
    meta: dict[str, Any] | None = None,
) -> Summary:
    """Read the input, bind (or resume) the run of the output's state file, grade, write the output."""
    request.check()
    items, rejects = read_items(request.input, request.tenant)
    tokenizer = make_tokenizer(request) if request.pii and any(i.sensitivity != "public" for i in items) else None
    policy = AdmissionPolicy.load(request.admission) if request.admission else AdmissionPolicy()
    state = RunState(state_path_for(request.output))
    try:
        run_id, _resumed = state.bind_run(request.run_id, new_run_id)
        admission = Admission(client, settings.zone, policy, gate=CostBreaker(Ledger(client, settings.zone)))
        broker_client = Client(
            client, sealer_from_settings(settings), settings.zone, name=reply_name(run_id), admission=admission
        )
        config = GradeConfig(
            task=request.task, feedback_task=request.feedback_task, model=request.model, window=request.window,
            chunk=request.chunk, item_timeout_s=request.item_timeout_s, usd_per_gpu_hour=request.usd_per_gpu_hour,
        )  # fmt: skip
        run = GradeRun(
            broker_client, state, config=config, tokenizer=tokenizer, registry=RunRegistry(client, settings.zone),
            spend=tenant_spend(client, settings.zone), on_progress=on_progress,
        )  # fmt: skip
        info = {"input": str(request.input), "output": str(request.output), **(meta or {})}
        return run.run(
            items, rejects, run_id=run_id, output=Path(request.output),
            rejects_path=Path(request.rejects) if request.rejects else None, meta=info,
        )  # fmt: skip
    finally:
        state.close()


__all__ = ["RunRequest", "execute", "make_tokenizer"]
