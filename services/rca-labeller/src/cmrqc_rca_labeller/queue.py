"""A durable priority queue of pending RCA cases, in Redis.

Kafka hands records over in offset order; RCA should instead label the cases whose quality
is most in doubt first. The intake therefore moves every SegmentationReady into this queue
(and only then lets its input offset be committed), and the worker takes the best case from
the queue, whatever order they arrived in. Nothing is dropped: a case leaves the queue only
when its label (or its dead letter) has been acknowledged by Kafka.

Redis keys, all under ``{prefix}`` (a Redis Cluster hash tag, so one slot holds them and the
Lua scripts may touch them atomically):

* ``{prefix}:case:<id>`` hash: the event (JSON), ``enqueued_at`` (s), ``cost``, ``attempts``.
* ``{prefix}:pending`` sorted set: id → score (lowest first).
* ``{prefix}:inflight`` sorted set: id → lease deadline (s). A case whose lease expires (its
  worker died) is put back into ``pending`` by the next claim.
* ``{prefix}:qc:<id>``: the priority cost from the case's QC result, kept for ``qc_ttl_s`` so
  that a QC result arriving before its segmentation still counts.
* ``{prefix}:done:<id>``: marker kept for ``done_ttl_s``: a record delivered again (a replay,
  a crash before the intake's offset commit) is not labelled twice.

Score = cost + ``aging_per_hour`` × (enqueue time in hours): a low cost (uncertain QC, or a
predicted Dice near the threshold) goes first, and a case gains ``aging_per_hour`` of cost
for every hour it waits, so under sustained load nothing starves. Every change is one Lua
script: atomic, so any number of intakes and workers may share the queue.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

_ENQUEUE = """
-- KEYS: case, pending, done, qc ; ARGV: id, event, now, aging_per_hour, unknown_cost
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local cost = tonumber(redis.call('GET', KEYS[4]) or ARGV[5])
local now = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'event', ARGV[2], 'enqueued_at', ARGV[3], 'cost', cost,
           'attempts', 0)
redis.call('ZADD', KEYS[2], cost + tonumber(ARGV[4]) * now / 3600, ARGV[1])
return 1
"""

_RECORD_QC = """
-- KEYS: qc, case, pending ; ARGV: id, cost, qc_ttl, aging_per_hour
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  local enqueued = tonumber(redis.call('HGET', KEYS[2], 'enqueued_at'))
  redis.call('HSET', KEYS[2], 'cost', ARGV[2])
  redis.call('ZADD', KEYS[3], 'XX', tonumber(ARGV[2]) + tonumber(ARGV[4]) * enqueued / 3600,
             ARGV[1])
  return 1
end
local cost = redis.call('HGET', KEYS[2], 'cost')
if cost then redis.call('HSET', KEYS[2], 'cost', ARGV[2]) end
return 0
"""

_CLAIM = """
-- KEYS: pending, inflight ; ARGV: now, lease_s, case_prefix, aging_per_hour
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  local case = ARGV[3] .. id
  local enqueued = redis.call('HGET', case, 'enqueued_at')
  if enqueued then
    local cost = tonumber(redis.call('HGET', case, 'cost'))
    redis.call('ZADD', KEYS[1], cost + tonumber(ARGV[4]) * tonumber(enqueued) / 3600, id)
  end
end
local top = redis.call('ZRANGE', KEYS[1], 0, 0)
if #top == 0 then return false end
local id = top[1]
redis.call('ZREM', KEYS[1], id)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
local case = ARGV[3] .. id
local attempts = redis.call('HINCRBY', case, 'attempts', 1)
return {id, redis.call('HGET', case, 'event'), attempts, redis.call('HGET', case, 'cost')}
"""

_COMPLETE = """
-- KEYS: case, inflight, done, pending ; ARGV: id, done_ttl
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
return 1
"""

_DEFER = """
-- KEYS: inflight ; ARGV: id, until
return redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
"""


@dataclass(frozen=True)
class ClaimedCase:
    """A case taken from the queue: its id, the event JSON, and which attempt this is."""

    case_id: str
    event_json: str
    attempts: int
    cost: float


@dataclass(frozen=True)
class QueueStats:
    pending: int
    inflight: int


class CaseQueue:
    """The priority queue (see the module docstring).

    Args:
        client: a Redis client (``decode_responses`` off).
        prefix: key prefix; wrapped in braces to pin every key to one cluster slot.
        lease_s: how long a claimed case is reserved for its worker before it is retried.
        aging_per_hour: cost a waiting case gains per hour (anti-starvation).
        unknown_cost: cost of a case whose QC result has not arrived.
        qc_ttl_s: how long a QC result is kept for a segmentation not yet seen.
        done_ttl_s: how long a labelled case is remembered (de-duplication window).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        lease_s: float = 600.0,
        aging_per_hour: float = 0.1,
        unknown_cost: float = 0.15,
        qc_ttl_s: int = 7 * 24 * 3600,
        done_ttl_s: int = 30 * 24 * 3600,
    ) -> None:
        self.client = client
        self.prefix = "{" + prefix + "}"
        self.lease_s = lease_s
        self.aging_per_hour = aging_per_hour
        self.unknown_cost = unknown_cost
        self.qc_ttl_s = qc_ttl_s
        self.done_ttl_s = done_ttl_s
        self._enqueue = client.register_script(_ENQUEUE)
        self._record_qc = client.register_script(_RECORD_QC)
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._defer = client.register_script(_DEFER)
        self._wait_aof: bool | None = None

    @classmethod
    def from_url(cls, url: str, prefix: str, **options: Any) -> CaseQueue:
        return cls(redis.Redis.from_url(url), prefix, **options)

    def _key(self, kind: str, case_id: str = "") -> str:
        return f"{self.prefix}:{kind}:{case_id}" if case_id else f"{self.prefix}:{kind}"

    def enqueue(self, case_id: str, event_json: str, now: float | None = None) -> bool:
        """Queue a case unless it is queued, in flight or done; True when newly queued.

        Returns after Redis has applied (and, where the server supports ``WAITAOF``,
        fsynced to its append-only file) the write, so the caller may commit its offset.
        """
        added = self._enqueue(
            keys=[
                self._key("case", case_id),
                self._key("pending"),
                self._key("done", case_id),
                self._key("qc", case_id),
            ],
            args=[
                case_id,
                event_json,
                repr(time.time() if now is None else now),
                self.aging_per_hour,
                self.unknown_cost,
            ],
        )
        self._sync()
        return bool(added)

    def record_qc(self, case_id: str, cost: float) -> bool:
        """Set a case's priority cost (from its QC result); True when it was pending."""
        pending = self._record_qc(
            keys=[self._key("qc", case_id), self._key("case", case_id), self._key("pending")],
            args=[case_id, repr(float(cost)), int(self.qc_ttl_s), self.aging_per_hour],
        )
        self._sync()
        return bool(pending)

    def claim(self, now: float | None = None) -> ClaimedCase | None:
        """Take the lowest-score pending case and lease it; None when nothing is pending."""
        found = self._claim(
            keys=[self._key("pending"), self._key("inflight")],
            args=[
                repr(time.time() if now is None else now),
                self.lease_s,
                self._key("case") + ":",
                self.aging_per_hour,
            ],
        )
        if not found:
            return None
        case_id, event_json, attempts, cost = found
        return ClaimedCase(
            case_id=case_id.decode(),
            event_json=event_json.decode(),
            attempts=int(attempts),
            cost=float(cost),
        )

    def complete(self, case_id: str) -> None:
        """Forget a labelled (or dead-lettered) case and remember that it is done."""
        self._complete(
            keys=[
                self._key("case", case_id),
                self._key("inflight"),
                self._key("done", case_id),
                self._key("pending"),
            ],
            args=[case_id, int(self.done_ttl_s)],
        )
        self._sync()

    def defer(self, case_id: str, delay_s: float, now: float | None = None) -> None:
        """Keep a failed case leased for ``delay_s``, after which a claim retries it."""
        until = (time.time() if now is None else now) + delay_s
        self._defer(keys=[self._key("inflight")], args=[case_id, repr(until)])

    def extend(self, case_id: str, now: float | None = None) -> None:
        """Renew the lease of a case still being worked on."""
        self.defer(case_id, self.lease_s, now)

    def is_done(self, case_id: str) -> bool:
        return bool(self.client.exists(self._key("done", case_id)))

    def stats(self) -> QueueStats:
        return QueueStats(
            pending=int(self.client.zcard(self._key("pending"))),
            inflight=int(self.client.zcard(self._key("inflight"))),
        )

    def pending_ids(self) -> list[str]:
        """Pending case ids, best first (for inspection and tests)."""
        values = self.client.zrange(self._key("pending"), 0, -1)
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]  # type: ignore[union-attr]

    def _sync(self) -> None:
        """Wait until the write is fsynced to the AOF where the server can say so (≥ 7.2)."""
        if self._wait_aof is False:
            return
        try:
            self.client.execute_command("WAITAOF", 1, 0, 1000)
            self._wait_aof = True
        except redis.ResponseError:
            # Older servers, or AOF off: durability is the server's appendfsync policy.
            self._wait_aof = False

    def close(self) -> None:
        self.client.close()


def describe(stats: QueueStats) -> str:
    return json.dumps({"pending": stats.pending, "inflight": stats.inflight})
