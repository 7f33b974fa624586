"""Key providers: who holds a zone's key-encryption keys (KEKs) and wraps data keys with them.

`KeyProvider` holds the logic every provider shares — key ids, zone checks, errors — and asks its
subclass only to `_current_version`, `_wrap` and `_unwrap`. `LocalKeyring` keeps KEKs in a JSON file
created with mode 0600 (it refuses a file that others may read); a KMS or HSM adapter implements the
same three methods with calls to its service and never reveals the KEK.

A key id (`kid`) is `<zone>/v<version>`. Versions only grow: `rotate` adds a version that encrypts from
then on; older versions stay to decrypt what is still in flight. `revoke` destroys an old version's key
material and leaves a tombstone: messages under it are refused as `revoked_key` (running processes
see it within `reload_interval_s`), and the current version cannot be revoked (rotate first).
A worker given a keyring restricted to its own zone cannot unwrap another zone's data keys: residency
is enforced by keys.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import os
import secrets
import stat
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from broker.errors import ConfigError, RevokedKey, TamperedMessage, UnknownKey
from broker.keys import check_zone

KEK_BYTES = 32
DEK_BYTES = 32
KEYRING_FORMAT = "hybrid-keyring/1"


def make_kid(zone: str, version: int) -> str:
    return f"{zone}/v{version}"


@functools.lru_cache(maxsize=1024)  # one call per message opened; a zone has a handful of key ids
def parse_kid(kid: str) -> tuple[str, int]:
    """Split `<zone>/v<version>`; raises `UnknownKey` for anything else."""
    zone, sep, ver = kid.partition("/v")
    if not sep or not ver.isdigit():
        raise UnknownKey(f"malformed key id {kid!r}")
    try:
        check_zone(zone)
    except ValueError as exc:
        raise UnknownKey(f"malformed key id {kid!r}") from exc
    return zone, int(ver)


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    zone: str
    version: int
    current: bool
    created: str
    revoked: str = ""  # when the version was revoked ('' while usable)


class KeyProvider(ABC):
    """Wraps and unwraps data keys (DEKs) under versioned per-zone KEKs."""

    def current_kid(self, zone: str) -> str:
        """The key id new data keys of `zone` are wrapped with."""
        return make_kid(zone, self._current_version(check_zone(zone)))

    def wrap(self, zone: str, dek: bytes) -> tuple[str, bytes]:
        """Wrap `dek` under the zone's newest KEK; returns `(kid, wrapped)`."""
        kid = self.current_kid(zone)
        return kid, self._wrap(zone, parse_kid(kid)[1], dek)

    def check_usable(self, kid: str) -> None:
        """Raise `RevokedKey` if `kid` was revoked. Providers without revocation never raise."""
        return None

    def unwrap(self, kid: str, wrapped: bytes) -> bytes:
        """Unwrap a data key; `UnknownKey` when the KEK is not held, `TamperedMessage` when it does not fit."""
        zone, version = parse_kid(kid)
        return self._unwrap(zone, version, wrapped)

    @abstractmethod
    def _current_version(self, zone: str) -> int: ...

    @abstractmethod
    def _wrap(self, zone: str, version: int, dek: bytes) -> bytes: ...

    @abstractmethod
    def _unwrap(self, zone: str, version: int, wrapped: bytes) -> bytes: ...


def default_keyring_path() -> Path:
    env = os.environ.get("HYB_KEYRING")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME", "~/.config")).expanduser()
    return base / "hybrid" / "keyring.json"


class LocalKeyring(KeyProvider):
    """KEKs in a local JSON file (mode 0600), wrapped DEKs with AES key wrap (RFC 3394).

    The file is re-read when it changes on disk (checked at most every `reload_interval_s`), so a
    `hybrid keys rotate` reaches running producers and workers without a restart. `zones` restricts
    which zones' keys this process loads at all.
    """

    def __init__(self, path: Path | str, *, zones: Iterable[str] | None = None, reload_interval_s: float = 1.0) -> None:
        self.path = Path(path).expanduser()
        self.zones = frozenset(check_zone(z) for z in zones) if zones is not None else None
        self.reload_interval_s = reload_interval_s
        self._lock = threading.Lock()
        self._keys: dict[str, dict[int, bytes]] = {}
        self._created: dict[str, dict[int, str]] = {}
        self._current: dict[str, int] = {}
        self._revoked: dict[str, dict[int, str]] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._load()

    # -- reading -------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise ConfigError(
                f"keyring {self.path} does not exist: create it with `hybrid keys init --zone <zone>`"
            ) from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"keyring {self.path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"refusing to use it — run `chmod 600 {self.path}`"
            )
        raw = _read_json(self.path)
        keys: dict[str, dict[int, bytes]] = {}
        created: dict[str, dict[int, str]] = {}
        current: dict[str, int] = {}
        revoked: dict[str, dict[int, str]] = {}
        for zone, entry in raw["zones"].items():
            if self.zones is not None and zone not in self.zones:
                continue
            versions = {int(v): base64.b64decode(k["key"]) for v, k in entry["keys"].items() if "key" in k}
            revoked[zone] = {int(v): str(k["revoked"]) for v, k in entry["keys"].items() if "revoked" in k}
            if any(len(k) != KEK_BYTES for k in versions.values()):
                raise ConfigError(f"keyring {self.path}: a key of zone {zone!r} is not {KEK_BYTES} bytes")
            keys[zone] = versions
            created[zone] = {int(v): str(k.get("created", "")) for v, k in entry["keys"].items()}
            current[zone] = int(entry["current"])
        self._keys, self._created, self._current, self._revoked = keys, created, current, revoked
        self._stamp = (st.st_mtime_ns, st.st_ino)
        self._checked_at = time.monotonic()

    def _maybe_reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < self.reload_interval_s:
            return
        with self._lock:
            self._checked_at = now
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return  # keep what we have; a vanished file must not stop a running worker
            if (st.st_mtime_ns, st.st_ino) != self._stamp:
                self._load()

    def check_usable(self, kid: str) -> None:
        zone, version = parse_kid(kid)
        self._maybe_reload()
        when = self._revoked.get(zone, {}).get(version)
        if when is not None:
            raise RevokedKey(f"KEK {kid} was revoked at {when}; messages sealed under it are refused")

    def _kek(self, zone: str, version: int) -> bytes:
        self.check_usable(make_kid(zone, version))
        key = self._keys.get(zone, {}).get(version)
        if key is None:
            self._maybe_reload(force=True)
            key = self._keys.get(zone, {}).get(version)
        if key is None:
            held = ", ".join(sorted(self._keys)) or "none"
            raise UnknownKey(f"no KEK {make_kid(zone, version)} in this keyring (zones held: {held})")
        return key

    def _current_version(self, zone: str) -> int:
        self._maybe_reload()
        if zone not in self._current:
            self._maybe_reload(force=True)
        try:
            return self._current[zone]
        except KeyError:
            raise UnknownKey(f"no KEK for zone {zone!r} in keyring {self.path}") from None

    def _wrap(self, zone: str, version: int, dek: bytes) -> bytes:
        return aes_key_wrap(self._kek(zone, version), dek)

    def _unwrap(self, zone: str, version: int, wrapped: bytes) -> bytes:
        kek = self._kek(zone, version)
        try:
            return aes_key_unwrap(kek, wrapped)
        except (InvalidUnwrap, ValueError) as exc:
            raise TamperedMessage(f"data key does not unwrap under {make_kid(zone, version)}") from exc

    def list_keys(self) -> list[KeyInfo]:
        self._maybe_reload(force=True)
        return [
            KeyInfo(
                make_kid(zone, v),
                zone,
                v,
                v == self._current[zone],
                self._created[zone][v],
                self._revoked.get(zone, {}).get(v, ""),
            )
            for zone in sorted(self._keys)
            for v in sorted({*self._keys[zone], *self._revoked.get(zone, {})})
        ]

    # -- writing (init and rotate) ---------------------------------------------------------------

    @classmethod
    def init_zone(cls, path: Path | str, zone: str) -> KeyInfo:
        """Create the keyring file if needed and give `zone` its first KEK. Refuses an existing zone."""
        check_zone(zone)
        with _locked_document(Path(path).expanduser(), create=True) as doc:
            if zone in doc["zones"]:
                raise ConfigError(f"zone {zone!r} already has keys in {path}; use `hybrid keys rotate`")
            doc["zones"][zone] = {"current": 1, "keys": {"1": _new_key_entry()}}
            return KeyInfo(make_kid(zone, 1), zone, 1, True, doc["zones"][zone]["keys"]["1"]["created"])

    @classmethod
    def rotate(cls, path: Path | str, zone: str) -> KeyInfo:
        """Add a new KEK version for `zone`; it encrypts from now on, older versions still decrypt."""
        check_zone(zone)
        with _locked_document(Path(path).expanduser(), create=False) as doc:
            if zone not in doc["zones"]:
                raise ConfigError(f"zone {zone!r} has no keys in {path}; use `hybrid keys init` first")
            entry = doc["zones"][zone]
            version = max(int(v) for v in entry["keys"]) + 1
            entry["keys"][str(version)] = _new_key_entry()
            entry["current"] = version
            return KeyInfo(make_kid(zone, version), zone, version, True, entry["keys"][str(version)]["created"])

    @classmethod
    def revoke(cls, path: Path | str, zone: str, version: int) -> KeyInfo:
        """Destroy the key material of an old KEK version of `zone`, keeping a tombstone so that messages
        under it are refused as revoked (not unknown). The current version cannot be revoked: rotate first."""
        check_zone(zone)
        with _locked_document(Path(path).expanduser(), create=False) as doc:
            if zone not in doc["zones"]:
                raise ConfigError(f"zone {zone!r} has no keys in {path}")
            entry = doc["zones"][zone]
            key = entry["keys"].get(str(version))
            if key is None:
                known = ", ".join(f"v{v}" for v in sorted(int(v) for v in entry["keys"]))
                raise ConfigError(f"zone {zone!r} has no KEK version {version} (it has {known})")
            if int(entry["current"]) == version:
                raise ConfigError(
                    f"{make_kid(zone, version)} is the current KEK: run `hybrid keys rotate --zone {zone}` first"
                )
            if "revoked" not in key:
                key.pop("key", None)
                key["revoked"] = datetime.now(UTC).isoformat(timespec="seconds")
            return KeyInfo(make_kid(zone, version), zone, version, False, str(key.get("created", "")), key["revoked"])


def _new_key_entry() -> dict[str, str]:
    return {
        "key": base64.b64encode(secrets.token_bytes(KEK_BYTES)).decode(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"keyring {path} cannot be read: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != KEYRING_FORMAT or not isinstance(doc.get("zones"), dict):
        raise ConfigError(f"keyring {path} is not a {KEYRING_FORMAT} file")
    return doc


@contextlib.contextmanager
def _locked_document(path: Path, *, create: bool) -> Iterator[dict[str, Any]]:
    """Read-modify-write the keyring under an exclusive lock; the new file replaces the old atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if path.exists():
            doc = _read_json(path)
        elif create:
            doc = {"format": KEYRING_FORMAT, "zones": {}}
        else:
            raise ConfigError(f"keyring {path} does not exist: create it with `hybrid keys init --zone <zone>`")
        yield doc
        tmp_fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        try:
            os.fchmod(tmp_fd, 0o600)
            with os.fdopen(tmp_fd, "w") as fh:
                json.dump(doc, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
    finally:
        os.close(fd)


__all__ = [
    "DEK_BYTES",
    "KEK_BYTES",
    "KeyInfo",
    "KeyProvider",
    "LocalKeyring",
    "default_keyring_path",
    "make_kid",
    "parse_kid",
]
