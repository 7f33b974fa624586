"""The PII leak scan and the ACL matrix (`python -m benchmarks.security`), against a running pipeline.

PII: texts with names, emails and phone numbers in English and Bengali (both digit systems) go through
the real edge agent (tokenizer, vault, outbox during a cut) and a real worker process (DEBUG log); no
spelling of any value is found in any Redis key or stream entry, the exporter's output, the edge's
metrics or the worker's log — while the same search finds every value in the plain texts.
ACL: the generated users on a real Redis 7; each role runs its part of the pipeline, and every user x
command outcome is the expected one (allowed only where the role needs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.chaos import PII_VALUES
from benchmarks.chaos_lib import redis7_binaries
from benchmarks.security import acl_matrix, find, pii_scan, spellings
from tests import edge_support

edge_models = edge_support.edge_models  # the session's real built models (fixture)


def test_spellings_cover_both_digit_systems_and_the_search_finds_them() -> None:
    values = spellings(["01712-345678"])
    assert {"01712-345678", "০১৭১২-৩৪৫৬৭৮", "01712345678", "০১৭১২৩৪৫৬৭৮"} <= set(values)
    hits = find(values, [("log", "call ০১৭১২৩৪৫৬৭৮ now".encode())])
    assert hits == [("log", "০১৭১২৩৪৫৬৭৮")]


@pytest.mark.slow
def test_no_pii_value_leaks_into_redis_metrics_or_logs(edge_models: Any, tmp_path: Path) -> None:
    out = pii_scan(tmp_path, edge_models)
    assert out["control_hits_in_plain_texts"] == len(PII_VALUES)  # the search works on the raw texts
    assert out["found"] == {"redis": 0, "exporter": 0, "edge_metrics": 0, "worker_log": 0}, out["found_where"]
    assert out["redis_keys"] > 50 and out["worker_results"] == out["worker_jobs"] == 200
    assert out["summaries_answered"] == 4 and out["pii_tokenized_by_edge"] > 0


@pytest.mark.skipif(redis7_binaries() is None, reason="ACL selectors need redis-server >= 7")
def test_acl_matrix_on_a_running_pipeline(tmp_path: Path) -> None:
    out = acl_matrix(tmp_path)
    assert out["pipeline_as_roles"] and out["exporter_saw_depth"]
    assert out["unexpected"] == 0, out["surprises"]
    assert out["attempts"] == out["users"] * out["commands"] and out["denials"] >= 100
    assert out["matrix"]["default"] and set(out["matrix"]["default"].values()) == {"denied"}
    assert (
        out["matrix"]["edge"]["FLUSHALL"] == "denied" and out["matrix"]["worker"]["XADD other zone's jobs"] == "denied"
    )
