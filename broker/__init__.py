"""The wire contract and data plane of Hybrid AI Stack.

Sealed jobs over Redis Streams: schema, codec (msgpack + zstd), envelope encryption with per-zone
key providers, producer and consumer with consumer groups, dead-letter stream, results, and the
client app backends use, admission (backpressure), the cost ledger and the circuit breakers.
Imports nothing else of ours.
"""

from broker.admission import Admission, AdmissionPolicy, LaneLimits, TenantLimits, submit_paced
from broker.breaker import Breaker, BreakerPolicy, ExponentialBackoff
from broker.client import Client, sealer_from_settings
from broker.codec import Codec
from broker.consumer import Consumer, ConsumerStats, Delivery, Handler, Outcome
from broker.dead_letter import DeadLetter, DeadLetters
from broker.embedded import EmbeddedRedis
from broker.envelope import DataKeyCachePolicy, Envelope
from broker.errors import (
    AdmissionRefused,
    Backpressure,
    BudgetExceeded,
    ConfigError,
    DeadlinePassed,
    DecodeError,
    EnvelopeError,
    HybridError,
    MalformedMessage,
    MessageError,
    OversizedMessage,
    PayloadTooLarge,
    RedisUnavailable,
    ReplayedMessage,
    ResultTimeout,
    RevokedKey,
    TamperedMessage,
    TooManyDeliveries,
    UnknownKey,
    UnsupportedSchema,
    ZoneMismatch,
)
from broker.keyring import KeyProvider, LocalKeyring
from broker.keys import Lane
from broker.ledger import BudgetMetrics, CostBreaker, Ledger, PriceTable
from broker.message import Job, JobSpec, Sealer
from broker.producer import Producer
from broker.queues import LaneDepth, queue_depth
from broker.schema import JobHeader, JobPayload, JobResult
from broker.settings import BrokerSettings, load_settings

__all__ = [
    "Admission",
    "AdmissionPolicy",
    "AdmissionRefused",
    "Backpressure",
    "Breaker",
    "BreakerPolicy",
    "BrokerSettings",
    "BudgetExceeded",
    "BudgetMetrics",
    "Client",
    "Codec",
    "ConfigError",
    "Consumer",
    "ConsumerStats",
    "CostBreaker",
    "DataKeyCachePolicy",
    "DeadLetter",
    "DeadLetters",
    "DeadlinePassed",
    "DecodeError",
    "Delivery",
    "EmbeddedRedis",
    "Envelope",
    "EnvelopeError",
    "ExponentialBackoff",
    "Handler",
    "HybridError",
    "Job",
    "JobHeader",
    "JobPayload",
    "JobResult",
    "JobSpec",
    "KeyProvider",
    "Lane",
    "LaneDepth",
    "LaneLimits",
    "Ledger",
    "LocalKeyring",
    "MalformedMessage",
    "MessageError",
    "Outcome",
    "OversizedMessage",
    "PayloadTooLarge",
    "PriceTable",
    "Producer",
    "RedisUnavailable",
    "ReplayedMessage",
    "ResultTimeout",
    "RevokedKey",
    "Sealer",
    "TamperedMessage",
    "TenantLimits",
    "TooManyDeliveries",
    "UnknownKey",
    "UnsupportedSchema",
    "ZoneMismatch",
    "load_settings",
    "queue_depth",
    "sealer_from_settings",
    "submit_paced",
]
