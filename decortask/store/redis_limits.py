"""The Redis store's rate logs and concurrency slots (`limit_state.py`), each call one Lua script.

A rate bucket is a sorted set `{ns}:rate:{bucket}` (member: an attempt, score: its start or reservation)
and one of its starts only, `{ns}:rate:{bucket}:starts`; RESERVE is `limit_state.reserve` step for step, and tests/test_limits_store.py runs the same cases on it
as on the Python one. A slot bucket is a hash `{ns}:slots:{bucket}` (holder -> the lease as JSON).
Both kinds of key expire on their own once idle (rates: after their longest window; slots: a day).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .limit_state import Lease, LimitStore, RateBucket
from .sql_limits import lease_from_json, lease_json

#: KEYS: per bucket, the sorted set of all its entries then that of its starts. ARGV: member, now, early,
#: then count, window and spacing (`RateBucket.apart`) of each bucket. Returns {1 if started now, score}.
RESERVE = """
local member = ARGV[1]
local now = tonumber(ARGV[2])
local early = tonumber(ARGV[3])
local n = #KEYS / 2
local counts, windows, aparts = {}, {}, {}
local function f(x) return string.format('%.6f', x) end
for i = 1, n do
  counts[i] = tonumber(ARGV[1 + 3 * i])
  windows[i] = tonumber(ARGV[2 + 3 * i])
  aparts[i] = tonumber(ARGV[3 + 3 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[2 * i - 1], '-inf', f(now - aparts[i]))
  redis.call('ZREMRANGEBYSCORE', KEYS[2 * i], '-inf', f(now - aparts[i]))
end
local function keep(key, ttl)  -- only ever lengthen a key's life: it holds reservations further ahead
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
local function put(score, started)
  for i = 1, n do
    local ttl = math.ceil((score - now + aparts[i]) * 1000) + 1000
    redis.call('ZADD', KEYS[2 * i - 1], f(score), member)
    keep(KEYS[2 * i - 1], ttl)
    if started then
      redis.call('ZADD', KEYS[2 * i], f(score), member)
      keep(KEYS[2 * i], ttl)
    end
  end
  return {started and 1 or 0, f(score)}
end
local function nth(key, rank)
  local found = redis.call('ZREVRANGE', key, rank - 1, rank - 1, 'WITHSCORES')
  if #found > 0 then return tonumber(found[2]) end
  return nil
end
local reserved, due = n > 0, nil
for i = 1, n do
  local score = redis.call('ZSCORE', KEYS[2 * i - 1], member)
  if not score or redis.call('ZSCORE', KEYS[2 * i], member) then reserved = false
  elseif due == nil or tonumber(score) > due then due = tonumber(score) end
end
if reserved then
  if due > now + early then return {0, f(due)} end
  local room = true
  for i = 1, n do
    if redis.call('ZCOUNT', KEYS[2 * i], '(' .. f(now - windows[i]), '+inf') >= counts[i] then room = false end
  end
  if room then return put(now, true) end
  local start = now
  for i = 1, n do
    local oldest = nth(KEYS[2 * i], counts[i])
    if oldest and oldest + windows[i] > start then start = oldest + windows[i] end
  end
  return put(start, false)
end
local start = now
for i = 1, n do
  redis.call('ZREM', KEYS[2 * i - 1], member)
  redis.call('ZREM', KEYS[2 * i], member)
  local latest = nth(KEYS[2 * i - 1], 1)
  if latest and latest > start then start = latest end
  local oldest = nth(KEYS[2 * i - 1], counts[i])
  if oldest and oldest + aparts[i] > start then start = oldest + aparts[i] end
end
return put(start, start <= now)
"""

#: KEYS: the slot hash. ARGV: holder, the lease JSON, limit, the key's ttl (seconds).
ACQUIRE = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  if cjson.decode(held)['owner'] == cjson.decode(ARGV[2])['owner'] then return 1 end
  return 0
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

#: KEYS: the slot hash. ARGV: holder, and the owner it must have ('' for any).
RELEASE = """
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if not lease then return 0 end
if ARGV[2] ~= '' and cjson.decode(lease)['owner'] ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

#: An idle slot hash is dropped after this (every acquire renews it).
SLOTS_TTL = 86400


class RedisLimits(LimitStore):
    """`LimitStore` for `RedisStore`."""

    if TYPE_CHECKING:
        _client: Any
        namespace: str

        def _errors(self) -> contextlib.AbstractContextManager[None]: ...

    def _limit_script(self, name: str, source: str) -> Any:
        scripts: dict[str, Any] = self.__dict__.setdefault("_limit_scripts", {})
        if name not in scripts:
            scripts[name] = self._client.register_script(source)
        return scripts[name]

    def reserve_rate(
        self, member: str, buckets: Sequence[RateBucket], now: float, early: float = 0.0
    ) -> float:
        keys = []
        for bucket in buckets:
            keys.extend(
                [f"{self.namespace}:rate:{bucket.name}", f"{self.namespace}:rate:{bucket.name}:starts"]
            )
        args: list[Any] = [member, repr(now), repr(early)]
        for bucket in buckets:
            args.extend([bucket.count, repr(bucket.window), repr(bucket.apart)])
        with self._errors():
            started, score = self._limit_script("reserve", RESERVE)(keys=keys, args=args)
        # A start is `now` itself: the script's text of it is rounded to the microsecond, and could read as
        # a moment later.
        return now if int(started) else float(score)

    def acquire_slot(self, bucket: str, holder: str, owner: str, limit: int, now: float) -> bool:
        args = [holder, lease_json(holder, owner, now), limit, SLOTS_TTL]
        with self._errors():
            return bool(self._limit_script("acquire", ACQUIRE)(keys=[self._slots(bucket)], args=args))

    def release_slot(self, bucket: str, holder: str, owner: str | None = None) -> None:
        with self._errors():
            self._limit_script("release", RELEASE)(keys=[self._slots(bucket)], args=[holder, owner or ""])

    def slot_holders(self, bucket: str) -> list[Lease]:
        with self._errors():
            leases = [lease_from_json(text) for text in self._client.hvals(self._slots(bucket))]
        return sorted(leases, key=lambda lease: (lease.since, lease.holder))

    def _slots(self, bucket: str) -> str:
        return f"{self.namespace}:slots:{bucket}"
