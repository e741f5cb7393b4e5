"""Group commit (`StoreWriter`, `SQLiteStore.transition_many`) and the executor's claim-first receipt."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import postgres_test_store
from workers import poll_until

from decortask import Decortask, TaskStatus, task
from decortask.errors import IllegalTransition, StoreError
from decortask.executor import Executor, Settle
from decortask.message import Message
from decortask.store import open_store
from decortask.store.base import ScheduleEntry, TaskRecord, TaskStore, TransitionStep, claim_step
from decortask.store.sqlite import SQLiteStore
from decortask.store.writer import StoreWriter


@task(name="writer.noop")
def noop() -> str:
    return "done"


def pending(task_id: str, name: str = "writer.noop", **fields: Any) -> TaskRecord:
    now = time.time()
    return TaskRecord(
        id=task_id,
        name=name,
        queue="q",
        status=TaskStatus.PENDING,
        created_at=now,
        updated_at=now,
        **fields,
    )


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'store.db'}")
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "memory", "redis", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    """Every kind of store: SQLite and Redis batch their transitions, memory takes them one by one."""
    if request.param == "postgres":
        store = open_store(postgres_test_store(request))
        yield store
        store.close()
        return
    if request.param != "redis":
        url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else "memory://"
        store = open_store(url)
        yield store
        store.close()
        return
    base: str = request.getfixturevalue("redis_url")
    namespace = f"dt-test-{request.getfixturevalue('unique')}"
    store = open_store(f"{base}?namespace={namespace}")
    try:
        yield store
    finally:
        store.close()
        client = redis.Redis.from_url(base)
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


class HeldFirstBatch:
    """Wraps `transition_many` so the first batch waits until the other callers have queued behind it."""

    def __init__(self, store: SQLiteStore, writer: StoreWriter, callers: int) -> None:
        self.store, self.writer, self.callers = store, writer, callers
        self.batches: list[int] = []
        self._original = store.transition_many

    def __call__(self, steps: Sequence[TransitionStep]) -> list[TaskRecord | Exception | None]:
        if not self.batches:
            waiting = lambda: len(steps) + len(self.writer._queue) >= self.callers  # noqa: E731
            poll_until(waiting, 10, "the other callers to queue")
        self.batches.append(len(steps))
        return self._original(steps)


def run_threads(count: int, target: Any) -> list[Any]:
    results: list[Any] = [None] * count

    def call(n: int) -> None:
        try:
            results[n] = target(n)
        except Exception as exc:
            results[n] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_claims_share_a_commit_and_each_caller_gets_its_own_compare_and_set_result(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Eight different tasks and four claims of one more task, all at once: the same attempt is won once.
    for n in range(8):
        sqlite_store.create(pending(f"t{n}"))
    sqlite_store.create(pending("contested"))
    writer = StoreWriter(sqlite_store)
    held = HeldFirstBatch(sqlite_store, writer, callers=12)
    monkeypatch.setattr(sqlite_store, "transition_many", held)

    def claim(n: int) -> TaskRecord | None:
        task_id = f"t{n}" if n < 8 else "contested"
        return writer.claim(task_id, 1, 5, owner=f"w{n}", started_at=time.time())

    results = run_threads(12, claim)

    assert (
        len(held.batches) == 2 and sum(held.batches) == 12
    )  # all who came during the first commit: one more
    for n in range(8):
        record = results[n]
        assert isinstance(record, TaskRecord) and record.id == f"t{n}" and record.owner == f"w{n}"
        assert sqlite_store.get(f"t{n}").status is TaskStatus.RUNNING  # type: ignore[union-attr]
    winners = [r for r in results[8:] if r is not None]
    assert len(winners) == 1 and isinstance(winners[0], TaskRecord)
    assert sqlite_store.get("contested").owner == winners[0].owner  # type: ignore[union-attr]


def test_a_step_error_fails_only_its_own_caller(sqlite_store: SQLiteStore) -> None:
    for task_id in ("a", "b", "c"):
        sqlite_store.create(pending(task_id))
    sqlite_store.transition("b", TaskStatus.CANCELLED, reason="cancelled")
    steps = [
        TransitionStep("a", TaskStatus.RUNNING, expect=frozenset({TaskStatus.PENDING})),
        TransitionStep("b", TaskStatus.RUNNING, expect=frozenset({TaskStatus.CANCELLED})),  # illegal
        TransitionStep("c", TaskStatus.RUNNING, expect=frozenset({TaskStatus.PENDING})),
    ]

    outcomes = sqlite_store.transition_many(steps)

    assert isinstance(outcomes[0], TaskRecord) and isinstance(outcomes[2], TaskRecord)
    assert isinstance(outcomes[1], IllegalTransition)
    assert [sqlite_store.get(t).status for t in "abc"] == [  # type: ignore[union-attr]
        TaskStatus.RUNNING,
        TaskStatus.CANCELLED,
        TaskStatus.RUNNING,
    ]


def test_a_step_that_fails_after_its_update_leaves_no_trace_of_itself(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    for task_id in ("a", "b"):
        sqlite_store.create(pending(task_id))
    with sqlite3.connect(tmp_path / "store.db") as raw:  # a log line no reader can parse
        raw.execute("INSERT INTO decortask_logs (task_id, line) VALUES ('a', 'not json')")
    steps = [
        TransitionStep("a", TaskStatus.RUNNING, expect=frozenset({TaskStatus.PENDING}), logs=True),
        TransitionStep("b", TaskStatus.RUNNING, expect=frozenset({TaskStatus.PENDING})),
    ]

    outcomes = sqlite_store.transition_many(steps)

    # The first step failed while reading its logs, after its UPDATE: that UPDATE must not be committed.
    assert isinstance(outcomes[0], ValueError) and isinstance(outcomes[1], TaskRecord)
    with sqlite3.connect(tmp_path / "store.db") as raw:
        statuses = dict(raw.execute("SELECT id, status FROM decortask_tasks").fetchall())
    assert statuses == {"a": "PENDING", "b": "RUNNING"}


def test_a_batch_of_one_step_that_fails_after_its_update_leaves_no_trace_either(
    sqlite_store: SQLiteStore, tmp_path: Path
) -> None:
    # A batch of one runs without a savepoint (its transaction is one): the rollback must still undo it.
    sqlite_store.create(pending("a"))
    with sqlite3.connect(tmp_path / "store.db") as raw:
        raw.execute("INSERT INTO decortask_logs (task_id, line) VALUES ('a', 'not json')")
    step = TransitionStep("a", TaskStatus.RUNNING, expect=frozenset({TaskStatus.PENDING}), logs=True)

    outcomes = sqlite_store.transition_many([step])

    assert isinstance(outcomes[0], ValueError)
    with sqlite3.connect(tmp_path / "store.db") as raw:
        assert raw.execute("SELECT status FROM decortask_tasks").fetchall() == [("PENDING",)]


def test_a_store_failure_in_a_batch_writes_none_of_it_and_every_caller_sees_it(
    sqlite_store: SQLiteStore,
) -> None:
    sqlite_store.create(pending("a"))
    sqlite_store.create(pending("b"))
    broken = ScheduleEntry(id="b:2", task_id="b", queue="q", due_at=0.0, body=None)  # type: ignore[arg-type]
    steps = [
        TransitionStep("a", TaskStatus.RUNNING, expect=frozenset({TaskStatus.PENDING})),
        TransitionStep("b", TaskStatus.SCHEDULED, expect=frozenset({TaskStatus.PENDING}), schedule=broken),
    ]

    with pytest.raises(StoreError):
        sqlite_store.transition_many(steps)

    assert sqlite_store.get("a").status is TaskStatus.PENDING  # type: ignore[union-attr]
    assert sqlite_store.count_schedule() == 0


def test_a_failed_batch_raises_in_every_caller_and_the_next_batch_still_runs(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(4):
        sqlite_store.create(pending(f"t{n}"))
    writer = StoreWriter(sqlite_store)
    original = sqlite_store.transition_many
    calls: list[int] = []

    def fail_first(steps: Sequence[TransitionStep]) -> list[TaskRecord | Exception | None]:
        calls.append(len(steps))
        if len(calls) == 1:
            poll_until(lambda: len(steps) + len(writer._queue) >= 4, 10, "the other callers to queue")
            raise StoreError("the store is down")
        return original(steps)

    monkeypatch.setattr(sqlite_store, "transition_many", fail_first)

    results = run_threads(4, lambda n: writer.claim(f"t{n}", 1, 5, owner="w"))

    failed = [r for r in results if isinstance(r, StoreError)]
    claimed = [r for r in results if isinstance(r, TaskRecord)]
    # The first batch failed for each of its callers; everyone else went in the next one.
    assert len(failed) == calls[0] and len(claimed) == 4 - calls[0] and calls == [calls[0], 4 - calls[0]]


def test_a_claim_takes_only_the_next_attempt_of_a_claimable_task_and_counts_the_delivery(
    any_store: TaskStore,
) -> None:
    any_store.create(pending("fresh"))
    any_store.create(pending("worn", deliveries=4))
    any_store.create(pending("spent", deliveries=5))
    any_store.create(pending("done"))
    any_store.transition("done", TaskStatus.CANCELLED, reason="cancelled")
    writer = StoreWriter(any_store)

    claimed = writer.claim("fresh", 1, 5, owner="w", started_at=1.0, finished_at=None)
    assert claimed is not None and claimed.status is TaskStatus.RUNNING
    assert (claimed.attempt, claimed.owner, claimed.deliveries) == (1, "w", 1)
    assert writer.claim("fresh", 1, 5, owner="other") is None  # already RUNNING: the attempt is taken
    assert writer.claim("worn", 2, 5, owner="w") is None  # the record is at attempt 0, not 1
    worn = writer.claim("worn", 1, 5, owner="w")
    assert worn is not None and worn.deliveries == 5
    assert writer.claim("spent", 1, 5, owner="w") is None  # out of deliveries: the receipt rules decide
    assert writer.claim("done", 1, 5, owner="w") is None
    assert writer.claim("missing", 1, 5, owner="w") is None
    assert any_store.get("spent").status is TaskStatus.PENDING  # type: ignore[union-attr]


def test_claim_step_expects_a_claimable_record_one_attempt_behind() -> None:
    step = claim_step("t", 3, 5, owner="w")
    assert step.status is TaskStatus.RUNNING and step.expect_attempt == 2
    assert step.changes == {"owner": "w", "attempt": 3} and step.max_deliveries == 5


def test_transitions_through_the_writer_keep_the_store_contract(any_store: TaskStore) -> None:
    any_store.create(pending("t"))
    writer = StoreWriter(any_store)
    entry = ScheduleEntry(id="t:2", task_id="t", queue="q", due_at=5.0, body="{}")

    assert writer.transition("t", TaskStatus.RUNNING, expect={TaskStatus.SCHEDULED}) is None
    running = writer.transition("t", TaskStatus.RUNNING, expect={TaskStatus.PENDING}, attempt=1, owner="w")
    assert running is not None and running.owner == "w"
    retrying = writer.transition(
        "t",
        TaskStatus.RETRYING,
        expect={TaskStatus.RUNNING},
        expect_attempt=1,
        schedule=entry,
        error_type="E",
    )
    assert retrying is not None and any_store.count_schedule() == 1
    with pytest.raises(IllegalTransition):
        writer.transition("t", TaskStatus.SUCCESS, expect={TaskStatus.RETRYING})
    with pytest.raises(ValueError, match="cannot set"):
        writer.transition("t", TaskStatus.RUNNING, expect={TaskStatus.RETRYING}, name="renamed")
    assert any_store.get("t").status is TaskStatus.RETRYING  # type: ignore[union-attr]


def test_settle_says_whether_an_outcome_held_on_every_store(any_store: TaskStore) -> None:
    # The executor's outcome writes: only whether the compare-and-set held is asked, not the record.
    any_store.create(pending("t"))
    writer = StoreWriter(any_store)
    assert writer.transition("t", TaskStatus.RUNNING, expect={TaskStatus.PENDING}, attempt=1) is not None

    assert writer.settle("t", TaskStatus.SUCCESS, TaskStatus.RUNNING, 2, result=1) is False  # other attempt
    assert any_store.get("t").status is TaskStatus.RUNNING  # type: ignore[union-attr]
    assert writer.settle("t", TaskStatus.SUCCESS, TaskStatus.RUNNING, 1, result=42, finished_at=9.5) is True
    done = any_store.get("t")
    assert done is not None and (done.status, done.result, done.finished_at) == (TaskStatus.SUCCESS, 42, 9.5)
    assert writer.settle("t", TaskStatus.FAILED, TaskStatus.RUNNING, 1) is False  # ended already


class CountingStore(SQLiteStore):
    """A SQLite store that counts reads of single records."""

    gets = 0

    def get(self, task_id: str) -> TaskRecord | None:
        self.gets += 1
        return super().get(task_id)


@pytest.fixture
def counted_app(tmp_path: Path) -> Iterator[tuple[Decortask, CountingStore]]:
    app = Decortask(broker_url="memory://", store_url=f"sqlite:///{tmp_path / 'store.db'}")
    store = CountingStore(app.settings.store_url)
    app._store = store
    yield app, store
    app.close()


def message_for(record: TaskRecord, attempt: int = 1) -> Message:
    return Message(id=record.id, task=record.name, args=[], kwargs={}, attempt=attempt)


def test_a_fresh_delivery_is_claimed_and_run_without_reading_its_record_first(
    counted_app: tuple[Decortask, CountingStore],
) -> None:
    app, store = counted_app
    record = store.create(pending("fresh"))
    executor = Executor(app, "w1")

    outcome = executor.execute(message_for(record), "q")

    assert outcome.settle is Settle.ACK and outcome.status is TaskStatus.SUCCESS and outcome.ran
    assert store.gets == 0
    done = store.get("fresh")
    assert done is not None and done.result == "done" and done.deliveries == 1 and done.owner == "w1"


def test_a_duplicate_delivery_fails_the_claim_and_the_record_decides(
    counted_app: tuple[Decortask, CountingStore],
) -> None:
    app, store = counted_app
    record = store.create(pending("dup"))
    executor = Executor(app, "w1")
    executor.execute(message_for(record), "q")

    again = executor.execute(message_for(record), "q")

    assert (again.settle, again.status, again.reason, again.ran) == (
        Settle.ACK,
        TaskStatus.SUCCESS,
        "duplicate",
        False,
    )
    assert store.gets >= 1


def test_a_delivery_out_of_deliveries_is_dead_lettered_not_claimed(
    counted_app: tuple[Decortask, CountingStore],
) -> None:
    app, store = counted_app
    record = store.create(pending("poison", deliveries=app.settings.max_deliveries))
    executor = Executor(app, "w1")

    outcome = executor.execute(message_for(record), "q")

    assert (outcome.settle, outcome.status, outcome.reason) == (
        Settle.DEAD_LETTER,
        TaskStatus.FAILED,
        "max_deliveries",
    )
    assert store.get("poison").reason == "max_deliveries"  # type: ignore[union-attr]


_held: dict[str, Any] = {}


@task(name="writer.locks_the_store")
def locks_the_store() -> str:
    """Takes the store file's write lock for a second, as another process would, then returns."""
    conn = sqlite3.connect(_held["path"], isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    _held["release"] = threading.Timer(1.0, conn.close)
    _held["release"].start()
    return "finished"


def test_an_outcome_blocked_by_a_locked_store_is_retried_past_the_budget_until_it_lands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.db"
    app = Decortask(broker_url="memory://", store_url=f"sqlite:///{path}?busy_timeout=0.05")
    _held["path"] = str(path)
    try:
        record = app.store.create(pending("locked", name="writer.locks_the_store"))
        executor = Executor(app, "w1", store_retry_seconds=0.1)

        outcome = executor.execute(Message(id=record.id, task=record.name, attempt=1), "q")

        assert (outcome.status, outcome.ran) == (TaskStatus.SUCCESS, True)
        assert "store write failed" in caplog.text  # the lock held: the outcome waited for it
        done = app.store.get("locked")
        assert done is not None and (done.status, done.result) == (TaskStatus.SUCCESS, "finished")
    finally:
        _held.pop("release").join()
        app.close()


def test_the_backends_take_their_steps_from_base_not_from_the_writer_that_calls_them() -> None:
    import ast

    import decortask.store

    folder = Path(decortask.store.__file__).parent
    importers = sorted(
        path.name
        for path in folder.glob("*.py")
        if path.name != "writer.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module == "writer"
    )

    assert importers == []


def test_the_keyword_transition_is_written_once_for_every_store_and_the_writer() -> None:
    from decortask.store.base import Transitions
    from decortask.store.memory import MemoryStore
    from decortask.store.redis import RedisStore

    for kind in (MemoryStore, SQLiteStore, RedisStore, StoreWriter):
        assert kind.transition is Transitions.transition, kind.__name__
