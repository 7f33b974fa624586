"""Producer: seal jobs and append them to their zone's lane streams."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from broker import keys
from broker.admission import Admission, Entry
from broker.connection import ensure_group, redis_errors, run_script
from broker.message import JobSpec, Sealer
from broker.scripts import APPEND


class Producer:
    """Seals job specs for one zone and XADDs them (`submit_many` pipelines a whole chunk).

    With an `admission` (`broker.admission.Admission`), each chunk goes through the ADMIT script
    instead (every limit checked and the chunk appended in one call), and a refusal raises
    `Backpressure`/`BudgetExceeded` listing what was sent and what was not."""

    def __init__(
        self,
        client: redis.Redis,
        sealer: Sealer,
        zone: str,
        *,
        reply_to: str | None = None,
        chunk: int = 500,
        admission: Admission | None = None,
    ) -> None:
        self.client = client
        self.sealer = sealer
        self.zone = keys.check_zone(zone)
        self.reply_to = keys.check_name(reply_to, "reply name") if reply_to else None
        self.chunk = chunk
        self.admission = admission
        self._grouped: set[str] = set()
        self._append = client.register_script(APPEND)
        self._streams = {lane.value: keys.jobs_stream(self.zone, lane) for lane in keys.Lane}

    def _ensure_group(self, stream: str) -> None:
        if stream not in self._grouped:
            ensure_group(self.client, stream, keys.GROUP)
            self._grouped.add(stream)

    def submit(self, spec: JobSpec) -> str:
        return self.submit_many([spec])[0]

    def submit_many(self, specs: Iterable[JobSpec]) -> list[str]:
        """Seal and enqueue; returns the job ids in order.

        Every spec is sealed before anything is sent, so a bad one (`PayloadTooLarge`, `ValueError`)
        fails the whole call with nothing enqueued. The sealed jobs then go out in pipelines of
        `chunk`; should Redis fail part-way, resubmitting with the same `job_id`s is safe — a job id
        has at most one result."""
        if self.admission is not None:
            return self._submit_admitted(self.admission, list(specs))
        sealed: list[tuple[str, bytes, bytes]] = []
        ids: list[str] = []
        streams = self._streams
        for spec in specs:
            header, hb, body = self.sealer.seal_job(self.zone, spec, self.reply_to)
            ids.append(header.job_id)
            sealed.append((streams[header.lane], hb, body))
        with redis_errors():
            for i in range(0, len(sealed), self.chunk):
                self._send(sealed[i : i + self.chunk])
        return ids

    def _submit_admitted(self, admission: Admission, specs: list[JobSpec]) -> list[str]:
        entries: list[Entry] = []
        for spec in specs:
            header, hb, body = self.sealer.seal_job(self.zone, spec, self.reply_to)
            entries.append(Entry(header.job_id, header.tenant, self._streams[header.lane], hb, body))
        with redis_errors():
            for stream in {e.stream for e in entries}:
                self._ensure_group(stream)
        admission.submit(entries, specs, self.chunk)
        return [e.job_id for e in entries]

    def _send(self, batch: list[tuple[str, bytes, bytes]]) -> None:
        """Append one chunk with the APPEND script: all of it or none of it reaches the streams."""
        streams: list[str] = []
        args: list[bytes | int] = []
        for stream, hb, body in batch:
            if stream not in streams:
                self._ensure_group(stream)
                streams.append(stream)
            args += [streams.index(stream) + 1, hb, body]
        run_script(self._append, self.client, streams, args)  # hiredis packs the 1,500 arguments in one C call


__all__ = ["Producer"]
