"""The tamper matrix on real streams: every attack is rejected with its reason in the dead-letter stream.

Each case puts attacked entries on a zone's job stream next to good ones; one consumer (holding only its
zone's keyring) reads them all; the good ones run, every attacked one is dead-lettered with the reason
the case expects, and nothing stays pending. `test_the_matrix_counts` prints the figure for
docs/reliability.md (`pytest tests/test_tamper_matrix.py -q -s`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from broker import keys
from broker.codec import pack, unpack
from broker.consumer import Consumer
from broker.dead_letter import DeadLetters
from broker.envelope import NONCE_BYTES, Envelope
from broker.errors import ConfigError
from broker.keyring import LocalKeyring
from broker.message import BODY_FIELD, HEADER_FIELD, JobSpec, Sealer
from hybrid.cli import cli

Entry = dict[bytes, bytes]


@dataclass
class Ctx:
    r: redis.Redis
    zone: str
    sealer: Sealer
    keyring: Path
    tmp: Path

    def seal(self, text: str = "x", sealer: Sealer | None = None, zone: str | None = None, **kw: object) -> Entry:
        _, hb, body = (sealer or self.sealer).seal_job(zone or self.zone, JobSpec(task="t", inputs={"q": text}, **kw))  # type: ignore[arg-type]
        return {HEADER_FIELD: hb, BODY_FIELD: body}

    def consumer(self, name: str = "w") -> Consumer:
        # reload at once, so a revocation in the file is seen by the next read
        ring = LocalKeyring(self.keyring, zones=[self.zone], reload_interval_s=0)
        return Consumer(self.r, Sealer(Envelope(ring)), self.zone, name, count=100, min_idle_ms=60_000)


def _flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


def _with_header(e: Entry, **changes: object) -> Entry:
    return {**e, HEADER_FIELD: pack({**unpack(e[HEADER_FIELD]), **changes})}


# -- the attacks: each returns the entries to inject (before the run) ------------------------------------


def header_value_flipped(c: Ctx) -> list[Entry]:
    e = c.seal()
    h = e[HEADER_FIELD]
    pos = h.index(b"default") + 2  # a letter of the tenant: still a valid header, not the one sealed
    return [{**e, HEADER_FIELD: _flip(h, pos)}]


def header_byte_garbled(c: Ctx) -> list[Entry]:
    e = c.seal()
    return [{**e, HEADER_FIELD: b"\xc1" + e[HEADER_FIELD][1:]}]


def header_lane_changed(c: Ctx) -> list[Entry]:
    return [_with_header(c.seal(), lane="batch", attempt=2)]  # promote/demote a job: AAD mismatch


def body_ciphertext_flipped(c: Ctx) -> list[Entry]:
    e = c.seal()
    return [{**e, BODY_FIELD: _flip(e[BODY_FIELD], len(e[BODY_FIELD]) - 20)}]


def body_tag_flipped(c: Ctx) -> list[Entry]:
    e = c.seal()
    return [{**e, BODY_FIELD: _flip(e[BODY_FIELD], len(e[BODY_FIELD]) - 1)}]


def body_nonce_flipped(c: Ctx) -> list[Entry]:
    e = c.seal()
    b = e[BODY_FIELD]
    return [{**e, BODY_FIELD: _flip(b, 2 + b[1] + NONCE_BYTES // 2)}]


def body_wrapped_key_flipped(c: Ctx) -> list[Entry]:
    e = c.seal()
    return [{**e, BODY_FIELD: _flip(e[BODY_FIELD], 5)}]


def body_format_byte_changed(c: Ctx) -> list[Entry]:
    e = c.seal()
    return [{**e, BODY_FIELD: b"\x02" + e[BODY_FIELD][1:]}]


def bodies_swapped(c: Ctx) -> list[Entry]:
    a, b = c.seal("a"), c.seal("b")
    return [{HEADER_FIELD: a[HEADER_FIELD], BODY_FIELD: b[BODY_FIELD]},
            {HEADER_FIELD: b[HEADER_FIELD], BODY_FIELD: a[BODY_FIELD]}]  # fmt: skip


def other_zone_message(c: Ctx) -> list[Entry]:
    ring = c.tmp / "other.json"
    LocalKeyring.init_zone(ring, "zone-b")
    return [c.seal(sealer=Sealer(Envelope(LocalKeyring(ring))), zone="zone-b")]


def other_zone_body_under_our_zone_name(c: Ctx) -> list[Entry]:
    ring = c.tmp / "other2.json"
    LocalKeyring.init_zone(ring, "zone-b")
    e = c.seal(sealer=Sealer(Envelope(LocalKeyring(ring))), zone="zone-b")
    return [_with_header(e, zone=c.zone)]  # relabelled: the KEK zone-b/v1 is not held here


def other_zone_body_under_our_kid(c: Ctx) -> list[Entry]:
    ring = c.tmp / "other3.json"
    LocalKeyring.init_zone(ring, "zone-b")
    e = c.seal(sealer=Sealer(Envelope(LocalKeyring(ring))), zone="zone-b")
    return [_with_header(e, zone=c.zone, kid=f"{c.zone}/v1")]  # its data key does not unwrap under our KEK


CASES: dict[str, tuple[Callable[[Ctx], list[Entry]], str]] = {
    "header: a value's byte flipped": (header_value_flipped, "tampered"),
    "header: a byte garbled": (header_byte_garbled, "malformed"),
    "header: lane and attempt rewritten": (header_lane_changed, "tampered"),
    "body: ciphertext byte flipped": (body_ciphertext_flipped, "tampered"),
    "body: GCM tag byte flipped": (body_tag_flipped, "tampered"),
    "body: nonce byte flipped": (body_nonce_flipped, "tampered"),
    "body: wrapped data key byte flipped": (body_wrapped_key_flipped, "tampered"),
    "body: format byte changed": (body_format_byte_changed, "malformed"),
    "bodies swapped between two headers": (bodies_swapped, "tampered"),
    "zone B message in zone A's stream": (other_zone_message, "zone_mismatch"),
    "zone B body relabelled as zone A": (other_zone_body_under_our_zone_name, "unknown_key"),
    "zone B body under zone A's key id": (other_zone_body_under_our_kid, "tampered"),
}


@pytest.fixture
def ctx(r: redis.Redis, zone: str, sealer: Sealer, keyring_path: Path, tmp_path: Path) -> Ctx:
    return Ctx(r, zone, sealer, keyring_path, tmp_path)


def _run(c: Ctx, bad: list[Entry]) -> tuple[list[str], list[str]]:
    """Inject good, bad…, good; read, complete the good; returns (good inputs run, dead-letter reasons)."""
    stream = keys.jobs_stream(c.zone, "interactive")
    c.r.xadd(stream, c.seal("good-before"))  # type: ignore[arg-type]
    for e in bad:
        c.r.xadd(stream, e)  # type: ignore[arg-type]
    c.r.xadd(stream, c.seal("good-after"))  # type: ignore[arg-type]
    consumer = c.consumer()
    got = consumer.fetch(block_ms=0)
    consumer.complete([(d, {"ok": d.job.payload.inputs["q"]}) for d in got])
    assert c.r.xlen(stream) == 0 and c.r.xpending(stream, keys.GROUP)["pending"] == 0
    letters = DeadLetters(c.r, c.zone).list(count=100, newest_first=False)
    assert all(x.detail for x in letters)
    assert [x.original for x in letters] == bad  # kept byte for byte
    return [d.job.payload.inputs["q"] for d in got], [x.reason for x in letters]


@pytest.mark.parametrize("case", list(CASES))
def test_attack_is_rejected_with_its_reason(case: str, ctx: Ctx) -> None:
    make, reason = CASES[case]
    bad = make(ctx)
    ran, reasons = _run(ctx, bad)
    assert ran == ["good-before", "good-after"]
    assert reasons == [reason] * len(bad)


def test_replay_of_a_done_job_under_a_new_entry_id_is_rejected_and_the_first_result_stays(ctx: Ctx) -> None:
    """The header (job id included) is the AEAD's associated data, so an old message added again under a
    new stream id still opens. The consumer sees the job id already has a result and does not run it."""
    original = ctx.seal("pay once")
    job_id = unpack(original[HEADER_FIELD])["job_id"]
    stream = keys.jobs_stream(ctx.zone, "interactive")
    ctx.r.xadd(stream, original)  # type: ignore[arg-type]
    first = ctx.consumer("first")
    [d] = first.fetch(block_ms=0)
    assert first.complete([(d, {"ran": "first"})]) == 1
    stored = ctx.r.get(keys.result_key(ctx.zone, job_id))

    ctx.r.xadd(stream, original)  # type: ignore[arg-type]  # the replay: same fields, new entry id
    ctx.r.xadd(stream, original)  # type: ignore[arg-type]  # and again
    second = ctx.consumer("second")
    assert second.fetch(block_ms=0) == []  # nothing to run
    letters = DeadLetters(ctx.r, ctx.zone).list(newest_first=False)
    assert [(x.reason, x.job_id) for x in letters] == [("replayed", job_id)] * 2
    assert "already has a result" in letters[0].detail
    assert ctx.r.get(keys.result_key(ctx.zone, job_id)) == stored  # the first result stays, byte for byte
    assert ctx.r.xlen(stream) == 0 and ctx.r.xpending(stream, keys.GROUP)["pending"] == 0


def test_replay_in_the_same_read_runs_once(ctx: Ctx) -> None:
    original = ctx.seal("twice in one read")
    stream = keys.jobs_stream(ctx.zone, "interactive")
    for _ in range(2):
        ctx.r.xadd(stream, original)  # type: ignore[arg-type]
    got = ctx.consumer().fetch(block_ms=0)
    assert [d.job.payload.inputs["q"] for d in got] == ["twice in one read"]
    [letter] = DeadLetters(ctx.r, ctx.zone).list()
    assert letter.reason == "replayed" and "twice in one read" in letter.detail and letter.original == original


def test_revoked_kek_version_is_rejected_even_with_its_data_key_cached(ctx: Ctx) -> None:
    old = [ctx.seal(f"old {i}") for i in range(3)]  # sealed under v1 (one data key for all three)
    stream = keys.jobs_stream(ctx.zone, "interactive")
    consumer = ctx.consumer()
    ctx.r.xadd(stream, old[0])  # type: ignore[arg-type]
    [d] = consumer.fetch(block_ms=0)  # opened: v1's data key is now in the reader's cache
    consumer.complete([(d, {})])
    LocalKeyring.rotate(ctx.keyring, ctx.zone)
    info = LocalKeyring.revoke(ctx.keyring, ctx.zone, 1)
    assert info.kid == f"{ctx.zone}/v1" and info.revoked
    new = Sealer(Envelope(LocalKeyring(ctx.keyring, zones=[ctx.zone])))
    for e in old[1:]:
        ctx.r.xadd(stream, e)  # type: ignore[arg-type]
    ctx.r.xadd(stream, ctx.seal("under v2", sealer=new))  # type: ignore[arg-type]
    got = consumer.fetch(block_ms=0)
    assert [x.job.payload.inputs["q"] for x in got] == ["under v2"]
    letters = DeadLetters(ctx.r, ctx.zone).list(newest_first=False)
    assert [x.reason for x in letters] == ["revoked_key", "revoked_key"]
    assert "revoked" in letters[0].detail and f"{ctx.zone}/v1" in letters[0].detail
    assert "key" not in __import__("json").loads(ctx.keyring.read_text())["zones"][ctx.zone]["keys"]["1"]


def test_the_current_kek_cannot_be_revoked(ctx: Ctx) -> None:
    with pytest.raises(ConfigError, match="rotate"):
        LocalKeyring.revoke(ctx.keyring, ctx.zone, 1)
    with pytest.raises(ConfigError, match="no KEK version 9"):
        LocalKeyring.revoke(ctx.keyring, ctx.zone, 9)


def test_keys_revoke_cli(ctx: Ctx) -> None:
    run = CliRunner().invoke
    ring = str(ctx.keyring)
    refused = run(cli, ["keys", "revoke", "--zone", ctx.zone, "--version", "1", "--keyring", ring])
    assert refused.exit_code == 2 and "current KEK" in refused.output and "Traceback" not in refused.output
    assert run(cli, ["keys", "rotate", "--zone", ctx.zone, "--keyring", ring]).exit_code == 0
    done = run(cli, ["keys", "revoke", "--zone", ctx.zone, "--version", "1", "--keyring", ring])
    assert done.exit_code == 0 and f"revoked: {ctx.zone}/v1" in done.output
    listed = run(cli, ["keys", "list", "--json", "--keyring", ring])
    rows = {x["kid"]: x for x in __import__("json").loads(listed.output)}
    assert rows[f"{ctx.zone}/v1"]["revoked"] and not rows[f"{ctx.zone}/v2"]["revoked"]
    assert rows[f"{ctx.zone}/v2"]["current"]
    usage = run(cli, ["keys", "revoke", "--zone", ctx.zone, "--keyring", ring])
    assert usage.exit_code == 2 and "--version" in usage.output


def test_the_matrix_counts(ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    """All cases in one stream, one read: the figure docs/reliability.md quotes."""
    bad: list[Entry] = []
    expected: list[str] = []
    for make, reason in CASES.values():
        made = make(ctx)
        bad += made
        expected += [reason] * len(made)
    ran, reasons = _run(ctx, bad)
    assert ran == ["good-before", "good-after"] and reasons == expected
    with capsys.disabled():
        print(f"\ntamper matrix: {len(reasons)}/{len(bad)} attacked entries rejected, each with its reason")
