"""The state-store contract: memory, SQLite and Redis stores behave the same (DESIGN §2, §4).

Every test here runs against each backend through `open_store(url)`; the multi-process ones run against the
stores that promise to be shared between processes (SQLite and Redis).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import delete_redis_namespace, drop_postgres_schema, postgres_store_url

from decortask.errors import IllegalTransition, StoreError
from decortask.states import TaskStatus
from decortask.store import LogLine, ScheduleEntry, TaskQuery, TaskRecord, TaskStore, open_store
from decortask.store.base import claim_step
from decortask.store.periodic_state import PeriodicStateStore, ScheduleState
from decortask.store.writer import StoreWriter

S = TaskStatus
T0 = 1_700_000_000.0


def _url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/state/store.db"
    if kind == "postgres":
        token = request.getfixturevalue("unique")
        url = postgres_store_url(token)
        request.addfinalizer(lambda: drop_postgres_schema(token))
        return url
    base: str = request.getfixturevalue("redis_url")
    namespace = f"dt-test-{request.getfixturevalue('unique')}"
    request.addfinalizer(lambda: delete_redis_namespace(base, namespace))
    return f"{base}?namespace={namespace}"


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    opened = open_store(_url(request, request.param, tmp_path))
    yield opened
    opened.close()


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL that several processes can open at once."""
    return _url(request, request.param, tmp_path)


_counter = iter(range(1_000_000))


def make(task_id: str | None = None, **fields: Any) -> TaskRecord:
    """A PENDING record with distinct, increasing created_at unless told otherwise."""
    n = next(_counter)
    values: dict[str, Any] = {
        "id": task_id or f"task-{n}",
        "name": "tests.add",
        "queue": "default",
        "status": S.PENDING,
        "created_at": T0 + n,
        "updated_at": T0 + n,
    }
    values.update(fields)
    return TaskRecord(**values)


def must_get(store: TaskStore, task_id: str) -> TaskRecord:
    record = store.get(task_id)
    assert record is not None, f"task {task_id} should exist"
    return record


def entry(entry_id: str, due_at: float, queue: str = "default") -> ScheduleEntry:
    return ScheduleEntry(id=entry_id, task_id=f"t-{entry_id}", queue=queue, due_at=due_at, body='{"v":1}')


# -- records -------------------------------------------------------------------------------------------------


def test_create_then_get_round_trips_every_field(store: TaskStore) -> None:
    record = make(
        "full",
        name="pkg.mod.fn",
        queue="reports",
        status=S.RETRYING,
        created_at=T0 + 0.125,
        updated_at=T0 + 1.5,
        args=[1, "two", [3.5, None], {"four": True}],
        kwargs={"x": None, "nested": {"y": [1, 2]}},
        reason="timeout",
        attempt=2,
        result={"rows": [1, 2, 3], "ok": True},
        error_type="ValueError",
        error_message="bad value",
        traceback="Traceback (most recent call last):\n  ...",
        logs=[
            LogLine(ts=T0 + 2, message="first"),
            LogLine(ts=T0 + 3, message="second", attempt=1, extra={"k": 1}),
        ],
        progress=0.25,
        progress_message="a quarter",
        tags={"tenant": "acme", "kind": "report"},
        idempotency_key="report-42",
        owner="worker-1",
        priority=7,
        persist=False,
        scheduled_for=T0 + 10,
        started_at=T0 + 4,
        finished_at=T0 + 5,
        expires_at=T0 + 3600,
        parent_id="parent",
        root_id="root",
    )
    assert store.create(record) == record
    assert store.get("full") == record


def test_get_unknown_task_returns_none(store: TaskStore) -> None:
    assert store.get("nope") is None


def test_create_with_an_existing_id_raises_and_keeps_the_first(store: TaskStore) -> None:
    first = store.create(make("dup", name="first"))
    with pytest.raises(StoreError, match="dup"):
        store.create(make("dup", name="second"))
    assert store.get("dup") == first


@pytest.mark.parametrize("holder_status", [S.PENDING, S.SCHEDULED, S.RUNNING, S.RETRYING, S.SUCCESS])
def test_idempotency_key_returns_the_holder_while_it_holds_the_key(
    store: TaskStore, holder_status: TaskStatus
) -> None:
    holder = store.create(make("holder", status=holder_status, idempotency_key="k"))
    store.append_log("holder", LogLine(ts=T0, message="hello"))
    returned = store.create(make("newcomer", idempotency_key="k"))
    assert returned.id == "holder"
    assert returned == replace(holder, logs=[LogLine(ts=T0, message="hello")])
    assert store.get("newcomer") is None
    assert store.count_tasks(TaskQuery()) == 1


@pytest.mark.parametrize("final", [S.FAILED, S.CANCELLED])
def test_idempotency_key_is_reusable_after_failure_or_cancellation(
    store: TaskStore, final: TaskStatus
) -> None:
    store.create(make("old", idempotency_key="k"))
    store.transition("old", final)
    assert store.create(make("new", idempotency_key="k")).id == "new"
    # The new task now holds the key.
    assert store.create(make("third", idempotency_key="k")).id == "new"
    assert store.get("third") is None


def test_delete_removes_the_record_and_releases_its_key(store: TaskStore) -> None:
    store.create(make("a", idempotency_key="k"))
    store.append_log("a", LogLine(ts=T0, message="x"))
    store.delete("a")
    store.delete("a")  # deleting twice (or an unknown id) is a no-op
    assert store.get("a") is None
    assert store.count_tasks(TaskQuery()) == 0
    assert store.create(make("b", idempotency_key="k")).id == "b"
    # A re-created task with the old id starts without the old logs.
    assert store.create(make("a")).logs == []
    assert must_get(store, "a").logs == []


def test_deleting_a_former_holder_keeps_the_key_of_the_task_that_took_it_over(store: TaskStore) -> None:
    store.create(make("old", idempotency_key="k", status=S.FAILED))
    store.create(make("new", idempotency_key="k"))
    store.delete("old")
    assert store.create(make("other", idempotency_key="k")).id == "new"


# -- transitions ---------------------------------------------------------------------------------------------


def test_transition_sets_status_and_changes_and_returns_the_stored_record(store: TaskStore) -> None:
    store.create(make("t", updated_at=T0))
    store.append_log("t", LogLine(ts=T0, message="kept"))
    before = time.time()
    updated = store.transition(
        "t", S.RUNNING, expect={S.PENDING}, expect_attempt=0, attempt=1, owner="w1", started_at=T0 + 9
    )
    assert updated is not None
    assert (updated.status, updated.attempt, updated.owner, updated.started_at) == (
        S.RUNNING,
        1,
        "w1",
        T0 + 9,
    )
    assert updated.updated_at >= before
    assert updated.logs == [LogLine(ts=T0, message="kept")]
    assert store.get("t") == updated


def test_transition_is_a_compare_and_set_on_status_and_attempt(store: TaskStore) -> None:
    original = store.create(make("t"))
    assert store.transition("t", S.RUNNING, expect={S.RUNNING, S.RETRYING}) is None
    assert store.transition("t", S.RUNNING, expect={S.PENDING}, expect_attempt=3) is None
    assert store.transition("t", S.RUNNING, expect_attempt=1) is None
    assert store.get("t") == original
    assert store.transition("missing", S.RUNNING) is None
    # expect may be any iterable, even a one-shot generator.
    assert store.transition("t", S.RUNNING, expect=(s for s in [S.PENDING])) is not None


def test_a_returning_owners_outcome_never_overwrites_the_attempt_that_took_over(store: TaskStore) -> None:
    """F-27's fencing: a worker cut off mid-attempt comes back and writes its outcome (through the executor's
    `StoreWriter.settle`) after the task was settled elsewhere; the compare-and-set on (status, attempt) refuses
    it whether the new owner is still running, has finished, or the task ended INTERRUPTED."""
    writer = StoreWriter(store)
    store.create(make("t"))
    store.create(make("u"))
    for task_id in ("t", "u"):  # attempt 1 claimed by worker a, which is then cut off
        assert writer.claim(task_id, 1, 5, owner="a", started_at=T0 + 1) is not None
    # The reaper settles a's attempts: "t" opted in (next attempt queued), "u" not.
    requeue = ScheduleEntry.for_attempt("t", 2, queue="default", due_at=T0 + 6, body='{"id":"t"}')
    assert store.transition(
        "t", S.PENDING, expect={S.RUNNING}, expect_attempt=1, schedule=requeue, owner=None
    )
    lost = {"reason": "worker_lost", "finished_at": T0 + 6}
    assert store.transition("u", S.INTERRUPTED, expect={S.RUNNING}, expect_attempt=1, **lost) is not None
    assert writer.claim("t", 2, 5, owner="b", started_at=T0 + 7) is not None
    stale = {"result": "from a", "finished_at": T0 + 8}

    assert not writer.settle("t", S.SUCCESS, S.RUNNING, 1, **stale)  # b still runs attempt 2
    assert writer.settle("t", S.SUCCESS, S.RUNNING, 2, result="from b", finished_at=T0 + 9)
    assert not writer.settle("t", S.SUCCESS, S.RUNNING, 1, **stale)  # b has finished
    assert not writer.settle("t", S.FAILED, S.RUNNING, 1, error_message="from a")
    assert not writer.transition("t", S.RETRYING, expect={S.RUNNING}, expect_attempt=1, scheduled_for=T0 + 9)
    assert not writer.settle("u", S.SUCCESS, S.RUNNING, 1, **stale)

    t, u = must_get(store, "t"), must_get(store, "u")
    assert (t.status, t.attempt, t.owner, t.result, t.finished_at) == (S.SUCCESS, 2, "b", "from b", T0 + 9)
    assert (u.status, u.attempt, u.reason, u.result, u.finished_at) == (
        S.INTERRUPTED,
        1,
        "worker_lost",
        None,
        T0 + 6,
    )


def test_a_stale_attempts_progress_and_output_change_nothing_but_its_log(store: TaskStore) -> None:
    """F-27's fencing for what a running attempt publishes: the attempt that was settled elsewhere (worker a,
    cut off) keeps writing progress and output when its link returns; only its log lines are kept."""
    store.create(make("t", status=S.RUNNING, attempt=2, owner="b"))
    store.set_progress("t", 0.9, "from b", attempt=2)
    store.set_output("t", {"by": "b"}, attempt=2)

    store.set_progress(
        "t", 0.1, "from a", log_lines=[LogLine(ts=T0, message="a's line", attempt=1)], attempt=1
    )
    store.set_output("t", {"by": "a"}, attempt=1)

    t = must_get(store, "t")
    assert (t.progress, t.progress_message, t.output) == (0.9, "from b", {"by": "b"})
    assert [line.message for line in t.logs] == ["a's line"]
    assert store.transition("t", S.SUCCESS, expect={S.RUNNING}, expect_attempt=2, result=1) is not None
    store.set_output("t", {"by": "b, too late"}, attempt=2)  # a thread that outlived b's attempt
    store.set_progress("t", 0.5, attempt=2)
    t = must_get(store, "t")
    assert (t.progress, t.progress_message, t.output) == (0.9, "from b", {"by": "b"})


def test_illegal_transition_raises_and_leaves_the_record_alone(store: TaskStore) -> None:
    done = store.create(make("t", status=S.SUCCESS, result=5))
    with pytest.raises(IllegalTransition):
        store.transition("t", S.RUNNING)
    assert store.get("t") == done


def test_transition_refuses_fields_outside_mutable_fields(store: TaskStore) -> None:
    original = store.create(make("t"))
    with pytest.raises(ValueError, match="name"):
        store.transition("t", S.RUNNING, name="renamed")
    assert store.get("t") == original


def test_transition_with_schedule_writes_record_and_entry_together(store: TaskStore) -> None:
    store.create(make("t", status=S.RUNNING, attempt=1))
    retry = ScheduleEntry(
        id="t:2", task_id="t", queue="default", due_at=T0 + 5, body='{"id":"t"}', priority=3
    )
    updated = store.transition("t", S.RETRYING, expect={S.RUNNING}, schedule=retry, scheduled_for=T0 + 5)
    assert updated is not None and updated.status is S.RETRYING
    assert store.count_schedule() == 1
    assert store.claim_due(T0 + 5, 10, "w", 30) == [retry]


def test_a_claim_step_takes_the_next_attempt_and_counts_one_delivery_up_to_the_cap(store: TaskStore) -> None:
    store.create(make("fresh"))
    spent = store.create(make("spent", status=S.RETRYING, attempt=1, deliveries=3))

    claimed = store.apply_step(claim_step("fresh", 1, 3, owner="w", started_at=T0 + 1))

    assert claimed is not None
    assert (claimed.status, claimed.attempt, claimed.deliveries, claimed.owner, claimed.started_at) == (
        S.RUNNING,
        1,
        1,
        "w",
        T0 + 1,
    )
    assert store.get("fresh") == claimed
    assert store.apply_step(claim_step("fresh", 1, 3, owner="other")) is None  # RUNNING: the attempt is taken
    assert store.apply_step(claim_step("spent", 3, 3, owner="w")) is None  # the record is at attempt 1, not 2
    assert store.apply_step(claim_step("spent", 2, 3, owner="w")) is None  # out of deliveries
    assert store.apply_step(claim_step("missing", 1, 3, owner="w")) is None
    assert store.get("spent") == spent


def test_threads_racing_for_one_claim_have_exactly_one_winner(store: TaskStore) -> None:
    store.create(make("t"))
    barrier = threading.Barrier(8)
    wins: list[TaskRecord] = []

    def claim(n: int) -> None:
        barrier.wait(timeout=10)
        won = store.transition("t", S.RUNNING, expect={S.PENDING}, expect_attempt=0, attempt=1, owner=f"w{n}")
        if won is not None:
            wins.append(won)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(wins) == 1
    assert store.get("t") == wins[0]


def _claim_in_process(url: str, ids: list[str], barrier: Any, results: Any) -> None:
    store = open_store(url)
    me = f"pid-{os.getpid()}"
    barrier.wait(timeout=60)
    won = [
        task_id
        for task_id in ids
        if store.transition(task_id, S.RUNNING, expect={S.PENDING}, expect_attempt=0, attempt=1, owner=me)
    ]
    results.put((me, won))
    store.close()


def _create_in_process(url: str, n: int, keys: list[str], barrier: Any, results: Any) -> None:
    store = open_store(url)
    barrier.wait(timeout=60)
    returned = {key: store.create(make(f"p{n}-{key}", idempotency_key=key)).id for key in keys}
    results.put(returned)
    store.close()


def _race(target: Any, args_for: Any, procs: int = 4) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args_for(n), barrier, results)) for n in range(procs)]
    for worker in workers:
        worker.start()
    try:
        return [results.get(timeout=60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0


def test_processes_racing_to_claim_tasks_claim_each_exactly_once(shared_url: str) -> None:
    store = open_store(shared_url)
    ids = [store.create(make()).id for _ in range(50)]
    outcomes = _race(_claim_in_process, lambda n: (shared_url, ids))
    claimed = [task_id for _, won in outcomes for task_id in won]
    assert sorted(claimed) == sorted(ids)
    for owner, won in outcomes:
        for task_id in won:
            record = store.get(task_id)
            assert record is not None and (record.owner, record.attempt) == (owner, 1)
    store.close()


def test_processes_racing_to_create_with_one_idempotency_key_create_one_task(shared_url: str) -> None:
    keys = [f"key-{i}" for i in range(10)]
    outcomes = _race(_create_in_process, lambda n: (shared_url, n, keys))
    store = open_store(shared_url)
    assert store.count_tasks(TaskQuery()) == len(keys)
    for key in keys:
        assert len({returned[key] for returned in outcomes}) == 1, f"{key} was created more than once"
    store.close()


# -- logs and progress ---------------------------------------------------------------------------------------


def test_log_lines_come_back_in_append_order_and_survive_transitions(store: TaskStore) -> None:
    store.create(make("t", logs=[LogLine(ts=T0, message="at create")]))
    lines = [LogLine(ts=T0 + i, message=f"line {i}", attempt=1, extra={"i": i}) for i in range(20)]
    for line in lines[:10]:
        store.append_log("t", line)
    store.transition("t", S.RUNNING, attempt=1)
    for line in lines[10:]:
        store.append_log("t", line)
    record = store.get("t")
    assert record is not None and record.logs == [LogLine(ts=T0, message="at create"), *lines]
    store.append_log("missing", lines[0])  # a log line for an unknown task is dropped
    assert store.get("missing") is None


def test_set_progress_records_progress_and_message(store: TaskStore) -> None:
    store.create(make("t"))
    store.set_progress("t", 0.5, "halfway")
    record = store.get("t")
    assert record is not None and (record.progress, record.progress_message) == (0.5, "halfway")
    store.set_progress("t", 0.75)
    record = store.get("t")
    assert record is not None and (record.progress, record.progress_message) == (0.75, None)
    assert record.status is S.PENDING
    store.set_progress("missing", 1.0)
    assert store.get("missing") is None


# -- listing -------------------------------------------------------------------------------------------------


def _seed(store: TaskStore) -> list[TaskRecord]:
    """Ten tasks created one second apart, alternating names and queues, some moved on."""
    records = [
        store.create(
            make(
                f"r{i}", name=f"job.{'a' if i % 2 else 'b'}", queue="q1" if i < 5 else "q2", created_at=T0 + i
            )
        )
        for i in range(10)
    ]
    store.transition("r1", S.RUNNING)
    store.transition("r2", S.RUNNING)
    store.transition("r2", S.SUCCESS)
    store.transition("r7", S.FAILED)
    return records


def _ids(records: list[TaskRecord]) -> list[str]:
    return [r.id for r in records]


def test_list_tasks_is_newest_first_and_pages_with_limit_and_offset(store: TaskStore) -> None:
    _seed(store)
    everything = [f"r{i}" for i in reversed(range(10))]
    assert _ids(store.list_tasks(TaskQuery())) == everything
    assert _ids(store.list_tasks(TaskQuery(limit=3))) == everything[:3]
    assert _ids(store.list_tasks(TaskQuery(limit=3, offset=3))) == everything[3:6]
    assert _ids(store.list_tasks(TaskQuery(limit=3, offset=9))) == everything[9:]
    assert store.list_tasks(TaskQuery(offset=10)) == []
    assert store.count_tasks(TaskQuery(limit=1)) == 10
    assert store.list_tasks(TaskQuery())[0] == store.get("r9")


def test_list_tasks_filters_by_status_name_queue_and_time(store: TaskStore) -> None:
    _seed(store)
    cases: list[tuple[TaskQuery, list[str]]] = [
        (TaskQuery(statuses=frozenset({S.RUNNING})), ["r1"]),
        (TaskQuery(statuses=frozenset({S.SUCCESS, S.FAILED})), ["r7", "r2"]),
        (TaskQuery(statuses=frozenset()), []),
        (TaskQuery(name="job.a"), ["r9", "r7", "r5", "r3", "r1"]),
        (TaskQuery(queue="q1"), ["r4", "r3", "r2", "r1", "r0"]),
        (TaskQuery(name="job.b", queue="q2"), ["r8", "r6"]),
        (TaskQuery(created_after=T0 + 7), ["r9", "r8", "r7"]),
        (TaskQuery(created_before=T0 + 2), ["r1", "r0"]),
        (TaskQuery(created_after=T0 + 3, created_before=T0 + 6), ["r5", "r4", "r3"]),
        (TaskQuery(statuses=frozenset({S.PENDING}), name="job.a", created_after=T0 + 4), ["r9", "r5"]),
        (TaskQuery(statuses=frozenset({S.PENDING}), limit=2, offset=1), ["r8", "r6"]),
        (TaskQuery(name="job.a", limit=2, offset=2), ["r5", "r3"]),
    ]
    for query, expected in cases:
        assert _ids(store.list_tasks(query)) == expected, query
    for query, expected in cases[:-2]:
        assert store.count_tasks(query) == len(expected), query
    assert store.count_tasks(TaskQuery(statuses=frozenset({S.PENDING}), limit=2)) == 7


def test_list_tasks_pages_several_statuses_in_every_order(store: TaskStore) -> None:
    # SQLite walks each status's range of its status index up to the page's end and merges them: a page
    # past the first must still be the same slice of one ordered list.
    _seed(store)  # r1 RUNNING, r2 SUCCESS, r7 FAILED, the rest PENDING; odd ids job.a, even job.b
    waiting_or_failed = frozenset({S.PENDING, S.FAILED})
    cases: list[tuple[TaskQuery, list[str]]] = [
        (TaskQuery(statuses=waiting_or_failed, limit=3, offset=2), ["r7", "r6", "r5"]),
        (TaskQuery(statuses=waiting_or_failed, limit=3, offset=3, order="name"), ["r3", "r8", "r6"]),
        (TaskQuery(statuses=waiting_or_failed, limit=3, offset=0, order="status"), ["r7", "r9", "r8"]),
        (TaskQuery(statuses=waiting_or_failed, limit=5, offset=6, order="-status"), ["r0", "r7"]),
        (TaskQuery(statuses=waiting_or_failed, limit=4, offset=5, order="created"), ["r7", "r8", "r9"]),
        (
            TaskQuery(statuses=frozenset({S.PENDING, S.RUNNING, S.SUCCESS}), name="job.b", limit=2, offset=2),
            ["r4", "r2"],
        ),
        (TaskQuery(statuses=frozenset({S.RUNNING, S.CANCELLED}), limit=5, offset=1), []),
    ]
    for query, expected in cases:
        assert _ids(store.list_tasks(query)) == expected, query


def test_list_tasks_filters_by_workflow_root_and_a_deleted_task_leaves_the_listing(store: TaskStore) -> None:
    """`TaskQuery(root_id=...)` lists one workflow's tasks (what `decortask show` and `cancel` read)."""
    _seed(store)
    store.create_many(
        [
            make("w0", root_id="wf-1", created_at=T0 + 20),
            make("w1", root_id="wf-1", created_at=T0 + 21, name="job.a"),
            make("w2", root_id="wf-2", created_at=T0 + 22),
            make("w3", root_id="wf-1", created_at=T0 + 23),
        ]
    )
    store.transition("w1", S.RUNNING)
    cases: list[tuple[TaskQuery, list[str]]] = [
        (TaskQuery(root_id="wf-1"), ["w3", "w1", "w0"]),
        (TaskQuery(root_id="wf-1", order="created"), ["w0", "w1", "w3"]),
        (TaskQuery(root_id="wf-1", statuses=frozenset({S.PENDING})), ["w3", "w0"]),
        (TaskQuery(root_id="wf-1", name="job.a"), ["w1"]),
        (TaskQuery(root_id="wf-1", limit=1, offset=1), ["w1"]),
        (TaskQuery(root_id="wf-2"), ["w2"]),
        (TaskQuery(root_id="nothing"), []),
    ]
    for query, expected in cases:
        assert _ids(store.list_tasks(query)) == expected, query
    assert store.count_tasks(TaskQuery(root_id="wf-1")) == 3
    store.delete("w0")
    assert _ids(store.list_tasks(TaskQuery(root_id="wf-1"))) == ["w3", "w1"]


# -- schedule ------------------------------------------------------------------------------------------------


def test_claim_due_takes_due_entries_oldest_first_up_to_the_limit(store: TaskStore) -> None:
    for e in [entry("late", T0 + 30), entry("b", T0 + 2), entry("a", T0 + 1), entry("c", T0 + 3)]:
        store.add_schedule(e)
    assert store.claim_due(T0, 10, "w", 30) == []
    assert [e.id for e in store.claim_due(T0 + 10, 2, "w", 30)] == ["a", "b"]
    assert [e.id for e in store.claim_due(T0 + 10, 10, "w", 30)] == ["c"]
    assert store.claim_due(T0 + 10, 10, "w", 30) == []
    assert store.claim_due(T0 + 10, 0, "w", 30) == []
    assert store.claim_due(T0 + 30, 10, "w", 30) == [entry("late", T0 + 30)]


def test_a_claimed_entry_is_invisible_until_its_lease_lapses(store: TaskStore) -> None:
    store.add_schedule(entry("e", T0))
    assert store.claim_due(T0 + 1, 10, "w1", lease=30) == [entry("e", T0)]
    assert store.claim_due(T0 + 20, 10, "w2", lease=30) == []
    assert store.count_schedule() == 1  # claimed entries still wait
    # The claimer died without removing it: after the lease another worker takes it.
    assert store.claim_due(T0 + 31, 10, "w2", lease=30) == [entry("e", T0)]
    assert store.claim_due(T0 + 32, 10, "w3", lease=30) == []


def test_rewriting_an_entry_replaces_it_and_forgets_its_claim(store: TaskStore) -> None:
    store.add_schedule(entry("e", T0))
    store.claim_due(T0, 10, "w", 30)
    store.add_schedule(entry("e", T0 + 5, queue="other"))
    assert store.count_schedule() == 1
    assert store.count_schedule(["default"]) == 0
    assert store.next_due(["other"]) == T0 + 5
    assert store.claim_due(T0 + 5, 10, "w", 30) == [entry("e", T0 + 5, queue="other")]


def test_a_claimer_removes_only_the_entries_its_claim_still_holds(store: TaskStore) -> None:
    """The scheduler publishes what it claimed, then removes it; a receiver whose clock puts the message's eta
    still ahead parks it again under the same id meanwhile: that rewritten entry must stay."""
    store.add_schedule(entry("parked", T0))
    store.add_schedule(entry("sent", T0))
    assert len(store.claim_due(T0, 10, "w1", 30)) == 2
    store.add_schedule(entry("parked", T0 + 5))  # parked again: its claim is forgotten

    store.remove_schedule(["parked", "sent"], claimed_by="w1")

    assert [e.id for e in store.claim_due(T0 + 5, 10, "w2", 30)] == ["parked"]
    store.remove_schedule(["parked"], claimed_by="w1")  # w2's claim now: w1 removes nothing
    assert store.count_schedule() == 1
    store.remove_schedule(["parked"])
    assert store.count_schedule() == 0


def test_remove_schedule_deletes_entries(store: TaskStore) -> None:
    for e in [entry("a", T0), entry("b", T0 + 1), entry("c", T0 + 2)]:
        store.add_schedule(e)
    store.claim_due(T0, 1, "w", 30)
    store.remove_schedule(["a", "b", "unknown"])
    store.remove_schedule([])
    assert store.count_schedule() == 1
    assert store.claim_due(T0 + 100, 10, "w", 30) == [entry("c", T0 + 2)]


def test_count_schedule_and_next_due_filter_by_queue(store: TaskStore) -> None:
    assert (store.count_schedule(), store.next_due()) == (0, None)
    for e in [entry("a", T0 + 3, "q1"), entry("b", T0 + 1, "q2"), entry("c", T0 + 2, "q1")]:
        store.add_schedule(e)
    assert store.count_schedule() == 3
    assert store.count_schedule(["q1"]) == 2
    assert store.count_schedule(["q1", "q2", "q3"]) == 3
    assert store.count_schedule([]) == 0
    assert store.next_due() == T0 + 1
    assert store.next_due(["q1"]) == T0 + 2
    assert store.next_due(["q3"]) is None


# -- expiry and lifecycle ------------------------------------------------------------------------------------


def test_purge_expired_removes_only_terminal_records_past_expiry(store: TaskStore) -> None:
    store.create(make("gone", status=S.SUCCESS, expires_at=T0 + 10, idempotency_key="k"))
    store.append_log("gone", LogLine(ts=T0, message="bye"))
    store.create(make("later", status=S.FAILED, expires_at=T0 + 100))
    store.create(make("running", status=S.RUNNING, expires_at=T0))
    store.create(make("forever", status=S.SUCCESS))
    store.create(make("moved", status=S.RUNNING, expires_at=T0))
    store.transition("moved", S.CANCELLED, expires_at=T0 + 5)
    assert store.purge_expired(T0 + 10) == 2
    assert store.get("gone") is None and store.get("moved") is None
    assert {r.id for r in store.list_tasks(TaskQuery())} == {"later", "running", "forever"}
    assert store.create(make("again", idempotency_key="k")).id == "again"
    store.create(make("gone"))
    assert must_get(store, "gone").logs == []
    assert store.purge_expired(T0 + 10) == 0
    # A record re-run after it ended no longer expires.
    store.transition("later", S.PENDING, expires_at=None)
    assert store.purge_expired(T0 + 1000) == 0
    assert store.get("later") is not None


def test_heartbeats_remember_the_latest_time_per_worker(store: TaskStore) -> None:
    now = time.time()
    assert store.last_heartbeat("w1") is None
    store.heartbeat("w1", now)
    store.heartbeat("w1", now + 2.5)
    store.heartbeat("w2", now + 1)
    assert (store.last_heartbeat("w1"), store.last_heartbeat("w2")) == (now + 2.5, now + 1)
    assert store.last_heartbeat("w3") is None


def test_heartbeats_list_every_remembered_worker_with_its_latest_time(store: TaskStore) -> None:
    now = time.time()
    assert store.heartbeats() == {}
    store.heartbeat("host:1:abc", now)
    store.heartbeat("host:1:abc", now + 2.5)
    store.heartbeat("other:2:def", now + 1)
    assert store.heartbeats() == {"host:1:abc": now + 2.5, "other:2:def": now + 1}


def test_close_is_safe_to_call_twice(store: TaskStore) -> None:
    store.create(make("t"))
    store.close()
    store.close()


# -- backend specifics ---------------------------------------------------------------------------------------


def test_sqlite_refuses_a_file_that_is_not_a_database_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    junk = b"not sqlite" + os.urandom(4086)
    path.write_bytes(junk)
    with pytest.raises(StoreError) as caught:
        open_store(f"sqlite:///{path}")
    assert str(path) in str(caught.value)
    assert "not a SQLite database" in str(caught.value)
    assert path.read_bytes() == junk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.db"]


def test_sqlite_gives_up_with_a_clear_error_when_the_file_stays_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from decortask.store import sqlite as sqlite_store

    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}")
    store.close()
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT", 0.01)
    monkeypatch.setattr(sqlite_store, "LOCK_BACKOFF", 0.001)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        store = open_store(f"sqlite:///{path}")
        pytest.fail("opening a store under a held write lock should fail")
    except StoreError as exc:
        assert str(path) in str(exc) and "locked" in str(exc)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_sqlite_store_lives_next_to_other_tables_in_the_file(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "shared.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE decortask_messages (id INTEGER PRIMARY KEY, body TEXT)")
    other.execute("INSERT INTO decortask_messages (body) VALUES ('hello')")
    other.commit()
    store = open_store(f"sqlite:///{path}")
    store.create(make("t"))
    assert other.execute("SELECT body FROM decortask_messages").fetchall() == [("hello",)]
    other.close()
    store.close()


def test_sqlite_store_shares_one_file_between_store_objects(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/deep/er/store.db"
    first, second = open_store(url), open_store(url)
    first.create(make("t"))
    assert second.transition("t", S.RUNNING, expect={S.PENDING}) is not None
    assert first.transition("t", S.RUNNING, expect={S.PENDING}) is None
    first.close()
    second.close()


def test_redis_store_reports_an_unreachable_server_without_its_password() -> None:
    store = open_store("redis://:s3cret@127.0.0.1:1/0?namespace=x")
    with pytest.raises(StoreError) as caught:
        store.get("t")
    assert "127.0.0.1:1" in str(caught.value) and "s3cret" not in str(caught.value)
    store.close()


def test_redis_namespaces_keep_stores_apart(redis_url: str, unique: str) -> None:
    urls = [f"{redis_url}?namespace=dt-test-{unique}-{n}&socket_timeout=5" for n in range(2)]
    first, second = (open_store(url) for url in urls)
    try:
        first.create(make("t", idempotency_key="k"))
        first.add_schedule(entry("e", T0))
        assert second.get("t") is None
        assert second.create(make("u", idempotency_key="k")).id == "u"
        assert (second.count_tasks(TaskQuery()), second.count_schedule()) == (1, 0)
    finally:
        for n, opened in enumerate((first, second)):
            opened.close()
            delete_redis_namespace(redis_url, f"dt-test-{unique}-{n}")


def test_create_many_writes_every_record_and_answers_in_order(store: TaskStore) -> None:
    records = [make(f"batch-{i}", args=[i], logs=[LogLine(ts=T0, message=f"line {i}")]) for i in range(5)]
    returned = store.create_many(records)
    assert returned == records
    assert [must_get(store, f"batch-{i}") for i in range(5)] == records
    assert store.create_many([]) == []


def test_create_many_honours_idempotency_keys_per_record_also_within_the_batch(store: TaskStore) -> None:
    holder = store.create(make("holder", idempotency_key="taken"))
    returned = store.create_many(
        [
            make("a", idempotency_key="taken"),
            make("b", idempotency_key="fresh"),
            make("c", idempotency_key="fresh"),
            make("d"),
        ]
    )
    assert [r.id for r in returned] == ["holder", "b", "b", "d"]
    assert returned[0] == holder
    assert store.get("a") is None and store.get("c") is None
    assert store.count_tasks(TaskQuery()) == 3


def test_create_many_with_an_existing_id_raises_and_writes_nothing(store: TaskStore) -> None:
    store.create(make("dup"))
    with pytest.raises(StoreError, match="already exists"):
        store.create_many([make("new-1"), make("dup"), make("new-2")])
    assert store.get("new-1") is None and store.get("new-2") is None
    with pytest.raises(StoreError, match="unique"):
        store.create_many([make("twice"), make("twice")])
    assert store.get("twice") is None


# -- periodic tasks: leases and schedule state (issue 14) ----------------------------------------------------


def periodic(store: TaskStore) -> PeriodicStateStore:
    assert isinstance(store, PeriodicStateStore)
    return store


def test_a_lease_is_held_by_one_owner_until_it_lapses_and_renewed_by_its_owner(store: TaskStore) -> None:
    leases = periodic(store)
    assert leases.acquire_lease("periodic:a", "w1", 4.0, T0)
    assert leases.lease_owner("periodic:a", T0 + 1) == "w1"
    assert not leases.acquire_lease("periodic:a", "w2", 4.0, T0 + 1)
    assert leases.acquire_lease("periodic:a", "w1", 4.0, T0 + 3)  # renewed: now held until T0 + 7
    assert not leases.acquire_lease("periodic:a", "w2", 4.0, T0 + 6.5)
    assert leases.acquire_lease("periodic:a", "w2", 4.0, T0 + 7)  # lapsed: taken over
    assert leases.lease_owner("periodic:a", T0 + 8) == "w2"
    assert not leases.acquire_lease("periodic:a", "w1", 4.0, T0 + 8)
    assert leases.lease_owner("periodic:a", T0 + 11) is None
    assert leases.acquire_lease("periodic:b", "w1", 4.0, T0 + 8)  # leases are independent by name


def test_a_released_lease_is_free_at_once_and_only_its_owner_releases_it(store: TaskStore) -> None:
    leases = periodic(store)
    assert leases.acquire_lease("periodic:a", "w1", 4.0, T0)
    leases.release_lease("periodic:a", "w2")
    assert leases.lease_owner("periodic:a", T0) == "w1"
    leases.release_lease("periodic:a", "w1")
    assert leases.lease_owner("periodic:a", T0) is None
    assert leases.acquire_lease("periodic:a", "w2", 4.0, T0 + 0.1)


def test_schedule_state_moves_forward_only_and_keeps_the_pause(store: TaskStore) -> None:
    state = periodic(store)
    assert state.schedule_state("nightly") is None
    assert state.advance_schedule("nightly", T0) == ScheduleState("nightly", T0, False)
    assert state.advance_schedule("nightly", T0 - 60) == ScheduleState("nightly", T0, False)  # a stale leader
    assert state.set_schedule_paused("nightly", True) == ScheduleState("nightly", T0, True)
    assert state.advance_schedule("nightly", T0 + 60) == ScheduleState("nightly", T0 + 60, True)
    assert state.set_schedule_paused("poll", True) == ScheduleState("poll", None, True)
    assert state.schedule_states() == [
        ScheduleState("nightly", T0 + 60, True),
        ScheduleState("poll", None, True),
    ]
    assert state.set_schedule_paused("nightly", False) == ScheduleState("nightly", T0 + 60, False)
    assert state.schedule_state("nightly") == ScheduleState("nightly", T0 + 60, False)


def _lease_in_process(url: str, n: int, barrier: Any, results: Any) -> None:
    store = open_store(url)
    assert isinstance(store, PeriodicStateStore)
    barrier.wait(timeout=60)
    results.put(
        [name for name in (f"lease-{i}" for i in range(20)) if store.acquire_lease(name, f"p{n}", 30, T0)]
    )
    store.close()


def test_processes_racing_for_leases_get_each_exactly_once(shared_url: str) -> None:
    outcomes = _race(_lease_in_process, lambda n: (shared_url, n))
    won = sorted(name for names in outcomes for name in names)
    assert won == sorted(f"lease-{i}" for i in range(20))


def test_list_tasks_searches_text_in_ids_and_names_case_insensitively(store: TaskStore) -> None:
    _seed(store)
    store.create(make("Upper-Case-ID", name="Billing.Invoice", created_at=T0 + 20))
    cases: list[tuple[TaskQuery, list[str]]] = [
        (TaskQuery(text="JOB.A"), ["r9", "r7", "r5", "r3", "r1"]),
        (TaskQuery(text="r0"), ["r0"]),
        (TaskQuery(text="invoice"), ["Upper-Case-ID"]),
        (TaskQuery(text="case-id"), ["Upper-Case-ID"]),
        (TaskQuery(text="job", statuses=frozenset({S.RUNNING})), ["r1"]),
        (TaskQuery(text="%"), []),  # no wildcards: a literal substring
        (TaskQuery(text="nothing-like-it"), []),
    ]
    for query, expected in cases:
        assert _ids(store.list_tasks(query)) == expected, query
        assert store.count_tasks(query) == len(expected), query
    assert _ids(store.list_tasks(TaskQuery(text="job.b", limit=2, offset=1))) == ["r6", "r4"]


def test_list_tasks_orders_by_created_name_status_or_queue_ties_newest_first(store: TaskStore) -> None:
    _seed(store)
    everything = [f"r{i}" for i in reversed(range(10))]
    assert _ids(store.list_tasks(TaskQuery(order="-created"))) == everything
    assert _ids(store.list_tasks(TaskQuery(order="created"))) == everything[::-1]
    by_name = ["r9", "r7", "r5", "r3", "r1", "r8", "r6", "r4", "r2", "r0"]  # job.a, then job.b
    assert _ids(store.list_tasks(TaskQuery(order="name"))) == by_name
    assert _ids(store.list_tasks(TaskQuery(order="name", text="job.a", offset=3))) == ["r3", "r1"]


def test_a_clean_stop_is_remembered_apart_from_heartbeats(store: TaskStore) -> None:
    now = time.time()
    assert store.stopped_workers() == {}
    store.heartbeat("host:1:abc", now)
    store.worker_stopped("host:1:abc", now + 1)
    store.worker_stopped("host:1:abc", now + 2)
    assert store.stopped_workers() == {"host:1:abc": now + 2}
    assert store.heartbeats() == {"host:1:abc": now}  # a stop is not a heartbeat
