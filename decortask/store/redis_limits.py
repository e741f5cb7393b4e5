"""The Redis store's rate logs and concurrency slots (`limit_state.py`), each call one Lua script.

A rate bucket is a sorted set `{ns}:rate:{bucket}` (member: an attempt, score: its start or reservation);
RESERVE is `limit_state.reserve` step for step, and tests/test_limits_store.py runs the same cases on it
as on the Python one. A slot bucket is a hash `{ns}:slots:{bucket}` (holder -> the lease as JSON).
Both kinds of key expire on their own once idle (rates: after their longest window; slots: a day).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .limit_state import Lease, LimitStore, RateBucket
from .sql_limits import lease_from_json, lease_json

#: KEYS: the buckets' sorted sets. ARGV: member, now, then count and window of each bucket.
RESERVE = """
local member = ARGV[1]
local now = tonumber(ARGV[2])
local n = #KEYS
local counts, windows = {}, {}
for i = 1, n do
  counts[i] = tonumber(ARGV[1 + 2 * i])
  windows[i] = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.6f', now - windows[i]))
end
local function put(score)
  for i = 1, n do
    redis.call('ZADD', KEYS[i], string.format('%.6f', score), member)
    redis.call('PEXPIRE', KEYS[i], math.ceil((score - now + windows[i]) * 1000) + 1000)
  end
  return string.format('%.6f', score)
end
local held, due = true, nil
for i = 1, n do
  local score = redis.call('ZSCORE', KEYS[i], member)
  if not score then held = false
  elseif due == nil or tonumber(score) > due then due = tonumber(score) end
end
if held and n > 0 then
  if due > now then return string.format('%.6f', due) end
  local room = true
  for i = 1, n do
    local low = now - windows[i]
    local c = redis.call('ZCOUNT', KEYS[i], '(' .. string.format('%.6f', low), string.format('%.6f', now))
    local own = tonumber(redis.call('ZSCORE', KEYS[i], member))
    if own > low and own <= now then c = c - 1 end
    if c >= counts[i] then room = false end
  end
  if room then return put(now) end
end
local start = now
for i = 1, n do
  redis.call('ZREM', KEYS[i], member)
  local latest = redis.call('ZREVRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if #latest > 0 and tonumber(latest[2]) > start then start = tonumber(latest[2]) end
  local nth = redis.call('ZREVRANGE', KEYS[i], counts[i] - 1, counts[i] - 1, 'WITHSCORES')
  if #nth > 0 and tonumber(nth[2]) + windows[i] > start then start = tonumber(nth[2]) + windows[i] end
end
return put(start)
"""

#: KEYS: the slot hash. ARGV: holder, the lease JSON, limit, the key's ttl (seconds).
ACQUIRE = """
local mine = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
if not mine and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
if mine then
  local old = cjson.decode(redis.call('HGET', KEYS[1], ARGV[1]))
  local new = cjson.decode(ARGV[2])
  new['since'] = old['since']
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(new))
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
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

    def reserve_rate(self, member: str, buckets: Sequence[RateBucket], now: float) -> float:
        keys = [f"{self.namespace}:rate:{bucket.name}" for bucket in buckets]
        args: list[Any] = [member, repr(now)]
        for bucket in buckets:
            args.extend([bucket.count, repr(bucket.window)])
        with self._errors():
            return float(self._limit_script("reserve", RESERVE)(keys=keys, args=args))

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
