"""The late results' mailboxes (`spawn_state.py`) for `RedisStore`: each operation one Lua script.

Layout: `ns:spawn:<parent>` (a hash: `taken`, `closed`), `:order` (a list of the children that ended, in
order of arrival), `:ids` (the same as a set), `:late` (the late children not yet delivered), and
`ns:spawn:unsettled` (a sorted set of the parents whose mailbox is open or holds undelivered late children,
by when they became so). A mailbox expires `SPAWN_TTL` after its last change.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from .spawn_state import SPAWN_TTL

#: KEYS: box, order, ids, late, unsettled. ARGV[1] is the parent's id, ARGV[2] the TTL, ARGV[3] now.
_PRELUDE = """
local box, order, ids, late, unsettled = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function keep() for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end end
local function settle()
  if redis.call('HGET', box, 'closed') ~= '1' or redis.call('SCARD', late) > 0 then
    redis.call('ZADD', unsettled, 'NX', ARGV[3], ARGV[1])
  else
    redis.call('ZREM', unsettled, ARGV[1])
  end
end
"""

_OPEN = """
redis.call('HSETNX', box, 'closed', '0')
redis.call('HSETNX', box, 'taken', '0')
keep()
settle()
return 1
"""

#: ARGV[4]: the child. Returns 1 (held for the parent, or delivered already) or 0 (late: deliver it).
_POST = """
local child = ARGV[4]
if redis.call('SADD', ids, child) == 0 then
  return 1 - redis.call('SISMEMBER', late, child)
end
redis.call('RPUSH', order, child)
redis.call('HSETNX', box, 'taken', '0')
redis.call('HSETNX', box, 'closed', '1')  -- a mailbox gone is as good as closed
local held = 1
if redis.call('HGET', box, 'closed') == '1' then
  redis.call('SADD', late, child)
  held = 0
end
keep()
settle()
return held
"""

#: ARGV[4]: start, ARGV[5]: limit.
_TAKE = """
local start = tonumber(ARGV[4])
local got = redis.call('LRANGE', order, start, start + tonumber(ARGV[5]) - 1)
if #got > 0 then redis.call('HSET', box, 'taken', start + #got) end
return got
"""

#: ARGV[4]: '1' to keep what the parent took (it succeeded). Returns the undelivered late children.
_CLOSE = """
if redis.call('HGET', box, 'closed') ~= '1' then
  redis.call('HSETNX', box, 'taken', '0')
  local start = 0
  if ARGV[4] == '1' then start = tonumber(redis.call('HGET', box, 'taken')) end
  for _, child in ipairs(redis.call('LRANGE', order, start, -1)) do redis.call('SADD', late, child) end
  redis.call('HSET', box, 'closed', '1')
end
local pending = {}
for _, child in ipairs(redis.call('LRANGE', order, 0, -1)) do
  if redis.call('SISMEMBER', late, child) == 1 then pending[#pending + 1] = child end
end
keep()
settle()
return pending
"""

#: ARGV[4]: the child.
_DELIVERED = """
redis.call('SREM', late, ARGV[4])
settle()
return 1
"""


class RedisSpawn:
    """`SpawnStore` for `RedisStore`."""

    _client: Any
    namespace: str

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # RedisStore's: Redis errors become StoreError

    def _spawn(self, name: str, source: str, parent_id: str, *args: Any) -> Any:
        scripts: dict[str, Any] = self.__dict__.setdefault("_spawn_scripts", {})
        if name not in scripts:
            scripts[name] = self._client.register_script(_PRELUDE + source)
        box = f"{self.namespace}:spawn:{parent_id}"
        keys = [box, f"{box}:order", f"{box}:ids", f"{box}:late", f"{self.namespace}:spawn:unsettled"]
        with self._errors():
            return scripts[name](keys=keys, args=[parent_id, SPAWN_TTL, time.time(), *args])

    def spawn_open(self, parent_id: str) -> None:
        self._spawn("open", _OPEN, parent_id)

    def spawn_post(self, parent_id: str, child_id: str) -> bool:
        return bool(int(self._spawn("post", _POST, parent_id, child_id)))

    def spawn_take(self, parent_id: str, start: int, limit: int) -> list[str]:
        return [str(child) for child in self._spawn("take", _TAKE, parent_id, start, limit)]

    def spawn_close(self, parent_id: str, keep_taken: bool) -> list[str]:
        return [str(child) for child in self._spawn("close", _CLOSE, parent_id, "1" if keep_taken else "0")]

    def spawn_delivered(self, parent_id: str, child_id: str) -> None:
        self._spawn("delivered", _DELIVERED, parent_id, child_id)

    def spawn_unsettled(self, limit: int, offset: int = 0) -> list[str]:
        key = f"{self.namespace}:spawn:unsettled"
        with self._errors():
            return [str(p) for p in self._client.zrange(key, offset, offset + limit - 1)]
