"""The Redis store's task listings: its name and queue indexes, written with each record and rebuilt once
for a store made before they existed, and the text search that reads ids in Lua chunks.

The behaviour every store shares (filters, orders, text search, paging) is in test_store_contract.py;
these are the Redis-only mechanics behind it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from store_helpers import own_redis_store

from decortask.states import TaskStatus
from decortask.store import TaskQuery, TaskRecord, redis_queries
from decortask.store.redis import RedisStore

T0 = 1_700_000_000.0


@pytest.fixture
def store(redis_url: str, unique: str) -> Iterator[RedisStore]:
    with own_redis_store(redis_url, f"dt-list-{unique}") as opened:
        yield opened


def record(task_id: str, name: str, queue: str, at: float, **fields: Any) -> TaskRecord:
    return TaskRecord(
        id=task_id, name=name, queue=queue, status=TaskStatus.PENDING, created_at=at, updated_at=at, **fields
    )


def raw(store: RedisStore) -> Any:
    return redis.Redis.from_url(store._client_url, decode_responses=True)


def test_a_new_record_is_indexed_by_name_and_queue_in_its_own_step(store: RedisStore) -> None:
    store.create_many(
        [record("a1", "app.resize", "images", T0), record("a2", 'odd "name" \\ here', "q\\1", T0 + 1)]
    )
    client = raw(store)
    ns = store.namespace
    assert client.zrange(f"{ns}:index:name:app.resize", 0, -1, withscores=True) == [("a1", T0)]
    assert client.zrange(f'{ns}:index:name:odd "name" \\ here', 0, -1) == ["a2"]  # JSON escapes undone
    assert client.zrange(f"{ns}:index:queue:q\\1", 0, -1) == ["a2"]
    assert client.smembers(f"{ns}:index:names") == {"app.resize", 'odd "name" \\ here'}
    # A new store's first create marks it indexed: its first name listing reads no records to index them.
    assert client.exists(f"{ns}:index:by-name-and-queue")
    store.delete("a1")
    assert client.zrange(f"{ns}:index:name:app.resize", 0, -1) == []
    assert client.zrange(f"{ns}:index:queue:images", 0, -1) == []


def test_a_store_made_before_the_name_index_is_indexed_once_on_its_first_listing(store: RedisStore) -> None:
    store.create_many([record(f"t{i}", f"job.{i % 3}", f"q{i % 2}", T0 + i) for i in range(30)])
    client = raw(store)
    ns = store.namespace
    # What a store written by an older decortask holds: no name or queue index, no marker.
    old = [
        k for k in client.scan_iter(match=f"{ns}:index:*") if ":name" in k or ":queue" in k or "by-name" in k
    ]
    client.delete(*old)
    assert store.count_tasks(TaskQuery(name="job.1")) == 10  # rebuilt here
    assert client.exists(f"{ns}:index:by-name-and-queue")
    assert [r.id for r in store.list_tasks(TaskQuery(queue="q0", limit=3))] == ["t28", "t26", "t24"]
    assert [r.id for r in store.list_tasks(TaskQuery(order="name", limit=2))] == ["t27", "t24"]


def test_text_search_reads_every_chunk_of_ids(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_queries, "SEARCH_CHUNK", 7)  # 30 ids: five calls, the last one short
    store.create_many([record(f"id-{i:02d}-X", "job.plain", "q", T0 + i) for i in range(30)])
    assert [r.id for r in store.list_tasks(TaskQuery(text="-0"))] == [f"id-0{i}-X" for i in range(9, -1, -1)]
    assert [r.id for r in store.list_tasks(TaskQuery(text="00-x"))] == ["id-00-X"]  # case-blind
    assert store.count_tasks(TaskQuery(text="PLAIN")) == 30  # by name
    assert store.list_tasks(TaskQuery(text="%")) == []


def test_a_record_written_with_other_leading_fields_is_still_indexed(store: RedisStore) -> None:
    # Another writer (or a later TaskRecord) may order the JSON fields otherwise: the script falls back
    # to splitting the whole record.
    reordered = json.dumps(
        {"queue": "late-q", "id": "r1", "status": "PENDING", "name": "late.name", "created_at": T0},
        separators=(",", ":"),  # compact, as every record is stored
    )
    monkeypatched = record("r1", "late.name", "late-q", T0)
    args = store._create_args([monkeypatched])
    args[8] = reordered  # the record JSON of the first (only) record
    store._create_script(keys=[store._created, store._expires], args=args)
    client = raw(store)
    assert client.zrange(f"{store.namespace}:index:name:late.name", 0, -1) == ["r1"]
    assert client.zrange(f"{store.namespace}:index:queue:late-q", 0, -1) == ["r1"]


def test_listing_orders_walk_the_indexes_without_reading_every_record(store: RedisStore) -> None:
    store.create_many([record(f"t{i:02d}", f"job.{i % 4}", "q", T0 + i) for i in range(40)])
    reads: list[int] = []
    mget = store._client.mget

    def counting_mget(keys: Any, *rest: Any) -> Any:
        reads.append(len(keys))
        return mget(keys, *rest)

    store._client.mget = counting_mget  # type: ignore[method-assign]
    page = store.list_tasks(TaskQuery(order="-name", limit=3, offset=12))
    assert [r.id for r in page] == ["t30", "t26", "t22"]  # job.3 has ten: job.2 starts at offset 10
    assert sum(reads) <= 3, reads  # only the page's records were read
    reads.clear()
    assert [r.id for r in store.list_tasks(TaskQuery(name="job.1", limit=2, offset=8))] == ["t05", "t01"]
    assert sum(reads) <= 2, reads
    reads.clear()
    assert store.count_tasks(TaskQuery(queue="q")) == 40
    assert reads == []  # counted on the index alone
