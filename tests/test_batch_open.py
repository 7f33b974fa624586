"""The consumer opens a whole read at once (`Sealer.open_headers`, `Sealer.open_bodies` →
`Envelope.open_many`, `Codec.decode_many_as`). These batch paths must decide exactly what the
one-message paths decide — the same job, or a refusal with the same dead-letter reason — for any
mix of good and bad messages in one read."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.codec import Codec, pack
from broker.envelope import Envelope
from broker.errors import MessageError
from broker.keyring import LocalKeyring
from broker.message import JobSpec, Sealer
from broker.schema import JobHeader, JobPayload, Matches

ZONE = "bd-dhaka"
SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _strict_header_type() -> type:
    """JobHeader with each `Matches` turned back into a msgspec pattern: the per-message reference."""
    fields = []
    for f in msgspec.structs.fields(JobHeader):
        hint = typing.get_type_hints(JobHeader, include_extras=True)[f.name]

        def strict(tp: Any) -> Any:
            extras = getattr(tp, "__metadata__", ())
            rx = next((m.regex for m in extras if isinstance(m, Matches)), None)
            if rx is None:
                return tp
            meta = next(m for m in extras if isinstance(m, msgspec.Meta))
            return Annotated[
                str, msgspec.Meta(min_length=meta.min_length, max_length=meta.max_length, pattern=f"^(?:{rx})\\Z")
            ]

        args = typing.get_args(hint)
        tp = strict(hint) if not (args and type(None) in args) else strict(args[0]) | None
        fields.append((f.name, tp) if f.required else (f.name, tp, f.default))
    return msgspec.defstruct("StrictJobHeader", fields, kw_only=True, forbid_unknown_fields=True)


STRICT = msgspec.msgpack.Decoder(_strict_header_type())
HEADER: dict[str, Any] = {
    "v": 1, "job_id": "01J0000000000000000000000A", "tenant": "school-1", "zone": ZONE, "task": "grade",
    "model": "m", "lane": "batch", "sensitivity": "personal", "kid": f"{ZONE}/v3", "created_ms": 1,
}  # fmt: skip
valid_idents = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
idents = st.one_of(
    valid_idents,
    st.text(alphabet="aZ09._-/ v\n\té", min_size=0, max_size=12),
    st.builds(lambda a, b: f"{a}\n{b}", valid_idents, valid_idents),  # two good values in one
)
headers = st.fixed_dictionaries(
    {
        "job_id": idents,
        "zone": st.sampled_from([ZONE, "bd-dhaka\n", "BD", "other-zone", ""]),
        "kid": st.sampled_from([f"{ZONE}/v3", f"{ZONE}/v12", f"{ZONE}/vX", "x/v1\n", f"{ZONE}/v3\n"]) | idents,
        "reply_to": st.none() | idents,
    }
)


@SLOW
@given(st.lists(headers, min_size=1, max_size=30))
def test_a_read_of_headers_is_judged_like_each_header_alone(sealer: Sealer, changes: list[dict[str, Any]]) -> None:
    raws = [pack({**HEADER, **c}) for c in changes]
    out = sealer.open_headers(ZONE, raws)
    for raw, got in zip(raws, out, strict=True):
        try:
            expected = STRICT.decode(raw)
        except msgspec.ValidationError:
            assert isinstance(got, MessageError) and got.reason == "malformed", got
            continue
        if expected.zone != ZONE:
            assert isinstance(got, MessageError) and got.reason == "zone_mismatch", got
        else:
            assert isinstance(got, JobHeader) and got.job_id == expected.job_id and got.kid == expected.kid


def _sealer_of(path: Path) -> Sealer:
    LocalKeyring.init_zone(path, ZONE)
    return Sealer(Envelope(LocalKeyring(path, zones=[ZONE])))


@pytest.fixture
def sealer(tmp_path: Path) -> Sealer:
    return _sealer_of(tmp_path / "keyring.json")


@pytest.fixture
def other_sealer(tmp_path: Path) -> Sealer:
    """A second keyring: its messages carry a data key the reader's KEK did not wrap."""
    return _sealer_of(tmp_path / "other.json")


def _outcome(fn: Any) -> Any:
    try:
        job = fn()
    except MessageError as exc:
        return ("refused", exc.reason)
    return ("job", job.header.job_id, job.payload.inputs)


def _mutate(body: bytes, how: int, where: int) -> bytes:
    if how == 0 or not body:
        return body
    i = where % len(body)
    if how == 1:
        return body[:i] + bytes([body[i] ^ 0x5A]) + body[i + 1 :]
    if how == 2:
        return body[:i]
    return body + bytes(5000)  # past the sealer's body limit below


@SLOW
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([0, 0, 1, 2, 3]), st.integers(0, 10_000), st.booleans()),
        min_size=1,
        max_size=20,
    )
)
def test_a_read_of_bodies_is_opened_like_each_body_alone(
    sealer: Sealer, other_sealer: Sealer, plan: list[tuple[bool, int, int, bool]]
) -> None:
    sealer.max_body_bytes = 4096
    items = []
    for i, (big, how, where, foreign) in enumerate(plan):
        text = "ছাত্রটি জিজ্ঞাসা করল " * (40 if big else 1)  # compressed, or plain msgpack
        by = other_sealer if foreign else sealer
        header, hb, body = by.seal_job(ZONE, JobSpec(task="t", inputs={"text": text, "i": i}))
        items.append((sealer.open_header(ZONE, hb) if not foreign else header, hb, _mutate(body, how, where)))
    batch = sealer.open_bodies(items)
    for (header, hb, body), got in zip(items, batch, strict=True):
        alone = _outcome(lambda header=header, hb=hb, body=body: sealer.open_body(header, hb, body))
        assert _outcome(lambda got=got: _raise_or(got)) == alone


def _raise_or(x: Any) -> Any:
    if isinstance(x, MessageError):
        raise x
    return x


small_maps = st.dictionaries(
    st.text(max_size=3), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=80) | st.text(min_size=190), max_size=3
)  # the codec below refuses payloads over 200 bytes
maps = st.fixed_dictionaries({"inputs": small_maps}) | st.dictionaries(st.sampled_from(["inputs", "x"]), small_maps)
frames = st.one_of(
    st.binary(max_size=64),
    maps.map(pack),
    st.builds(
        lambda obj, level, sized, cut, flip: _bend(
            zstandard.ZstdCompressor(level=level, write_content_size=sized).compress(pack(obj)), cut, flip
        ),
        maps,
        st.sampled_from([-1, 3]),
        st.booleans(),
        st.sampled_from([0, 0, 0, 1, 5, 30]),
        st.none() | st.none() | st.integers(0, 80),
    ),
)


def _bend(frame: bytes, cut: int, flip: int | None) -> bytes:
    if cut and cut < len(frame):
        frame = frame[:-cut]
    if flip is not None and flip < len(frame):
        frame = frame[:flip] + bytes([frame[flip] ^ 0xFF]) + frame[flip + 1 :]
    return frame


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, min_size=1, max_size=20))
def test_a_read_of_frames_is_decoded_like_each_frame_alone(batch: list[bytes]) -> None:
    codec = Codec(max_payload_bytes=200)
    decoder = msgspec.msgpack.Decoder(JobPayload)
    got = codec.decode_many_as(batch, decoder)
    for frame, one in zip(batch, got, strict=True):
        try:
            alone: Any = codec.decode_as(frame, decoder)
        except MessageError as exc:
            assert isinstance(one, MessageError) and one.reason == exc.reason, (frame, one, exc)
        else:
            assert one == alone
