"""`benchmarks.consume_phases` drives the consumer's own steps one by one: it must keep up with them."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.consume_phases import PHASES, RAW_PHASES, main


def test_the_phase_profiler_runs_the_consumers_steps_and_accounts_for_them(tmp_path: Path) -> None:
    out = tmp_path / "phases.json"
    assert main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    phases = result["phases"]
    assert set(phases) == {*PHASES, *RAW_PHASES}
    assert all(0 < p["min_us"] <= p["median_us"] for p in phases.values())
    assert result["sum_min_us"] == round(sum(phases[k]["min_us"] for k in PHASES), 2)
    # opening sealed bodies (AES-GCM, zstd, schema) is real work: it cannot be free next to a raw read
    assert phases["bodies"]["min_us"] > phases["check_answer"]["min_us"]
    assert result["config"]["messages_per_round"] == 3_000
