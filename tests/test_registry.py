"""The signed model registry: Ed25519 manifests, refusal of tampered/unsigned/foreign artifacts, canary, rollback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from broker.errors import ConfigError, HybridError
from broker.registry import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    ModelRegistry,
    ModelRegistryError,
    ModelVerificationError,
    TamperedModel,
    UnsignedModel,
    UntrustedSignature,
    canary_bucket,
    generate_signing_key,
    key_id,
    load_signing_key,
    load_verify_key,
)
from hybrid.cli import cli
from policies.canary import canary_bucket as policy_bucket
from policies.canary import choose_version
from policies.model import ModelSpec


def _artifact(tmp: Path, payload: bytes = b"weights v1", runtime: str = "numpy") -> Path:
    src = tmp / f"src-{len(list(tmp.glob('src-*')))}"
    (src / "sub").mkdir(parents=True)
    (src / "model.json").write_text(json.dumps({"runtime": runtime, "metadata": {"labels": ["a", "b"]}}))
    (src / "weights.bin").write_bytes(payload)
    (src / "sub" / "vocab.txt").write_text("hello\nworld\n")
    return src


@pytest.fixture
def key(tmp_path: Path):  # type: ignore[no-untyped-def]
    return generate_signing_key(tmp_path / "keys" / "signing.pem")


@pytest.fixture
def reg(tmp_path: Path, key) -> ModelRegistry:  # type: ignore[no-untyped-def]
    registry = ModelRegistry(tmp_path / "models")
    registry.install("qclf", "1.0.0", _artifact(tmp_path, b"weights v1"), key)
    return registry


def test_signed_artifact_verifies_and_manifest_lists_every_file(reg: ModelRegistry, key) -> None:  # type: ignore[no-untyped-def]
    v = reg.verify("qclf", verify_key=key.public_key())
    m = v.manifest
    assert (m.name, m.version, m.runtime) == ("qclf", "1.0.0", "numpy")
    assert sorted(f.path for f in m.files) == ["model.json", "sub/vocab.txt", "weights.bin"]
    assert m.size == sum((v.path / f.path).stat().st_size for f in m.files)
    assert m.key_id == key_id(key) and len(m.sha256) == 64
    assert m.metadata["labels"] == ["a", "b"]
    assert reg.active_version("qclf") == "1.0.0"


@pytest.mark.parametrize("target", ["weights.bin", "sub/vocab.txt", "model.json"])
def test_a_changed_file_is_refused(reg: ModelRegistry, key, target: str) -> None:  # type: ignore[no-untyped-def]
    path = reg.model_dir("qclf", "1.0.0") / target
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TamperedModel, match=target):
        reg.verify("qclf", verify_key=key.public_key())


def test_an_added_or_removed_file_is_refused(reg: ModelRegistry, key) -> None:  # type: ignore[no-untyped-def]
    base = reg.model_dir("qclf", "1.0.0")
    (base / "extra.onnx").write_bytes(b"smuggled")
    with pytest.raises(TamperedModel, match=r"extra\.onnx"):
        reg.verify("qclf", verify_key=key.public_key())
    (base / "extra.onnx").unlink()
    (base / "sub" / "vocab.txt").unlink()
    with pytest.raises(TamperedModel, match="missing"):
        reg.verify("qclf", verify_key=key.public_key())


def test_an_edited_manifest_fails_the_signature(reg: ModelRegistry, key) -> None:  # type: ignore[no-untyped-def]
    path = reg.model_dir("qclf", "1.0.0") / MANIFEST_FILE
    doc = json.loads(path.read_bytes())
    doc["runtime"] = "torch"
    path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    with pytest.raises(UntrustedSignature):
        reg.verify("qclf", verify_key=key.public_key())


def test_unsigned_artifact_is_refused(reg: ModelRegistry, key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (reg.model_dir("qclf", "1.0.0") / SIGNATURE_FILE).unlink()
    with pytest.raises(UnsignedModel, match="not signed"):
        reg.verify("qclf", verify_key=key.public_key())
    # a directory copied in by hand, never signed
    raw = reg.root / "qclf" / "0.9.0"
    raw.mkdir()
    (raw / "model.json").write_text('{"runtime": "numpy"}')
    with pytest.raises(UnsignedModel):
        reg.verify("qclf", "0.9.0", verify_key=key.public_key())


def test_artifact_signed_by_another_key_is_refused(reg: ModelRegistry, key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = generate_signing_key(tmp_path / "other.pem")
    with pytest.raises(UntrustedSignature, match=key_id(other.public_key())) as info:
        reg.verify("qclf", verify_key=other.public_key())
    assert key_id(key) in str(info.value)  # says who signed it
    assert isinstance(info.value, ModelVerificationError) and isinstance(info.value, HybridError)


def test_manifest_moved_to_another_version_is_refused(reg: ModelRegistry, key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    shutil.copytree(reg.model_dir("qclf", "1.0.0"), reg.root / "qclf" / "2.0.0")
    with pytest.raises(TamperedModel, match="moved"):
        reg.verify("qclf", "2.0.0", verify_key=key.public_key())


def test_signing_key_file_is_private_and_never_overwritten(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys" / "signing.pem"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert key_id(load_signing_key(path)) == key_id(key)
    assert key_id(load_verify_key(Path(str(path) + ".pub"))) == key_id(key)
    with pytest.raises(ConfigError, match="already exists"):
        generate_signing_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="read by others"):
        load_signing_key(path)
    with pytest.raises(ConfigError, match="no model signing key"):
        load_signing_key(tmp_path / "nope.pem")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM"):
        load_verify_key(tmp_path / "junk.pub")


def test_default_trust_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("HYB_MODEL_SIGNING_KEY", raising=False)
    monkeypatch.delenv("HYB_MODEL_VERIFY_KEY", raising=False)
    with pytest.raises(ConfigError, match="no trusted model key"):
        load_verify_key()
    k = generate_signing_key()
    assert (tmp_path / "cfg" / "hybrid" / "model-signing.pem").exists()
    assert key_id(load_verify_key()) == key_id(k)
    other = generate_signing_key(tmp_path / "o.pem")
    monkeypatch.setenv("HYB_MODEL_VERIFY_KEY", str(tmp_path / "o.pem.pub"))
    assert key_id(load_verify_key()) == key_id(other)


def test_invalid_names_are_refused(reg: ModelRegistry) -> None:
    for bad in ("../etc", "a/b", ".hidden", ""):
        with pytest.raises(ModelRegistryError, match="invalid model"):
            reg.model_dir(bad, "1.0.0")


# --------------------------------------------------------------------------------------- canary, rollback


def _two_versions(tmp_path: Path, key) -> ModelRegistry:  # type: ignore[no-untyped-def]
    reg = ModelRegistry(tmp_path / "models")
    reg.install("qclf", "2.1.0", _artifact(tmp_path, b"v2.1"), key)
    reg.install("qclf", "2.2.0", _artifact(tmp_path, b"v2.2"), key)
    return reg


def test_bucketing_matches_the_policy_engine() -> None:
    for i in range(500):
        assert canary_bucket("qclf", f"req-{i}") == policy_bucket("qclf", f"req-{i}")


def test_canary_split_follows_the_policy_deterministically(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = _two_versions(tmp_path, key)
    assert reg.active_version("qclf") == "2.2.0"
    spec = ModelSpec.model_validate(
        {
            "name": "qclf",
            "task": "question-classification",
            "size_mb": 1,
            "runtime": "onnx",
            "ops_supported_locally": True,
            "edge_eligible": True,
            "versions": [{"version": "2.1.0", "canary_percent": 90}, {"version": "2.2.0", "canary_percent": 10}],
        }
    )
    split = [(v.version, v.canary_percent) for v in spec.versions]
    picks = [reg.select("qclf", f"req-{i}", split) for i in range(4000)]
    assert picks == [choose_version(spec, f"req-{i}")[0] for i in range(4000)]
    share = picks.count("2.2.0") / len(picks)
    assert 0.08 < share < 0.12
    assert picks == [reg.select("qclf", f"req-{i}", split) for i in range(4000)]  # same key, same version
    assert reg.select("qclf", "req-1") == "2.2.0"  # no split: the active version


def test_a_version_that_is_not_installed_gets_no_traffic(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = _two_versions(tmp_path, key)
    split = [("2.2.0", 50.0), ("9.9.9", 50.0)]
    assert {reg.select("qclf", f"r{i}", split) for i in range(300)} == {"2.2.0"}


def test_rollback_switches_back_and_retires_the_canary(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = _two_versions(tmp_path, key)
    split = [("2.1.0", 50.0), ("2.2.0", 50.0)]
    assert {reg.select("qclf", f"r{i}", split) for i in range(200)} == {"2.1.0", "2.2.0"}
    assert reg.rollback("qclf") == ("2.2.0", "2.1.0")
    assert reg.active_version("qclf") == "2.1.0"
    assert {reg.select("qclf", f"r{i}", split) for i in range(200)} == {"2.1.0"}
    entries = {e.version: e for e in reg.list()}
    assert entries["2.1.0"].active and entries["2.2.0"].retired and not entries["2.2.0"].active
    with pytest.raises(ModelRegistryError, match="no earlier version"):
        reg.rollback("qclf")
    reg.activate("qclf", "2.2.0")  # re-activating un-retires
    assert reg.active_version("qclf") == "2.2.0" and not {e.version: e for e in reg.list()}["2.2.0"].retired
    with pytest.raises(ModelRegistryError, match="not installed"):
        reg.activate("qclf", "3.0.0")
    with pytest.raises(ModelRegistryError, match="no active version"):
        reg.active_version("nope")


# --------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYB_MODEL_SIGNING_KEY", str(tmp_path / "k" / "signing.pem"))
    monkeypatch.setenv("HYB_MODEL_VERIFY_KEY", str(tmp_path / "k" / "signing.pem.pub"))
    monkeypatch.setenv("HYB_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path


def test_cli_keygen_sign_verify_list_rollback(cli_env: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["models", "keygen"])
    assert out.exit_code == 0, out.output
    again = runner.invoke(cli, ["models", "keygen"])
    assert again.exit_code == 2 and "already exists" in again.output and "Traceback" not in again.output
    # two hand-made versions, signed by the CLI
    for version, payload in (("1.0.0", b"one"), ("1.1.0", b"two")):
        target = cli_env / "models" / "qclf" / version
        target.mkdir(parents=True)
        (target / "model.json").write_text('{"runtime": "numpy"}')
        (target / "weights.bin").write_bytes(payload)
    out = runner.invoke(cli, ["models", "sign", "qclf"])
    assert out.exit_code == 0 and out.output.count("signed qclf") == 2, out.output
    reg = ModelRegistry(cli_env / "models")
    assert runner.invoke(cli, ["models", "activate", "qclf", "1.0.0"]).exit_code == 0
    assert runner.invoke(cli, ["models", "activate", "qclf", "1.1.0"]).exit_code == 0
    out = runner.invoke(cli, ["models", "verify"])
    assert out.exit_code == 0 and out.output.count("ok ") == 2, out.output
    listed = json.loads(runner.invoke(cli, ["models", "list", "--json"]).output)
    assert [(e["version"], e["active"], e["signed"]) for e in listed] == [("1.0.0", False, True), ("1.1.0", True, True)]
    out = runner.invoke(cli, ["models", "rollback", "qclf"])
    assert out.exit_code == 0 and "from 1.1.0 to 1.0.0" in out.output
    assert reg.active_version("qclf") == "1.0.0"
    # tamper: verify fails with exit 1 and names the file, no traceback
    (cli_env / "models" / "qclf" / "1.1.0" / "weights.bin").write_bytes(b"TWO")
    out = runner.invoke(cli, ["models", "verify"])
    assert out.exit_code == 1 and "weights.bin" in out.output and "1 of 2" in out.output
    assert "Traceback" not in out.output


def test_cli_errors_are_friendly(cli_env: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["models", "rollback", "ghost"])
    assert out.exit_code == 1 and "no active version" in out.output
    out = runner.invoke(cli, ["models", "verify"])
    assert out.exit_code == 2 and "no trusted model key" in out.output
    out = runner.invoke(cli, ["models", "sign", "ghost"])
    assert out.exit_code == 2 and "no model signing key" in out.output  # key checked first
    runner.invoke(cli, ["models", "keygen"])
    out = runner.invoke(cli, ["models", "verify"])
    assert out.exit_code == 2 and "no models" in out.output
    out = runner.invoke(cli, ["models", "sign", "ghost"])
    assert out.exit_code == 2 and "no model 'ghost'" in out.output
    out = runner.invoke(cli, ["models", "activate", "../x", "1"])
    assert out.exit_code == 1 and "invalid model name" in out.output
    for result in (out,):
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
