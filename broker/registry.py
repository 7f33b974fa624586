"""Signed model registry: Ed25519-signed manifests, verification before loading, canary and rollback.

Layout of a models directory (edge device and GPU worker alike)::

    <root>/registry.json                       which version of each model is active, its history
    <root>/<name>/<version>/model.json         runtime and metadata of the artifact (one of its files)
    <root>/<name>/<version>/<files...>         the artifact
    <root>/<name>/<version>/manifest.json      name, version, runtime, created, files (path, sha256, size),
                                               sha256 of the file list, total size, key id — canonical JSON
    <root>/<name>/<version>/manifest.sig       Ed25519 signature over the exact bytes of manifest.json

`verify` checks the signature against a trusted public key first, then every file's size and SHA-256,
and refuses a file the manifest does not list. Failures are `ModelVerificationError`s: `UnsignedModel`
(no manifest or signature), `UntrustedSignature` (signed by another key, or not a valid signature) and
`TamperedModel` (a file changed, missing or added). The registry state (`registry.json`) is not
signed: it only says which *verified* version to load.

Canary: `select` maps a request key to a version with the same bucketing as `policies.canary`
(blake2b of model name and request id, modulo 10 000, versions owning consecutive ranges in the order
given), and sends the share of a version that is not installed, or was rolled back, to the active one.
`rollback` makes the previous active version active again and retires the one it replaces.

Signing keys are PEM files (PKCS#8 private key, mode 0600, refused when others may read it; the public
key beside it as `<name>.pub`). Defaults: `$HYB_MODEL_SIGNING_KEY`, else
`$XDG_CONFIG_HOME/hybrid/model-signing.pem` (next to the keyring); the trusted public key:
`$HYB_MODEL_VERIFY_KEY`, else the `.pub` beside the default signing key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import blake2b
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.errors import ConfigError, HybridError

__all__ = [
    "MANIFEST_FILE",
    "META_FILE",
    "SIGNATURE_FILE",
    "FileEntry",
    "ModelEntry",
    "ModelManifest",
    "ModelRegistry",
    "ModelRegistryError",
    "ModelVerificationError",
    "TamperedModel",
    "UnsignedModel",
    "UntrustedSignature",
    "VerifiedModel",
    "canary_bucket",
    "default_signing_key_path",
    "default_verify_key_path",
    "generate_signing_key",
    "key_id",
    "load_signing_key",
    "load_verify_key",
]

MANIFEST_FORMAT = "hybrid-model-manifest/1"
STATE_FORMAT = "hybrid-model-registry/1"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
META_FILE = "model.json"
STATE_FILE = "registry.json"
BUCKETS = 10_000
_RESERVED = {MANIFEST_FILE, SIGNATURE_FILE}


class ModelRegistryError(HybridError):
    """A registry operation that cannot be done: unknown model or version, nothing to roll back to."""


class ModelVerificationError(ModelRegistryError):
    """A model artifact failed verification and must not be loaded."""

    def __init__(self, message: str, *, name: str = "", version: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.version = version


class UnsignedModel(ModelVerificationError):
    """The artifact has no manifest or no signature."""


class UntrustedSignature(ModelVerificationError):
    """The signature is not valid under the trusted key (another signer, or a forged/changed manifest)."""


class TamperedModel(ModelVerificationError):
    """A file of the artifact differs from its signed manifest, is missing, or is not listed in it."""


# --------------------------------------------------------------------------------------- keys


def _config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME", "~/.config")).expanduser() / "hybrid"


def default_signing_key_path() -> Path:
    env = os.environ.get("HYB_MODEL_SIGNING_KEY")
    return Path(env).expanduser() if env else _config_dir() / "model-signing.pem"


def default_verify_key_path() -> Path:
    env = os.environ.get("HYB_MODEL_VERIFY_KEY")
    return Path(env).expanduser() if env else _public_path(default_signing_key_path())


def _public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_signing_key(path: Path | str | None = None, *, overwrite: bool = False) -> Ed25519PrivateKey:
    """Create a signing key file (mode 0600) and its public key beside it (`<path>.pub`)."""
    target = Path(path).expanduser() if path is not None else default_signing_key_path()
    if target.exists() and not overwrite:
        raise ConfigError(f"signing key {target} already exists; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _atomic_write(target, pem, mode=0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _atomic_write(_public_path(target), pub, mode=0o644)
    return key


def load_signing_key(path: Path | str | None = None) -> Ed25519PrivateKey:
    """Read a signing key; refuses a file that group or others may read."""
    target = Path(path).expanduser() if path is not None else default_signing_key_path()
    try:
        st = target.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"no model signing key at {target}: create one with `hybrid models keygen` "
            "or point HYB_MODEL_SIGNING_KEY at one"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"signing key {target} may be read by others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(target.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {target} cannot be read: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {target} is not an Ed25519 key")
    return key


def load_verify_key(key: Ed25519PublicKey | Ed25519PrivateKey | Path | str | None = None) -> Ed25519PublicKey:
    """The trusted public key: given, read from a PEM file, or the default trust.

    The default trust is `$HYB_MODEL_VERIFY_KEY`, else the `.pub` beside the default signing key, else
    the public half of the default signing key itself.
    """
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if key is None:
        path = default_verify_key_path()
        if not path.exists() and "HYB_MODEL_VERIFY_KEY" not in os.environ and default_signing_key_path().exists():
            return load_signing_key().public_key()
    else:
        path = Path(key).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"no trusted model key at {path}: set HYB_MODEL_VERIFY_KEY to the publisher's public key ({exc.strerror})"
        ) from None
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            loaded = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not a PEM public key") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return loaded


# --------------------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    runtime: str
    created: str
    files: tuple[FileEntry, ...]
    key_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def sha256(self) -> str:
        """Digest of the sorted file list (path, sha256, size): one hash that names the whole artifact."""
        listing = "".join(f"{f.path}\x00{f.sha256}\x00{f.size}\n" for f in sorted(self.files, key=lambda f: f.path))
        return hashlib.sha256(listing.encode()).hexdigest()

    def to_bytes(self) -> bytes:
        doc = {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "version": self.version,
            "runtime": self.runtime,
            "created": self.created,
            "sha256": self.sha256,
            "size": self.size,
            "key_id": self.key_id,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "metadata": dict(self.metadata),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "manifest") -> ModelManifest:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"not a {MANIFEST_FORMAT} document")
            files = tuple(FileEntry(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in doc["files"])
            m = cls(
                name=str(doc["name"]),
                version=str(doc["version"]),
                runtime=str(doc["runtime"]),
                created=str(doc["created"]),
                files=files,
                key_id=str(doc["key_id"]),
                metadata=dict(doc.get("metadata") or {}),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TamperedModel(f"{where} is not a valid manifest: {exc}") from exc
        if m.sha256 != doc.get("sha256") or m.size != doc.get("size"):
            raise TamperedModel(f"{where}: sha256/size do not match its file list")
        return m


@dataclass(frozen=True)
class VerifiedModel:
    manifest: ModelManifest
    path: Path

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self.manifest.metadata


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    active: bool
    retired: bool
    signed: bool
    runtime: str
    size: int
    created: str


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def canary_bucket(model: str, request_key: str) -> int:
    """Same function as `policies.canary.canary_bucket` (kept in step by a test)."""
    digest = blake2b(f"{model}\x00{request_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def _check_name(kind: str, value: str) -> str:
    if not value or value in {".", ".."} or "/" in value or "\\" in value or value.startswith(".") or "\x00" in value:
        raise ModelRegistryError(f"invalid model {kind} {value!r}")
    return value


# --------------------------------------------------------------------------------------- registry


class ModelRegistry:
    """The models of one directory: install, sign, verify, list, activate, roll back, canary-select."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    # -- layout
    def model_dir(self, name: str, version: str) -> Path:
        return self.root / _check_name("name", name) / _check_name("version", version)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[str]:
        base = self.root / _check_name("name", name)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    # -- state
    @contextlib.contextmanager
    def _state(self, *, write: bool) -> Iterator[dict[str, Any]]:
        path = self.root / STATE_FILE
        if not write:
            yield self._read_state(path)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / (STATE_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = self._read_state(path)
            yield doc
            _atomic_write(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)

    def _read_state(self, path: Path) -> dict[str, Any]:
        if not path.exists():
            return {"format": STATE_FORMAT, "models": {}}
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelRegistryError(f"registry state {path} cannot be read: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or not isinstance(doc.get("models"), dict):
            raise ModelRegistryError(f"{path} is not a {STATE_FORMAT} file")
        return doc

    def _model_state(self, doc: dict[str, Any], name: str) -> dict[str, Any]:
        models: dict[str, Any] = doc["models"]
        entry: dict[str, Any] = models.setdefault(name, {"active": None, "history": [], "retired": []})
        return entry

    def active_version(self, name: str) -> str:
        with self._state(write=False) as doc:
            entry = doc["models"].get(name)
        active = entry.get("active") if isinstance(entry, dict) else None
        if not active:
            known = ", ".join(self.names()) or "none"
            raise ModelRegistryError(f"no active version of model {name!r} in {self.root} (models here: {known})")
        return str(active)

    def activate(self, name: str, version: str) -> None:
        """Make `version` the active one; the version it replaces goes on the rollback history."""
        if not (self.model_dir(name, version) / MANIFEST_FILE).exists():
            raise ModelRegistryError(f"model {name} {version} is not installed (or not signed) in {self.root}")
        with self._state(write=True) as doc:
            entry = self._model_state(doc, name)
            if entry["active"] and entry["active"] != version:
                entry["history"].append(entry["active"])
            entry["active"] = version
            entry["retired"] = [v for v in entry["retired"] if v != version]

    def rollback(self, name: str) -> tuple[str, str]:
        """Switch back to the previously active version; returns (from, to). The version left is retired."""
        with self._state(write=True) as doc:
            entry = doc["models"].get(name)
            if not isinstance(entry, dict) or not entry.get("active"):
                raise ModelRegistryError(f"model {name!r} has no active version in {self.root}")
            history = [v for v in entry["history"] if (self.model_dir(name, v) / MANIFEST_FILE).exists()]
            if not history:
                raise ModelRegistryError(f"model {name!r} has no earlier version to roll back to")
            current = str(entry["active"])
            previous = history.pop()
            entry["history"] = history
            entry["active"] = previous
            if current not in entry["retired"]:
                entry["retired"].append(current)
            return current, previous

    # -- canary
    def select(self, name: str, request_key: str, split: Sequence[tuple[str, float]] | None = None) -> str:
        """The version serving `request_key`: the policy's canary `split` ((version, percent) in policy
        order), restricted to installed, non-retired versions; the active version otherwise."""
        active = self.active_version(name)
        if not split:
            return active
        bucket = canary_bucket(name, request_key)
        upper = 0.0
        chosen = None
        for version, percent in split:
            upper += percent * BUCKETS / 100.0
            if bucket < round(upper):
                chosen = version
                break
        if chosen is None:
            chosen = next((v for v, p in reversed(split) if p > 0), active)
        with self._state(write=False) as doc:
            retired = set(doc["models"].get(name, {}).get("retired", []))
        if chosen in retired or not (self.root / name / chosen / MANIFEST_FILE).exists():
            return active
        return chosen

    # -- signing
    def sign(self, name: str, version: str, key: Ed25519PrivateKey, *, created: str | None = None) -> ModelManifest:
        """Write manifest.json (from the files present and model.json) and its signature."""
        base = self.model_dir(name, version)
        if not base.is_dir():
            raise ModelRegistryError(f"model {name} {version} is not installed in {self.root}")
        meta_path = base / META_FILE
        try:
            meta = json.loads(meta_path.read_text())
            runtime = str(meta["runtime"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelRegistryError(f"{meta_path} must exist and name the artifact's runtime: {exc}") from exc
        files = tuple(
            FileEntry(p.relative_to(base).as_posix(), _sha256_file(p), p.stat().st_size)
            for p in sorted(base.rglob("*"))
            if p.is_file() and p.relative_to(base).as_posix() not in _RESERVED
        )
        manifest = ModelManifest(
            name=name,
            version=version,
            runtime=runtime,
            created=created or datetime.now(UTC).isoformat(timespec="seconds"),
            files=files,
            key_id=key_id(key),
            metadata=meta.get("metadata", {}),
        )
        data = manifest.to_bytes()
        _atomic_write(base / MANIFEST_FILE, data)
        _atomic_write(base / SIGNATURE_FILE, key.sign(data).hex().encode() + b"\n")
        return manifest

    def install(
        self,
        name: str,
        version: str,
        src: Path,
        key: Ed25519PrivateKey,
        *,
        activate: bool = True,
        created: str | None = None,
    ) -> ModelManifest:
        """Copy the artifact directory `src` in as `name`/`version`, sign it, and (by default) activate it."""
        target = self.model_dir(name, version)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, target)
        manifest = self.sign(name, version, key, created=created)
        if activate:
            self.activate(name, version)
        return manifest

    # -- verification
    def verify(
        self, name: str, version: str | None = None, *, verify_key: Ed25519PublicKey | Path | str | None = None
    ) -> VerifiedModel:
        """Check the signature, then every file. Returns the manifest and the directory to load from."""
        version = version or self.active_version(name)
        base = self.model_dir(name, version)
        what = f"model {name} {version}"
        if not base.is_dir():
            raise ModelRegistryError(f"{what} is not installed in {self.root}")
        public = load_verify_key(verify_key)
        try:
            data = (base / MANIFEST_FILE).read_bytes()
            sig_text = (base / SIGNATURE_FILE).read_text().strip()
        except FileNotFoundError as exc:
            raise UnsignedModel(
                f"{what} is not signed ({Path(exc.filename).name} missing): refusing to load it; "
                f"sign it with `hybrid models sign {name} {version}`",
                name=name,
                version=version,
            ) from None
        try:
            signature = bytes.fromhex(sig_text)
            public.verify(signature, data)
        except (ValueError, InvalidSignature):
            signer = ""
            with contextlib.suppress(Exception):
                signer = f" (manifest names signer {json.loads(data).get('key_id')}, trusted key is {key_id(public)})"
            raise UntrustedSignature(
                f"{what}: signature does not verify under the trusted key{signer}: refusing to load it",
                name=name,
                version=version,
            ) from None
        manifest = ModelManifest.from_bytes(data, where=f"{what} manifest")
        if manifest.name != name or manifest.version != version:
            raise TamperedModel(
                f"{what}: manifest is for {manifest.name} {manifest.version} (moved between directories?)",
                name=name,
                version=version,
            )
        listed = {f.path for f in manifest.files}
        present = {
            p.relative_to(base).as_posix()
            for p in base.rglob("*")
            if p.is_file() and p.relative_to(base).as_posix() not in _RESERVED
        }
        if present - listed:
            raise TamperedModel(f"{what}: files not in the signed manifest: {sorted(present - listed)}", name=name)
        for f in manifest.files:
            path = base / f.path
            if not path.is_file():
                raise TamperedModel(f"{what}: {f.path} is missing", name=name, version=version)
            if path.stat().st_size != f.size or _sha256_file(path) != f.sha256:
                raise TamperedModel(
                    f"{what}: {f.path} does not match its signed sha256 — the file was changed: refusing to load it",
                    name=name,
                    version=version,
                )
        return VerifiedModel(manifest, base)

    # -- listing
    def list(self) -> list[ModelEntry]:
        with self._state(write=False) as doc:
            states: dict[str, Any] = doc["models"]
        out: list[ModelEntry] = []
        for name in self.names():
            state = states.get(name, {})
            for version in self.versions(name):
                base = self.root / name / version
                signed = (base / MANIFEST_FILE).exists() and (base / SIGNATURE_FILE).exists()
                runtime, size, created = "?", 0, ""
                if signed:
                    with contextlib.suppress(ModelVerificationError, OSError):
                        m = ModelManifest.from_bytes((base / MANIFEST_FILE).read_bytes())
                        runtime, size, created = m.runtime, m.size, m.created
                out.append(
                    ModelEntry(
                        name=name,
                        version=version,
                        active=state.get("active") == version,
                        retired=version in state.get("retired", []),
                        signed=signed,
                        runtime=runtime,
                        size=size,
                        created=created,
                    )
                )
        return out
