"""Workload traces: timed requests for `simulate`, generated or read from JSONL lines.

The e-learning generator models the case study's app: students ask questions in Bengali and
English, with a school-hours peak and an evening homework peak, ask for summaries of their notes,
and submit essays that are graded in one nightly batch. It is deterministic given its seed.

A trace spec is either a JSONL file (one `TraceRecord` per line; the CLI reads the file) or
`elearning:key=value,...` with the keys of `elearning_trace` (`day` is accepted for `days`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies.model import Lane, Sensitivity
from policies.request import Request

__all__ = [
    "GENERATORS",
    "QUESTIONS_PER_STUDENT_BY_HOUR",
    "TraceError",
    "TraceRecord",
    "TraceSpec",
    "dump_trace_jsonl",
    "elearning_trace",
    "generate_trace",
    "parse_trace_jsonl",
    "parse_trace_spec",
]

SECONDS_PER_DAY = 86_400.0

QUESTIONS_PER_STUDENT_BY_HOUR: tuple[float, ...] = (
    0.00,
    0.00,
    0.00,
    0.00,
    0.00,
    0.00,  # 00-05 asleep
    0.02,
    0.08,
    0.25,  # 06-08 before school
    0.60,
    0.90,
    1.00,
    0.80,  # 09-12 school-hours peak
    0.40,
    0.30,
    0.30,
    0.50,  # 13-16 afternoon
    0.90,
    1.20,
    1.30,
    1.00,  # 17-20 homework peak
    0.50,
    0.15,
    0.03,  # 21-23 winding down
)
"""Questions a student asks per hour, by local hour of day."""

SUMMARIES_PER_QUESTION = 0.12
ESSAY_BATCH_START_S = 1 * 3600.0  # 01:00 local: the nightly grading batch
ESSAY_BATCH_SPREAD_S = 20 * 60.0  # submitted by the backend over twenty minutes
BYTES_PER_CHAR = {"bn": 3, "en": 1}  # UTF-8: Bengali script is three bytes a character


class TraceError(ValueError):
    """A trace spec or trace file that cannot be used; the message says where and why."""


class TraceRecord(BaseModel):
    """One request of a trace: when it arrives (seconds from the trace's start, local midnight),
    the request, its language, and — for requests a device may answer — the confidence the local
    model would report, so the cascade can be simulated without running models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at_s: float = Field(ge=0.0)
    request: Request
    language: str | None = None
    local_confidence: float | None = Field(default=None, ge=0.0, le=1.0)


@dataclass(frozen=True)
class TraceSpec:
    generator: str
    params: dict[str, int]


def elearning_trace(
    *, days: int = 1, seed: int = 7, students: int = 300, essays_per_student: float = 0.3, bengali_share: float = 0.6
) -> list[TraceRecord]:
    """The case study's workload for `students` students over `days` days, sorted by arrival."""
    if days < 1 or students < 1:
        raise TraceError("days and students must be at least 1")
    if not 0.0 <= bengali_share <= 1.0 or essays_per_student < 0:
        raise TraceError("bengali_share must be in [0, 1] and essays_per_student at least 0")
    rng = random.Random(seed)
    records: list[TraceRecord] = []
    for day in range(days):
        base = day * SECONDS_PER_DAY
        for hour, per_student in enumerate(QUESTIONS_PER_STUDENT_BY_HOUR):
            start = base + hour * 3600.0
            for at in _poisson(rng, students * per_student, start):
                records.append(_question(rng, at, bengali_share))
            for at in _poisson(rng, students * per_student * SUMMARIES_PER_QUESTION, start):
                records.append(_summary(rng, at, bengali_share))
        for _ in range(_poisson_count(rng, students * essays_per_student)):
            at = base + ESSAY_BATCH_START_S + rng.uniform(0.0, ESSAY_BATCH_SPREAD_S)
            records.append(_essay(rng, at, bengali_share))
    records.sort(key=lambda r: r.at_s)
    width = len(str(len(records)))
    return [
        r.model_copy(update={"request": r.request.model_copy(update={"id": f"el-{seed}-{i:0{width}d}"})})
        for i, r in enumerate(records)
    ]


GENERATORS = {"elearning": elearning_trace}

_SPEC_KEYS = {"days": "days", "day": "days", "seed": "seed", "students": "students"}


def parse_trace_spec(spec: str) -> TraceSpec:
    """`elearning:days=1,seed=7,students=300` → TraceSpec. Unknown generators or keys are refused."""
    name, _, rest = spec.partition(":")
    if name not in GENERATORS:
        raise TraceError(f"unknown trace generator {name!r} (known: {', '.join(sorted(GENERATORS))})")
    params: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in _SPEC_KEYS:
            raise TraceError(f"bad trace parameter {item!r}: expected one of days=N, seed=N, students=N")
        try:
            params[_SPEC_KEYS[key.strip()]] = int(value)
        except ValueError:
            raise TraceError(f"trace parameter {key.strip()!r} needs a whole number, got {value!r}") from None
    return TraceSpec(name, params)


def generate_trace(spec: TraceSpec) -> list[TraceRecord]:
    generator = GENERATORS[spec.generator]
    return generator(**spec.params)


def parse_trace_jsonl(lines: Iterable[str], source: str = "<trace>") -> list[TraceRecord]:
    """One JSON object per line (blank lines and lines starting with # are skipped)."""
    records: list[TraceRecord] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            records.append(TraceRecord.model_validate(json.loads(text)))
        except json.JSONDecodeError as exc:
            raise TraceError(f"{source}:{number}: not JSON ({exc.msg})") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "record"
            raise TraceError(f"{source}:{number}: {field}: {first['msg']}") from None
    return records


def dump_trace_jsonl(records: Iterable[TraceRecord]) -> Iterator[str]:
    for record in records:
        yield record.model_dump_json(exclude_none=True)


# -------------------------------------------------------------------------------------- generation


def _poisson(rng: random.Random, per_hour: float, start: float) -> Iterator[float]:
    """Arrival times of a Poisson process of rate `per_hour` within the hour starting at `start`."""
    if per_hour <= 0:
        return
    t = rng.expovariate(per_hour / 3600.0)
    while t < 3600.0:
        yield start + t
        t += rng.expovariate(per_hour / 3600.0)


def _poisson_count(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 50:  # normal approximation, rounded, never negative
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _pick(rng: random.Random, weights: dict[Sensitivity | None, float]) -> Sensitivity | None:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _chars_to_bytes(chars: float, language: str) -> int:
    return int(chars) * BYTES_PER_CHAR[language]


def _language(rng: random.Random, bengali_share: float) -> str:
    return "bn" if rng.random() < bengali_share else "en"


def _question(rng: random.Random, at: float, bengali_share: float) -> TraceRecord:
    language = _language(rng, bengali_share)
    sensitivity = _pick(
        rng, {Sensitivity.PUBLIC: 0.72, Sensitivity.PERSONAL: 0.22, Sensitivity.SENSITIVE: 0.04, None: 0.02}
    )
    chars = min(600.0, max(20.0, rng.gauss(140.0, 50.0)))
    return TraceRecord(
        at_s=at,
        request=Request(
            id="-",
            task="question-classification",
            sensitivity=sensitivity,
            input_bytes=_chars_to_bytes(chars, language),
        ),
        language=language,
        local_confidence=rng.betavariate(9.0, 2.0),
    )


def _summary(rng: random.Random, at: float, bengali_share: float) -> TraceRecord:
    language = _language(rng, bengali_share)
    sensitivity = _pick(rng, {Sensitivity.PERSONAL: 0.8, Sensitivity.SENSITIVE: 0.18, None: 0.02})
    chars = min(12_000.0, max(300.0, rng.gauss(3_000.0, 1_200.0)))
    return TraceRecord(
        at_s=at,
        request=Request(
            id="-", task="summarization", sensitivity=sensitivity, input_bytes=_chars_to_bytes(chars, language)
        ),
        language=language,
        local_confidence=rng.betavariate(6.0, 2.0),
    )


def _essay(rng: random.Random, at: float, bengali_share: float) -> TraceRecord:
    language = _language(rng, bengali_share)
    sensitivity = _pick(rng, {Sensitivity.PERSONAL: 0.9, Sensitivity.SENSITIVE: 0.1})
    words = min(1_500.0, max(150.0, rng.gauss(600.0, 150.0)))
    return TraceRecord(
        at_s=at,
        request=Request(
            id="-",
            task="essay-grading",
            sensitivity=sensitivity,
            lane=Lane.BATCH,
            input_bytes=_chars_to_bytes(words * 6.0, language),
        ),
        language=language,
    )
