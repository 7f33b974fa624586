"""Fuzzing the wire: header parser, codec and envelope opener, with hypothesis.

    python -m benchmarks.fuzz [--cases 100000] [--out benchmarks/results/fuzz.json]

Each target feeds generated input to one reader of untrusted bytes and holds it to one rule: the input
is either accepted (a valid header, a payload map, an opened job) or refused with a `MessageError`
whose `reason` is a dead-letter reason code and whose `detail` says why. Any other exception — a
crash a poison message would turn into a dead worker — fails the run, with hypothesis's shrunk example.

- `header_bytes`: arbitrary bytes as the `h` field → `Sealer.read_job_header`;
- `header_fields`: a real header map with fields replaced, dropped or added (any msgpack value) → the same;
- `codec_bytes`: arbitrary bytes, and real zstd frames with bytes flipped, cut or inserted → `Codec.decode`;
- `entry_fields`: arbitrary stream entries (field → value maps) → `Sealer.open_job`;
- `mutated_message`: real sealed messages with header or body bytes flipped, cut or inserted, or another
  message's body under the header → `Sealer.open_job`, which must refuse every one;
- `sealed_plaintext`: arbitrary plaintext (and near-valid payload maps, plain or zstd) correctly sealed
  under a valid header → `Sealer.open_job` (the codec and payload rules behind the envelope).

The test suite (`tests/test_fuzz.py`) runs the same targets with fewer cases per run; this module runs
the full count and reports cases and seconds per target.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from benchmarks.report import machine, write_result
from broker.codec import pack, unpack
from broker.envelope import Envelope
from broker.errors import MessageError
from broker.keyring import LocalKeyring
from broker.message import BODY_FIELD, HEADER_FIELD, Job, JobSpec, Sealer
from broker.schema import JobHeader

RESULTS = Path(__file__).parent / "results" / "fuzz.json"
ZONE = "fuzz"
REASONS = frozenset(
    {"malformed", "unsupported_schema", "zone_mismatch", "unknown_key", "revoked_key", "tampered", "undecodable",
     "too_large", "envelope"}
)  # fmt: skip


class FuzzKit:
    """A keyring, a sealer and a few real sealed messages and frames to mutate."""

    def __init__(self, directory: Path, zone: str = ZONE) -> None:
        self.zone = zone
        self.keyring = directory / "keyring.json"
        if not self.keyring.exists():
            LocalKeyring.init_zone(self.keyring, zone)
        self.sealer = Sealer(Envelope(LocalKeyring(self.keyring, zones=[zone])))
        self.codec = self.sealer.codec
        texts = ["ছাত্রের প্রশ্ন: সালোকসংশ্লেষণ কী?", "What is the derivative of x squared?", "x" * 600]
        self.messages: list[dict[bytes, bytes]] = []
        for i, text in enumerate(texts):
            _, hb, body = self.sealer.seal_job(zone, JobSpec(task="classify", inputs={"text": text, "n": i}))
            self.messages.append({HEADER_FIELD: hb, BODY_FIELD: body})
        self.header = unpack(self.messages[0][HEADER_FIELD])
        self.frames = [self.codec.encode({"inputs": {"text": t}, "options": {}}) for t in texts]
        self.counts: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()


def _refused(kit: FuzzKit, target: str, exc: MessageError) -> None:
    assert exc.reason in REASONS, f"{target}: unknown reason {exc.reason!r}"
    assert exc.detail and isinstance(exc.detail, str), f"{target}: a refusal without a reason"
    kit.outcomes[f"{target}:{exc.reason}"] += 1


def _accepted(kit: FuzzKit, target: str) -> None:
    kit.outcomes[f"{target}:accepted"] += 1


# -- targets: one rule each ------------------------------------------------------------------------------


def _header(kit: FuzzKit, target: str, data: bytes) -> None:
    try:
        header = kit.sealer.read_job_header(kit.zone, {HEADER_FIELD: data, BODY_FIELD: b""})
    except MessageError as exc:
        _refused(kit, target, exc)
        return
    assert isinstance(header, JobHeader) and header.zone == kit.zone
    _accepted(kit, target)


def t_header_bytes(kit: FuzzKit, data: bytes) -> None:
    _header(kit, "header_bytes", data)


def t_header_fields(kit: FuzzKit, fields: dict[str, Any]) -> None:
    _header(kit, "header_fields", pack(fields))


def t_codec_bytes(kit: FuzzKit, data: bytes) -> None:
    try:
        obj = kit.codec.decode(data)
    except MessageError as exc:
        _refused(kit, "codec_bytes", exc)
        return
    assert isinstance(obj, dict)
    _accepted(kit, "codec_bytes")


def t_entry_fields(kit: FuzzKit, entry: dict[bytes, bytes]) -> None:
    try:
        kit.sealer.open_job(kit.zone, entry)
    except MessageError as exc:
        _refused(kit, "entry_fields", exc)
        return
    raise AssertionError(f"an arbitrary entry opened: {entry!r}")


def t_mutated_message(kit: FuzzKit, entry: dict[bytes, bytes]) -> None:
    try:
        kit.sealer.open_job(kit.zone, entry)
    except MessageError as exc:
        _refused(kit, "mutated_message", exc)
        return
    raise AssertionError("a changed message opened")


def t_sealed_plaintext(kit: FuzzKit, plaintext: bytes) -> None:
    base = kit.header

    def header_for(kid: str) -> bytes:
        return pack({**base, "kid": kid})

    hb, body = kit.sealer.envelope.seal(kit.zone, plaintext, header_for)
    try:
        job = kit.sealer.open_job(kit.zone, {HEADER_FIELD: hb, BODY_FIELD: body})
    except MessageError as exc:
        _refused(kit, "sealed_plaintext", exc)
        return
    assert isinstance(job, Job) and isinstance(job.payload.inputs, dict)
    _accepted(kit, "sealed_plaintext")


# -- strategies ---------------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(),
    st.text(max_size=40), st.binary(max_size=40),
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), inner,
                                                     max_size=4)
    ),
    max_leaves=8,
)  # fmt: skip


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, byte) edits: 0 flip a bit, 1 insert, 2 delete, 3 truncate."""
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            b.append(val)
            continue
        p = pos % len(b)
        if kind == 0:
            b[p] ^= 1 << (val % 8)
        elif kind == 1:
            b.insert(p, val)
        elif kind == 2:
            del b[p]
        else:
            del b[p:]
    return bytes(b)


_ops = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4)


def _zstd(payload_and_level: tuple[Any, int]) -> bytes:
    payload, level = payload_and_level
    return zstandard.ZstdCompressor(level=level).compress(pack(payload))


def strategies(kit: FuzzKit) -> dict[str, st.SearchStrategy[Any]]:
    header_keys = sorted(kit.header)

    @st.composite
    def header_fields(draw: st.DrawFn) -> dict[str, Any]:
        fields = dict(kit.header)
        for key in draw(st.lists(st.sampled_from(header_keys), max_size=4, unique=True)):
            if draw(st.booleans()):
                fields[key] = draw(_values)
            else:
                del fields[key]
        for key, value in draw(st.dictionaries(st.text(max_size=10), _values, max_size=2)).items():
            fields[key] = value
        return fields

    @st.composite
    def frames(draw: st.DrawFn) -> bytes:
        if draw(st.booleans()):
            return draw(st.binary(max_size=300))
        return _mutate(draw(st.sampled_from(kit.frames)), draw(_ops))

    @st.composite
    def mutated(draw: st.DrawFn) -> dict[bytes, bytes]:
        i = draw(st.integers(0, len(kit.messages) - 1))
        msg = dict(kit.messages[i])
        how = draw(st.sampled_from(["header", "body", "both", "swap"]))
        if how == "swap":  # another message's body under this header
            other = kit.messages[(i + 1 + draw(st.integers(0, len(kit.messages) - 2))) % len(kit.messages)]
            msg[BODY_FIELD] = other[BODY_FIELD]
            return msg
        for f in [HEADER_FIELD] if how == "header" else [BODY_FIELD] if how == "body" else [HEADER_FIELD, BODY_FIELD]:
            original = msg[f]
            msg[f] = _mutate(original, draw(_ops))
            if msg[f] == original:  # an edit that changed nothing (e.g. insert then delete): change one bit
                msg[f] = _mutate(original, [(0, 0, 0)])
        return msg

    def payloads() -> st.SearchStrategy[dict[Any, Any]]:
        """Near-valid payloads: `inputs`/`options` of any type and key, sometimes an extra field."""
        keys_ = st.one_of(st.text(max_size=8), st.binary(max_size=4))
        maps = st.one_of(st.dictionaries(keys_, _values, max_size=4), _values)
        return st.fixed_dictionaries({"inputs": maps}, optional={"options": maps, "extra": _values, b"inputs": _values})

    entry_keys = st.one_of(st.sampled_from([HEADER_FIELD, BODY_FIELD]), st.binary(max_size=6))
    return {
        "header_bytes": st.binary(max_size=1200),
        "header_fields": header_fields(),
        "codec_bytes": frames(),
        "entry_fields": st.dictionaries(entry_keys, st.binary(max_size=200), max_size=4),
        "mutated_message": mutated(),
        "sealed_plaintext": st.one_of(
            st.binary(max_size=300),
            _values.map(pack),
            payloads().map(pack),
            st.tuples(payloads(), st.integers(1, 5)).map(
                lambda p: zstandard.ZstdCompressor(level=p[1]).compress(pack(p[0]))
            ),
        ),
    }


TARGETS: dict[str, Callable[[FuzzKit, Any], None]] = {
    "header_bytes": t_header_bytes,
    "header_fields": t_header_fields,
    "codec_bytes": t_codec_bytes,
    "entry_fields": t_entry_fields,
    "mutated_message": t_mutated_message,
    "sealed_plaintext": t_sealed_plaintext,
}


def run_target(kit: FuzzKit, name: str, cases: int, *, seed: int | None = None) -> tuple[int, float]:
    """Run `cases` generated inputs through one target; returns (cases run, seconds)."""
    strategy = strategies(kit)[name]
    target = TARGETS[name]

    def body(x: Any) -> None:
        kit.counts[name] += 1
        target(kit, x)

    test = settings(
        max_examples=cases, deadline=None, database=None, derandomize=seed is None,
        phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
    )(given(strategy)(body))  # fmt: skip
    before = kit.counts[name]
    started = time.perf_counter()
    test()
    return kit.counts[name] - before, time.perf_counter() - started


def run_atheris(runs: int, timeout_s: float = 600.0) -> dict[str, Any]:
    """`benchmarks.fuzz_atheris` in a subprocess (libFuzzer exits the process when it is done)."""
    try:
        import atheris  # noqa: F401
    except ImportError as exc:
        return {"cases": 0, "seconds": 0.0, "status": f"not installed ({exc})"}
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="hyb-atheris-") as tmp:  # crash files land in the cwd
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.fuzz_atheris", f"-runs={runs}", "-max_len=512", "-print_final_stats=0"],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
        secs = time.perf_counter() - started
    done = re.search(r"Done (\d+) runs", proc.stderr + proc.stdout)
    status = "no crash" if proc.returncode == 0 and done else f"FAILED (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return {"cases": int(done.group(1)) if done else 0, "seconds": round(secs, 1), "status": status}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000, help="total cases, split evenly over the targets")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--atheris-runs", type=int, default=100_000, help="libFuzzer runs after hypothesis (0: none)")
    args = ap.parse_args(argv)
    per = max(args.cases // len(TARGETS), 1)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hyb-fuzz-") as tmp:
        kit = FuzzKit(Path(tmp))
        for name in TARGETS:
            n, secs = run_target(kit, name, per)
            rows[name] = {"cases": n, "seconds": round(secs, 1), "cases_per_s": round(n / secs) if secs else None}
            print(f"{name:18s} {n:7d} cases in {secs:6.1f} s — no crash", flush=True)
    if args.atheris_runs:
        rows["atheris"] = run_atheris(args.atheris_runs)
        print(f"{'atheris':18s} {rows['atheris']['cases']:7d} cases in {rows['atheris']['seconds']:6.1f} s — "
              f"{rows['atheris']['status']}", flush=True)  # fmt: skip
    total = sum(r["cases"] for r in rows.values())
    result = {
        "benchmark": "fuzz",
        "config": {**machine(), "hypothesis": True},
        "targets": rows,
        "total_cases": total,
        "crashes": sum(1 for r in rows.values() if str(r.get("status", "no crash")).startswith("FAILED")),
        "outcomes": dict(sorted(kit.outcomes.items())),
        "seconds": round(sum(r["seconds"] for r in rows.values()), 1),
    }
    write_result(args.out, result)
    print(f"{total} cases, {result['crashes']} crashes, {result['seconds']} s → {args.out}")
    return 0 if result["crashes"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["TARGETS", "FuzzKit", "main", "run_target", "strategies"]
