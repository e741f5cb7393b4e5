"""The task listings of `RedisStore` (`list_tasks`, `count_tasks`): indexes, filters, order and paging.

The created-time index and one index per status answer newest-first listings filtered by status alone
without reading a record. Other filters (name, queue, text) read records newest first and test each;
other orders (name, status, queue, oldest first) sort every match. Both are slow on a very large store:
an index per name and per queue is the follow-up (issue 15).
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import json
from collections.abc import Iterator, Sequence

import redis

from ..states import TaskStatus
from .base import LogLine, TaskQuery, TaskRecord, matches, ordered

#: Ids fetched per round trip when listing or scanning an index.
BATCH = 200


class RedisQueries:
    """`list_tasks` and `count_tasks` over the store's indexes."""

    _client: redis.Redis
    _created: str

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError  # RedisStore's: Redis errors become StoreError

    def _task(self, task_id: str) -> str:
        raise NotImplementedError

    def _logs(self, task_id: str) -> str:
        raise NotImplementedError

    def _status(self, status: TaskStatus) -> str:
        raise NotImplementedError

    def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        if query.limit <= 0:
            return []
        if query.order != "-created":
            return self._list_ordered(query)
        found: list[tuple[str, str]] = []
        skip = max(query.offset, 0)
        start = 0
        if self._indexes_answer(query) and len(self._indexes(query)) == 1:
            # Every index entry matches: let Redis skip the offset instead of loading those records.
            start, skip = skip, 0
        with self._errors():
            for task_id, raw in self._scan(query, start):
                if skip:
                    skip -= 1
                    continue
                found.append((task_id, raw))
                if len(found) >= query.limit:
                    break
            pipe = self._client.pipeline(transaction=False)
            for task_id, _ in found:
                pipe.lrange(self._logs(task_id), 0, -1)
            logs = pipe.execute() if found else []
        return [_record(raw, lines) for (_, raw), lines in zip(found, logs, strict=True)]

    def _list_ordered(self, query: TaskQuery) -> list[TaskRecord]:
        # No index orders by name, status or queue (nor oldest first): sort every match. Slow on a large
        # store; a Redis index per name and queue is the follow-up (issue 15).
        with self._errors():
            matching = [
                _record(raw, []) for _, raw in self._scan(dataclasses.replace(query, order="-created"))
            ]
            page = ordered(matching, query.order)[max(query.offset, 0) : max(query.offset, 0) + query.limit]
            pipe = self._client.pipeline(transaction=False)
            for record in page:
                pipe.lrange(self._logs(record.id), 0, -1)
            logs = pipe.execute() if page else []
        for record, lines in zip(page, logs, strict=True):
            record.logs = [LogLine.from_dict(json.loads(line)) for line in lines]
        return page

    def _indexes_answer(self, query: TaskQuery) -> bool:
        """Whether the status/created indexes alone decide which records match (no record need be read)."""
        return query.name is None and query.queue is None and not query.text

    def count_tasks(self, query: TaskQuery) -> int:
        if query.statuses is not None and not query.statuses:
            return 0
        with self._errors():
            if self._indexes_answer(query):
                # The indexes alone answer: no record needs loading.
                low, high = _window(query)
                return sum(int(self._client.zcount(index, low, high)) for index in self._indexes(query))
            return sum(1 for _ in self._scan(query))

    def _indexes(self, query: TaskQuery) -> list[str]:
        if query.statuses is None:
            return [self._created]
        return [self._status(s) for s in sorted(query.statuses, key=lambda s: s.value)]

    def _scan(self, query: TaskQuery, start: int = 0) -> Iterator[tuple[str, str]]:
        """(id, record JSON) of the tasks matching `query`, newest first; `start` skips index entries."""
        if query.statuses is not None and not query.statuses:
            return
        low, high = _window(query)
        streams = [self._walk(index, low, high, start) for index in self._indexes(query)]
        ordered = heapq.merge(*streams, key=lambda pair: pair[1], reverse=True)
        # Paging an index by offset while others insert can show an id twice; never yield it twice.
        seen: set[str] = set()
        while True:
            taken = list(itertools.islice(ordered, BATCH))
            if not taken:
                return
            batch = [task_id for task_id, _ in taken if task_id not in seen]
            seen.update(batch)
            for task_id, raw in zip(batch, self._client.mget([self._task(t) for t in batch]), strict=True):
                # A record deleted after its id was read from the index is simply skipped.
                if raw is not None and matches(TaskRecord.from_json(raw), query):
                    yield task_id, raw

    def _walk(self, index: str, low: str, high: str, start: int = 0) -> Iterator[tuple[str, float]]:
        offset = start
        while True:
            page = self._client.zrevrangebyscore(index, high, low, start=offset, num=BATCH, withscores=True)
            yield from ((task_id, float(score)) for task_id, score in page)
            if len(page) < BATCH:
                return
            offset += len(page)


def _window(query: TaskQuery) -> tuple[str, str]:
    """ZSET score bounds for created_after (inclusive) and created_before (exclusive)."""
    low = repr(query.created_after) if query.created_after is not None else "-inf"
    high = f"({query.created_before!r}" if query.created_before is not None else "+inf"
    return low, high


def _record(raw: str, lines: Sequence[str]) -> TaskRecord:
    record = TaskRecord.from_json(raw)
    record.logs = [LogLine.from_dict(json.loads(line)) for line in lines]
    return record
