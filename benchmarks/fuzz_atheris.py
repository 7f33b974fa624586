"""Coverage-guided fuzzing of the same readers with atheris (libFuzzer), when it is installed.

    python -m benchmarks.fuzz_atheris -runs=100000        # libFuzzer flags; prints "Done N runs in S second(s)"

One input drives one of four readers — `Codec.decode`, `Sealer.read_job_header`, `Sealer.open_job` on an
entry cut from the input, `Sealer.open_job` on a real sealed message with input-chosen bytes flipped —
and the rule is the hypothesis targets' rule (`benchmarks.fuzz`): accepted, or a `MessageError` with a
known reason and a detail. Anything else is a crash: libFuzzer stops and writes the input to a file.
`python -m benchmarks.fuzz` runs this as a subprocess after the hypothesis targets.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

# third-party modules first, uninstrumented (instrumenting redis, asyncio and pydantic costs half a minute);
# then only our own readers are instrumented for coverage
import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401
import msgpack  # noqa: F401
import pydantic  # noqa: F401
import pydantic_settings  # noqa: F401
import redis  # noqa: F401
import yaml  # noqa: F401
import zstandard  # noqa: F401

with atheris.instrument_imports(include=["broker"]):
    from broker.codec import unpack
    from broker.errors import MessageError
    from broker.message import BODY_FIELD, HEADER_FIELD

from benchmarks.fuzz import REASONS, ZONE, FuzzKit

_kit = FuzzKit(Path(tempfile.mkdtemp(prefix="hyb-atheris-")))


def _check(exc: MessageError) -> None:
    if exc.reason not in REASONS or not exc.detail:
        raise AssertionError(f"refusal without a known reason: {exc.reason!r} {exc.detail!r}")


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 3)
    try:
        if which == 0:
            _kit.codec.decode(fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif which == 1:
            _kit.sealer.read_job_header(ZONE, {HEADER_FIELD: fdp.ConsumeBytes(fdp.remaining_bytes()), BODY_FIELD: b""})
        elif which == 2:
            h = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1100))
            _kit.sealer.open_job(ZONE, {HEADER_FIELD: h, BODY_FIELD: fdp.ConsumeBytes(fdp.remaining_bytes())})
            raise AssertionError("an arbitrary entry opened")
        else:
            msg = _kit.messages[fdp.ConsumeIntInRange(0, len(_kit.messages) - 1)]
            field = HEADER_FIELD if fdp.ConsumeBool() else BODY_FIELD
            b = bytearray(msg[field])
            flips = 0
            while fdp.remaining_bytes() >= 3:
                b[fdp.ConsumeIntInRange(0, len(b) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
                flips += 1
            if flips == 0:
                return
            entry = {**msg, field: bytes(b)}
            if entry[field] == msg[field]:
                return
            _kit.sealer.open_job(ZONE, entry)
            if field == HEADER_FIELD and unpack(entry[field]) == unpack(msg[field]):
                return
            raise AssertionError("a changed message opened")
    except MessageError as exc:
        _check(exc)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
