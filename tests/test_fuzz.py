"""Fuzzing the header parser, codec and envelope opener (targets in `benchmarks/fuzz.py`).

Each run: 500 hypothesis cases per target (3,000 in all, ~30 s here), then 100,000 libFuzzer runs with
atheris when it is installed (~10 s). `python -m benchmarks.fuzz` runs 100,000 hypothesis cases
(about 10 minutes on 2 cores: too slow for every CI run) plus the atheris runs.
Then a sample of invalid entries goes through a real stream: every one reaches the dead-letter stream
with the reason the opener gave, and the consumer goes on.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import redis

from benchmarks.fuzz import TARGETS, FuzzKit, run_atheris, run_target
from broker import keys
from broker.codec import pack
from broker.consumer import Consumer
from broker.dead_letter import DeadLetters
from broker.errors import MessageError
from broker.message import BODY_FIELD, HEADER_FIELD, JobSpec

CASES_PER_TARGET = 500


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> FuzzKit:
    return FuzzKit(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("target", list(TARGETS))
def test_no_input_crashes_a_reader(kit: FuzzKit, target: str) -> None:
    n, _ = run_target(kit, target, CASES_PER_TARGET)
    assert n >= CASES_PER_TARGET * 0.9  # hypothesis ran (nearly) the asked count: no early stop on a small space
    refused = sum(v for k, v in kit.outcomes.items() if k.startswith(target + ":") and not k.endswith(":accepted"))
    assert refused > 0  # every target does meet invalid input, and refuses it with a reason


def test_atheris_100k_runs_without_a_crash() -> None:
    pytest.importorskip("atheris", reason="atheris has no wheel for this platform")
    out = run_atheris(100_000, timeout_s=300)
    assert out["status"] == "no crash", out["status"]
    assert out["cases"] == 100_000


def test_found_by_fuzzing_a_non_integer_schema_version_is_malformed_not_a_crash(kit: FuzzKit) -> None:
    header = dict(kit.header, v=[])  # unhashable: `v in {1}` raised TypeError before the fix
    with pytest.raises(MessageError) as err:
        kit.sealer.read_job_header(kit.zone, {HEADER_FIELD: pack(header), BODY_FIELD: b""})
    assert err.value.reason == "unsupported_schema"


def test_found_by_fuzzing_mixed_key_types_in_a_payload_are_undecodable_not_a_crash(kit: FuzzKit) -> None:
    def header_for(kid: str) -> bytes:
        return pack({**kit.header, "kid": kid})

    hb, body = kit.sealer.envelope.seal(kit.zone, pack({"inputs": {}, b"x": 1, "y": 2}), header_for)
    with pytest.raises(MessageError) as err:  # sorting str and bytes keys raised TypeError before the fix
        kit.sealer.open_job(kit.zone, {HEADER_FIELD: hb, BODY_FIELD: body})
    assert err.value.reason == "undecodable" and "invalid payload" in err.value.detail


def _invalid_entries(kit: FuzzKit, n: int, seed: int = 7) -> list[dict[bytes, bytes]]:
    rng = random.Random(seed)
    out: list[dict[bytes, bytes]] = []
    while len(out) < n:
        msg = dict(rng.choice(kit.messages))
        kind = rng.randrange(5)
        if kind == 0:
            f = rng.choice([HEADER_FIELD, BODY_FIELD])
            b = bytearray(msg[f])
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(len(b))] ^= rng.randint(1, 255)
            msg[f] = bytes(b)
        elif kind == 1:
            msg[BODY_FIELD] = msg[BODY_FIELD][: rng.randrange(len(msg[BODY_FIELD]))]
        elif kind == 2:
            msg = {HEADER_FIELD: rng.randbytes(rng.randint(0, 80)), BODY_FIELD: rng.randbytes(rng.randint(0, 80))}
        elif kind == 3:
            msg = {rng.randbytes(2): rng.randbytes(10)}
        else:
            msg[HEADER_FIELD] = pack({**kit.header, rng.choice(sorted(kit.header)): rng.choice([[], {}, -1, "x" * 99])})
        out.append(msg)
    return out


def test_invalid_entries_on_a_real_stream_are_dead_lettered_with_their_reason(
    r: redis.Redis, zone: str, tmp_path: Path
) -> None:
    kit = FuzzKit(tmp_path, zone)
    entries = _invalid_entries(kit, 200)
    expected: list[str] = []
    for e in entries:
        with pytest.raises(MessageError) as err:
            kit.sealer.open_job(zone, e)
        expected.append(err.value.reason)
    stream = keys.jobs_stream(zone, "interactive")
    _, hb, body = kit.sealer.seal_job(zone, JobSpec(task="t", inputs={"q": "good one"}))
    for e in entries:
        r.xadd(stream, e)  # type: ignore[arg-type]
    r.xadd(stream, {HEADER_FIELD: hb, BODY_FIELD: body})
    consumer = Consumer(r, kit.sealer, zone, "fuzz-reader", count=500)
    deliveries = consumer.fetch(block_ms=0)
    assert [d.job.payload.inputs for d in deliveries] == [{"q": "good one"}]  # the good job after 200 bad ones
    letters = DeadLetters(r, zone).list(count=1000, newest_first=False)
    assert [x.reason for x in letters] == expected
    assert all(x.detail for x in letters)
    assert [x.original for x in letters] == entries  # kept byte for byte
    assert sum(consumer.stats.dead_lettered.values()) == 200
    assert r.xpending(stream, keys.GROUP)["pending"] == 1  # only the good job, in hand
