"""A `KeyProvider` whose KEKs never leave a PKCS#11 token (an HSM, a cloud HSM, SoftHSM2 for tests).

Each zone's KEK version is an AES-256 secret key object *inside* the token, labelled
`hyb-kek:<zone>:v<version>`, generated there with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false: no
call can read it out. Data keys (DEKs) are wrapped and unwrapped by the token with CKM_AES_KEY_WRAP
(RFC 3394): the DEK enters the token as a short-lived session object, C_WrapKey returns the 40-byte
wrapped form, and C_UnwrapKey does the reverse. The wrapped bytes are the same RFC 3394 form the
local keyring writes, so a KEK moved into an HSM keeps opening what it wrapped before.

Residency by keys, as with the keyring: a worker opens the token of its own zone, which holds only
that zone's KEKs; a job of another zone names a key the token does not have (`UnknownKey`), and a
wrapped key that does not fit the token's KEK fails the unwrap's integrity check (`TamperedMessage`).

The same three methods map onto a cloud KMS: `_current_version` reads the key's primary version,
`_wrap`/`_unwrap` are the KMS's Encrypt/Decrypt (AWS KMS, Google Cloud KMS) or WrapKey/UnwrapKey
(Azure Key Vault) on that version, with the KEK never leaving the service (docs/deploy.md).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from broker.errors import ConfigError, TamperedMessage, UnknownKey
from broker.keyring import DEK_BYTES, KeyProvider, make_kid
from broker.keys import check_zone

LABEL_PREFIX = "hyb-kek"
_LABEL_RE = re.compile(r"^hyb-kek:([a-z0-9][a-z0-9-]{0,31}):v(\d+)\Z")


def kek_label(zone: str, version: int) -> str:
    return f"{LABEL_PREFIX}:{check_zone(zone)}:v{version}"


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise ConfigError("the PKCS#11 key provider needs python-pkcs11: pip install 'hybrid-ai-stack[hsm]'") from None
    return pkcs11


class Pkcs11KeyProvider(KeyProvider):
    """KEKs in a PKCS#11 token; DEKs wrapped by the token (CKM_AES_KEY_WRAP).

    `library` is the token's PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`, a vendor's .so);
    `token_label` picks the token; `pin` is the user PIN. `zones` restricts which zones it serves."""

    def __init__(self, library: str, token_label: str, pin: str, *, zones: Iterable[str] | None = None) -> None:
        p11 = _pkcs11()
        self._p11 = p11
        try:
            lib = p11.lib(library)
            token = lib.get_token(token_label=token_label)
            try:
                self._session = token.open(user_pin=pin, rw=True)
            except p11.exceptions.UserAlreadyLoggedIn:  # PKCS#11 logins are per process: share it
                self._session = token.open(rw=True)
        except p11.exceptions.NoSuchToken:
            raise ConfigError(f"no PKCS#11 token labelled {token_label!r} in {library}") from None
        except p11.exceptions.PinIncorrect:
            raise ConfigError(f"wrong PIN for PKCS#11 token {token_label!r}") from None
        except (OSError, RuntimeError, p11.exceptions.PKCS11Error) as exc:
            raise ConfigError(f"cannot open PKCS#11 token {token_label!r} with {library}: {exc!r}") from None
        self.token_label = token_label
        self.zones = {check_zone(z) for z in zones} if zones is not None else None
        self._lock = threading.Lock()  # a PKCS#11 session serves one call at a time

    @classmethod
    def from_env(cls, zones: Iterable[str] | None = None) -> Pkcs11KeyProvider:
        """From HYB_PKCS11_LIB, HYB_PKCS11_TOKEN and HYB_PKCS11_PIN."""
        missing = [v for v in ("HYB_PKCS11_LIB", "HYB_PKCS11_TOKEN", "HYB_PKCS11_PIN") if not os.environ.get(v)]
        if missing:
            raise ConfigError(f"the PKCS#11 key provider needs {', '.join(missing)}")
        return cls(
            os.environ["HYB_PKCS11_LIB"], os.environ["HYB_PKCS11_TOKEN"], os.environ["HYB_PKCS11_PIN"], zones=zones
        )

    # -- KEK management (in the token) ---------------------------------------------------------------

    def versions(self, zone: str) -> list[int]:
        """KEK versions of `zone` in the token, ascending."""
        check_zone(zone)
        found: list[int] = []
        with self._locked():
            for obj in self._session.get_objects({self._p11.Attribute.CLASS: self._p11.ObjectClass.SECRET_KEY}):
                m = _LABEL_RE.match(obj.label or "")
                if m and m.group(1) == zone:
                    found.append(int(m.group(2)))
        return sorted(found)

    def create_kek(self, zone: str) -> str:
        """Generate the zone's next KEK version inside the token (non-extractable); returns its key id."""
        self._check_served(zone)
        version = max(self.versions(zone), default=0) + 1
        a = self._p11.Attribute
        with self._locked():
            self._session.generate_key(
                self._p11.KeyType.AES,
                256,
                label=kek_label(zone, version),
                store=True,
                template={
                    a.SENSITIVE: True,
                    a.EXTRACTABLE: False,
                    a.WRAP: True,
                    a.UNWRAP: True,
                    a.ENCRYPT: False,
                    a.DECRYPT: False,
                },
            )
        return make_kid(zone, version)

    # -- KeyProvider ------------------------------------------------------------------------------------

    def _check_served(self, zone: str) -> None:
        if self.zones is not None and zone not in self.zones:
            raise UnknownKey(f"zone {zone} is not served by this key provider (token {self.token_label})")

    def _current_version(self, zone: str) -> int:
        self._check_served(zone)
        versions = self.versions(zone)
        if not versions:
            raise UnknownKey(f"token {self.token_label} holds no KEK of zone {zone}")
        return versions[-1]

    def _kek(self, zone: str, version: int) -> Any:
        self._check_served(zone)
        try:
            return self._session.get_key(object_class=self._p11.ObjectClass.SECRET_KEY, label=kek_label(zone, version))
        except self._p11.exceptions.NoSuchKey:
            raise UnknownKey(f"token {self.token_label} holds no KEK {make_kid(zone, version)}") from None

    def _wrap(self, zone: str, version: int, dek: bytes) -> bytes:
        if len(dek) != DEK_BYTES:
            raise ValueError(f"a data key is {DEK_BYTES} bytes, not {len(dek)}")
        a = self._p11.Attribute
        with self._locked():
            kek = self._kek(zone, version)
            transient = self._session.create_object(
                {
                    a.CLASS: self._p11.ObjectClass.SECRET_KEY,
                    a.KEY_TYPE: self._p11.KeyType.AES,
                    a.VALUE: dek,
                    a.TOKEN: False,
                    a.EXTRACTABLE: True,
                    a.SENSITIVE: False,
                }
            )
            try:
                return bytes(kek.wrap_key(transient, mechanism=self._p11.Mechanism.AES_KEY_WRAP))
            finally:
                transient.destroy()

    def _unwrap(self, zone: str, version: int, wrapped: bytes) -> bytes:
        a = self._p11.Attribute
        with self._locked():
            kek = self._kek(zone, version)
            try:
                dek_obj = kek.unwrap_key(
                    self._p11.ObjectClass.SECRET_KEY,
                    self._p11.KeyType.AES,
                    wrapped,
                    mechanism=self._p11.Mechanism.AES_KEY_WRAP,
                    store=False,
                    template={a.EXTRACTABLE: True, a.SENSITIVE: False},
                )
            except self._p11.exceptions.PKCS11Error as exc:
                raise TamperedMessage(
                    f"data key does not unwrap under {make_kid(zone, version)} ({type(exc).__name__})"
                ) from None
            try:
                return bytes(dek_obj[a.VALUE])
            finally:
                dek_obj.destroy()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            yield

    def close(self) -> None:
        with self._locked():
            self._session.close()


__all__ = ["LABEL_PREFIX", "Pkcs11KeyProvider", "kek_label"]
