"""Reading grading items (JSONL or CSV) and writing grades (JSONL or CSV).

An item has an `id` (unique in the file), a `question_id`, the `answer` text and, optionally, a
`student` (or `student_id`), a `tenant` and a `sensitivity` (`public`, `personal`, `sensitive`;
default `sensitive`). Other fields are ignored. A line that is not an item — bad JSON, a missing or
empty field, a second use of an id — is a `Reject` carrying its line number, and reading goes on.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Format = Literal["jsonl", "csv"]

SENSITIVITIES = ("public", "personal", "sensitive")
MAX_ID_CHARS = 256
MAX_ANSWER_CHARS = 100_000
OUTPUT_COLUMNS = ("id", "student", "tenant", "question_id", "status", "score", "grade", "feedback", "error", "job_id")


@dataclass(frozen=True)
class Item:
    """One answer to grade, as read from line `line` of the input."""

    id: str
    question_id: str
    answer: str
    student: str
    tenant: str
    sensitivity: str
    line: int


@dataclass(frozen=True)
class Reject:
    """A line of the input that is not a usable item."""

    line: int
    error: str
    raw: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "error": self.error, "raw": self.raw}


def format_of(path: Path | str, what: str = "file") -> Format:
    """`jsonl` or `csv`, from the file name (`.jsonl`/`.ndjson`/`.json` or `.csv`)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"{what} {path}: name it .jsonl or .csv (got {suffix or 'no extension'!r})")


def _text(record: Mapping[str, Any], name: str, *, required: bool, limit: int) -> str:
    value = record.get(name)
    if value is None or value == "":
        if required:
            raise ValueError(f"field {name!r} is missing or empty")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"field {name!r} must be text, not {type(value).__name__}")
    text = str(value)
    if len(text) > limit:
        raise ValueError(f"field {name!r} is {len(text)} characters, over the limit of {limit}")
    return text


def parse_item(record: Any, line: int, default_tenant: str) -> Item:
    """An `Item` from one decoded record, or `ValueError` saying what is wrong with it."""
    if not isinstance(record, Mapping):
        raise ValueError(f"expected an object with id, question_id and answer, got {type(record).__name__}")
    sensitivity = _text(record, "sensitivity", required=False, limit=16) or "sensitive"
    if sensitivity not in SENSITIVITIES:
        raise ValueError(f"field 'sensitivity' must be one of {', '.join(SENSITIVITIES)}, not {sensitivity!r}")
    answer = record.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("field 'answer' is missing, empty or not text")
    if len(answer) > MAX_ANSWER_CHARS:
        raise ValueError(f"field 'answer' is {len(answer)} characters, over the limit of {MAX_ANSWER_CHARS}")
    student = _text(record, "student", required=False, limit=MAX_ID_CHARS) or _text(
        record, "student_id", required=False, limit=MAX_ID_CHARS
    )
    return Item(
        id=_text(record, "id", required=True, limit=MAX_ID_CHARS),
        question_id=_text(record, "question_id", required=True, limit=MAX_ID_CHARS),
        answer=answer,
        student=student,
        tenant=_text(record, "tenant", required=False, limit=64) or default_tenant,
        sensitivity=sensitivity,
        line=line,
    )


def _jsonl_records(path: Path) -> Iterator[tuple[int, str, Any]]:
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        for n, raw in enumerate(fh, 1):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                yield (
                    n,
                    text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
                    ValueError("line is not valid UTF-8"),
                )
                continue
            try:
                yield n, text, json.loads(text)
            except ValueError as exc:
                yield n, text, ValueError(f"not valid JSON: {exc}")


def _csv_records(path: Path) -> Iterator[tuple[int, str, Any]]:
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield 1, "", ValueError(f"CSV header does not parse: {exc}")
            return
        names = [h.strip() for h in header]
        missing = [c for c in ("id", "question_id", "answer") if c not in names]
        if missing:
            raise ValueError(f"{path}: CSV header lacks column(s) {', '.join(missing)} (has: {', '.join(names)})")
        last = reader.line_num
        while True:
            start = last + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                last = reader.line_num
                yield start, "", ValueError(f"CSV does not parse: {exc}")
                continue
            last = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            raw = _csv_line(row)
            if len(row) != len(names):
                yield start, raw, ValueError(f"expected {len(names)} columns, got {len(row)}")
                continue
            yield start, raw, dict(zip(names, row, strict=True))


def _csv_line(row: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(row)
    return buf.getvalue()


def read_items(path: Path | str, default_tenant: str = "default") -> tuple[list[Item], list[Reject]]:
    """Every item of the file in order, and every line that was rejected (with its line number).

    A second line with an id already seen is rejected (`duplicate item id`), never graded twice.
    Raises `ValueError` only when the file as a whole cannot be used (unreadable, no CSV header)."""
    path = Path(path)
    fmt = format_of(path, "input")
    if not path.is_file():
        raise ValueError(f"input {path} does not exist or is not a file")
    records = _jsonl_records(path) if fmt == "jsonl" else _csv_records(path)
    items: list[Item] = []
    rejects: list[Reject] = []
    first_line: dict[str, int] = {}
    try:
        for line, raw, record in records:
            if isinstance(record, ValueError):
                rejects.append(Reject(line, str(record), raw))
                continue
            try:
                item = parse_item(record, line, default_tenant)
            except ValueError as exc:
                rejects.append(Reject(line, str(exc), raw))
                continue
            if item.id in first_line:
                rejects.append(
                    Reject(line, f"duplicate item id {item.id!r} (first on line {first_line[item.id]})", raw)
                )
                continue
            first_line[item.id] = line
            items.append(item)
    except OSError as exc:
        raise ValueError(f"cannot read input {path}: {exc.strerror or exc}") from None
    return items, rejects


# -- writing ---------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_rows(path: Path | str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write output rows (dicts with `OUTPUT_COLUMNS`) as JSONL or CSV, replacing the file atomically."""
    path = Path(path)
    if format_of(path, "output") == "jsonl":
        text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(OUTPUT_COLUMNS), lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            flat = {k: r.get(k) for k in OUTPUT_COLUMNS}
            if isinstance(flat["grade"], dict | list):
                flat["grade"] = json.dumps(flat["grade"], ensure_ascii=False)
            writer.writerow({k: "" if v is None else v for k, v in flat.items()})
        text = buf.getvalue()
    _atomic_write(path, text)


def write_rejects(path: Path | str, rejects: Sequence[Reject]) -> None:
    """The rejected lines as JSONL: {"line", "error", "raw"}, in line order."""
    text = "".join(json.dumps(r.as_dict(), ensure_ascii=False) + "\n" for r in sorted(rejects, key=lambda r: r.line))
    _atomic_write(Path(path), text)


__all__ = [
    "OUTPUT_COLUMNS",
    "SENSITIVITIES",
    "Format",
    "Item",
    "Reject",
    "format_of",
    "parse_item",
    "read_items",
    "write_rejects",
    "write_rows",
]
