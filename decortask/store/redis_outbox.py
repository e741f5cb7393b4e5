"""The Redis store's outbox (see `outbox_state.py`).

Keys under the namespace `ns`: `ns:outbox:new` zset of unpublished task ids scored by `since`,
`ns:outbox:sent` the same for published ones, `ns:outbox:body` hash id -> entry JSON. An entry is written
by the same Lua script as its record (`CREATE_OUTBOXED` wraps the store's `CREATE`), so a record never
exists without its entry. Marking entries published moves them from `new` to `sent` (never resurrecting
one the relay removed); the relay reads both zsets by score and the records in one more round trip.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from .base import TaskRecord
from .outbox_state import OutboxEntry, OutboxItem, OutboxStore, item_of
from .redis_events import NO_EVENTS
from .redis_scripts import CREATE

# KEYS: the CREATE script's two keys, then the new zset and the body hash. ARGV: 1 how many of the next
# arguments are CREATE's, then CREATE's arguments, then per record (id, since, entry JSON).
# Runs CREATE (its KEYS and ARGV shadowed by the function's parameters) and writes the entry of every
# record it inserted ('ok'); returns CREATE's replies.
CREATE_OUTBOXED = (
    "local function create(KEYS, ARGV)\n"
    + CREATE
    + """
end
local split = tonumber(ARGV[1])
local create_args = {}
for i = 2, split + 1 do create_args[#create_args + 1] = ARGV[i] end
local replies = create({KEYS[1], KEYS[2]}, create_args)
if replies[1] == 'exists' then return replies end
local at = split + 2
for _, reply in ipairs(replies) do
  if reply[1] == 'ok' then
    redis.call('ZADD', KEYS[3], ARGV[at + 1], ARGV[at])
    redis.call('HSET', KEYS[4], ARGV[at], ARGV[at + 2])
  end
  at = at + 3
end
return replies
"""
)

# KEYS: new zset, sent zset. ARGV: now, then task ids. Moves known entries to `sent`, scored `now`.
MARK_PUBLISHED = """
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[1], id) == 1 or redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZADD', KEYS[2], ARGV[1], id)
  end
end
return 1
"""


class RedisOutbox:
    """The outbox keys of one Redis store namespace, on the store's client.

    Args:
        client: the store's redis-py client (decode_responses on).
        namespace: the store's key namespace.
        errors: the store's context manager turning redis-py failures into `StoreError`s.
        prelude: the store's `redis_events.prelude` (CREATE appends creation events when they are on).
    """

    def __init__(
        self,
        client: Any,
        namespace: str,
        errors: Callable[[], contextlib.AbstractContextManager[None]],
        prelude: str = NO_EVENTS,
    ) -> None:
        self._client = client
        self._errors = errors
        self._task_prefix = f"{namespace}:task:"
        self._new, self._sent, self._body = (f"{namespace}:outbox:{part}" for part in ("new", "sent", "body"))
        self._create = client.register_script(prelude + CREATE_OUTBOXED)  # the store's event prelude
        self._mark = client.register_script(MARK_PUBLISHED)

    def create(self, create_keys: list[str], create_args: list[Any], entries: Sequence[OutboxEntry]) -> Any:
        """Run CREATE with `create_keys` and `create_args`, writing `entries` with the records inserted."""
        args: list[Any] = [len(create_args), *create_args]
        for entry in entries:
            args.extend([entry.task_id, repr(entry.since), _entry_json(entry)])
        with self._errors():
            return self._create(keys=[*create_keys, self._new, self._body], args=args)

    def mark_published(self, task_ids: Sequence[str], now: float) -> None:
        if task_ids:
            with self._errors():
                self._mark(keys=[self._new, self._sent], args=[repr(now), *task_ids])

    def due(self, unpublished_since: float, published_since: float, limit: int) -> list[OutboxItem]:
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            for key, since in ((self._new, unpublished_since), (self._sent, published_since)):
                pipe.zrangebyscore(key, "-inf", repr(since), start=0, num=limit, withscores=True)
            new, sent = pipe.execute()
            found = sorted(
                [(score, task_id, False) for task_id, score in new]
                + [(score, task_id, True) for task_id, score in sent]
            )[:limit]
            if not found:
                return []
            ids = [task_id for _, task_id, _ in found]
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(self._body, ids)
            pipe.mget([self._task_prefix + task_id for task_id in ids])
            bodies, raws = pipe.execute()
        items = []
        for (score, _, published), body, raw in zip(found, bodies, raws, strict=True):
            if body is None:  # removed between the two reads
                continue
            entry = OutboxEntry(**{**json.loads(body), "since": float(score)})
            items.append(item_of(entry, published, TaskRecord.from_json(raw) if raw is not None else None))
        return items

    def add(self, entries: Sequence[OutboxEntry]) -> None:
        """Write entries of messages already published (`OutboxStore.outbox_add`), replacing older ones."""
        if entries:
            with self._errors():
                pipe = self._client.pipeline(transaction=True)
                for entry in entries:
                    pipe.zrem(self._new, entry.task_id)
                    pipe.zadd(self._sent, {entry.task_id: entry.since})
                    pipe.hset(self._body, entry.task_id, _entry_json(entry))
                pipe.execute()

    def remove(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            with self._errors():
                pipe = self._client.pipeline(transaction=True)
                pipe.zrem(self._new, *task_ids)
                pipe.zrem(self._sent, *task_ids)
                pipe.hdel(self._body, *task_ids)
                pipe.execute()


class RedisOutboxMethods(OutboxStore):
    """The `OutboxStore` methods of `RedisStore` (its `create_outboxed` builds on the store's CREATE)."""

    _outbox: RedisOutbox

    def mark_published(self, task_ids: Sequence[str], now: float) -> None:
        self._outbox.mark_published(task_ids, now)

    def outbox_due(self, unpublished_since: float, published_since: float, limit: int) -> list[OutboxItem]:
        return self._outbox.due(unpublished_since, published_since, limit)

    def outbox_remove(self, task_ids: Sequence[str]) -> None:
        self._outbox.remove(task_ids)

    def outbox_add(self, entries: Sequence[OutboxEntry]) -> None:
        self._outbox.add(entries)


def _entry_json(entry: OutboxEntry) -> str:
    data = {
        "task_id": entry.task_id,
        "queue": entry.queue,
        "priority": entry.priority,
        "persistent": entry.persistent,
        "body": entry.body,
        "since": entry.since,
    }
    return json.dumps(data, separators=(",", ":"))
