"""PII detection, keyed tokens, the encrypted vault, and the detector's scores on the labelled set."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from edge_agent.pii import PiiDetector, PiiTokenizer, Roster, evaluate, load_examples, normalize_digits
from edge_agent.vault import DeviceKeys, Vault, VaultError

ROOT = Path(__file__).resolve().parents[1]
ROSTER = ROOT / "data" / "pii" / "roster.yaml"
TEST_SET = ROOT / "data" / "pii" / "test.jsonl"


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    return PiiDetector(Roster.load(ROSTER))


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault.open(tmp_path / "state")


def kinds(detector: PiiDetector, text: str) -> list[tuple[str, str]]:
    return [(s.type, text[s.start : s.end]) for s in detector.detect(text)]


def test_bengali_digits_map_one_to_one() -> None:
    assert normalize_digits("০১৭১২-৩৪৫৬৭৮") == "01712-345678"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 01712-345678 now", [("PHONE", "01712-345678")]),
        ("ফোন ০১৭১২৩৪৫৬৭৮ নম্বরে", [("PHONE", "০১৭১২৩৪৫৬৭৮")]),
        ("India +91 98765 43210.", [("PHONE", "+91 98765 43210")]),
        ("NID 4567891234", [("NID", "4567891234")]),
        ("id 19875512345678901", [("NID", "19875512345678901")]),
        ("Aadhaar ২৩৪৫ ৬৭৮৯ ০১২৩ please", [("AADHAAR", "২৩৪৫ ৬৭৮৯ ০১২৩")]),
        ("mail A.B@x-y.org!", [("EMAIL", "A.B@x-y.org")]),
        ("রহিমের খাতা", [("NAME", "রহিম")]),
        ("রহিমা এসেছে", []),  # another name that starts like a roster name
        ("ask KARIM HOSSAIN", [("NAME", "KARIM HOSSAIN")]),
        ("Karimganj is in Assam; roll 20231045, year 2024", []),
        ("ISBN 9780306406157", []),
    ],
)
def test_detects_each_type(detector: PiiDetector, text: str, expected: list[tuple[str, str]]) -> None:
    assert kinds(detector, text) == expected


def test_same_value_same_token_and_round_trip(detector: PiiDetector, vault: Vault) -> None:
    tok = PiiTokenizer(detector, vault)
    text = "রহিম উদ্দিন (rahim@example.com, 01712-345678) asked about রহিম উদ্দিন's marks"
    out = tok.tokenize(text)
    assert "rahim@example.com" not in out.text and "01712-345678" not in out.text and "রহিম" not in out.text
    assert out.tokens[0] == out.tokens[-1]  # the same name twice: one token
    assert len(set(out.tokens)) == 3
    assert out.tokens[1].startswith("⟨PII:EMAIL:")
    assert tok.detokenize(out.text) == text
    # a cloud answer that quotes tokens is restored; unknown tokens are left alone
    answer = {"summary": f"{out.tokens[0]} asked", "items": [out.tokens[1], "⟨PII:EMAIL:00000000⟩"]}
    restored = {"summary": "রহিম উদ্দিন asked", "items": ["rahim@example.com", "⟨PII:EMAIL:00000000⟩"]}
    assert tok.detokenize_obj(answer) == restored


def test_tokens_depend_on_device_key_and_epoch(tmp_path: Path, detector: PiiDetector) -> None:
    a, b = Vault.open(tmp_path / "a"), Vault.open(tmp_path / "b")
    assert a.token_for("EMAIL", "x@y.com") == a.token_for("EMAIL", "x@y.com")
    assert a.token_for("EMAIL", "x@y.com") != b.token_for("EMAIL", "x@y.com")
    old = a.token_for("PHONE", "01712345678")
    a.keys.rotate()
    new = a.token_for("PHONE", "01712345678")
    assert new != old
    assert a.lookup([old, new]) == {old: "01712345678", new: "01712345678"}  # old epochs still detokenize
    reopened = Vault.open(tmp_path / "a")  # the key file and the vault survive a restart
    assert reopened.lookup([old]) == {old: "01712345678"}
    assert reopened.token_for("PHONE", "01712345678") == new


def test_vault_holds_no_value_in_clear_and_detects_tampering(tmp_path: Path) -> None:
    vault = Vault.open(tmp_path)
    token = vault.token_for("EMAIL", "secret.student@example.com")
    vault.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("vault.sqlite*"))
    assert b"secret.student" not in raw
    assert (tmp_path / "device_keys.json").stat().st_mode & 0o077 == 0
    db = sqlite3.connect(tmp_path / "vault.sqlite")
    other = Vault.open(tmp_path / "other").token_for("EMAIL", "x@y.z")
    db.execute("UPDATE tokens SET token = ? WHERE token = ?", (other, token))  # move a row to another token
    db.commit()
    db.close()
    with pytest.raises(VaultError, match="fails authentication"):
        Vault.open(tmp_path).lookup([other])


def test_bad_key_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "device_keys.json"
    path.write_text(json.dumps({"current": 3, "epochs": {"1": "AAAA"}}))
    with pytest.raises(VaultError, match="malformed"):
        DeviceKeys(path)
    path.write_text("{not json")
    with pytest.raises(VaultError, match="not readable"):
        DeviceKeys(path)


def test_purge_forgets_old_mappings(vault: Vault) -> None:
    t = vault.token_for("NAME", "Rahim")
    assert vault.purge(older_than_s=3600) == 0
    assert vault.purge(older_than_s=-1) == 1
    assert vault.lookup([t]) == {}


def test_bad_roster_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("students: [{names: Rahim}]")
    with pytest.raises(ValueError, match="'names' must be a list"):
        Roster.load(bad)


def test_scores_on_the_labelled_set(detector: PiiDetector) -> None:
    examples = load_examples(TEST_SET)
    assert {e.lang for e in examples} == {"bn", "en"}
    assert sum(len(e.spans) for e in examples if e.lang == "bn") >= 30
    scores = evaluate(detector, examples)
    for lang in ("bn", "en"):
        for typ in ("EMAIL", "PHONE", "NID", "AADHAAR", "NAME"):
            s = scores[lang][typ]
            assert s.tp >= 3, (lang, typ)
            assert s.recall >= 0.85, (lang, typ, s)
        assert scores[lang]["all"].precision >= 0.9, (lang, scores[lang]["all"])
    assert scores["all"]["all"].recall >= 0.9 and scores["all"]["all"].precision >= 0.9
    # the roster and the ID rules are what the bare regexes and phonenumbers lack
    baseline = evaluate(PiiDetector(bengali_digits=False), examples)
    assert scores["all"]["all"].recall > baseline["all"]["all"].recall + 0.3
