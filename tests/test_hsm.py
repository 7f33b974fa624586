"""The PKCS#11 key provider against a real SoftHSM2 token: non-extractable KEKs, round trip, rotation,
and residency (a worker holding another zone's token cannot open a job)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.envelope import Envelope
from broker.errors import ConfigError, TamperedMessage, UnknownKey
from broker.keyring import LocalKeyring
from broker.message import JobSpec, Sealer

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed (extra [hsm])")
from broker.hsm import Pkcs11KeyProvider, kek_label  # noqa: E402

_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
SOFTHSM = next((p for p in _CANDIDATES if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(
    SOFTHSM is None or shutil.which("softhsm2-util") is None, reason="SoftHSM2 is not installed (Debian softhsm2)"
)
PIN, SO_PIN = "20482048", "40964096"
EU, US = "eu-west", "us-east"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A token per zone (and two for other tests) in a SoftHSM2 store of our own, made before the library loads."""
    d = tmp_path_factory.mktemp("softhsm")
    (d / "tokens").mkdir()
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    # every token up front: SoftHSM2 lists the tokens of its store when the library is initialised
    for label in (f"hyb-{EU}", f"hyb-{US}", "hyb-rot", "hyb-pin"):
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", PIN],
            check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        )  # fmt: skip
    assert SOFTHSM is not None
    try:
        yield SOFTHSM
    finally:
        if before is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = before


@pytest.fixture(scope="module")
def eu(tokens: str) -> Pkcs11KeyProvider:
    provider = Pkcs11KeyProvider(tokens, f"hyb-{EU}", PIN, zones=[EU])
    provider.create_kek(EU)
    return provider


@pytest.fixture(scope="module")
def us(tokens: str) -> Pkcs11KeyProvider:
    provider = Pkcs11KeyProvider(tokens, f"hyb-{US}", PIN, zones=[US])
    provider.create_kek(US)
    return provider


def test_kek_lives_in_the_token_and_cannot_be_extracted(eu: Pkcs11KeyProvider, tokens: str) -> None:
    token = pkcs11.lib(tokens).get_token(token_label=f"hyb-{EU}")
    with token.open() as session:  # this process is logged in already (the provider's session)
        kek = session.get_key(object_class=pkcs11.ObjectClass.SECRET_KEY, label=kek_label(EU, 1))
        assert kek[pkcs11.Attribute.SENSITIVE] is True and kek[pkcs11.Attribute.EXTRACTABLE] is False
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            kek[pkcs11.Attribute.VALUE]


def test_round_trip_through_the_token(eu: Pkcs11KeyProvider) -> None:
    dek = os.urandom(32)
    kid, wrapped = eu.wrap(EU, dek)
    assert kid == f"{EU}/v1" and len(wrapped) == 40 and dek not in wrapped
    assert eu.unwrap(kid, wrapped) == dek
    flipped = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with pytest.raises(TamperedMessage):
        eu.unwrap(kid, flipped)


def test_a_job_sealed_with_the_token_opens_on_a_worker_with_the_token(eu: Pkcs11KeyProvider, tokens: str) -> None:
    worker = Pkcs11KeyProvider(tokens, f"hyb-{EU}", PIN, zones=[EU])  # its own session, like another process
    header, h, b = Sealer(Envelope(eu)).seal_job(EU, JobSpec(task="grade", inputs={"essay": "গীতাঞ্জলি"}), None)
    job = Sealer(Envelope(worker)).open_job(EU, {b"h": h, b"b": b})
    assert job.payload.inputs == {"essay": "গীতাঞ্জলি"} and job.header.job_id == header.job_id


def test_rotation_new_version_encrypts_old_still_opens(tokens: str) -> None:
    zone = "rot-zone"
    p = Pkcs11KeyProvider(tokens, "hyb-rot", PIN, zones=[zone])
    assert p.create_kek(zone) == f"{zone}/v1"
    old_kid, old = p.wrap(zone, b"\x01" * 32)
    assert p.create_kek(zone) == f"{zone}/v2"
    new_kid, new = p.wrap(zone, b"\x02" * 32)
    assert (old_kid, new_kid) == (f"{zone}/v1", f"{zone}/v2") and p.versions(zone) == [1, 2]
    assert p.unwrap(old_kid, old) == b"\x01" * 32 and p.unwrap(new_kid, new) == b"\x02" * 32
    with pytest.raises(TamperedMessage):  # wrapped under v1, presented as v2
        p.unwrap(new_kid, old)


def test_a_worker_with_another_zones_token_cannot_open_the_job(
    eu: Pkcs11KeyProvider, us: Pkcs11KeyProvider, tokens: str
) -> None:
    _, h, b = Sealer(Envelope(eu)).seal_job(EU, JobSpec(task="t", inputs={"q": "private"}), None)
    with pytest.raises(UnknownKey):
        Sealer(Envelope(us)).open_job(EU, {b"h": h, b"b": b})  # zone restriction of the provider
    unrestricted = Pkcs11KeyProvider(tokens, f"hyb-{US}", PIN)  # even without it: the token has no such KEK
    with pytest.raises(UnknownKey):
        Sealer(Envelope(unrestricted)).open_job(EU, {b"h": h, b"b": b})


def test_same_wrapped_format_as_the_local_keyring(eu: Pkcs11KeyProvider, tmp_path: Path) -> None:
    """RFC 3394 both ways: a DEK the token wraps is 40 bytes, like LocalKeyring's — the format is shared."""
    path = tmp_path / "keyring.json"
    LocalKeyring.init_zone(path, EU)
    _, local = LocalKeyring(path, zones=[EU]).wrap(EU, b"\x07" * 32)
    _, token = eu.wrap(EU, b"\x07" * 32)
    assert len(local) == len(token) == 40 and local != token


def test_bad_configuration_is_a_clear_error(tokens: str) -> None:
    with pytest.raises(ConfigError, match="no PKCS#11 token"):
        Pkcs11KeyProvider(tokens, "no-such-token", PIN)
    with pytest.raises(ConfigError, match="PIN"):
        Pkcs11KeyProvider(tokens, "hyb-pin", "00000000")
    with pytest.raises(ConfigError, match="HYB_PKCS11"):
        old = {
            k: os.environ.pop(k) for k in ("HYB_PKCS11_LIB", "HYB_PKCS11_TOKEN", "HYB_PKCS11_PIN") if k in os.environ
        }
        try:
            Pkcs11KeyProvider.from_env()
        finally:
            os.environ.update(old)


def test_settings_select_the_hsm_provider(eu: Pkcs11KeyProvider, tokens: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.client import sealer_from_settings
    from broker.settings import load_settings

    monkeypatch.setenv("HYB_PKCS11_LIB", tokens)
    monkeypatch.setenv("HYB_PKCS11_TOKEN", f"hyb-{EU}")
    monkeypatch.setenv("HYB_PKCS11_PIN", PIN)
    monkeypatch.setenv("HYB_KEY_PROVIDER", "pkcs11")
    sealer = sealer_from_settings(load_settings(zone=EU))
    _, h, b = Sealer(Envelope(eu)).seal_job(EU, JobSpec(task="t", inputs={"x": "ঢাকা"}), None)
    assert sealer.open_job(EU, {b"h": h, b"b": b}).payload.inputs == {"x": "ঢাকা"}
