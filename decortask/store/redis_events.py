"""The event feed of a Redis store: a stream `ns:events` appended by the store's own Lua scripts.

A store opened with events on (`RedisStore(url, events=N)`) registers its scripts behind `prelude(...)`,
which defines `emit_event`: the create, transition, progress and log scripts call it in the same atomic
script as the change, so an event exists exactly when its change was written. Without events the
prelude only says `EVENTS = false`, and the scripts skip the call (one test of a constant per change).

Each event takes the next number of the counter `ns:events:seq` as its stream id (`N-0`): ids are
contiguous, so a reader that has seen N and next sees N + k knows that k - 1 events were trimmed in between
(`events.py` reports it as a gap). `XADD ... MAXLEN ~ keep` trims the oldest entries as it appends.
Subscribers read with `XREAD BLOCK`, each at its own cursor: nothing they do reaches the writers.
"""

from __future__ import annotations

import json
from typing import Any

from . import event_rows

#: Record fields each state or progress event carries (the SQL stores' `event_rows.FIELDS`, with the
#: task's id, name, queue and status, which they keep in columns).
FIELDS = ("id", "name", "queue", "status", *event_rows.FIELDS)

#: The prelude of a store without events: the scripts test `EVENTS` and skip `emit_event`.
NO_EVENTS = "local EVENTS = false\nlocal function emit_event(kind, values, line) end\n"

_PRELUDE = r"""
local EVENTS = true
local EVENT_STREAM, EVENT_SEQ, EVENT_KEEP = %(stream)s, %(seq)s, %(keep)s
local EVENT_FIELDS = {%(fields)s}
-- Appends one event: `values` is a record split by `split_record` (field -> raw JSON text), `line` a log
-- line's JSON text. The entry's id is the next number of the counter, so ids are contiguous.
local function emit_event(kind, values, line)
  local parts = {'"kind":"' .. kind .. '"'}
  for _, name in ipairs(EVENT_FIELDS) do
    if values[name] ~= nil then parts[#parts + 1] = '"' .. name .. '":' .. values[name] end
  end
  if line then parts[#parts + 1] = '"line":' .. line end
  local body = '{' .. table.concat(parts, ',') .. '}'
  local seq = redis.call('INCR', EVENT_SEQ)
  local added = redis.pcall('XADD', EVENT_STREAM, 'MAXLEN', '~', EVENT_KEEP, seq .. '-0', 'e', body)
  if type(added) == 'table' and added['err'] then
    -- The counter was lost (deleted) under a stream that still holds entries: continue after its last.
    local newest = redis.call('XREVRANGE', EVENT_STREAM, '+', '-', 'COUNT', 1)
    seq = tonumber(string.match(newest[1][1], '^(%%d+)')) + 1
    redis.call('SET', EVENT_SEQ, seq)
    redis.call('XADD', EVENT_STREAM, 'MAXLEN', '~', EVENT_KEEP, seq .. '-0', 'e', body)
  end
end
"""


def stream_key(namespace: str) -> str:
    return f"{namespace}:events"


def seq_key(namespace: str) -> str:
    return f"{namespace}:events:seq"


def prelude(namespace: str, keep: int) -> str:
    """The Lua put before every writing script of a store: `emit_event` when `keep` > 0, else a no-op."""
    if keep <= 0:
        return NO_EVENTS
    return _PRELUDE % {
        "stream": _lua_string(stream_key(namespace)),
        "seq": _lua_string(seq_key(namespace)),
        "keep": int(keep),
        "fields": ", ".join(_lua_string(name) for name in FIELDS),
    }


def _lua_string(text: str) -> str:
    """`text` as a Lua string literal: every byte as a decimal escape, so no namespace can break out."""
    return '"' + "".join(f"\\{byte}" for byte in text.encode()) + '"'


class RedisEventFeed:
    """Reads a Redis store's event stream; one per subscriber (XREAD BLOCK holds its connection)."""

    def __init__(self, client: Any, namespace: str) -> None:
        """`client`: a redis-py client with `decode_responses=True` (the store's own)."""
        self._client = client
        self._stream = stream_key(namespace)
        self._seq = seq_key(namespace)

    def read(self, after: int, limit: int, wait: float) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` events after number `after`, oldest first; waits up to `wait` seconds for one."""
        block = max(int(wait * 1000), 1) if wait > 0 else None
        reply = self._client.xread({self._stream: f"{after}-0"}, count=limit, block=block)
        if not reply:
            return []
        return [(_number(entry_id), json.loads(fields["e"])) for entry_id, fields in reply[0][1]]

    def bounds(self) -> tuple[int, int]:
        """(the oldest event number kept, the newest number ever written)."""
        pipe = self._client.pipeline(transaction=True)
        pipe.get(self._seq)
        pipe.xrange(self._stream, "-", "+", count=1)
        seq, first = pipe.execute()
        newest = int(seq or 0)
        return (_number(first[0][0]) if first else newest + 1), newest

    def trim(self, keep: int) -> int:
        """Delete all but the newest `keep` events (exactly); returns how many were deleted."""
        return int(self._client.xtrim(self._stream, maxlen=max(keep, 0), approximate=False))

    def close(self) -> None:
        return None


def _number(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])
