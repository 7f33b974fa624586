"""Broker settings: from `HYB_*` environment variables, a TOML file named by `HYB_CONFIG`, or code.

Unknown keys are refused, never ignored. `REDIS_URL` is accepted as well as `HYB_REDIS_URL`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from broker.codec import DEFAULT_LEVEL, MIN_LEVEL
from broker.errors import ConfigError
from broker.keyring import default_keyring_path
from broker.keys import check_zone


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HYB_", extra="forbid", frozen=True, populate_by_name=True)

    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("HYB_REDIS_URL", "REDIS_URL", "redis_url")
    )
    zone: str = "local"
    keyring: Path = Field(default_factory=default_keyring_path)
    # -1 is zstd's fast mode (the codec's default, see broker/codec.py); 1-22 trade CPU for size; 0 is refused
    zstd_level: int = Field(default=DEFAULT_LEVEL, ge=MIN_LEVEL, le=22)
    zstd_dict_dir: Path | None = None  # trained dictionaries, one `<task>.zdict` file per task
    max_payload_bytes: int = Field(default=1 << 20, gt=0, le=64 << 20)
    dek_max_messages: int = Field(default=10_000, gt=0, le=1 << 32)
    dek_max_age_s: float = Field(default=300.0, gt=0)
    result_ttl_s: int = Field(default=24 * 3600, gt=0)
    max_deliveries: int = Field(default=5, ge=1, le=1000)
    min_idle_ms: int = Field(default=60_000, ge=0)
    read_count: int = Field(default=32, ge=1, le=10_000)
    block_ms: int = Field(default=1000, ge=0)
    read_ahead: bool = True  # a full read sends the next at once (docs/broker.md, "Read-ahead")
    admission_policy: Path | None = None  # limits file (TOML/YAML); producers skip admission without it
    budget_gate: bool = False  # producers refuse cloud-bound jobs while the zone's cost breaker is open
    key_provider: Literal["keyring", "pkcs11"] = "keyring"  # pkcs11: KEKs in an HSM (HYB_PKCS11_LIB/TOKEN/PIN)

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return check_zone(v)

    @field_validator("zstd_level")
    @classmethod
    def _level(cls, v: int) -> int:
        if v == 0:
            raise ValueError("0 is not a zstd level here: use -1 (fast, the default) or 1-22")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("HYB_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def load_settings(**overrides: Any) -> BrokerSettings:
    """Settings from env/file with `overrides` (None values ignored); bad values → `ConfigError`."""
    config_file = os.environ.get("HYB_CONFIG")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"HYB_CONFIG={config_file} is not a file")
    try:
        return BrokerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting {loc}: {first['msg']}") from None
    except ValueError as exc:  # e.g. a malformed TOML file
        raise ConfigError(f"cannot read settings: {exc}") from None


M = TypeVar("M", bound=BaseModel)


def load_model_file(path: Path | str, model: type[M]) -> M:
    """A pydantic model from a TOML (`.toml`) or YAML file; any defect → `ConfigError` naming the file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: does not parse: {' '.join(str(exc).split())}") from None
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: field {loc}: {first['msg']}{more}") from None


__all__ = ["BrokerSettings", "load_model_file", "load_settings"]
