"""What every `hybrid` sub-command shares: settings options, error handling, Redis connection."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import redis

from broker.connection import connect, redis_errors
from broker.errors import ConfigError, HybridError, RedisUnavailable
from broker.settings import BrokerSettings, load_settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a service (Redis) could not be reached

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def friendly_errors(fn: F) -> F:
    """Turn our errors into one readable line and a meaningful exit code — never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
        except RedisUnavailable as exc:
            fail(
                f"{exc}\n  (set REDIS_URL to a running Redis, or use `hybrid demo` for an embedded one)",
                EXIT_UNAVAILABLE,
            )
        except HybridError as exc:
            fail(str(exc), EXIT_FAILURE)
        except ValueError as exc:  # bad input caught by our own checks
            fail(str(exc), EXIT_USAGE)

    return wrapper  # type: ignore[return-value]


def settings_options(fn: F) -> F:
    """--redis-url, --zone and --keyring, each falling back to HYB_* / REDIS_URL / HYB_CONFIG."""
    fn = click.option("--keyring", type=click.Path(dir_okay=False), help="Keyring file [env HYB_KEYRING].")(fn)
    fn = click.option("--zone", help="Residency zone, e.g. bd-dhaka [env HYB_ZONE, default 'local'].")(fn)
    fn = click.option("--redis-url", help="Redis to use [env REDIS_URL or HYB_REDIS_URL].")(fn)
    return fn


def settings_from(redis_url: str | None, zone: str | None, keyring: str | None, **extra: Any) -> BrokerSettings:
    return load_settings(redis_url=redis_url, zone=zone, keyring=keyring, **extra)


def redis_for(settings: BrokerSettings) -> redis.Redis:
    if not settings.redis_url:
        raise ConfigError("no Redis URL: pass --redis-url or set REDIS_URL (or HYB_REDIS_URL)")
    client = connect(settings.redis_url)
    with redis_errors(f"Redis at {settings.redis_url}"):
        client.ping()
    return client


__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "fail",
    "friendly_errors",
    "redis_for",
    "settings_from",
    "settings_options",
]
