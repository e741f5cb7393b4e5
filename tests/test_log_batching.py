"""A task's log lines ride with its next state write (issue 12): `task_log()`, captured output and the failed
attempt's history line are held by the worker and written with the outcome, in the same store write; a long
task's lines are written at an interval, a full buffer at once, in the order they were written.

The store tests run against every backend (memory, SQLite, Redis); the worker tests drive the real path
in process (`run_pending`, a worker thread) and through a real `decortask worker --pool processes`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import log_batching_tasks as lb
import pytest
from conftest import broker_urls, delete_redis_namespace
from workers import poll_until, run_burst_worker, sqlite_app_for_workers

from decortask import Decortask
from decortask.app import reset_default_app
from decortask.errors import IllegalTransition
from decortask.logbuffer import MAX_PENDING
from decortask.states import TaskStatus
from decortask.store import LogLine, TaskRecord, TaskStore, open_store
from decortask.testing import run_pending

S = TaskStatus
T0 = 1_700_000_000.0
KINDS = ["memory", "sqlite", "redis"]


# -- the store: log lines in the transition's own atomic step ---------------------------------------------


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"
    else:
        base: str = request.getfixturevalue("redis_url")
        namespace = f"dt-test-{request.getfixturevalue('unique')}"
        request.addfinalizer(lambda: delete_redis_namespace(base, namespace))
        url = f"{base}?namespace={namespace}"
    opened = open_store(url)
    yield opened
    opened.close()


def running(task_id: str) -> TaskRecord:
    return TaskRecord(
        id=task_id, name="t", queue="q", status=S.RUNNING, created_at=T0, updated_at=T0, attempt=1
    )


def lines(*messages: str) -> list[LogLine]:
    return [LogLine(ts=T0 + i, message=m, attempt=1, extra={"i": i}) for i, m in enumerate(messages)]


def messages(record: TaskRecord | None) -> list[str]:
    assert record is not None
    return [line.message for line in record.logs]


def test_a_transition_appends_its_log_lines_after_the_stored_ones_in_one_step(store: TaskStore) -> None:
    store.create(running("t"))
    store.append_log("t", LogLine(ts=T0, message="earlier", attempt=1))
    done = store.transition("t", S.SUCCESS, expect={S.RUNNING}, log_lines=lines("a", "b", "c"), result=1)
    assert done is not None and done.status is S.SUCCESS
    stored = store.get("t")
    assert messages(stored) == ["earlier", "a", "b", "c"]
    assert stored is not None and stored.logs[1:] == lines("a", "b", "c")  # ts, attempt and extra kept


def test_log_lines_are_kept_when_the_compare_and_set_fails_but_not_for_an_unknown_task(
    store: TaskStore,
) -> None:
    store.create(running("t"))
    assert (
        store.transition("t", S.SUCCESS, expect={S.PENDING}, log_lines=lines("what the attempt did")) is None
    )
    assert store.get("t") is not None and store.get("t").status is S.RUNNING  # type: ignore[union-attr]
    assert messages(store.get("t")) == ["what the attempt did"]
    assert store.transition("missing", S.SUCCESS, log_lines=lines("x")) is None
    assert store.get("missing") is None


def test_a_step_that_raises_writes_no_log_lines(store: TaskStore) -> None:
    store.create(running("t"))
    assert store.transition("t", S.SUCCESS, expect={S.RUNNING}) is not None
    with pytest.raises(IllegalTransition):
        store.transition("t", S.RUNNING, expect={S.SUCCESS}, log_lines=lines("never"))
    assert messages(store.get("t")) == []


def test_progress_and_output_writes_append_their_log_lines_first_in_the_same_step(store: TaskStore) -> None:
    store.create(running("t"))
    store.set_progress("t", 0.5, "half", log_lines=lines("p1", "p2"))
    store.set_output("t", {"rows": 3}, log_lines=lines("o1"))
    stored = store.get("t")
    assert messages(stored) == ["p1", "p2", "o1"]
    assert stored is not None and (stored.progress, stored.progress_message, stored.output) == (
        0.5,
        "half",
        {"rows": 3},
    )
    store.set_progress("missing", 0.1, log_lines=lines("x"))
    assert store.get("missing") is None


def test_a_batch_appends_each_steps_lines_to_its_own_task(store: TaskStore) -> None:
    from decortask.store.base import TransitionStep

    for task_id in ("x", "y", "z"):
        store.create(running(task_id))
    steps = [
        TransitionStep("x", S.SUCCESS, frozenset({S.RUNNING}), log_lines=tuple(lines("x1", "x2"))),
        TransitionStep("y", S.SUCCESS, frozenset({S.PENDING}), log_lines=tuple(lines("y1"))),  # CAS fails
        TransitionStep("z", S.FAILED, frozenset({S.RUNNING}), log_lines=tuple(lines("z1", "z2", "z3"))),
    ]
    batch = getattr(store, "transition_many", None)
    outcomes = batch(steps) if batch is not None else [store.apply_step(step) for step in steps]
    assert [o.status if isinstance(o, TaskRecord) else o for o in outcomes] == [S.SUCCESS, None, S.FAILED]
    assert [messages(store.get(t)) for t in ("x", "y", "z")] == [["x1", "x2"], ["y1"], ["z1", "z2", "z3"]]


# -- the worker: how many store writes, and when ---------------------------------------------------------


class StoreWrites:
    """Every write the store is asked for, counted by wrapping the real store's methods (nothing mocked)."""

    def __init__(self, store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
        #: (kind, task id, detail): ("transition", id, (status, number of log lines)), ("append", id, n).
        self.calls: list[tuple[str, str, Any]] = []
        self._lock = threading.Lock()
        batch = getattr(store, "transition_many", None)
        if batch is not None:
            monkeypatch.setattr(store, "transition_many", self._steps(batch))
        else:
            apply_step = store.apply_step
            monkeypatch.setattr(
                store, "apply_step", lambda step: self._steps(lambda s: [apply_step(s[0])])([step])[0]
            )
        for name, count in (("append_log", lambda line: 1), ("append_logs", len)):
            original = getattr(store, name)
            monkeypatch.setattr(store, name, self._appends(original, count))
        for name in ("set_progress", "set_output"):
            monkeypatch.setattr(store, name, self._fields(name, getattr(store, name)))

    def _steps(self, original: Any) -> Any:
        def wrapped(steps: Any) -> Any:
            with self._lock:
                for step in steps:
                    self.calls.append(
                        ("transition", step.task_id, (step.status, len(getattr(step, "log_lines", ()))))
                    )
            return original(steps)

        return wrapped

    def _appends(self, original: Any, count: Any) -> Any:
        def wrapped(task_id: str, lines: Any) -> Any:
            with self._lock:
                self.calls.append(("append", task_id, count(lines)))
            return original(task_id, lines)

        return wrapped

    def _fields(self, name: str, original: Any) -> Any:
        def wrapped(task_id: str, *args: Any, log_lines: Any = (), **kwargs: Any) -> Any:
            with self._lock:
                self.calls.append((name, task_id, len(log_lines)))
            return original(task_id, *args, log_lines=log_lines, **kwargs)

        return wrapped

    def of(self, task_id: str) -> list[tuple[str, Any]]:
        with self._lock:
            return [(kind, detail) for kind, tid, detail in self.calls if tid == task_id]


@pytest.fixture(params=KINDS)
def app(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Decortask]:
    """An app of each kind (broker and store alike) with its own queue; lines wait up to 0.1 s."""
    kind = request.param
    if kind == "memory":
        broker = store = "memory://"
    else:
        broker, store = broker_urls(kind, tmp_path, unique)
    made = Decortask(broker, store, default_queue=f"lb-{unique}", log_flush_interval=0.1)
    try:
        yield made
    finally:
        made.close()
        reset_default_app()
        if kind == "redis":
            delete_redis_namespace(store.split("?")[0], f"test-{unique}")


def test_three_lines_go_with_the_outcome_the_claim_and_one_outcome_write(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = StoreWrites(app.store, monkeypatch)
    handle = lb.three_lines.delay(7)
    run_pending(app)
    assert writes.of(handle.id) == [
        ("transition", (S.RUNNING, 0)),  # the claim
        ("transition", (S.SUCCESS, 3)),  # the outcome, with the three lines: no write of their own
    ]
    assert [line.message for line in handle.logs] == ["one", "two", "three"]
    assert handle.logs[0].extra == {"n": 7} and handle.logs[0].attempt == 1


def test_a_task_that_logs_nothing_writes_nothing_more(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = StoreWrites(app.store, monkeypatch)
    handle = lb.quiet.delay()
    run_pending(app)
    assert writes.of(handle.id) == [("transition", (S.RUNNING, 0)), ("transition", (S.SUCCESS, 0))]


def test_progress_and_output_writes_carry_the_lines_written_before_them(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "settings", app.settings.replace(log_flush_interval=3600.0))
    writes = StoreWrites(app.store, monkeypatch)
    handle = lb.reports_progress.delay()
    run_pending(app)
    assert writes.of(handle.id) == [
        ("transition", (S.RUNNING, 0)),
        ("set_progress", 2),
        ("set_output", 1),
        ("transition", (S.SUCCESS, 1)),
    ]
    assert [line.message for line in handle.logs] == [
        "before progress 1",
        "before progress 2",
        "before output",
        "after",
    ]


def test_a_full_buffer_is_written_at_once_and_the_rest_with_the_outcome(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No interval write can come in between.
    monkeypatch.setattr(app, "settings", app.settings.replace(log_flush_interval=3600.0))
    writes = StoreWrites(app.store, monkeypatch)
    handle = lb.many_lines.delay(2 * MAX_PENDING + 50)
    run_pending(app)
    assert writes.of(handle.id) == [
        ("transition", (S.RUNNING, 0)),
        ("append", MAX_PENDING),
        ("append", MAX_PENDING),
        ("transition", (S.SUCCESS, 50)),
    ]
    assert [line.message for line in handle.logs] == [f"line {i}" for i in range(2 * MAX_PENDING + 50)]


def test_a_long_tasks_lines_are_visible_while_it_runs(app: Decortask) -> None:
    lb.release.clear()
    handle = lb.waits.delay()
    done = threading.Event()
    runner = threading.Thread(target=lambda: (run_pending(app), done.set()), daemon=True)
    runner.start()
    try:
        record = poll_until(
            lambda: (r := app.store.get(handle.id)) is not None and r.logs and r,
            30,
            "the line of a running task",
        )
        assert record.status is S.RUNNING
        assert [line.message for line in record.logs] == ["started"]
    finally:
        lb.release.set()
        runner.join(60)
    assert done.is_set()
    assert [line.message for line in handle.logs] == ["started", "finishing"]


def test_lines_keep_their_order_across_every_kind_of_write_and_attempt(app: Decortask) -> None:
    handle = lb.every_kind.delay(MAX_PENDING + 20)
    run_pending(app, now=handle.record().created_at + 3600)  # the retry is due at once
    record = handle.record()
    assert record.status is S.SUCCESS and record.error_message is None
    expected = [
        "a1",
        "p1",
        "WARNING lb.shop: l1",
        *(f"n{i}" for i in range(MAX_PENDING + 20)),
        "waits for the interval",
        "after the interval",
        "attempt 1 failed: builtins.ValueError: attempt 1 fails; attempt 2 in 0.01 s",
        "a2",
        "p2 unfinished",
    ]
    assert [line.message for line in record.logs] == expected
    assert [line.attempt for line in record.logs] == [1] * (len(expected) - 2) + [2, 2]
    assert record.logs[1].extra == {"source": "stdout"}


def test_the_process_pool_childs_lines_go_with_its_outcome(tmp_path: Path) -> None:
    with sqlite_app_for_workers(tmp_path, "lb") as app:
        handle = lb.fails_once_in_child.delay()
        run_burst_worker(app, tmp_path, "tests.log_batching_tasks", "--pool", "processes", "-c", "2")
        record = handle.record()
        assert record.status is S.SUCCESS and record.result == 2
        assert [line.message for line in record.logs] == [
            "one of attempt 1",
            "printed by attempt 1",
            "three of attempt 1",
            "attempt 1 failed: builtins.ValueError: first attempt fails; attempt 2 in 0.01 s",
            "one of attempt 2",
            "printed by attempt 2",
            "three of attempt 2",
        ]
        assert record.logs[0].extra["pid"] != os.getpid()  # written by the child
