"""The local keyring file: permissions, versions, rotation without restart, residency."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from broker.errors import ConfigError, UnknownKey
from broker.keyring import LocalKeyring, parse_kid


def test_created_with_owner_only_permissions(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keyring.json"
    info = LocalKeyring.init_zone(path, "bd-dhaka")
    assert info.kid == "bd-dhaka/v1" and info.current
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["zones"]["bd-dhaka"]["current"] == 1


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640])
def test_refuses_a_keyring_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.json"
    LocalKeyring.init_zone(path, "z")
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        LocalKeyring(path)


def test_missing_or_garbage_keyring_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hybrid keys init"):
        LocalKeyring(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    os.chmod(bad, 0o600)
    with pytest.raises(ConfigError, match="cannot be read"):
        LocalKeyring(bad)


def test_init_twice_refused_rotate_needs_init(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    LocalKeyring.init_zone(path, "z")
    with pytest.raises(ConfigError, match="already has keys"):
        LocalKeyring.init_zone(path, "z")
    with pytest.raises(ConfigError, match="keys init"):
        LocalKeyring.rotate(path, "other")


def test_rotation_is_seen_by_a_running_keyring_and_old_versions_still_unwrap(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    LocalKeyring.init_zone(path, "z")
    ring = LocalKeyring(path, reload_interval_s=0)
    kid1, wrapped1 = ring.wrap("z", b"k" * 32)
    assert kid1 == "z/v1"
    assert LocalKeyring.rotate(path, "z").kid == "z/v2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kid2, wrapped2 = ring.wrap("z", b"j" * 32)
    assert kid2 == "z/v2"
    assert ring.unwrap(kid1, wrapped1) == b"k" * 32
    assert ring.unwrap(kid2, wrapped2) == b"j" * 32
    assert [(k.kid, k.current) for k in ring.list_keys()] == [("z/v1", False), ("z/v2", True)]


def test_restricted_keyring_holds_only_its_zone(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    LocalKeyring.init_zone(path, "zone-a")
    LocalKeyring.init_zone(path, "zone-b")
    full = LocalKeyring(path)
    kid, wrapped = full.wrap("zone-b", b"x" * 32)
    only_a = LocalKeyring(path, zones=["zone-a"])
    with pytest.raises(UnknownKey, match="zones held: zone-a"):
        only_a.unwrap(kid, wrapped)
    with pytest.raises(UnknownKey):
        only_a.current_kid("zone-b")


@pytest.mark.parametrize("kid", ["z", "z/1", "z/vx", "Z/v1", "/v1", "z/v"])
def test_malformed_key_ids(kid: str) -> None:
    with pytest.raises(UnknownKey):
        parse_kid(kid)
