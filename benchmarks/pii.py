"""PII detection on the labelled bilingual set: precision/recall per type and language, and cost.

    python -m benchmarks.pii [--quick]

Scores `edge_agent.pii.PiiDetector` (with the roster in data/pii/roster.yaml) on data/pii/test.jsonl,
exact span matches. Baseline, same run: the same detector without Bengali digit normalisation and
without the roster (what `phonenumbers` and the regexes give on their own), to show what those two
add. Also times detection and full tokenization (vault writes included) per message.
Writes benchmarks/results/pii.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.report import machine, write_result
from edge_agent import pii
from edge_agent.pii import PiiDetector, PiiTokenizer, Roster, evaluate, load_examples
from edge_agent.vault import Vault

ROOT = Path(__file__).resolve().parents[1]
TEST_SET = ROOT / "data" / "pii" / "test.jsonl"
ROSTER = ROOT / "data" / "pii" / "roster.yaml"
RESULT = ROOT / "benchmarks" / "results" / "pii.json"


def _table(scores: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for lang in ("en", "bn", "all"):
        for typ in (*pii.PII_TYPES, "all"):
            s = scores.get(lang, {}).get(typ)
            if s is not None:
                rows.append({"lang": lang, "type": typ, **s.as_dict()})
    return rows


def _time_per_message(fn: Any, texts: list[str], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        for t in texts:
            t0 = time.perf_counter()
            fn(t)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer timing rounds")
    args = ap.parse_args()
    rounds = 3 if args.quick else 20

    examples = load_examples(TEST_SET)
    ours = PiiDetector(Roster.load(ROSTER))
    base = PiiDetector(bengali_digits=False)  # no digit normalisation, no roster
    s_ours, s_base = evaluate(ours, examples), evaluate(base, examples)
    texts = [e.text for e in examples]
    with tempfile.TemporaryDirectory() as tmp:
        tok = PiiTokenizer(ours, Vault.open(tmp))
        detect_us = _time_per_message(ours.detect, texts, rounds)
        tokenize_us = _time_per_message(tok.tokenize, texts, rounds)
        tok.vault.close()

    result: dict[str, Any] = {
        "benchmark": "pii",
        "config": {**machine(), "examples": len(examples), "spans": sum(len(e.spans) for e in examples)},
        "scores": _table(s_ours),
        "baseline_scores": _table(s_base),
        "recall_bn": round(s_ours["bn"]["all"].recall, 4),
        "recall_en": round(s_ours["en"]["all"].recall, 4),
        "precision_bn": round(s_ours["bn"]["all"].precision, 4),
        "precision_en": round(s_ours["en"]["all"].precision, 4),
        "baseline_recall_bn": round(s_base["bn"]["all"].recall, 4),
        "recall_ratio_bn_vs_baseline": round(s_ours["bn"]["all"].recall / max(s_base["bn"]["all"].recall, 1e-9), 3),
        "detect_p50_us": round(detect_us, 1),
        "tokenize_p50_us": round(tokenize_us, 1),
    }
    write_result(RESULT, result)

    print(f"PII detection on {len(examples)} messages ({result['config']['spans']} labelled spans)")
    print(f"{'lang':<5}{'type':<9}{'P':>7}{'R':>7}{'tp':>5}{'fp':>4}{'fn':>4}   baseline P / R")
    base_rows = {(r["lang"], r["type"]): r for r in result["baseline_scores"]}
    for row in result["scores"]:
        b = base_rows.get((row["lang"], row["type"]), {})
        print(
            f"{row['lang']:<5}{row['type']:<9}{row['precision']:>7.3f}{row['recall']:>7.3f}"
            f"{row['tp']:>5}{row['fp']:>4}{row['fn']:>4}   {b.get('precision', 0):.3f} / {b.get('recall', 0):.3f}"
        )
    print(
        f"detect p50 {result['detect_p50_us']:.0f} µs/message, tokenize (vault included) "
        f"p50 {result['tokenize_p50_us']:.0f} µs/message; bn recall ratio {result['recall_ratio_bn_vs_baseline']}"
    )
    print(f"wrote {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
