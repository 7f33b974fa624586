"""Payload codec: msgpack, then zstd — with a size limit checked before anything is sent.

`Codec.encode` packs a mapping (or a `msgspec` struct) with msgpack and compresses it into one zstd
frame. The level is configurable; the default, -1 (zstd's "fast" mode), is chosen for messages that
live seconds to hours in Redis: on 1 KB of prose it makes frames 13 % larger than level 3 but
compresses 2x and decompresses 2.6x faster, and per-message CPU is what bounds a broker (the table
is in docs/benchmarks.md). Payloads packed smaller than `min_compress_bytes` (default 256) stay plain msgpack:
zstd would make them larger and costs ~10 µs each. A reader tells the two apart by the first
bytes — a zstd frame starts with the magic `28 b5 2f fd`, a msgpack map with `0x80`-`0x8f`, `0xde`
or `0xdf`. A per-task trained dictionary can be registered; the frame then names the
dictionary id, so a reader without that dictionary fails cleanly instead of producing garbage.
`Codec.decode` refuses frames that would inflate past the limit (zip bombs) and anything that is not
a msgpack map; `Codec.decode_as` does the same and then decodes into a typed struct, checking its
schema in the same C call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import msgpack
import msgspec
import zstandard

from broker.errors import DecodeError, MessageError, PayloadTooLarge

_T = TypeVar("_T")

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20  # 1 MiB of msgpack before compression
DEFAULT_LEVEL = -1
MIN_LEVEL = -100  # zstd's fast levels go lower, but past this they barely compress
DEFAULT_MIN_COMPRESS_BYTES = 256
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def pack(obj: Any) -> bytes:
    """msgpack with the options every part of the wire format uses (bin type, str as UTF-8)."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


_encoder = msgspec.msgpack.Encoder()


def pack_fast(obj: Any) -> bytes:
    """The same bytes as `pack` for maps, lists, str, bytes, numbers, bool and None, ~2.5x faster;
    also encodes the `msgspec` structs of `broker.schema` (as maps, in field order). Raises
    `TypeError` for anything it cannot encode."""
    return _encoder.encode(obj)


def unpack(data: bytes) -> Any:
    """Inverse of `pack`; raises `DecodeError` on anything that is not exactly one msgpack object."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise DecodeError(f"not valid msgpack: {exc}", raw=data) from exc


def train_dictionary(samples: Iterable[Mapping[str, Any]], size: int = 16 * 1024) -> bytes:
    """Train a zstd dictionary on sample payloads (msgpack-packed as the codec will pack them)."""
    packed: list[bytes | bytearray | memoryview[int]] = [pack(dict(s)) for s in samples]
    return zstandard.train_dictionary(size, packed).as_bytes()


class Codec:
    """msgpack + zstd with a size limit and optional per-task dictionaries."""

    def __init__(
        self,
        level: int = DEFAULT_LEVEL,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        dictionaries: Mapping[str, bytes] | None = None,
        min_compress_bytes: int = DEFAULT_MIN_COMPRESS_BYTES,
    ) -> None:
        if not MIN_LEVEL <= level <= 22 or level == 0:
            raise ValueError(f"zstd level must be between {MIN_LEVEL} and 22, and not 0; got {level}")
        if max_payload_bytes <= 0:
            raise ValueError("max_payload_bytes must be positive")
        self.level = level
        self.max_payload_bytes = max_payload_bytes
        self.min_compress_bytes = min_compress_bytes
        # zstandard's (de)compressor objects must not be used by two threads at once: each thread
        # gets its own, made on first use (a worker opens jobs and seals results on two threads).
        self._zdicts: dict[str, zstandard.ZstdCompressionDict] = {}
        self._zdicts_by_id: dict[int, zstandard.ZstdCompressionDict] = {}
        self._tls = threading.local()
        for task, raw in (dictionaries or {}).items():
            self.add_dictionary(task, raw)

    def add_dictionary(self, task: str, raw: bytes) -> None:
        zdict = zstandard.ZstdCompressionDict(raw)
        self._zdicts[task] = zdict
        self._zdicts_by_id[zdict.dict_id()] = zdict
        self._tls = threading.local()  # forget (de)compressors made before this dictionary

    def _compressor(self, task: str | None) -> zstandard.ZstdCompressor:
        made: dict[str | None, zstandard.ZstdCompressor] | None = getattr(self._tls, "c", None)
        if made is None:
            made = self._tls.c = {}
        c = made.get(task)
        if c is None:
            zdict = self._zdicts.get(task) if task is not None else None
            c = made[task] = zstandard.ZstdCompressor(level=self.level, dict_data=zdict, write_content_size=True)
        return c

    def _decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor | None:
        made: dict[int, zstandard.ZstdDecompressor] | None = getattr(self._tls, "d", None)
        if made is None:
            made = self._tls.d = {}
        d = made.get(dict_id)
        if d is None:
            if dict_id:
                zdict = self._zdicts_by_id.get(dict_id)
                if zdict is None:
                    return None
                d = made[dict_id] = zstandard.ZstdDecompressor(dict_data=zdict)
            else:
                d = made[0] = zstandard.ZstdDecompressor()
        return d

    def encode(self, obj: Mapping[str, Any] | msgspec.Struct, task: str | None = None) -> bytes:
        """Pack and compress; raises `PayloadTooLarge` when the packed form is over the limit and
        `TypeError` when a value cannot be packed."""
        packed = pack_fast(obj)
        if len(packed) > self.max_payload_bytes:
            raise PayloadTooLarge(len(packed), self.max_payload_bytes)
        if task is not None and task not in self._zdicts:
            task = None
        if len(packed) < self.min_compress_bytes and task is None:
            return packed
        return self._compressor(task).compress(packed)

    def decode(self, frame: bytes) -> dict[str, Any]:
        """Decompress and unpack one frame into a dict; every failure is a `DecodeError`."""
        return self._as_map(unpack(self.unframe(frame)), frame)

    def decode_as(self, frame: bytes, decoder: msgspec.msgpack.Decoder[_T]) -> _T:
        """Decompress one frame and decode it with a typed `msgspec` decoder (which checks the
        schema as it decodes); every failure is a `DecodeError` naming what was wrong."""
        packed = self.unframe(frame)
        try:
            return decoder.decode(packed)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise DecodeError(f"invalid payload: {exc}", raw=frame) from None

    def decode_many_as(
        self, frames: Iterable[bytes | MessageError], decoder: msgspec.msgpack.Decoder[_T]
    ) -> list[_T | MessageError]:
        """`decode_as` for the frames of one read, in order: each decoded struct, or the `MessageError`
        that refused it (an error given in place of a frame is passed through). The good path — a
        frame without a dictionary — is one loop with no call of ours per frame."""
        out: list[_T | MessageError] = []
        append = out.append
        plain = self._decompressor(0)
        assert plain is not None  # dictionary id 0 is no dictionary: always there
        frame_size = zstandard.get_frame_parameters
        limit = self.max_payload_bytes
        decode = decoder.decode
        for frame in frames:
            if isinstance(frame, MessageError):
                append(frame)
                continue
            try:
                if frame.startswith(ZSTD_MAGIC):
                    params = frame_size(frame)
                    if params.dict_id or not 0 < params.content_size <= limit:
                        append(self.decode_as(frame, decoder))  # a dictionary, or a size to refuse
                        continue
                    append(decode(plain.decompress(frame)))
                else:
                    append(decode(self.unframe(frame)))
            except (zstandard.ZstdError, msgspec.DecodeError):
                try:
                    append(self.decode_as(frame, decoder))  # raises, saying what is wrong
                except MessageError as exc:
                    append(exc)
            except MessageError as exc:
                append(exc)
        return out

    def unframe(self, frame: bytes) -> bytes:
        """The msgpack bytes inside one frame (decompressed when it is a zstd frame), size-checked."""
        if frame[:4] != ZSTD_MAGIC:
            if len(frame) > self.max_payload_bytes:
                raise DecodeError(f"payload of {len(frame)} bytes is over the limit of {self.max_payload_bytes}")
            if not frame or not (0x80 <= frame[0] <= 0x8F or frame[0] in (0xDE, 0xDF)):
                raise DecodeError("payload is neither a zstd frame nor a msgpack map", raw=frame)
            return frame
        try:
            params = zstandard.get_frame_parameters(frame)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"not a zstd frame: {exc}", raw=frame) from exc
        if params.content_size > self.max_payload_bytes:
            raise DecodeError(
                f"frame declares {params.content_size} bytes, over the limit of {self.max_payload_bytes}",
                raw=frame,
            )
        decompressor = self._decompressor(params.dict_id)
        if decompressor is None:
            raise DecodeError(f"frame needs zstd dictionary {params.dict_id}, which is not loaded", raw=frame)
        try:
            # the frame declares its size (checked above: a frame that does not is refused), so the
            # output buffer is made that size; a frame whose content is longer than declared fails
            packed = decompressor.decompress(frame)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"zstd frame does not decompress: {exc}", raw=frame) from exc
        if len(packed) > self.max_payload_bytes:
            raise DecodeError("decompressed payload over the limit", raw=frame)
        return packed

    @staticmethod
    def _as_map(obj: Any, frame: bytes) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise DecodeError(f"payload is a msgpack {type(obj).__name__}, not a map", raw=frame)
        return obj


__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_MIN_COMPRESS_BYTES",
    "MIN_LEVEL",
    "ZSTD_MAGIC",
    "Codec",
    "pack",
    "pack_fast",
    "train_dictionary",
    "unpack",
]
