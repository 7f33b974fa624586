"""Queue depth per lane: backlog, pending, lag and the age of the oldest waiting job.

Because acknowledged entries are deleted (see `consumer`), `XLEN = lag + pending` holds on every
Redis version, so lag is computed as `XLEN - pending` — Redis 6.2's `XINFO GROUPS` has no `lag`, and
Redis 7's may be null once entries were deleted. The same figure is what KEDA's redis-streams scaler
reads as `streamLength`.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from broker import keys
from broker.connection import redis_errors
from broker.message import now_ms


@dataclass(frozen=True)
class LaneDepth:
    zone: str
    lane: str
    length: int  # entries in the stream: waiting + delivered-but-unacknowledged
    pending: int  # delivered, not yet acknowledged
    lag: int  # not yet delivered to any consumer
    consumers: int
    oldest_age_ms: int  # age of the oldest entry still in the stream (0 when empty)


def queue_depth(client: redis.Redis, zone: str) -> list[LaneDepth]:
    out: list[LaneDepth] = []
    with redis_errors():
        for lane in keys.LANES_BY_PRIORITY:
            stream = keys.jobs_stream(zone, lane)
            pipe = client.pipeline(transaction=False)
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
            length, first = pipe.execute()
            pending = consumers = 0
            if length or client.exists(stream):
                try:
                    for g in client.xinfo_groups(stream):
                        if g["name"] in (keys.GROUP, keys.GROUP.encode()):
                            pending, consumers = int(g["pending"]), int(g["consumers"])
                except redis.ResponseError:  # no such stream
                    pass
            oldest = 0
            if first:
                entry_ms = int(first[0][0].split(b"-")[0])
                oldest = max(now_ms() - entry_ms, 0)
            out.append(
                LaneDepth(zone, lane.value, int(length), pending, max(int(length) - pending, 0), consumers, oldest)
            )
    return out


__all__ = ["LaneDepth", "queue_depth"]
