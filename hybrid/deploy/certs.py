"""A private CA and server/client certificates, for trying Redis mTLS locally (`hybrid deploy certs`).

Files written (keys 0600, PEM):

    ca.crt / ca.key            the CA (ECDSA P-256, path length 0)
    server.crt / server.key    Redis: SANs localhost, 127.0.0.1, ::1 and the service names given
    client.crt / client.key    one client certificate (clientAuth), or `<name>.crt/.key` per client name

In production use cert-manager (deploy/k8s/redis-certificate.yaml) or your PKI; these are for a laptop,
CI, and the compose stack.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hybrid.deploy.acl import write_private

DEFAULT_SERVER_NAMES = (
    "localhost",
    "127.0.0.1",
    "::1",
    "redis",
    "redis.hybrid.svc",
    "redis.hybrid.svc.cluster.local",
    "redis-0.redis.hybrid.svc.cluster.local",
)


@dataclass
class CertBundle:
    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name → (cert, key)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hybrid AI Stack"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    days: int,
    *,
    server_names: Sequence[str] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_names:
        builder = builder.add_extension(_san(server_names), critical=False)
    elif client:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def write_certs(
    out: Path,
    *,
    server_names: Sequence[str] = DEFAULT_SERVER_NAMES,
    clients: Sequence[str] = ("client",),
    days: int = 365,
    ca_cn: str = "Hybrid AI Stack local CA",
) -> CertBundle:
    """Create a CA, a server certificate for `server_names`, and a client certificate per name in `clients`."""
    if not 1 <= days <= 3650:
        raise ValueError(f"invalid --days {days}: use 1 to 3650")
    if not server_names:
        raise ValueError("give at least one server name")
    for c in clients:
        if not c or not all(ch.isalnum() or ch in "-_." for ch in c):
            raise ValueError(f"invalid client name {c!r}: use letters, digits, '-', '_' or '.'")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(ca_cn)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (out / "ca.crt").write_bytes(ca.public_bytes(pem))
    write_private(out / "ca.key", _key_pem(ca_key).decode())

    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(server_names[0], server_key, ca_key, ca_name, days, server_names=server_names)
    (out / "server.crt").write_bytes(server.public_bytes(pem))
    write_private(out / "server.key", _key_pem(server_key).decode())

    bundle = CertBundle(out, out / "ca.crt", out / "server.crt", out / "server.key")
    for name in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, key, ca_key, ca_name, days, client=True)
        (out / f"{name}.crt").write_bytes(cert.public_bytes(pem))
        write_private(out / f"{name}.key", _key_pem(key).decode())
        bundle.clients[name] = (out / f"{name}.crt", out / f"{name}.key")
    return bundle


__all__ = ["DEFAULT_SERVER_NAMES", "CertBundle", "write_certs"]
