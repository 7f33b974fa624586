"""The device's PII vault: token → value, encrypted at rest, never leaving the device.

Keys. `DeviceKeys` is a small JSON file (mode 0600) holding one random 32-byte secret per key epoch;
the newest epoch is current. From an epoch's secret HKDF-SHA256 derives two keys: one for the token
HMAC, one for AES-256-GCM of the vault's values. Rotating the epoch (`DeviceKeys.rotate`) makes new
tokens for the same values; tokens of older epochs still detokenize as long as their secret is kept.

Tokens. `⟨PII:<TYPE>:<hex>⟩` with the first 8 hex digits of HMAC-SHA256(key, type ‖ 0x00 ‖ value)
(value NFC-normalised, otherwise exact, so detokenizing gives back exactly what was written). Should
two values ever share 8 digits in one vault, the later one gets a longer token (12, then 16 digits).

Storage. One SQLite table (WAL): token, type, epoch, nonce, ciphertext, created/used times. The
value is sealed with AES-256-GCM under the epoch's vault key, the token as associated data, so a
row cannot be moved to another token. Nothing in clear but the token, the type and the times.
`purge(older_than_s)` forgets mappings not used for a while (a retention period).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_TOKEN_LENGTHS = (8, 12, 16)


class VaultError(Exception):
    """The vault or its key file cannot be used (unreadable, tampered, a missing epoch)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


@dataclass(frozen=True)
class EpochKeys:
    epoch: int
    token_key: bytes
    vault_key: bytes


class DeviceKeys:
    """The device's key epochs, in a JSON file readable only by its owner."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self._write({"current": 1, "epochs": {"1": _b64(os.urandom(32))}})
        try:
            doc = json.loads(self.path.read_text())
            self._secrets = {int(k): base64.b64decode(v) for k, v in doc["epochs"].items()}
            self.current = int(doc["current"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VaultError(f"device key file {self.path} is not readable: {exc}") from None
        if self.current not in self._secrets or any(len(s) != 32 for s in self._secrets.values()):
            raise VaultError(f"device key file {self.path} is malformed")
        self._derived: dict[int, EpochKeys] = {}

    def _write(self, doc: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)

    def keys(self, epoch: int | None = None) -> EpochKeys:
        epoch = self.current if epoch is None else epoch
        if epoch not in self._derived:
            secret = self._secrets.get(epoch)
            if secret is None:
                raise VaultError(f"no device key for epoch {epoch}")
            self._derived[epoch] = EpochKeys(
                epoch, _hkdf(secret, b"hybrid-edge pii token v1"), _hkdf(secret, b"hybrid-edge pii vault v1")
            )
        return self._derived[epoch]

    def rotate(self) -> int:
        """Start a new epoch (older ones are kept so their tokens still detokenize)."""
        self.current = max(self._secrets) + 1
        self._secrets[self.current] = os.urandom(32)
        self._write({"current": self.current, "epochs": {str(k): _b64(v) for k, v in self._secrets.items()}})
        return self.current


class Vault:
    """Token ↔ value mapping in SQLite, values sealed with AES-GCM. Safe to share between threads."""

    def __init__(self, path: Path | str, keys: DeviceKeys, *, cache_size: int = 4096) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, type TEXT NOT NULL, epoch INTEGER NOT NULL,"
            " nonce BLOB NOT NULL, ct BLOB NOT NULL, created_ms INTEGER NOT NULL, used_ms INTEGER NOT NULL)"
        )
        os.chmod(self.path, 0o600)
        self._known: dict[tuple[int, str, str], str] = {}  # (epoch, type, value) → token, this process
        self._cache_size = cache_size

    @classmethod
    def open(cls, directory: Path | str) -> Vault:
        """The vault of a state directory: `device_keys.json` and `vault.sqlite` inside it."""
        directory = Path(directory)
        return cls(directory / "vault.sqlite", DeviceKeys(directory / "device_keys.json"))

    def token_for(self, pii_type: str, value: str) -> str:
        value = unicodedata.normalize("NFC", value)
        ek = self.keys.keys()
        memo = self._known.get((ek.epoch, pii_type, value))
        if memo is not None:
            return memo
        digest = hmac.new(ek.token_key, pii_type.encode() + b"\x00" + value.encode(), hashlib.sha256).hexdigest()
        now = int(time.time() * 1000)
        with self._lock:
            for n in _TOKEN_LENGTHS:
                token = f"⟨PII:{pii_type}:{digest[:n]}⟩"
                row = self._db.execute("SELECT epoch, nonce, ct FROM tokens WHERE token = ?", (token,)).fetchone()
                if row is None:
                    nonce = os.urandom(12)
                    ct = AESGCM(ek.vault_key).encrypt(nonce, value.encode(), token.encode())
                    self._db.execute(
                        "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (token, pii_type, ek.epoch, nonce, ct, now, now),
                    )
                    break
                if self._decrypt(token, *row) == value:
                    self._db.execute("UPDATE tokens SET used_ms = ? WHERE token = ?", (now, token))
                    break
            else:  # pragma: no cover - three HMAC prefixes colliding
                raise VaultError("token collision")
            if len(self._known) >= self._cache_size:
                self._known.clear()
            self._known[(ek.epoch, pii_type, value)] = token
        return token

    def _decrypt(self, token: str, epoch: int, nonce: bytes, ct: bytes) -> str:
        try:
            return AESGCM(self.keys.keys(epoch).vault_key).decrypt(nonce, ct, token.encode()).decode()
        except InvalidTag:
            raise VaultError(
                f"vault entry of {token} fails authentication (tampered, or another device's key)"
            ) from None

    def lookup(self, tokens: Iterable[str]) -> dict[str, str]:
        """Values of the tokens this vault holds (others are left out)."""
        tokens = list(tokens)
        if not tokens:
            return {}
        with self._lock:
            marks = ",".join("?" * len(tokens))
            rows = self._db.execute(
                f"SELECT token, epoch, nonce, ct FROM tokens WHERE token IN ({marks})", tokens
            ).fetchall()
        return {t: self._decrypt(t, e, n, c) for t, e, n, c in rows}

    def purge(self, older_than_s: float) -> int:
        """Forget mappings unused for `older_than_s`; returns how many were removed."""
        cutoff = int((time.time() - older_than_s) * 1000)
        with self._lock:
            cur = self._db.execute("DELETE FROM tokens WHERE used_ms < ?", (cutoff,))
            self._known.clear()
            return cur.rowcount

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["DeviceKeys", "EpochKeys", "Vault", "VaultError"]
