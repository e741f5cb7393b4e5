"""Records stay exact and private through every store: no shared state with callers, no lossy rewrite.

The Redis store changes a record inside a Lua script without decoding it (it splices the changed fields'
JSON into the stored text), and records are serialized without deep copies; these tests pin down what
that must never cost: numbers, awkward strings and empty containers survive every write, and a caller
changing a record it got back never changes what the store holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import postgres_test_store

from decortask.errors import IllegalTransition
from decortask.states import TaskStatus
from decortask.store import LogLine, ScheduleEntry, TaskQuery, TaskRecord, TaskStore, open_store

S = TaskStatus
T0 = 1_763_850_123.456789  # 16 significant digits: more than Redis's cjson keeps

AWKWARD = 'quote " backslash \\ braces {[}] comma , colon : unicode \u00e9\u4e2d\U0001f600 newline \n tab \t'


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"
    elif request.param == "postgres":
        url = postgres_test_store(request)
    else:
        url = (
            f"{request.getfixturevalue('redis_url')}?namespace=dt-records-{request.getfixturevalue('unique')}"
        )
    opened = open_store(url)
    yield opened
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(url.split("?", 1)[0])
        keys = list(client.scan_iter(match=url.split("namespace=", 1)[1] + ":*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    opened.close()


def awkward_record(task_id: str) -> TaskRecord:
    return TaskRecord(
        id=task_id,
        name="tests.awkward",
        queue="default",
        status=S.PENDING,
        created_at=T0,
        updated_at=T0,
        args=[2**63 + 1, -(2**70), 0.1, 1e-300, 1.7976931348623157e308, [], {}, [[], [{}]], AWKWARD, None],
        kwargs={"empty_list": [], "empty_map": {}, AWKWARD: {"nested": [AWKWARD, 12345678901234567890]}},
        tags={"tenant": AWKWARD},
        idempotency_key=None,
        priority=3,
        scheduled_for=T0 + 0.000001,
        parent_id="par}ent",
        root_id='ro"ot',
    )


def test_a_transition_keeps_every_untouched_field_exactly(store: TaskStore) -> None:
    original = store.create(awkward_record("exact"))
    running = store.transition(
        "exact", S.RUNNING, expect={S.PENDING}, attempt=1, owner=AWKWARD, started_at=T0 + 1
    )
    assert running is not None
    done = store.transition(
        "exact",
        S.SUCCESS,
        expect={S.RUNNING},
        expect_attempt=1,
        result={"big": 2**64 + 7, "empty": [], "map": {}, "text": AWKWARD, "float": T0},
        error_message=None,
        finished_at=T0 + 2.000000001,
        expires_at=T0 + 86400.5,
    )
    stored = store.get("exact")
    assert done is not None and stored == done
    for field in (
        "args",
        "kwargs",
        "tags",
        "created_at",
        "scheduled_for",
        "parent_id",
        "root_id",
        "priority",
    ):
        assert getattr(stored, field) == getattr(original, field), field
    assert type(stored.args[5]) is list and type(stored.args[6]) is dict  # [] and {} keep their kinds
    assert stored.kwargs["empty_list"] == [] and stored.kwargs["empty_map"] == {}
    assert (stored.owner, stored.started_at, stored.finished_at) == (AWKWARD, T0 + 1, T0 + 2.000000001)
    assert stored.result == {"big": 2**64 + 7, "empty": [], "map": {}, "text": AWKWARD, "float": T0}
    assert stored.expires_at == T0 + 86400.5
    assert [r.id for r in store.list_tasks(TaskQuery(statuses=frozenset({S.SUCCESS})))] == ["exact"]
    assert store.count_tasks(TaskQuery(statuses=frozenset({S.PENDING, S.RUNNING}))) == 0


def test_progress_keeps_the_rest_of_the_record_exactly(store: TaskStore) -> None:
    original = store.create(awkward_record("progress"))
    store.set_progress("progress", 0.123456789012345678, AWKWARD)
    stored = store.get("progress")
    assert stored is not None
    assert (stored.progress, stored.progress_message) == (0.123456789012345678, AWKWARD)
    assert (stored.args, stored.kwargs, stored.tags, stored.created_at) == (
        original.args,
        original.kwargs,
        original.tags,
        original.created_at,
    )
    store.set_progress("progress", 1.0, None)
    again = store.get("progress")
    assert again is not None and (again.progress, again.progress_message) == (1.0, None)


def test_progress_of_an_unknown_task_creates_nothing(store: TaskStore) -> None:
    store.set_progress("ghost", 0.5, "half")
    assert store.get("ghost") is None


def test_changing_a_returned_record_never_changes_the_store(store: TaskStore) -> None:
    created = store.create(awkward_record("private"))
    running = store.transition("private", S.RUNNING, expect={S.PENDING}, attempt=1)
    got = store.get("private")
    assert running is not None and got is not None
    for record in (created, running, got):
        record.args.append("added")
        record.args[7][1][0]["sneaky"] = True
        record.kwargs["empty_list"].append(1)
        record.tags["tenant"] = "someone else"
        record.logs.append(LogLine(ts=T0, message="not stored"))
        record.status = S.FAILED
    stored = store.get("private")
    assert stored is not None
    assert stored.status is S.RUNNING
    assert stored.args == awkward_record("private").args
    assert stored.kwargs == awkward_record("private").kwargs
    assert stored.tags == {"tenant": AWKWARD} and stored.logs == []


def test_changing_what_was_passed_in_never_changes_the_store(store: TaskStore) -> None:
    record = awkward_record("passed")
    store.create(record)
    record.args[7][1][0]["sneaky"] = True
    record.kwargs["empty_map"]["x"] = 1
    result: dict[str, Any] = {"rows": [1, 2]}
    store.transition("passed", S.RUNNING, expect={S.PENDING}, attempt=1)
    store.transition("passed", S.SUCCESS, expect={S.RUNNING}, result=result)
    line = LogLine(ts=T0, message="once", extra={"k": [1]})
    store.append_log("passed", line)
    result["rows"].append(3)
    line.extra["k"].append(2)
    stored = store.get("passed")
    assert stored is not None
    assert stored.args == awkward_record("passed").args and stored.kwargs["empty_map"] == {}
    assert stored.result == {"rows": [1, 2]}
    assert stored.logs == [LogLine(ts=T0, message="once", extra={"k": [1]})]


def test_transition_returns_the_logs_written_so_far(store: TaskStore) -> None:
    store.create(awkward_record("logged"))
    store.append_log("logged", LogLine(ts=T0, message=AWKWARD, attempt=1, extra={"n": 2**65}))
    updated = store.transition("logged", S.RUNNING, expect={S.PENDING}, attempt=1)
    assert updated is not None
    assert updated.logs == [LogLine(ts=T0, message=AWKWARD, attempt=1, extra={"n": 2**65})]


def test_a_failed_expectation_changes_nothing(store: TaskStore) -> None:
    store.create(awkward_record("guarded"))
    before = store.get("guarded")
    assert store.transition("guarded", S.RUNNING, expect={S.RETRYING}, attempt=1) is None
    assert store.transition("guarded", S.RUNNING, expect={S.PENDING}, expect_attempt=3, attempt=4) is None
    assert store.transition("guarded", S.RUNNING, expect=set(), attempt=1) is None
    assert store.get("guarded") == before


def test_an_illegal_transition_raises_and_changes_nothing(store: TaskStore) -> None:
    store.create(awkward_record("illegal"))
    before = store.get("illegal")
    with pytest.raises(IllegalTransition, match="PENDING -> SUCCESS"):
        store.transition("illegal", S.SUCCESS, result=1)
    assert store.get("illegal") == before


def test_a_transition_with_a_schedule_entry_writes_both(store: TaskStore) -> None:
    store.create(awkward_record("later"))
    entry = ScheduleEntry(id="later:1", task_id="later", queue="slow", due_at=T0 + 60, body=AWKWARD)
    updated = store.transition(
        "later", S.SCHEDULED, expect={S.PENDING}, schedule=entry, scheduled_for=T0 + 60
    )
    assert updated is not None and updated.scheduled_for == T0 + 60
    assert store.count_schedule(["slow"]) == 1
    assert store.claim_due(T0 + 61, 10, "me", 30.0) == [entry]


def test_terminal_records_with_an_expiry_are_purged_and_a_rerun_is_not(store: TaskStore) -> None:
    store.create(awkward_record("expiring"))
    store.create(awkward_record("rerun"))
    for task_id in ("expiring", "rerun"):
        store.transition(task_id, S.RUNNING, expect={S.PENDING}, attempt=1)
        store.transition(task_id, S.FAILED, expect={S.RUNNING}, expires_at=T0 + 10)
    store.transition("rerun", S.PENDING, expect={S.FAILED})  # `decortask retry`: no longer expiring
    assert store.purge_expired(T0 + 11) == 1
    assert store.get("expiring") is None
    assert store.get("rerun") is not None


def test_a_held_idempotency_key_returns_the_holder_exactly_with_its_logs(store: TaskStore) -> None:
    holder = awkward_record("holder")
    holder.idempotency_key = "order-17"
    holder.logs = [LogLine(ts=T0, message=AWKWARD, extra={"n": 2**64})]
    store.create(holder)
    store.append_log("holder", LogLine(ts=T0 + 1, message="later"))
    expected = store.get("holder")
    late = awkward_record("late")
    late.idempotency_key = "order-17"
    assert store.create(late) == expected
    fresh = awkward_record("fresh")
    again = awkward_record("again")
    again.idempotency_key = "order-17"
    assert store.create_many([fresh, again]) == [fresh, expected]
    assert store.get("late") is None and store.get("again") is None
    assert store.get("fresh") == fresh
