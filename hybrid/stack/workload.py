"""The e-learning workload: student questions (Bengali and English, some with PII) and essays.

Questions come from the labelled test split (`data/questions/test.jsonl`), so every answer can be
scored. A share of them carries a student's personal data around the question — a roster name, a
phone number in ASCII or Bengali digits, an e-mail address — the way students write to a tutor
app; the label is the question's. Every PII value put into the trace is listed, so the demo can
check independently that none of them reached Redis.

Essays are short school essays (Bengali and English) signed with the student's name and contact.
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

_ESSAY_TOPICS_EN = ["the water cycle", "the importance of trees", "my school library", "the Padma river", "monsoon"]
_ESSAY_TOPICS_BN = ["জলচক্র", "গাছের গুরুত্ব", "আমাদের বিদ্যালয়", "পদ্মা নদী", "বর্ষাকাল"]


@dataclass
class Item:
    kind: str  # "question" | "essay"
    text: str
    lang: str
    label: str | None = None
    pii: list[str] = field(default_factory=list)
    id: str = ""


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


def essays(n: int, *, seed: int = 11) -> list[Item]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2:
            topic, name, phone = rng.choice(_ESSAY_TOPICS_BN), rng.choice(NAMES_BN), rng.choice(PHONES_BN)
            body = [
                f"{topic} আমাদের জীবনে খুব গুরুত্বপূর্ণ।",
                f"প্রথমত, {topic} প্রকৃতির একটি অংশ।",
                "কারণ এটি আমাদের খাদ্য ও জল দেয়, তাই আমাদের এর যত্ন নেওয়া উচিত।",
                "যেমন, গ্রামের মানুষ এর উপর নির্ভর করে।",
                "অবশেষে বলা যায়, আমাদের সবাইকে সচেতন হতে হবে।",
            ]
            body = body[: rng.randint(2, len(body))]
            text = (
                " ".join(body) + "\n\n" + " ".join(rng.sample(body, k=min(2, len(body)))) + f"\n\n— {name}, ফোন {phone}"
            )
            lang = "bn"
        else:
            topic, name, email = rng.choice(_ESSAY_TOPICS_EN), rng.choice(NAMES_EN), rng.choice(EMAILS)
            phone = ""
            body = [
                f"{topic.capitalize()} matters to every one of us.",
                f"First, {topic} shapes the land we live on.",
                "Because farmers depend on it, therefore we should protect it.",
                "For example, villages near rivers need clean water.",
                "However, pollution is growing.",
                "Finally, students can help by teaching their families.",
            ]
            body = body[: rng.randint(2, len(body))]
            text = " ".join(body) + "\n\n" + " ".join(rng.sample(body, k=min(2, len(body)))) + f"\n\n— {name}, {email}"
            lang = "en"
        pii = [name, phone] if lang == "bn" else [name, email]
        out.append(Item("essay", text, lang, None, [p for p in pii if p], f"essay-{i}"))
    return out


def all_pii_values(items: list[Item]) -> list[str]:
    return sorted({v for it in items for v in it.pii})


__all__ = ["Item", "all_pii_values", "essays", "load_questions", "questions"]
