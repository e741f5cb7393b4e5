"""The task listings of `RedisStore` (`list_tasks`, `count_tasks`): indexes, filters, order and paging.

Every record is in sorted sets scored by its creation time: `ns:index:created` (all), one per status
(`ns:index:status:S`), one per task name (`ns:index:name:N`), one per queue (`ns:index:queue:Q`) and one
per workflow (`ns:index:root:R`, the tasks whose `root_id` is R; only tasks of a workflow have one); the
sets `ns:index:names` and `ns:index:queues` list the names and queues seen. CREATE (redis_scripts.py)
writes them in the record's own atomic step; a store made before the name and queue indexes existed is
indexed once, on its first listing that needs them (`ensure_indexed`).

A listing picks the index that already holds only matching records where it can (a status, a name, a
queue, or nothing), so Redis skips the offset and counts without a record being read. A text search
first gathers its matches into a short-lived sorted set: every task of the names containing the text,
plus the ids containing it (ZSCAN with a case-blind pattern). Orders by name, queue or status walk those
indexes group by group; only a filter and an order together that no index serves read every match.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import redis

from ..states import TaskStatus
from .base import LogLine, TaskQuery, TaskRecord, matches, ordered

logger = logging.getLogger("decortask.store")

#: Ids fetched per round trip when listing or scanning an index.
BATCH = 200
#: Records read per round trip while a store made before the name and queue indexes is indexed.
INDEX_BATCH = 2000
#: Ids a text search's script looks at per call: each call holds Redis for a few milliseconds.
SEARCH_CHUNK = 20000
# Adds to KEYS[2] the members of KEYS[1] (a sorted set) at ranks ARGV[2]..ARGV[3] whose lower-cased id
# contains ARGV[1], with their scores; returns how many members it looked at.
SEARCH_IDS = """
local page = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3])
local find, lower = string.find, string.lower
for i = 1, #page do
  local id = page[i]
  -- Most ids are lower-case already (uuid hex): lower-case only those with an upper-case letter.
  if find(id, '%u') then id = lower(id) end
  if find(id, ARGV[1], 1, true) then
    redis.call('ZADD', KEYS[2], redis.call('ZSCORE', KEYS[1], page[i]), page[i])
  end
end
return #page
"""
#: Seconds a text search's sorted set of matches lives.
TEXT_TTL = 10
_BY_NAME_OR_QUEUE = frozenset({"name", "-name", "queue", "-queue"})


@dataclass(frozen=True)
class _Plan:
    """Which sorted sets to walk for a query, and how."""

    #: The sets, in the order they are walked (grouped orders) or merged by score (by creation time).
    indexes: list[str]
    #: Merge the sets by creation time (True), or walk them one after the other (a grouped order).
    merge: bool = True
    #: Oldest first within each set.
    ascending: bool = False
    #: Every entry of the sets matches the query: no record needs reading to filter.
    exact: bool = True


class RedisQueries:
    """`list_tasks` and `count_tasks` over the store's indexes."""

    _client: redis.Redis
    _created: str
    namespace: str
    #: Recent text searches: text -> (their sorted set, until when it is reused). Only read here: the
    #: first search gives the instance its own dict.
    _searches: dict[str, tuple[str, float]] = {}

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # RedisStore's: Redis errors become StoreError

    def _task(self, task_id: str) -> str:
        raise NotImplementedError

    def _logs(self, task_id: str) -> str:
        raise NotImplementedError

    def _status(self, status: TaskStatus) -> str:
        raise NotImplementedError

    # -- keys ----------------------------------------------------------------------------------------------

    def _name_index(self, name: str) -> str:
        return f"{self.namespace}:index:name:{name}"

    def _queue_index(self, queue: str) -> str:
        return f"{self.namespace}:index:queue:{queue}"

    def _root_index(self, root_id: str) -> str:
        return f"{self.namespace}:index:root:{root_id}"

    @property
    def _names(self) -> str:
        return f"{self.namespace}:index:names"

    @property
    def _queues(self) -> str:
        return f"{self.namespace}:index:queues"

    @property
    def _indexed_marker(self) -> str:
        return f"{self.namespace}:index:by-name-and-queue"

    # -- listing -------------------------------------------------------------------------------------------

    def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        if query.limit <= 0 or (query.statuses is not None and not query.statuses):
            return []
        with self._errors():
            plan = self._plan(query)
            if plan is None:
                return self._list_sorted(query)
            found = list(itertools.islice(self._page(plan, query), query.limit))
            pipe = self._client.pipeline(transaction=False)
            for task_id, _ in found:
                pipe.lrange(self._logs(task_id), 0, -1)
            logs = pipe.execute() if found else []
        return [record_with_logs(raw, lines) for (_, raw), lines in zip(found, logs, strict=True)]

    def count_tasks(self, query: TaskQuery) -> int:
        if query.statuses is not None and not query.statuses:
            return 0
        with self._errors():
            plan = self._plan(dataclasses.replace(query, order="-created"))
            assert plan is not None  # newest first always has a plan
            if plan.exact:
                low, high = _window(query)
                return sum(int(self._client.zcount(index, low, high)) for index in plan.indexes)
            return sum(1 for _ in self._matching(plan, query))

    def ensure_indexed(self) -> None:
        """Index by name and queue the records of a store made before those indexes existed (once)."""
        if self._client.exists(self._indexed_marker):
            return
        total = int(self._client.zcard(self._created))
        if total:
            logger.info("indexing %d task records by name and queue (once, for the task listings)", total)
        start = 0
        while True:
            page = self._client.zrange(self._created, start, start + INDEX_BATCH - 1, withscores=True)
            if not page:
                break
            raws = self._client.mget([self._task(task_id) for task_id, _ in page])
            pipe = self._client.pipeline(transaction=False)
            for (task_id, score), raw in zip(page, raws, strict=True):
                if raw is None:
                    continue
                record = json.loads(raw)
                pipe.zadd(self._name_index(record["name"]), {task_id: score})
                pipe.zadd(self._queue_index(record["queue"]), {task_id: score})
                pipe.sadd(self._names, record["name"])
                pipe.sadd(self._queues, record["queue"])
            pipe.execute()
            start += len(page)
        self._client.set(self._indexed_marker, "1")

    def _plan(self, query: TaskQuery) -> _Plan | None:
        """The sets to walk for `query` in its order; None when no index serves that order and filter."""
        if (
            query.name is not None
            or query.queue is not None
            or query.text
            or query.order in _BY_NAME_OR_QUEUE
        ):
            self.ensure_indexed()
        filters = {
            "name": query.name is not None,
            "queue": query.queue is not None,
            "statuses": query.statuses is not None,
            "text": bool(query.text),
            "root_id": query.root_id is not None,
        }
        key = query.order.lstrip("-")
        descending = query.order.startswith("-")
        if key == "created":
            return self._created_plan(query, filters, ascending=not descending)
        only_statuses = {name for name, on in filters.items() if on} == {"statuses"}
        if any(filters.values()) and not (key == "status" and only_statuses):
            return None  # a filter plus a grouped order: sort every match (`_list_sorted`)
        if key == "status":
            statuses = sorted(query.statuses or TaskStatus, key=lambda s: s.value, reverse=descending)
            return _Plan([self._status(s) for s in statuses], merge=False)
        groups = self._client.smembers(self._names if key == "name" else self._queues)
        index = self._name_index if key == "name" else self._queue_index
        members = sorted(groups, reverse=descending)
        return _Plan([index(member) for member in members], merge=False)

    def _created_plan(self, query: TaskQuery, filters: dict[str, bool], *, ascending: bool) -> _Plan:
        """By creation time: the one index that holds only matches, or the narrowest one to filter."""
        others = {name for name, on in filters.items() if on}
        if query.root_id is not None:  # a workflow's tasks: the narrowest index there is
            return _Plan([self._root_index(query.root_id)], ascending=ascending, exact=others == {"root_id"})
        if query.text:
            return _Plan([self._text_matches(query.text)], ascending=ascending, exact=others == {"text"})
        if query.name is not None:
            return _Plan([self._name_index(query.name)], ascending=ascending, exact=others == {"name"})
        if query.queue is not None:
            return _Plan([self._queue_index(query.queue)], ascending=ascending, exact=others == {"queue"})
        if query.statuses is not None:
            indexes = [self._status(s) for s in sorted(query.statuses, key=lambda s: s.value)]
            return _Plan(indexes, ascending=ascending)
        return _Plan([self._created], ascending=ascending)

    def _page(self, plan: _Plan, query: TaskQuery) -> Iterator[tuple[str, str]]:
        """(id, record JSON) of the matches from `query.offset` on, in the plan's order."""
        skip = max(query.offset, 0)
        if plan.exact and (len(plan.indexes) == 1 or not plan.merge):
            # Every entry matches: let Redis skip the offset, whole sets at a time, without reading records.
            low, high = _window(query)
            for index in plan.indexes:
                size = int(self._client.zcount(index, low, high))
                if skip >= size:
                    skip -= size
                    continue
                walked = self._walk(index, low, high, plan.ascending, skip)
                yield from self._records(walked, query, plan, batch=min(BATCH, max(query.limit, 1)))
                skip = 0
            return
        for found in self._matching(plan, query):
            if skip:
                skip -= 1
                continue
            yield found

    def _matching(self, plan: _Plan, query: TaskQuery) -> Iterator[tuple[str, str]]:
        low, high = _window(query)
        streams = [self._walk(index, low, high, plan.ascending) for index in plan.indexes]
        walked: Iterator[tuple[str, float]]
        if plan.merge:
            walked = heapq.merge(*streams, key=lambda pair: pair[1], reverse=not plan.ascending)
        else:
            walked = itertools.chain(*streams)
        return self._records(walked, query, plan)

    def _records(
        self, walked: Iterator[tuple[str, float]], query: TaskQuery, plan: _Plan, batch: int = BATCH
    ) -> Iterator[tuple[str, str]]:
        """The records of the walked ids that match, `batch` ids per read (a page reads only its own)."""
        # Paging an index by offset while others insert can show an id twice; never yield it twice.
        seen: set[str] = set()
        while True:
            taken = list(itertools.islice(walked, batch))
            if not taken:
                return
            fresh = [task_id for task_id, _ in taken if task_id not in seen]
            seen.update(fresh)
            for task_id, raw in zip(fresh, self._client.mget([self._task(t) for t in fresh]), strict=True):
                # A record deleted after its id was read from the index is simply skipped.
                if raw is not None and (plan.exact or matches(TaskRecord.from_json(raw), query)):
                    yield task_id, raw

    def _walk(
        self, index: str, low: str, high: str, ascending: bool = False, start: int = 0
    ) -> Iterator[tuple[str, float]]:
        offset = start
        while True:
            if ascending:
                page = self._client.zrangebyscore(index, low, high, start=offset, num=BATCH, withscores=True)
            else:
                page = self._client.zrevrangebyscore(
                    index, high, low, start=offset, num=BATCH, withscores=True
                )
            yield from ((task_id, float(score)) for task_id, score in page)
            if len(page) < BATCH:
                return
            offset += len(page)

    def _text_matches(self, text: str) -> str:
        """A short-lived sorted set of every task whose name or id contains `text` (case-blind).

        Kept for a few seconds and reused, so a listing and its count (or the next page) search once.
        """
        now = time.monotonic()
        cached = self._searches.get(text)
        if cached is not None and cached[1] > now and self._client.exists(cached[0]):
            return cached[0]
        key = self._search_into(text)
        self._searches = {t: kept for t, kept in self._searches.items() if kept[1] > now}
        self._searches[text] = (key, now + TEXT_TTL / 2)
        return key

    def _search_into(self, text: str) -> str:
        needle = text.casefold()
        key = f"{self.namespace}:tmp:search:{uuid.uuid4().hex}"
        names = [name for name in self._client.smembers(self._names) if needle in name.casefold()]
        pipe = self._client.pipeline(transaction=False)
        if names:
            pipe.zunionstore(key, [self._name_index(name) for name in names], aggregate="MAX")
        pipe.execute()
        # Ids are matched in Lua, a chunk per call: ZSCAN with a pattern costs ten times as much at 100k.
        search = self._client.register_script(SEARCH_IDS)
        start = 0
        while True:
            seen = int(
                search(keys=[self._created, key], args=[text.lower(), start, start + SEARCH_CHUNK - 1])
            )
            start += seen
            if seen < SEARCH_CHUNK:
                break
        self._client.expire(key, TEXT_TTL)
        return key

    def _list_sorted(self, query: TaskQuery) -> list[TaskRecord]:
        # A filter together with an order by name, queue or status: no index holds that order, so every
        # match is read and sorted (fast while the filter is narrow).
        plan = self._plan(dataclasses.replace(query, order="-created"))
        assert plan is not None
        matching = [record_with_logs(raw, []) for _, raw in self._matching(plan, query)]
        start = max(query.offset, 0)
        page = ordered(matching, query.order)[start : start + query.limit]
        pipe = self._client.pipeline(transaction=False)
        for record in page:
            pipe.lrange(self._logs(record.id), 0, -1)
        logs = pipe.execute() if page else []
        for record, lines in zip(page, logs, strict=True):
            record.logs = log_lines(lines)
        return page


def _window(query: TaskQuery) -> tuple[str, str]:
    """ZSET score bounds for created_after (inclusive) and created_before (exclusive)."""
    low = repr(query.created_after) if query.created_after is not None else "-inf"
    high = f"({query.created_before!r}" if query.created_before is not None else "+inf"
    return low, high


def record_with_logs(raw: str, lines: Sequence[str]) -> TaskRecord:
    """A stored record JSON and its log list's lines (JSON), as the TaskRecord they make (every reader)."""
    record = TaskRecord.from_json(raw)
    record.logs = log_lines(lines)
    return record


def log_lines(lines: Sequence[str]) -> list[LogLine]:
    return [LogLine.from_dict(json.loads(line)) for line in lines]
