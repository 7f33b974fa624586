"""Redis connections: one constructor, and one place that turns connection failures into ours."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis

from broker.errors import ConfigError, RedisUnavailable

MAX_BLOCK_MS = 30_000
"""Longest blocking read we issue; the socket timeout is well above it."""


def connect(url: str, *, timeout_s: float = 5.0) -> redis.Redis:
    """A redis-py client for `url` (bytes in and out; we decode ourselves)."""
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=timeout_s,
            socket_timeout=MAX_BLOCK_MS / 1000 + 30,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {url!r}: {exc}") from None


@contextlib.contextmanager
def redis_errors(what: str = "Redis") -> Iterator[None]:
    """Re-raise connection-level failures as `RedisUnavailable` with a readable message."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnavailable(f"{what} is not reachable: {exc}") from exc


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group reading `stream` from its start (and the stream), if missing."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


__all__ = ["MAX_BLOCK_MS", "connect", "ensure_group", "redis_errors"]
