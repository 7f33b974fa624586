"""The client app backends use: submit jobs, then wait for their results without polling.

Each client owns a reply stream (`hyb:{<zone>}:reply:<name>`). Jobs it submits name that stream in
their header; the worker's completion script appends the finished job ids to it. `result` and
`wait_all` block on XREAD of that stream and fetch the sealed results with MGET. Results of jobs
submitted elsewhere are found too: every wait first looks for stored results, and looks again each
time a blocking read times out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from broker import keys
from broker.admission import Admission, AdmissionPolicy
from broker.codec import Codec
from broker.connection import connect, redis_errors
from broker.envelope import DataKeyCachePolicy, Envelope
from broker.errors import ConfigError, ResultTimeout
from broker.ids import new_ulid
from broker.keyring import KeyProvider, LocalKeyring
from broker.ledger import CostBreaker, Ledger
from broker.message import JobSpec, Sealer
from broker.producer import Producer
from broker.schema import JobResult, LaneName, Sensitivity
from broker.settings import BrokerSettings

_MGET_CHUNK = 500


def sealer_from_settings(settings: BrokerSettings, provider: KeyProvider | None = None) -> Sealer:
    """The envelope and codec `settings` describe (the keyring restricted to the settings' zone)."""
    if provider is None and settings.key_provider == "pkcs11":
        from broker.hsm import Pkcs11KeyProvider  # python-pkcs11 is only needed here (extra [hsm])

        provider = Pkcs11KeyProvider.from_env(zones=[settings.zone])
    provider = provider or LocalKeyring(settings.keyring, zones=[settings.zone])
    policy = DataKeyCachePolicy(max_messages=settings.dek_max_messages, max_age_s=settings.dek_max_age_s)
    codec = Codec(
        level=settings.zstd_level,
        max_payload_bytes=settings.max_payload_bytes,
        dictionaries=load_dictionaries(settings.zstd_dict_dir) if settings.zstd_dict_dir else None,
    )
    return Sealer(Envelope(provider, policy), codec)


def load_dictionaries(directory: Path) -> dict[str, bytes]:
    """`<task>.zdict` files of a directory, by task (see `broker.codec.train_dictionary`)."""
    if not directory.is_dir():
        raise ConfigError(f"zstd dictionary directory {directory} does not exist")
    return {p.stem: p.read_bytes() for p in sorted(directory.glob("*.zdict"))}


def admission_from_settings(client: redis.Redis, settings: BrokerSettings) -> Admission | None:
    """The admission check `HYB_ADMISSION_POLICY` and `HYB_BUDGET_GATE` ask for, or None (no limits)."""
    if settings.admission_policy is None and not settings.budget_gate:
        return None
    policy = AdmissionPolicy.load(settings.admission_policy) if settings.admission_policy else None
    gate = CostBreaker(Ledger(client, settings.zone)) if settings.budget_gate else None
    return Admission(client, settings.zone, policy, gate=gate)


class Client:
    """Submit jobs to one zone and collect their results."""

    def __init__(
        self,
        client: redis.Redis,
        sealer: Sealer,
        zone: str,
        *,
        name: str | None = None,
        recheck_s: float = 1.0,
        admission: Admission | None = None,
    ) -> None:
        self.redis = client
        self.sealer = sealer
        self.zone = keys.check_zone(zone)
        self.name = keys.check_name(name or f"c-{new_ulid().lower()}", "client name")
        self.reply_stream = keys.reply_stream(zone, self.name)
        self.producer = Producer(client, sealer, zone, reply_to=self.name, admission=admission)
        self.recheck_s = recheck_s
        self._cursor = b"0-0"

    @classmethod
    def from_settings(cls, settings: BrokerSettings, **kwargs: Any) -> Client:
        if not settings.redis_url:
            raise ConfigError("no Redis URL: set REDIS_URL (or HYB_REDIS_URL), or start one with `hybrid up`")
        client = connect(settings.redis_url)
        if "admission" not in kwargs:
            kwargs["admission"] = admission_from_settings(client, settings)
        return cls(client, sealer_from_settings(settings), settings.zone, **kwargs)

    # -- submitting -------------------------------------------------------------------------------

    def submit(
        self,
        task: str,
        inputs: Mapping[str, Any],
        *,
        model: str = "default",
        tenant: str = "default",
        lane: LaneName = "interactive",
        sensitivity: Sensitivity = "sensitive",
        options: Mapping[str, Any] | None = None,
        deadline_ms: int | None = None,
        job_id: str | None = None,
        trace_id: str | None = None,
    ) -> str:
        spec = JobSpec(
            task=task, inputs=inputs, model=model, tenant=tenant, lane=lane, sensitivity=sensitivity,
            options=options or {}, deadline_ms=deadline_ms, job_id=job_id, trace_id=trace_id,
        )  # fmt: skip
        return self.producer.submit(spec)

    def submit_many(self, specs: Iterable[JobSpec]) -> list[str]:
        """Submit many; with an admission policy a refusal raises `Backpressure` (or `BudgetExceeded`)
        whose `submitted` and `unsent` say which jobs went out and which the caller still holds."""
        return self.producer.submit_many(specs)

    # -- results ----------------------------------------------------------------------------------

    def get_result(self, job_id: str) -> JobResult | None:
        """The result if it is stored now; never waits."""
        return self._fetch([job_id]).get(job_id)

    def result(self, job_id: str, timeout: float = 30.0) -> JobResult:
        """Wait up to `timeout` seconds for one result; `ResultTimeout` otherwise."""
        return self.wait_all([job_id], timeout)[job_id]

    def wait_all(self, job_ids: Sequence[str], timeout: float = 60.0) -> dict[str, JobResult]:
        """Wait until every job has a result; returns them by job id, or raises `ResultTimeout`."""
        deadline = time.monotonic() + timeout
        outstanding = set(job_ids)
        results = self._fetch(list(outstanding))
        outstanding -= results.keys()
        while outstanding:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeout(sorted(outstanding), timeout)
            notified = self.notifications(min(left, self.recheck_s))
            # after a quiet interval, look for results whose notice went to another client
            ready = outstanding & notified if notified else set(outstanding)
            if ready:
                got = self._fetch(list(ready))
                results.update(got)
                outstanding -= got.keys()
        return results

    def notifications(self, wait_s: float, count: int = 1000) -> set[str]:
        """Job ids whose results were announced on this client's reply stream since the last call.
        Waits up to `wait_s` for the first notice (not at all when 0)."""
        kwargs: dict[str, Any] = {"count": count}
        if wait_s > 0:
            kwargs["block"] = max(int(wait_s * 1000), 1)
        with redis_errors():
            resp: Any = self.redis.xread({self.reply_stream: self._cursor}, **kwargs)
        ids: set[str] = set()
        for _stream, entries in resp or []:
            for eid, fields in entries:
                self._cursor = eid
                ids.update(fields.get(b"jobs", b"").decode().split(","))
        ids.discard("")
        return ids

    def get_results(self, job_ids: Sequence[str]) -> dict[str, JobResult]:
        """The stored results among `job_ids` (opened), without waiting."""
        return self._fetch(list(job_ids))

    def _fetch(self, job_ids: list[str]) -> dict[str, JobResult]:
        out: dict[str, JobResult] = {}
        with redis_errors():
            for i in range(0, len(job_ids), _MGET_CHUNK):
                chunk = job_ids[i : i + _MGET_CHUNK]
                values: Any = self.redis.mget([keys.result_key(self.zone, j) for j in chunk])
                for job_id, stored in zip(chunk, values, strict=True):
                    if stored is not None:
                        out[job_id] = self.sealer.open_result(self.zone, job_id, stored)
        return out

    def close(self) -> None:
        """Drop this client's reply stream."""
        with redis_errors():
            self.redis.delete(self.reply_stream)


__all__ = ["Client", "admission_from_settings", "sealer_from_settings"]
