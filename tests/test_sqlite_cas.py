"""SQLite transitions done in SQL (store/sqlite_cas.py) leave exactly the record the general path leaves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from decortask.states import TaskStatus
from decortask.store import sqlite_cas, sqlite_steps
from decortask.store.base import NOT_READ_BACK, TaskRecord, TransitionStep, claim_step
from decortask.store.sqlite import SQLiteStore

S = TaskStatus
NOW = 1_795_396_452.0210176  # a float that 15 significant digits would round


def record(task_id: str, **fields: Any) -> TaskRecord:
    base: dict[str, Any] = {
        "id": task_id,
        "name": "cas.task",
        "queue": "q",
        "status": S.PENDING,
        "created_at": NOW,
        "updated_at": NOW,
        "args": [1, "two", {"three": 3.25}],
        "kwargs": {"k": [None, True]},
        "tags": {"tenant": "acme"},
    }
    base.update(fields)
    return TaskRecord(**base)


@pytest.fixture
def stores(tmp_path: Path) -> tuple[SQLiteStore, SQLiteStore]:
    """Two stores with the same records: one may take the SQL path, the other never does."""
    return SQLiteStore(f"sqlite:///{tmp_path / 'sql.db'}"), SQLiteStore(f"sqlite:///{tmp_path / 'py.db'}")


def both(
    stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch, steps: list[TransitionStep]
) -> tuple[list[Any], list[Any]]:
    """Apply `steps` to each store (the second with the SQL path turned off) at the same clock."""
    monkeypatch.setattr(time, "time", lambda: NOW + 1.5)  # the clock `sqlite_steps` reads
    with_sql = stores[0].transition_many(steps)
    monkeypatch.setattr(sqlite_cas, "update", lambda *_: sqlite_cas.UNSUPPORTED)
    in_python = stores[1].transition_many(steps)
    return with_sql, in_python


def same_records(stores: tuple[SQLiteStore, SQLiteStore], task_id: str) -> TaskRecord:
    via_sql, via_python = stores[0].get(task_id), stores[1].get(task_id)
    assert via_sql is not None and via_python is not None
    assert via_sql.to_dict() == via_python.to_dict()
    return via_sql


def claim(task_id: str, attempt: int = 1, cap: int = 3) -> TransitionStep:
    return claim_step(task_id, attempt, cap, owner="w1", started_at=NOW + 0.25, finished_at=None)


def finish(task_id: str, status: TaskStatus, attempt: int = 1, **changes: Any) -> TransitionStep:
    return TransitionStep(task_id, status, frozenset({S.RUNNING}), attempt, None, changes, logs=False)


def test_an_outcome_not_read_back_writes_the_record_the_general_path_writes(
    stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    for store in stores:
        store.create(record("t"))
    both(stores, monkeypatch, [claim("t")])
    monkeypatch.undo()
    outcome = TransitionStep(
        "t",
        S.SUCCESS,
        frozenset({S.RUNNING}),
        1,
        None,
        {"result": {"n": NOW}, "finished_at": NOW + 2},
        logs=False,
        read_back=False,
    )

    with_sql, in_python = both(stores, monkeypatch, [outcome])

    assert with_sql == [NOT_READ_BACK]  # held, and its record was not decoded
    assert isinstance(in_python[0], TaskRecord)
    assert same_records(stores, "t").result == {"n": NOW}
    monkeypatch.undo()
    assert stores[0].transition_many([outcome]) == [None]  # it no longer holds: None, as read back


@pytest.mark.parametrize(
    "result",
    [None, True, 0, -7, 2**70, 0.1, NOW, 'é\n"quoted"', [1, [2, {"x": None}]], {"nested": {"f": 1e-300}}],
)
def test_a_claim_and_an_outcome_in_sql_match_the_general_path(
    stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch, result: Any
) -> None:
    for store in stores:
        store.create(record("t"))

    claimed = both(stores, monkeypatch, [claim("t")])
    monkeypatch.undo()
    finished = both(
        stores,
        monkeypatch,
        [finish("t", S.SUCCESS, result=result, finished_at=NOW + 2, expires_at=NOW + 86400.5)],
    )

    assert all(isinstance(r, TaskRecord) for r in (*claimed[0], *claimed[1], *finished[0], *finished[1]))
    assert claimed[0][0].to_dict() == claimed[1][0].to_dict()
    assert finished[0][0].to_dict() == finished[1][0].to_dict()
    done = same_records(stores, "t")
    assert (done.status, done.result, done.attempt, done.deliveries, done.owner) == (
        S.SUCCESS,
        result,
        1,
        1,
        "w1",
    )
    assert done.started_at == NOW + 0.25 and done.updated_at == NOW + 1.5  # every bit of the floats


@pytest.mark.parametrize(
    ("fields", "step"),
    [
        ({}, claim("t", attempt=2)),  # the message is one attempt ahead of a record still at 0
        ({"status": S.RUNNING, "attempt": 1}, claim("t", attempt=2)),  # RUNNING is not claimable
        (
            {"deliveries": 3, "status": S.RETRYING, "attempt": 1},
            claim("t", attempt=2, cap=3),
        ),  # out of deliveries
        ({"status": S.RUNNING, "attempt": 2}, finish("t", S.SUCCESS, attempt=1)),  # a stale attempt
        ({}, finish("t", S.SUCCESS)),  # not RUNNING
    ],
)
def test_a_failed_expectation_changes_nothing_on_either_path(
    stores: tuple[SQLiteStore, SQLiteStore],
    monkeypatch: pytest.MonkeyPatch,
    fields: dict[str, Any],
    step: TransitionStep,
) -> None:
    for store in stores:
        store.create(record("t", **fields))

    assert both(stores, monkeypatch, [step]) == ([None], [None])
    assert same_records(stores, "t").updated_at == NOW


def test_an_unknown_task_is_none_on_either_path(
    stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert both(stores, monkeypatch, [claim("missing"), finish("missing", S.FAILED)]) == (
        [None, None],
        [None, None],
    )


def test_a_retry_with_a_schedule_entry_matches_the_general_path(
    stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from decortask.store.base import ScheduleEntry

    for store in stores:
        store.create(record("t", status=S.RUNNING, attempt=1, deliveries=1))
    entry = ScheduleEntry(id="t:2", task_id="t", queue="q", due_at=NOW + 5, body="{}", priority=0)
    step = TransitionStep(
        "t",
        S.RETRYING,
        frozenset({S.RUNNING}),
        1,
        entry,
        {"scheduled_for": NOW + 5, "deliveries": 0, "error_type": "builtins.ValueError", "traceback": "T\nB"},
    )

    both(stores, monkeypatch, [step])

    assert same_records(stores, "t").status is S.RETRYING
    assert [e.id for e in stores[0].claim_due(NOW + 10, 10, "w", 30.0)] == ["t:2"]


def test_values_json_cannot_hold_exactly_take_the_general_path(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 's.db'}")
    store.create(record("t", status=S.RUNNING, attempt=1))

    done = store.transition("t", S.SUCCESS, expect={S.RUNNING}, result=float("nan"))

    assert done is not None and done.status is S.SUCCESS and done.result != done.result  # NaN, as before


def test_claims_and_outcomes_take_the_sql_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 's.db'}")
    store.create(record("t"))

    def general_path(*_: Any) -> None:
        raise AssertionError("took the general path")

    monkeypatch.setattr(sqlite_steps, "transition_in_python", general_path)
    outcomes = store.transition_many([claim("t")])
    outcomes += store.transition_many([finish("t", S.SUCCESS, result={"ok": True}, finished_at=time.time())])

    assert [o.status for o in outcomes if isinstance(o, TaskRecord)] == [S.RUNNING, S.SUCCESS]


def _damage(store: SQLiteStore, task_id: str, blob: str) -> None:
    import sqlite3

    with sqlite3.connect(store.path) as raw:
        raw.execute("UPDATE decortask_tasks SET record = ? WHERE id = ?", (blob, task_id))


def test_a_damaged_record_fails_its_own_step_and_the_rest_of_the_batch_commits(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 's.db'}")
    for task_id in ("bad", "good"):
        store.create(record(task_id))
    _damage(store, "bad", "{not json")

    outcomes = store.transition_many([claim("bad"), claim("good")])

    assert isinstance(outcomes[0], ValueError) and isinstance(outcomes[1], TaskRecord)
    good = store.get("good")
    assert good is not None and good.status is S.RUNNING


def test_a_step_whose_updated_record_is_unreadable_leaves_no_trace_and_the_rest_commits(
    tmp_path: Path,
) -> None:
    # The UPDATE itself succeeds (the JSON is valid) but the record it returns cannot be read back: the batch
    # is applied again with a savepoint per step, so that step's UPDATE is undone.
    import json
    import sqlite3

    store = SQLiteStore(f"sqlite:///{tmp_path / 's.db'}")
    for task_id in ("bad", "good"):
        store.create(record(task_id))
    broken = record("bad").to_dict()
    del broken["name"]
    _damage(store, "bad", json.dumps(broken))

    outcomes = store.transition_many([claim("bad"), claim("good")])

    assert isinstance(outcomes[0], Exception) and isinstance(outcomes[1], TaskRecord)
    with sqlite3.connect(store.path) as raw:
        statuses = dict(raw.execute("SELECT id, status FROM decortask_tasks").fetchall())
    assert statuses == {"bad": "PENDING", "good": "RUNNING"}
