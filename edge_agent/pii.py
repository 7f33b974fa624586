"""PII detection and tokenization for Bengali and English text, on the device.

What is found (types):

    EMAIL     addresses (ASCII local part and domain)
    PHONE     numbers `phonenumbers` finds valid for Bangladesh (+880, 01XXXXXXXXX) or India (+91)
    NID       Bangladeshi national ID: 10, 13 or 17 digits (a 10-digit run is a NID when a NID keyword
              precedes it or it is not a valid Indian mobile number)
    AADHAAR   Indian Aadhaar-like numbers: 12 digits, written 4-4-4 or as one run, not starting with 0/1
    NAME      names from a configurable roster, each with its Bengali and English spellings

Bengali digits (U+09E6-U+09EF) are mapped to ASCII digits before matching; each is one code point, as is its
replacement, so every span found in the normalised text is a span of the original text.

`PiiTokenizer` replaces each value by a token such as `⟨PII:EMAIL:3f9a1c2b⟩`: an HMAC-SHA256 of
the type and the exact value under the device key of the current epoch (`edge_agent.vault`), so the
same value gives the same token within an epoch. The token → value mapping lives only in the
encrypted local vault; `detokenize` puts the values back.

`evaluate` scores a detector on a labelled set (`data/pii/test.jsonl`): precision and recall per type
and language, a span counted as found only when its type, start and end all match.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import phonenumbers

if TYPE_CHECKING:
    from edge_agent.vault import Vault

PII_TYPES: tuple[str, ...] = ("EMAIL", "PHONE", "NID", "AADHAAR", "NAME")

_BN_DIGITS = str.maketrans("০১২৩৪৫৬৭৮৯", "0123456789")
# a Bengali letter, vowel sign or mark, or any word character: what may not touch a name's edges
_WORDISH = r"\w\u0980-\u09FF"
# case endings and particles Bengali attaches to a name (রহিমের, রহিমকে, রহিমও …): the name is the span
_BN_SUFFIXES = ("দের", "ের", "এর", "কে", "রা", "র", "ও", "ই", "তে", "েরা")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# digit runs, allowing single spaces or dashes between groups; ids are picked from these
_AADHAAR_GROUPED = re.compile(r"(?<![\d+])[2-9]\d{3}[ -]\d{4}[ -]\d{4}(?![\d])")
_DIGIT_RUN = re.compile(r"(?<![\d+])\d{10,17}(?!\d)")
_NID_CONTEXT = re.compile(
    r"(?:\bNID\b|national\s+id|\bID\s*(?:no|number|#)|জাতীয়\s*পরিচয়|জাতীয় পরিচয়|এনআইডি|পরিচয়পত্র|আইডি)", re.IGNORECASE
)
_AADHAAR_CONTEXT = re.compile(r"(?:aadhaa?r|\bUID\b|আধার)", re.IGNORECASE)
_NOT_ID_CONTEXT = re.compile(r"(?:ISBN|ISSN)[^\d]{0,6}$", re.IGNORECASE)  # right before the digits
_MIN_PHONE_DIGITS = 7


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    type: str
    value: str = field(compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "type": self.type}


@dataclass(frozen=True)
class RosterEntry:
    """One person of the roster and every spelling of their name (Bengali and English)."""

    id: str
    spellings: tuple[str, ...]


class Roster:
    """Names to detect. Loaded from JSON/YAML: `[{"id": "s1", "names": ["Rahim Uddin", "রহিম উদ্দিন", "Rahim"]}]`."""

    def __init__(self, entries: Iterable[RosterEntry] = ()) -> None:
        self.entries = list(entries)
        spellings = sorted(
            {unicodedata.normalize("NFC", s).strip() for e in self.entries for s in e.spellings if s.strip()},
            key=len,
            reverse=True,
        )
        self._pattern: re.Pattern[str] | None = None
        if spellings:
            alts = "|".join(re.escape(s).replace(r"\ ", r"\s+") for s in spellings)
            suffix = "|".join(sorted(_BN_SUFFIXES, key=len, reverse=True))
            self._pattern = re.compile(
                rf"(?<![{_WORDISH}])(?P<name>{alts})(?=(?:{suffix})?(?![{_WORDISH}]))", re.IGNORECASE
            )

    @classmethod
    def from_data(cls, data: Sequence[Mapping[str, Any]]) -> Roster:
        entries = []
        for i, item in enumerate(data):
            names = item.get("names")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"roster entry {i}: 'names' must be a list of strings")
            entries.append(RosterEntry(str(item.get("id", i)), tuple(names)))
        return cls(entries)

    @classmethod
    def load(cls, path: Path | str) -> Roster:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read roster {path}: {exc}") from None
        if isinstance(data, dict):
            data = data.get("students", data.get("roster"))
        if not isinstance(data, list):
            raise ValueError(f"roster {path}: expected a list of entries (or a 'students' list)")
        return cls.from_data(data)

    def find(self, text: str) -> list[Span]:
        if self._pattern is None:
            return []
        return [Span(m.start("name"), m.end("name"), "NAME", m.group("name")) for m in self._pattern.finditer(text)]


def normalize_digits(text: str) -> str:
    """Bengali digits → ASCII digits, code point for code point (spans stay valid)."""
    return text.translate(_BN_DIGITS)


class PiiDetector:
    """Finds PII spans in Bengali and English text. Thread-safe (no mutable state)."""

    def __init__(
        self, roster: Roster | None = None, regions: Sequence[str] = ("BD", "IN"), *, bengali_digits: bool = True
    ) -> None:
        self.roster = roster or Roster()
        self.regions = tuple(regions)
        self.bengali_digits = bengali_digits  # False: the benchmark's baseline, ASCII digits only

    def detect(self, text: str) -> list[Span]:
        """Non-overlapping spans, in text order."""
        norm = normalize_digits(text) if self.bengali_digits else text
        candidates: list[Span] = []  # in priority order: earlier wins an overlap
        candidates += [Span(m.start(), m.end(), "EMAIL", text[m.start() : m.end()]) for m in _EMAIL.finditer(norm)]
        candidates += self._ids(norm, text)
        if sum(c.isdigit() for c in norm) >= _MIN_PHONE_DIGITS:
            candidates += self._phones(norm, text)
        candidates += self.roster.find(text)
        taken: list[Span] = []
        for span in candidates:
            if not any(span.start < t.end and t.start < span.end for t in taken):
                taken.append(span)
        return sorted(taken)

    def _ids(self, norm: str, text: str) -> list[Span]:
        out = [Span(m.start(), m.end(), "AADHAAR", text[m.start() : m.end()]) for m in _AADHAAR_GROUPED.finditer(norm)]
        for m in _DIGIT_RUN.finditer(norm):
            digits = m.group()
            before = norm[max(0, m.start() - 40) : m.start()]
            kind: str | None = None
            if _NOT_ID_CONTEXT.search(before):
                continue
            if len(digits) in (13, 17):
                kind = "NID"
            elif len(digits) == 12:
                if _NID_CONTEXT.search(before) and not _AADHAAR_CONTEXT.search(before):
                    kind = None
                elif digits[0] not in "01":
                    kind = "AADHAAR"
            elif len(digits) == 10 and (_NID_CONTEXT.search(before) or not self._valid_phone(digits, "IN")):
                kind = "NID"
            if kind:
                out.append(Span(m.start(), m.end(), kind, text[m.start() : m.end()]))
        return out

    @staticmethod
    def _valid_phone(digits: str, region: str) -> bool:
        try:
            return phonenumbers.is_valid_number(phonenumbers.parse(digits, region))
        except phonenumbers.NumberParseException:
            return False

    def _phones(self, norm: str, text: str) -> list[Span]:
        out: list[Span] = []
        for region in self.regions:
            for m in phonenumbers.PhoneNumberMatcher(norm, region, leniency=phonenumbers.Leniency.VALID):
                if not any(m.start < s.end and s.start < m.end for s in out):
                    out.append(Span(m.start, m.end, "PHONE", text[m.start : m.end]))
        return out

    def has_pii(self, text: str) -> bool:
        return bool(self.detect(text))


TOKEN_RE = re.compile(r"⟨PII:(?P<type>[A-Z]+):(?P<digest>[0-9a-f]{8,32})⟩")


@dataclass(frozen=True)
class Tokenized:
    text: str
    spans: list[Span]  # spans of the original text that were replaced
    tokens: list[str]  # the token of each span, in the same order

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.spans:
            out[s.type] = out.get(s.type, 0) + 1
        return out


class PiiTokenizer:
    """Detect → replace by keyed tokens (mapping kept in the vault) → later, restore."""

    def __init__(self, detector: PiiDetector, vault: Vault) -> None:
        self.detector = detector
        self.vault = vault

    def tokenize(self, text: str) -> Tokenized:
        spans = self.detector.detect(text)
        parts: list[str] = []
        tokens: list[str] = []
        pos = 0
        for span in spans:
            token = self.vault.token_for(span.type, span.value)
            tokens.append(token)
            parts += [text[pos : span.start], token]
            pos = span.end
        parts.append(text[pos:])
        return Tokenized("".join(parts), spans, tokens)

    def detokenize(self, text: str) -> str:
        """Every token this vault knows is replaced by its value; unknown tokens stay as they are."""
        if "⟨PII:" not in text:
            return text
        found = {m.group(0) for m in TOKEN_RE.finditer(text)}
        values = self.vault.lookup(found)
        return TOKEN_RE.sub(lambda m: values.get(m.group(0), m.group(0)), text)

    def detokenize_obj(self, obj: Any) -> Any:
        """Detokenize every string inside a JSON-like value (a cloud result's output)."""
        if isinstance(obj, str):
            return self.detokenize(obj)
        if isinstance(obj, list):
            return [self.detokenize_obj(v) for v in obj]
        if isinstance(obj, dict):
            return {k: self.detokenize_obj(v) for k, v in obj.items()}
        return obj


# -------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Example:
    text: str
    lang: str
    spans: tuple[Span, ...]
    source: str = ""


def load_examples(path: Path | str) -> list[Example]:
    """The labelled set: one JSON object a line, `{"text", "lang", "spans": [{"start","end","type"}], "source"}`."""
    out: list[Example] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        text = d["text"]
        spans = []
        for s in d["spans"]:
            if s["type"] not in PII_TYPES or not 0 <= s["start"] < s["end"] <= len(text):
                raise ValueError(f"{path}:{n}: bad span {s}")
            spans.append(Span(s["start"], s["end"], s["type"], text[s["start"] : s["end"]]))
        out.append(Example(text, d["lang"], tuple(sorted(spans)), d.get("source", "")))
    return out


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
        }


def evaluate(detector: PiiDetector, examples: Iterable[Example]) -> dict[str, dict[str, Score]]:
    """Scores by language (`bn`, `en`, `all`) then by type (each type and `all`); exact span matches."""
    scores: dict[str, dict[str, Score]] = {}

    def bump(lang: str, typ: str, what: str) -> None:
        for lg in (lang, "all"):
            for tp in (typ, "all"):
                s = scores.setdefault(lg, {}).setdefault(tp, Score())
                setattr(s, what, getattr(s, what) + 1)

    for ex in examples:
        gold = {(s.start, s.end, s.type) for s in ex.spans}
        found = {(s.start, s.end, s.type) for s in detector.detect(ex.text)}
        for _, _, typ in gold & found:
            bump(ex.lang, typ, "tp")
        for _, _, typ in found - gold:
            bump(ex.lang, typ, "fp")
        for _, _, typ in gold - found:
            bump(ex.lang, typ, "fn")
    return scores


__all__ = [
    "PII_TYPES",
    "TOKEN_RE",
    "Example",
    "PiiDetector",
    "PiiTokenizer",
    "Roster",
    "RosterEntry",
    "Score",
    "Span",
    "Tokenized",
    "evaluate",
    "load_examples",
    "normalize_digits",
]
