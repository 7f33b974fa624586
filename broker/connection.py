"""Redis connections: one constructor, and one place that turns connection failures into ours."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse

import redis
from hiredis import pack_command
from redis.commands.core import Script

from broker.errors import ConfigError, RedisUnavailable

MAX_BLOCK_MS = 30_000
"""Longest blocking read we issue; the socket timeout is well above it."""


TLS_ENV = {"ssl_ca_certs": "HYB_REDIS_TLS_CA", "ssl_certfile": "HYB_REDIS_TLS_CERT", "ssl_keyfile": "HYB_REDIS_TLS_KEY"}
"""For a `rediss://` URL: the CA, client certificate and key files, unless the URL's query names them
(`rediss://user:pw@host:6380/0?ssl_ca_certs=/tls/ca.crt&ssl_certfile=...&ssl_keyfile=...`)."""


def _tls_from_env(url: str) -> dict[str, str]:
    if not url.startswith("rediss://"):
        return {}
    query = parse_qs(urlparse(url).query)
    return {arg: os.environ[var] for arg, var in TLS_ENV.items() if arg not in query and os.environ.get(var)}


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
"""A Redis Cluster: `redis+cluster://host:port/0` names any one node; the client discovers the others.
Every key of a zone carries the zone's hash tag, so a zone's keys and Lua scripts stay on one slot."""


def connect(url: str, *, timeout_s: float = 5.0) -> redis.Redis:
    """A redis-py client for `url` (bytes in and out; we decode ourselves). TLS: `rediss://` (see `TLS_ENV`).
    `redis+cluster://` (or `rediss+cluster://`) gives a `redis.cluster.RedisCluster` with the same interface."""
    if url.startswith(CLUSTER_SCHEMES):
        from redis.cluster import RedisCluster

        plain = url.replace("+cluster", "", 1)
        try:
            cluster = RedisCluster.from_url(
                plain,
                decode_responses=False,
                socket_connect_timeout=timeout_s,
                socket_timeout=MAX_BLOCK_MS / 1000 + 30,
                **_tls_from_env(plain),
            )
        except (redis.exceptions.RedisClusterException, redis.ConnectionError) as exc:
            raise RedisUnavailable(f"Redis Cluster at {plain} is not reachable: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {url!r}: {exc}") from None
        return cluster  # type: ignore[return-value]  # same command interface as redis.Redis
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_connect_timeout=timeout_s,
            socket_timeout=MAX_BLOCK_MS / 1000 + 30,
            health_check_interval=30,
            **_tls_from_env(url),
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
    except (redis.exceptions.ClusterDownError, redis.exceptions.RedisClusterException) as exc:
        # a cluster whose node for this slot is down (its zone is unavailable; other zones go on)
        raise RedisUnavailable(f"{what} is not reachable (cluster): {exc}") from exc


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group reading `stream` from its start (and the stream), if missing."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


KEEP_S = 0.1
"""How long a connection that a `Deferred` read its whole reply from is kept for the next one (see
`_KeptConnections`)."""
MAX_KEPT = 4


class _KeptConnections:
    """Connections a `Deferred` read its whole reply from, kept per pool for the next `Deferred`.

    redis-py's pool spends about 10 µs on each get/release pair (a lock, metrics, and a non-blocking
    read with two `fcntl` calls around it to check that the connection holds no stray reply), and the
    consumer makes three `Deferred`s per read (keeping connections: +5.5 % consume throughput;
    docs/benchmarks.md). A kept connection is clean by construction — its last reply was read whole —
    and it worked less than `KEEP_S` ago, so it is reused as it is; an older one goes back to the
    pool, whose checks see a server that went away meanwhile (after a Redis restart, only a connection
    used within the last 0.1 s can fail once, like a command in flight would). At most `MAX_KEPT` per
    pool; they stay checked out of it, so `pool.disconnect()` still closes them (the next use
    reconnects)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_pool: weakref.WeakKeyDictionary[Any, list[tuple[Any, float]]] = weakref.WeakKeyDictionary()

    def take(self, pool: Any) -> Any:
        kept = self._by_pool.get(pool)
        now = time.monotonic()
        while kept:
            try:
                conn, since = kept.pop()
            except IndexError:  # another thread took the last one
                break
            if now - since < KEEP_S and conn.pid == os.getpid():
                return conn
            pool.release(conn)  # idle a while (or from before a fork): the pool checks it on its next use
        return pool.get_connection()

    def give_back(self, pool: Any, conn: Any) -> None:
        kept = self._by_pool.get(pool)
        if kept is None:
            with self._lock:
                kept = self._by_pool.setdefault(pool, [])
        if len(kept) < MAX_KEPT:
            kept.append((conn, time.monotonic()))
        else:
            pool.release(conn)


_kept = _KeptConnections()


class Deferred:
    """A command already sent whose reply is read later, so the caller can work while Redis does.

    `send_deferred` sends on a connection of its own (from the client's pool, or one a `Deferred`
    just finished with: `_KeptConnections`); `result()` reads the reply and gives the connection back.
    Every `Deferred` must end in `result()` or `abandon()` (a connection with an unread reply is
    closed, never reused)."""

    def __init__(self, client: redis.Redis, args: tuple[Any, ...]) -> None:
        self._pool: Any = None
        self._conn: Any = None
        self._fallback: tuple[redis.Redis, tuple[Any, ...]] | None = None
        if type(client) is not redis.Redis:  # a cluster client routes by key: send when asked instead
            self._fallback = (client, args)
            return
        self._pool = client.connection_pool
        self._conn = _kept.take(self._pool)
        try:
            # hiredis packs the whole command in C; redis-py's own packer first walks every argument
            # in Python (a read's replay check has 300 of them)
            self._conn.send_packed_command([pack_command(args)])
        except BaseException:
            self.abandon()
            raise

    def result(self) -> Any:
        if self._fallback is not None:
            client, args = self._fallback
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        conn, self._conn = self._conn, None
        if conn is None:
            raise RuntimeError("this reply was already read or abandoned")
        try:
            reply = conn.read_response()
        except redis.ResponseError:  # an error reply was read whole: the connection is clean
            _kept.give_back(self._pool, conn)
            raise
        except BaseException:
            conn.disconnect()
            self._pool.release(conn)
            raise
        _kept.give_back(self._pool, conn)
        return reply

    def abandon(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)


def send_deferred(client: redis.Redis, *args: Any) -> Deferred:
    """Send one command now and read its reply later (`Deferred.result()`)."""
    return Deferred(client, args)


class SentScript:
    """An EVALSHA sent now, its reply read later (a `Deferred`), with what it takes to run it again:
    `result()` loads and runs the script by redis-py's own call if Redis forgot it (a restart)."""

    def __init__(self, script: Script, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> None:
        self._script, self._client, self._keys, self._args = script, client, keys, args
        self._reply = Deferred(client, ("EVALSHA", script.sha, len(keys), *keys, *args))

    def result(self) -> Any:
        try:
            return self._reply.result()
        except redis.exceptions.NoScriptError:
            return self._script(keys=self._keys, args=self._args, client=self._client)

    def abandon(self) -> None:
        """As `Deferred.abandon`: closes the connection only if the reply was never read."""
        self._reply.abandon()


def run_script(script: Script, client: redis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """`script(keys=…, args=…)` by the short path of `Deferred`: the raw reply, without redis-py's
    retry wrapper, response callbacks and per-argument packing (`SentScript`, read at once)."""
    return SentScript(script, client, keys, args).result()


__all__ = [
    "CLUSTER_SCHEMES",
    "MAX_BLOCK_MS",
    "TLS_ENV",
    "Deferred",
    "SentScript",
    "connect",
    "ensure_group",
    "redis_errors",
    "run_script",
    "send_deferred",
]
