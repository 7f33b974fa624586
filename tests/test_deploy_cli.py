"""`hybrid deploy`: file modes, password handling, bad input, and the ACL kept in step with `broker.keys`."""

from __future__ import annotations

import fnmatch
import inspect
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from broker import keys
from hybrid.cli import cli
from hybrid.deploy.acl import acl_users, password_env_var, read_secrets


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_redis_acl_writes_private_files_and_keeps_passwords(tmp_path: Path) -> None:
    out = tmp_path / "users.acl"
    runner = CliRunner()
    first = runner.invoke(cli, ["deploy", "redis-acl", "--zone", "eu-west", "--zone", "bd-dhaka", "--out", str(out)])
    assert first.exit_code == 0, first.output
    secrets = out.with_name("users.acl.secrets.env")
    assert _mode(out) == 0o600 and _mode(secrets) == 0o600
    text = out.read_text()
    names = [line.split()[1] for line in text.splitlines()]
    zone_users = [f"{role}-{z}" for z in ("eu-west", "bd-dhaka") for role in ("edge", "api", "worker")]
    assert names == ["default", *zone_users, "exporter", "admin"]
    assert "user default off" in text
    passwords = read_secrets(secrets)
    assert len(passwords) == 8 and all(len(p) >= 32 for p in passwords.values())
    assert not any(p in text for p in passwords.values())  # only hashes in the ACL file
    again = runner.invoke(cli, ["deploy", "redis-acl", "--zone", "eu-west", "--zone", "bd-dhaka", "--out", str(out)])
    assert again.exit_code == 0 and "kept" in again.output
    assert read_secrets(secrets) == passwords and out.read_text() == text
    rotated = runner.invoke(cli, ["deploy", "redis-acl", "--zone", "eu-west", "--out", str(out), "--rotate"])
    assert rotated.exit_code == 0
    assert read_secrets(secrets)["HYB_REDIS_PASSWORD_ADMIN"] != passwords["HYB_REDIS_PASSWORD_ADMIN"]


def test_redis_acl_takes_passwords_from_env_and_refuses_weak_ones(tmp_path: Path) -> None:
    out = tmp_path / "users.acl"
    env = {password_env_var("edge-eu"): "a-long-enough-password-1"}
    ok = CliRunner().invoke(cli, ["deploy", "redis-acl", "--zone", "eu", "--out", str(out)], env=env)
    assert ok.exit_code == 0, ok.output
    assert (
        read_secrets(out.with_name("users.acl.secrets.env"))["HYB_REDIS_PASSWORD_EDGE_EU"]
        == env["HYB_REDIS_PASSWORD_EDGE_EU"]
    )
    weak = CliRunner().invoke(
        cli, ["deploy", "redis-acl", "--zone", "eu", "--out", str(out)], env={"HYB_REDIS_PASSWORD_ADMIN": "short"}
    )
    assert weak.exit_code == 2 and "HYB_REDIS_PASSWORD_ADMIN" in weak.output and "Traceback" not in weak.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["deploy", "redis-acl", "--zone", "EU West", "--out", "x.acl"], "invalid zone"),
        (["deploy", "redis-acl", "--out", "x.acl"], "--zone"),
        (["deploy", "redis-conf", "--tls-port", "70000"], "70000"),
        (["deploy", "redis-conf", "--appendfsync", "no"], "appendfsync"),
        (["deploy", "redis-conf", "--dir", "/a b"], "dir"),
        (["deploy", "certs", "--out", "d", "--days", "0"], "days"),
        (["deploy", "certs", "--out", "d", "--client", "bad/name"], "client name"),
    ],
)
def test_bad_input_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output


def test_redis_conf_is_tls_only_with_aof(tmp_path: Path) -> None:
    out = tmp_path / "redis.conf"
    result = CliRunner().invoke(cli, ["deploy", "redis-conf", "--out", str(out), "--appendfsync", "always"])
    assert result.exit_code == 0, result.output
    directives = {
        line.split()[0]: line.split(None, 1)[1] if " " in line else ""
        for line in out.read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert directives["port"] == "0" and directives["tls-port"] == "6380"
    assert directives["appendonly"] == "yes" and directives["appendfsync"] == "always"
    assert directives["tls-auth-clients"] == "yes" and directives["protected-mode"] == "yes"
    assert directives["aclfile"] == "/etc/redis/users.acl" and directives["maxmemory-policy"] == "noeviction"
    assert "power loss" in out.read_text()  # the trade-off is explained where it is chosen


def test_certs_have_sans_usages_and_private_keys(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    result = CliRunner().invoke(cli, ["deploy", "certs", "--out", str(out), "--client", "worker", "--client", "edge"])
    assert result.exit_code == 0, result.output
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    worker = x509.load_pem_x509_certificate((out / "worker.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "redis", "redis.hybrid.svc.cluster.local"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    server.verify_directly_issued_by(ca)
    worker.verify_directly_issued_by(ca)
    eku = worker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    for key in ("ca.key", "server.key", "worker.key", "edge.key"):
        assert _mode(out / key) == 0o600
    again = CliRunner().invoke(cli, ["deploy", "certs", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def _sample_keys(zone: str) -> dict[str, str]:
    """Every key `broker.keys` can build, by builder name (sample arguments)."""
    samples = {"lane": "interactive", "job_id": "01J0000000", "name": "c-1", "tenant": "t1", "scope": "global"}
    out: dict[str, str] = {}
    for name in keys.__all__:
        fn = getattr(keys, name)
        if not inspect.isfunction(fn) or name.startswith("check") or name == "zone_prefix":
            continue
        params = list(inspect.signature(fn).parameters)
        if params[:1] != ["zone"]:
            continue
        out[name] = fn(zone, *(samples.get(p, "x1") for p in params[1:]))
    return out


def _grants(user_name: str, zone: str) -> list[tuple[str, str]]:
    """(pattern, commands) of every root and selector grant of a user."""
    [user] = [u for u in acl_users([zone]) if u.name == user_name]
    out = [(k.pattern, " ".join(user.commands)) for k in user.keys]
    for s in user.selectors:
        out += [(k.pattern, " ".join(s.commands)) for k in s.keys]
    return out


def test_every_broker_key_is_granted_to_a_zone_role() -> None:
    """A key added to `broker.keys` without an ACL grant fails here (workers would get NOPERM in production)."""
    zone = "eu"
    built = _sample_keys(zone)
    assert {"jobs_stream", "dlq_stream", "result_key", "reply_stream", "admission_state"} <= set(built)
    granted = _grants(f"edge-{zone}", zone) + _grants(f"worker-{zone}", zone)
    missing = [n for n, key in built.items() if not any(fnmatch.fnmatchcase(key, p) for p, _ in granted)]
    assert missing == [], f"no edge/worker ACL grant covers the keys of {missing}: add one in hybrid/deploy/acl.py"
    # and no grant reaches another zone
    other = _sample_keys("us")
    leaks = [n for n, key in other.items() if any(fnmatch.fnmatchcase(key, p) for p, _ in granted)]
    assert leaks == []
