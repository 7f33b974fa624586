"""`send_deferred`: a command sent now, its reply read later, on a connection nobody else uses meanwhile;
a connection whose reply was read whole is kept a moment for the next one."""

from __future__ import annotations

import pytest
import redis

from broker import connection
from broker.connection import run_script, send_deferred


def test_a_deferred_reply_is_the_reply_of_its_own_command(r: redis.Redis, zone: str) -> None:
    key = f"test:{zone}:deferred"
    r.set(key, b"first")
    pending = send_deferred(r, "GET", key)
    r.set(key, b"second")  # another command on the same client in between takes another connection
    assert pending.result() == b"first"
    assert r.get(key) == b"second"


def test_an_abandoned_reply_never_reaches_a_later_command(r: redis.Redis, zone: str) -> None:
    key = f"test:{zone}:abandoned"
    r.set(key, b"value")
    before = len(r.connection_pool._available_connections)  # type: ignore[attr-defined]
    pending = send_deferred(r, "GET", key)
    pending.abandon()  # the reply is never read: its connection is closed, not handed out with it
    for _ in range(5):
        assert r.ping() is True
        assert r.incr(f"{key}:n") >= 1
    assert r.get(key) == b"value"
    assert len(r.connection_pool._available_connections) >= before  # type: ignore[attr-defined]


def test_an_error_reply_is_raised_when_read(r: redis.Redis, zone: str) -> None:
    key = f"test:{zone}:not-a-list"
    r.set(key, b"x")
    pending = send_deferred(r, "LPUSH", key, b"y")
    try:
        pending.result()
    except redis.ResponseError as exc:
        assert "WRONGTYPE" in str(exc)
    else:
        raise AssertionError("a command on the wrong type must fail")
    assert r.get(key) == b"x"


def test_run_script_loads_a_script_redis_forgot(r: redis.Redis, zone: str) -> None:
    """A restarted Redis has no scripts: `run_script` gets NOSCRIPT on its short path and loads it."""
    script = r.register_script("return {KEYS[1], ARGV[1], #ARGV}")
    key = f"test:{zone}:script"
    assert run_script(script, r, [key], ["a", b"\xff", 7]) == [key.encode(), b"a", 3]
    r.script_flush()
    assert run_script(script, r, [key], [b"b"]) == [key.encode(), b"b", 1]
    assert r.script_exists(script.sha) == [True]


def _client_id(r: redis.Redis) -> int:
    return int(send_deferred(r, "CLIENT", "ID").result())


def test_a_connection_is_kept_for_the_next_deferred_only_while_fresh(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = r.connection_pool
    asked: list[int] = []
    from_pool = pool.get_connection
    monkeypatch.setattr(pool, "get_connection", lambda: asked.append(1) or from_pool())
    first = _client_id(r)
    with pytest.raises(redis.ResponseError):
        send_deferred(r, "LPUSH", "test:deferred:no-such-command-args").result()  # an error reply, read whole
    assert _client_id(r) == first and len(asked) == 1  # the same connection, not asked of the pool again
    monkeypatch.setattr(connection, "KEEP_S", 0.0)  # from now on every kept connection is too old
    _client_id(r)
    assert len(asked) == 2  # back to the pool, which checks a connection before it hands it out


def test_a_connection_from_before_a_fork_is_not_reused(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    first = send_deferred(r, "PING")
    conn = first._conn
    first.result()
    conn.pid = -1  # as a forked child sees its parent's connection
    second = send_deferred(r, "PING")
    assert second._conn is not conn
    second.result()
