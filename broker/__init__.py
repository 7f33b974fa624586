"""The wire contract and data plane of Hybrid AI Stack.

Sealed jobs over Redis Streams: schema, codec (msgpack + zstd), envelope encryption with per-zone
key providers, producer and consumer with consumer groups, dead-letter stream, results, and the
client app backends use. Imports nothing else of ours.
"""

from broker.client import Client, sealer_from_settings
from broker.codec import Codec
from broker.consumer import Consumer, ConsumerStats, Delivery, Handler, Outcome
from broker.dead_letter import DeadLetter, DeadLetters
from broker.embedded import EmbeddedRedis
from broker.envelope import DataKeyCachePolicy, Envelope
from broker.errors import (
    Backpressure,
    BudgetExceeded,
    ConfigError,
    DecodeError,
    EnvelopeError,
    HybridError,
    MalformedMessage,
    MessageError,
    OversizedMessage,
    PayloadTooLarge,
    RedisUnavailable,
    ResultTimeout,
    TamperedMessage,
    TooManyDeliveries,
    UnknownKey,
    UnsupportedSchema,
    ZoneMismatch,
)
from broker.keyring import KeyProvider, LocalKeyring
from broker.keys import Lane
from broker.message import Job, JobSpec, Sealer
from broker.producer import Producer
from broker.queues import LaneDepth, queue_depth
from broker.schema import JobHeader, JobPayload, JobResult
from broker.settings import BrokerSettings, load_settings

__all__ = [
    "Backpressure",
    "BrokerSettings",
    "BudgetExceeded",
    "Client",
    "Codec",
    "ConfigError",
    "Consumer",
    "ConsumerStats",
    "DataKeyCachePolicy",
    "DeadLetter",
    "DeadLetters",
    "DecodeError",
    "Delivery",
    "EmbeddedRedis",
    "Envelope",
    "EnvelopeError",
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
    "LocalKeyring",
    "MalformedMessage",
    "MessageError",
    "Outcome",
    "OversizedMessage",
    "PayloadTooLarge",
    "Producer",
    "RedisUnavailable",
    "ResultTimeout",
    "Sealer",
    "TamperedMessage",
    "TooManyDeliveries",
    "UnknownKey",
    "UnsupportedSchema",
    "ZoneMismatch",
    "load_settings",
    "queue_depth",
    "sealer_from_settings",
]
