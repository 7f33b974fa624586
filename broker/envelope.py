"""Envelope encryption of message bodies: AES-256-GCM under a data key wrapped by the zone's KEK.

Body layout (byte for byte in docs/envelope.md):

    0       1 byte   format version, 0x01
    1       1 byte   L = length of the wrapped data key (40 for AES key wrap of a 32-byte key)
    2       L bytes  wrapped data key (RFC 3394 AES key wrap under the KEK named by the header's `kid`)
    2+L     12 bytes GCM nonce (random)
    14+L    rest     AES-256-GCM ciphertext followed by its 16-byte tag

The associated data is the exact bytes of the clear header, so a body moved under another header
does not open. Data keys are reused for a bounded number of messages, bytes and seconds
(`DataKeyCachePolicy`), like the AWS Encryption SDK's caching materials manager; nonces are random,
so the message bound also keeps nonce collisions negligible.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.errors import MalformedMessage, MessageError, TamperedMessage
from broker.keyring import DEK_BYTES, KeyProvider

FORMAT_V1 = 0x01
NONCE_BYTES = 12
TAG_BYTES = 16


@dataclass(frozen=True)
class DataKeyCachePolicy:
    """How long one data key may encrypt: whichever bound is reached first ends its use."""

    max_messages: int = 10_000
    max_bytes: int = 1 << 30
    max_age_s: float = 300.0
    open_cache_size: int = 1024  # unwrapped data keys kept by readers


@dataclass
class _ActiveKey:
    kid: str
    wrapped: bytes
    aead: AESGCM
    created: float
    messages: int = 0
    bytes: int = 0


class Envelope:
    """Seals and opens bodies for any zone the key provider holds."""

    def __init__(self, provider: KeyProvider, policy: DataKeyCachePolicy | None = None) -> None:
        self.provider = provider
        self.policy = policy or DataKeyCachePolicy()
        self._active: dict[str, _ActiveKey] = {}
        self._opened: OrderedDict[tuple[str, bytes], tuple[AESGCM, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.data_keys_created = 0

    def seal(self, zone: str, plaintext: bytes, header_for: Callable[[str], bytes]) -> tuple[bytes, bytes]:
        """Encrypt `plaintext` under the zone's active data key; returns `(header, body)`.

        The header names the key id and is the associated data, so it is built here, by
        `header_for(kid)`, once the key is chosen.
        """
        key = self._take_key(zone, len(plaintext))
        aad = header_for(key.kid)
        nonce = os.urandom(NONCE_BYTES)
        ct = key.aead.encrypt(nonce, plaintext, aad)
        return aad, b"".join((bytes((FORMAT_V1, len(key.wrapped))), key.wrapped, nonce, ct))

    def _take_key(self, zone: str, size: int) -> _ActiveKey:
        """The active data key of `zone`, counted for one more message; a new one past any bound."""
        now = time.monotonic()
        current_kid = self.provider.current_kid(zone)
        with self._lock:
            key = self._active.get(zone)
            p = self.policy
            if (
                key is None
                or key.messages >= p.max_messages
                or key.bytes + size > p.max_bytes
                or now - key.created >= p.max_age_s
                or key.kid != current_kid
            ):
                dek = os.urandom(DEK_BYTES)
                kid, wrapped = self.provider.wrap(zone, dek)
                key = _ActiveKey(kid, wrapped, AESGCM(dek), now)
                self._active[zone] = key
                self.data_keys_created += 1
            key.messages += 1
            key.bytes += size
            return key

    def open(self, kid: str, aad: bytes, body: bytes) -> bytes:
        """Decrypt a body; `MalformedMessage`, `UnknownKey` or `TamperedMessage` when it cannot be opened."""
        if len(body) < 2 or body[0] != FORMAT_V1:
            raise MalformedMessage("body is not an envelope of format 1", raw=body)
        n = body[1]
        if len(body) < 2 + n + NONCE_BYTES + TAG_BYTES:
            raise MalformedMessage(f"body is truncated ({len(body)} bytes)", raw=body)
        aead = self._reader(kid, body[2 : 2 + n])
        try:
            return aead.decrypt(body[2 + n : 2 + n + NONCE_BYTES], body[2 + n + NONCE_BYTES :], aad)
        except InvalidTag:
            raise TamperedMessage("authentication failed: the header or the body was changed", raw=body) from None

    def open_many(self, sealed: Iterable[tuple[str, bytes, bytes] | MessageError]) -> list[bytes | MessageError]:
        """`open` for the messages of one read, `(kid, aad, body)` each: the plaintext, or the
        `MessageError` that refused it, in order (an error given in place of a message is passed
        through). Each data key is looked up, and its KEK's revocation checked, once per call instead
        of once per message (a read's messages mostly share one key), and the good path is one loop
        with no call of ours per message."""
        memo: dict[tuple[str, bytes], AESGCM] = {}
        out: list[bytes | MessageError] = []
        append = out.append
        last_kid, last_key, last_aead = "", b"\xff", cast(AESGCM, None)  # the message before: kid, body start, key
        for item in sealed:
            if isinstance(item, MessageError):
                append(item)
                continue
            kid, aad, body = item
            try:
                nonce_at = 2 + body[1] if len(body) >= 2 and body[0] == FORMAT_V1 else 0
                if not nonce_at or len(body) < nonce_at + NONCE_BYTES + TAG_BYTES:
                    append(self.open(kid, aad, body))  # raises, saying what is wrong
                    continue
                if kid == last_kid and body.startswith(last_key):
                    aead = last_aead  # the usual case: the same data key as the message before
                else:
                    ck = (kid, body[2:nonce_at])
                    found = memo.get(ck)
                    if found is None:
                        found = memo[ck] = self._reader(*ck)
                    aead = last_aead = found
                    last_kid, last_key = kid, body[:nonce_at]
                ct_at = nonce_at + NONCE_BYTES
                append(aead.decrypt(body[nonce_at:ct_at], body[ct_at:], aad))
            except InvalidTag:
                append(TamperedMessage("authentication failed: the header or the body was changed", raw=body))
            except MessageError as exc:
                append(exc)
        return out

    def _reader(self, kid: str, wrapped: bytes) -> AESGCM:
        self.provider.check_usable(kid)  # a revoked KEK's data keys are not used, even from the cache
        now = time.monotonic()
        ck = (kid, wrapped)
        hit = self._opened.get(ck)  # a plain dict read is atomic; the lock guards insertion and eviction
        if hit is not None and now - hit[1] < self.policy.max_age_s * 2:
            return hit[0]
        aead = AESGCM(self.provider.unwrap(kid, wrapped))
        with self._lock:
            self._opened[ck] = (aead, now)
            self._opened.move_to_end(ck)
            while len(self._opened) > self.policy.open_cache_size:  # oldest unwrapped first
                self._opened.popitem(last=False)
        return aead


__all__ = ["FORMAT_V1", "NONCE_BYTES", "TAG_BYTES", "DataKeyCachePolicy", "Envelope"]
