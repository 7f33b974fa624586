"""Job ids and settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import ulid

from broker.errors import ConfigError
from broker.ids import encode_ulid, new_ulid, ulid_time_ms
from broker.settings import load_settings


def test_ulids_follow_the_spec_and_are_monotonic() -> None:
    ids = [new_ulid() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for text in ids[:50]:
        parsed = ulid.ULID.from_str(text)  # the reference implementation reads ours
        assert str(parsed) == text and parsed.milliseconds == ulid_time_ms(text)
    reference = ulid.ULID()
    assert encode_ulid(int(reference)) == str(reference)


def test_ids_made_in_one_millisecond_count_up_through_every_carry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within a millisecond the random part counts up one at a time, its text digit by digit; each id
    must still be exactly the encoding of its number, across carries of one digit and of several."""
    import broker.ids as ids

    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_700_000_000_000 * 1_000_000)  # one frozen millisecond
    first = new_ulid()
    start = int(ulid.ULID.from_str(first))
    monkeypatch.setattr(ids, "_last_random", (1 << 80) - 1 - 40 - 1024 * 32)  # carries of 1 to 4 digits ahead
    monkeypatch.setattr(ids, "_random_part", ids._encode_random(ids._last_random))
    made = [new_ulid() for _ in range(1024 * 32 + 35)]
    base = (start >> 80 << 80) + ids._RANDOM_MAX - 40 - 1024 * 32
    assert made == [encode_ulid(base + 1 + i) for i in range(len(made))]


def test_settings_from_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "hybrid.toml"
    cfg.write_text('zone = "in-wb"\nmax_deliveries = 9\n')
    monkeypatch.setenv("HYB_CONFIG", str(cfg))
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/1")
    monkeypatch.setenv("HYB_READ_COUNT", "64")
    s = load_settings()
    assert (s.zone, s.max_deliveries, s.redis_url, s.read_count) == ("in-wb", 9, "redis://example:6380/1", 64)
    assert load_settings(zone="bd-dhaka").zone == "bd-dhaka"  # explicit beats file


def test_read_ahead_is_on_unless_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYB_CONFIG", raising=False)
    assert load_settings().read_ahead is True
    monkeypatch.setenv("HYB_READ_AHEAD", "0")
    assert load_settings().read_ahead is False
    cfg = tmp_path / "hybrid.toml"
    cfg.write_text("read_ahead = false\n")
    monkeypatch.delenv("HYB_READ_AHEAD")
    monkeypatch.setenv("HYB_CONFIG", str(cfg))
    assert load_settings().read_ahead is False


def test_unknown_or_bad_settings_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "hybrid.toml"
    cfg.write_text("max_delivries = 9\n")  # misspelt: must not be silently ignored
    monkeypatch.setenv("HYB_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="max_delivries"):
        load_settings()
    monkeypatch.delenv("HYB_CONFIG")
    monkeypatch.setenv("HYB_ZSTD_LEVEL", "99")
    with pytest.raises(ConfigError, match="zstd_level"):
        load_settings()
    monkeypatch.setenv("HYB_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="not a file"):
        load_settings()


@pytest.mark.parametrize("bad", ["eu\n", "eu\r", "", "EU", "-eu", "e" * 33])
def test_zone_names_that_would_bend_a_key_are_refused(bad: str) -> None:
    from broker import keys

    assert keys.check_zone("eu-west-1") == "eu-west-1"
    with pytest.raises(ValueError, match="zone"):
        keys.check_zone(bad)


@pytest.mark.parametrize("bad", ["w1\n", "w 1", "", ".w1", "w" * 97])
def test_names_with_a_trailing_newline_or_odd_characters_are_refused(bad: str) -> None:
    from broker import keys

    assert keys.check_name("w1.gpu-0", "consumer name") == "w1.gpu-0"
    with pytest.raises(ValueError, match="consumer name"):
        keys.check_name(bad, "consumer name")
