"""`RedisStore.transition_many`: the group commit of a worker's transitions as one Lua call on Redis.

Each step is its own compare-and-set, applied in order inside one script, and each caller gets its own result
(or its own error) back, exactly what `transition` would have given it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from store_helpers import own_redis_store

from decortask.errors import IllegalTransition
from decortask.states import TaskStatus
from decortask.store import LogLine, TaskRecord
from decortask.store.base import TransitionStep, claim_step
from decortask.store.redis import RedisStore
from decortask.store.writer import StoreWriter

S = TaskStatus


@pytest.fixture
def store(redis_url: str, unique: str) -> Iterator[RedisStore]:
    with own_redis_store(redis_url, f"dt-batch-{unique}") as opened:
        yield opened


def pending(task_id: str, **fields: Any) -> TaskRecord:
    now = time.time()
    values: dict[str, Any] = {"created_at": now, "updated_at": now}
    values.update(fields)
    return TaskRecord(id=task_id, name="batch.noop", queue="q", status=S.PENDING, **values)


def test_each_step_gets_its_own_result_and_an_error_stays_in_its_place(store: RedisStore) -> None:
    for task_id in ("a", "b", "c", "d"):
        store.create(pending(task_id))
    store.transition("b", S.CANCELLED, reason="cancelled")
    outcomes = store.transition_many(
        [
            TransitionStep("a", S.RUNNING, expect=frozenset({S.PENDING}), changes={"owner": "w"}),
            TransitionStep("b", S.RUNNING, expect=frozenset({S.CANCELLED})),  # illegal
            TransitionStep("c", S.RUNNING, expect=frozenset({S.RETRYING})),  # expectation fails
            TransitionStep("d", S.RUNNING, changes={"colour": "red"}),  # not a field transition may set
            TransitionStep("missing", S.RUNNING),
            TransitionStep("a", S.SUCCESS, expect=frozenset({S.RUNNING}), changes={"result": [1, {}]}),
        ]
    )
    assert isinstance(outcomes[0], TaskRecord) and outcomes[0].owner == "w"
    assert isinstance(outcomes[1], IllegalTransition)
    assert outcomes[2] is None and outcomes[4] is None
    assert isinstance(outcomes[3], ValueError) and "colour" in str(outcomes[3])
    assert isinstance(outcomes[5], TaskRecord) and outcomes[5].result == [1, {}]  # saw step 0's write
    assert [store.get(t).status for t in "abcd"] == [S.SUCCESS, S.CANCELLED, S.PENDING, S.PENDING]  # type: ignore[union-attr]


def test_a_claim_counts_one_delivery_up_to_the_cap(store: RedisStore) -> None:
    store.create(pending("fresh"))
    store.create(pending("worn", deliveries=4))
    store.create(pending("spent", deliveries=5))
    fresh, wrong_attempt, worn, spent = store.transition_many(
        [
            claim_step("fresh", 1, 5, owner="w"),
            claim_step("worn", 2, 5, owner="w"),  # the record is at attempt 0
            claim_step("worn", 1, 5, owner="w"),
            claim_step("spent", 1, 5, owner="w"),
        ]
    )
    assert isinstance(fresh, TaskRecord) and (fresh.status, fresh.attempt, fresh.deliveries) == (
        S.RUNNING,
        1,
        1,
    )
    assert wrong_attempt is None and spent is None
    assert isinstance(worn, TaskRecord) and worn.deliveries == 5
    assert store.get("spent").status is S.PENDING  # type: ignore[union-attr]
    assert store.transition_many([claim_step("fresh", 1, 5, owner="other")]) == [None]  # the attempt is taken


def test_log_lines_come_back_only_when_asked_for(store: RedisStore) -> None:
    store.create(pending("logged"))
    store.append_log("logged", LogLine(ts=1.0, message="hello"))
    without, with_logs = store.transition_many(
        [
            TransitionStep("logged", S.RUNNING, expect=frozenset({S.PENDING}), logs=False),
            TransitionStep("logged", S.SUCCESS, expect=frozenset({S.RUNNING}), logs=True),
        ]
    )
    assert isinstance(without, TaskRecord) and without.logs == []
    assert isinstance(with_logs, TaskRecord) and with_logs.logs == [LogLine(ts=1.0, message="hello")]


def test_threads_claiming_through_the_writer_each_get_their_own_compare_and_set_result(
    store: RedisStore,
) -> None:
    for n in range(8):
        store.create(pending(f"t{n}"))
    store.create(pending("contested"))
    writer = StoreWriter(store)
    results: list[Any] = [None] * 16
    start = threading.Barrier(16)

    def claim(n: int) -> None:
        start.wait()
        task_id = f"t{n}" if n < 8 else "contested"
        results[n] = writer.claim(task_id, 1, 5, owner=f"w{n}", started_at=time.time())

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for n in range(8):
        assert isinstance(results[n], TaskRecord) and results[n].owner == f"w{n}"
    winners = [r for r in results[8:] if r is not None]
    assert len(winners) == 1
    contested = store.get("contested")
    assert contested is not None and contested.owner == winners[0].owner and contested.deliveries == 1
