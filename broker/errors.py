"""Every error the broker raises, in one rooted tree.

    HybridError
    ├── ConfigError                 bad settings, a keyring that may not be used
    ├── RedisUnavailable            the Redis server could not be reached
    ├── PayloadTooLarge             refused before anything is sent
    ├── AdmissionRefused            a submit batch was refused; carries reason, retry_after_s, what was sent
    │   ├── Backpressure            watermark, rate limit or in-flight cap (`reason`)
    │   └── BudgetExceeded          the cost breaker of a scope is open
    ├── ResultTimeout               a result did not arrive in time
    └── MessageError                a message that cannot be used; carries a dead-letter `reason`
        ├── MalformedMessage        fields missing, not msgpack, not a valid header
        ├── UnsupportedSchema       a schema version this build does not read
        ├── ZoneMismatch            a job of another zone
        ├── EnvelopeError           the sealed body cannot be opened
        │   ├── UnknownKey          no KEK of that id (another zone, or a version we do not hold)
        │   ├── RevokedKey          a KEK version that was revoked (`hybrid keys revoke`)
        │   └── TamperedMessage     authentication failed: header or body changed
        ├── DecodeError             opened, but the payload is not zstd/msgpack or not a valid payload
        ├── OversizedMessage        a body over the consumer's size limit
        ├── TooManyDeliveries       delivered more than the allowed number of times
        └── ReplayedMessage         a job whose result already exists (a replay or a duplicate submission)

A `MessageError` keeps the raw data it failed on and its cause, so the dead-letter entry can say why.
"""

from __future__ import annotations

from typing import Any


class HybridError(Exception):
    """Root of every error raised by Hybrid AI Stack."""


class ConfigError(HybridError):
    """Settings or key material that cannot be used as given."""


class RedisUnavailable(HybridError):
    """The Redis server could not be reached."""


class PayloadTooLarge(HybridError):
    """A payload is over the configured limit; nothing was sent."""

    def __init__(self, size: int, limit: int, what: str = "payload") -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class AdmissionRefused(HybridError):
    """A submit batch was refused; nothing of it reached Redis. Try again after `retry_after_s`.

    `reason` says which limit refused it (`watermark`, `rate`, `in_flight`, `budget`) and `limit`
    names the lane, tenant or budget scope. A producer fills in `submitted` (job ids of earlier
    batches of the same call, which did reach Redis) and `unsent` (every spec of the call that did
    not), so the caller still holds everything it has not handed over."""

    def __init__(
        self, message: str, retry_after_s: float, *, reason: str = "", limit: str = "", unsent: list[Any] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.limit = limit
        self.submitted: list[str] = []
        self.unsent: list[Any] = unsent if unsent is not None else []


class Backpressure(AdmissionRefused):
    """Admission was refused by a watermark, a rate limit or an in-flight cap."""


class BudgetExceeded(AdmissionRefused):
    """The cost circuit breaker of a scope (`global` or `tenant:<name>`) is open: cloud-bound jobs are refused."""


class DeadlinePassed(HybridError):
    """A job's deadline passed before it could run. As a handler outcome it is stored as an
    `expired` result (the job was not run), not as an error."""


class ResultTimeout(HybridError):
    """The result of a job did not arrive within the timeout."""

    def __init__(self, job_ids: list[str], timeout_s: float) -> None:
        shown = ", ".join(job_ids[:3]) + (" …" if len(job_ids) > 3 else "")
        super().__init__(f"no result after {timeout_s:g} s for {len(job_ids)} job(s): {shown}")
        self.job_ids = job_ids
        self.timeout_s = timeout_s


class MessageError(HybridError):
    """A message that cannot be used. `reason` is the dead-letter reason code."""

    reason = "malformed"

    def __init__(self, detail: str, *, raw: bytes | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.raw = raw


class MalformedMessage(MessageError):
    reason = "malformed"


class UnsupportedSchema(MessageError):
    reason = "unsupported_schema"


class ZoneMismatch(MessageError):
    reason = "zone_mismatch"


class EnvelopeError(MessageError):
    reason = "envelope"


class UnknownKey(EnvelopeError):
    reason = "unknown_key"


class RevokedKey(EnvelopeError):
    reason = "revoked_key"


class TamperedMessage(EnvelopeError):
    reason = "tampered"


class DecodeError(MessageError):
    reason = "undecodable"


class OversizedMessage(MessageError):
    reason = "too_large"


class TooManyDeliveries(MessageError):
    reason = "max_deliveries"


class ReplayedMessage(MessageError):
    reason = "replayed"


__all__ = [
    "AdmissionRefused",
    "Backpressure",
    "BudgetExceeded",
    "ConfigError",
    "DeadlinePassed",
    "DecodeError",
    "EnvelopeError",
    "HybridError",
    "MalformedMessage",
    "MessageError",
    "OversizedMessage",
    "PayloadTooLarge",
    "RedisUnavailable",
    "ReplayedMessage",
    "ResultTimeout",
    "RevokedKey",
    "TamperedMessage",
    "TooManyDeliveries",
    "UnknownKey",
    "UnsupportedSchema",
    "ZoneMismatch",
]
