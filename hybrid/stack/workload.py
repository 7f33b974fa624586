"""The e-learning workload: student questions (Bengali and English, some with PII) and essays.

Questions come from the labelled test split (`data/questions/test.jsonl`), so every answer can be
scored. A share of them carries a student's personal data around the question — a roster name, a
phone number in ASCII or Bengali digits, an e-mail address — the way students write to a tutor
app; the label is the question's. Every PII value put into the trace is listed, so the demo can
check independently that none of them reached Redis.

Essays are students' written answers to questions of the grading bank (`data/grading/answers.jsonl`,
Bengali and English, each naming its `question_id`), signed with the student's name and contact;
they are graded by the grading driver (`hybrid.stack.essays`), not sent to the edge agents.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "data"

NAMES_EN = ["Rahim Uddin", "Fatema Khatun", "Ananya Das", "Tanvir Ahmed", "Nusrat Jahan", "Arko Mukherjee"]
NAMES_BN = ["রহিম উদ্দিন", "ফাতেমা খাতুন", "অনন্যা দাস", "তানভীর আহমেদ", "নুসরাত জাহান", "অর্ক মুখার্জি"]
PHONES_ASCII = ["01712-345678", "01819 456789", "+8801911223344", "+91 98300 12345"]
PHONES_BN = ["০১৭১২৩৪৫৬৭৮", "০১৯১১২২৩৩৪৪", "০১৮১৯৪৫৬৭৮৯"]
EMAILS = ["rahim.uddin@example.com", "ananya.das@school.example.org", "tanvir99@example.net"]

_WRAP_EN = [
    "Hi, I am {name}. {q}",
    "{q} My phone is {phone}, please call if needed.",
    "{q} Please reply to {email}.",
    "This is {name} ({email}). {q}",
]
_WRAP_BN = [
    "আমি {name}। {q}",
    "{q} আমার ফোন নম্বর {phone}।",
    "{q} উত্তর পাঠাও {email} ঠিকানায়।",
    "আমি {name}, ফোন {phone}। {q}",
]


@dataclass
class Item:
    kind: str  # "question" | "essay"
    text: str
    lang: str
    label: str | None = None
    pii: list[str] = field(default_factory=list)
    id: str = ""
    question_id: str | None = None  # essays: the question of the grading bank it answers


def load_questions(split: str = "test") -> list[dict[str, Any]]:
    with (DATA / "questions" / f"{split}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _with_pii(rng: random.Random, q: str, lang: str) -> tuple[str, list[str]]:
    if lang == "bn":
        name, phone = rng.choice(NAMES_BN), rng.choice(PHONES_BN + PHONES_ASCII[:1])
        template = rng.choice(_WRAP_BN)
    else:
        name, phone = rng.choice(NAMES_EN), rng.choice(PHONES_ASCII + PHONES_BN[:1])
        template = rng.choice(_WRAP_EN)
    email = rng.choice(EMAILS)
    text = template.format(name=name, phone=phone, email=email, q=q)
    values = [v for k, v in (("{name}", name), ("{phone}", phone), ("{email}", email)) if k in template]
    return text, values


def questions(n: int | None, *, seed: int = 7, pii_share: float = 0.3) -> list[Item]:
    """`n` labelled questions (None: the whole test split), in a shuffled, reproducible order."""
    rows = load_questions("test")
    rng = random.Random(seed)
    rng.shuffle(rows)
    if n is not None:
        rows = (rows * (n // len(rows) + 1))[:n]
    out = []
    for i, r in enumerate(rows):
        text, pii = str(r["text"]), list[str]()
        if rng.random() < pii_share:
            text, pii = _with_pii(rng, text, str(r["lang"]))
        out.append(Item("question", text, str(r["lang"]), str(r["label"]), pii, f"q{i}-{r['id']}"))
    return out


def load_graded_answers() -> list[dict[str, Any]]:
    with (DATA / "grading" / "answers.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def essays(n: int, *, seed: int = 11) -> list[Item]:
    """`n` answers of the grading set (alternating English and Bengali, reproducible), each signed with
    a roster name and a phone number or e-mail address — the PII the grading host tokenizes."""
    rows = load_graded_answers()
    rng = random.Random(seed)
    by_lang = {lang: [r for r in rows if r["lang"] == lang] for lang in ("en", "bn")}
    for group in by_lang.values():
        rng.shuffle(group)
    out = []
    for i in range(n):
        lang = "bn" if i % 2 else "en"
        group = by_lang[lang]
        r = group[(i // 2) % len(group)]
        if lang == "bn":
            name, contact = rng.choice(NAMES_BN), rng.choice(PHONES_BN)
            text = f"{r['answer']}\n\n— {name}, ফোন {contact}"
        else:
            name, contact = rng.choice(NAMES_EN), rng.choice(EMAILS)
            text = f"{r['answer']}\n\n— {name}, {contact}"
        out.append(Item("essay", text, lang, None, [name, contact], f"essay-{i}-{r['id']}", str(r["question_id"])))
    return out


def all_pii_values(items: list[Item]) -> list[str]:
    return sorted({v for it in items for v in it.pii})


__all__ = ["Item", "all_pii_values", "essays", "load_graded_answers", "load_questions", "questions"]
