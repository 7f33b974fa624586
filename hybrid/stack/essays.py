"""Essays of `hybrid demo` / `hybrid pilot`: graded by the grading driver, the code of `hybrid grade run`.

The essays (answers to questions of the grading bank, signed with the student's name and contact)
are written to a JSONL file per zone and run through `hybrid.grading.job.execute`: the driver
tokenizes the PII on this host (a batch host is an edge of its own zone: the roster of the stack,
a vault next to the output), seals `grade` and `feedback` jobs with `{"question_id", "answer"}` on
the batch lane, and collects the results, detokenized, into the output file. The stack's workers
serve those tasks with the real runners (`grade` / `rubric-minilm`, `feedback` /
`smollm2-135m-instruct`).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.stack.workload import Item


@dataclass
class EssayRun:
    items: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)  # the driver's output rows, every zone
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)  # per zone
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    pii_tokenized: int = 0  # distinct PII values the grading host put in its vaults (tokenized before sealing)

    @property
    def graded(self) -> list[dict[str, Any]]:
        """Rows with a score and a non-empty feedback text."""
        ok = [r for r in self.rows if r.get("status") == "ok" and isinstance(r.get("score"), int | float)]
        return [r for r in ok if str(r.get("feedback") or "").strip()]


def _write_items(path: Path, items: list[Item]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for it in items:
            assert it.question_id, f"essay {it.id} names no question of the grading bank"
            rec = {"id": it.id, "question_id": it.question_id, "answer": it.text, "sensitivity": "personal"}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def grade_essays(
    redis_url: str,
    keyring: Path,
    zones: list[str],
    items: list[Item],
    work_dir: Path,
    *,
    roster: Path | None = None,
    item_timeout_s: float = 300.0,
) -> EssayRun:
    """Grade `items` with feedback, the zones taking them in turn (one driver run per zone, in parallel)."""
    from broker.connection import connect
    from broker.settings import load_settings
    from edge_agent.vault import Vault
    from hybrid.grading.job import RunRequest, execute

    run = EssayRun(items=len(items))
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    per_zone = {z: [it for i, it in enumerate(items) if zones[i % len(zones)] == z] for z in zones}
    t0 = time.perf_counter()

    def one(zone: str) -> tuple[str, dict[str, Any], list[dict[str, Any]], int]:
        src = work_dir / f"essays-{zone}-{stamp}.jsonl"
        out = work_dir / f"graded-{zone}-{stamp}.jsonl"
        _write_items(src, per_zone[zone])
        request = RunRequest(
            input=str(src),
            output=str(out),
            tenant="demo",
            item_timeout_s=item_timeout_s,
            vault=str(work_dir / f"vault-{zone}-{stamp}"),
            roster=str(roster) if roster else None,
        )
        client = connect(redis_url)
        try:
            summary = execute(request, load_settings(redis_url=redis_url, zone=zone, keyring=str(keyring)), client)
        finally:
            client.close()
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
        vault = Vault.open(request.vault or "")
        try:
            tokenized = len(vault)
        finally:
            vault.close()
        return zone, summary.as_dict(), rows, tokenized

    with ThreadPoolExecutor(max_workers=max(len(zones), 1)) as pool:
        futures = [pool.submit(one, z) for z in zones if per_zone[z]]
        for fut in futures:
            try:
                zone, summary, rows, tokenized = fut.result()
            except Exception as exc:  # reported, and the demo's check fails: not every essay was graded
                run.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            run.summaries[zone] = summary
            run.rows += rows
            run.pii_tokenized += tokenized
    run.wall_s = time.perf_counter() - t0
    return run


__all__ = ["EssayRun", "grade_essays"]
