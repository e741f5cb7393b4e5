"""Re-running a task (`retry_task`, `decortask retry`) and purging a queue (`purge_queue`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from cryptography.fernet import Fernet

from decortask import BrokerUnavailable, Decortask, TaskContext, TaskNotFound, TaskStatus, task
from decortask.admin import TaskStateConflict, purge_queue, retry_task
from decortask.app import reset_default_app
from decortask.deadletters import REPLAYED, replay
from decortask.errors import DecortaskError
from decortask.message import Message, decode
from decortask.store import TaskRecord
from decortask.testing import run_pending

REPO = Path(__file__).resolve().parent.parent
FAR_FUTURE = time.time() + 10 * 365 * 86400
#: (task id, attempt, args) of every run of a task defined here.
runs: list[tuple[str, int, list[Any]]] = []


@task(name="admin.fails_first")
def fails_first(ctx: TaskContext, n: int, *, label: str = "") -> str:
    runs.append((ctx.task_id, ctx.attempt, [n, label]))
    if ctx.attempt == 1:
        raise RuntimeError("attempt 1 fails on purpose")
    return f"{label}{n}"


@task(name="admin.echo")
def echo(ctx: TaskContext, text: str) -> str:
    runs.append((ctx.task_id, ctx.attempt, [text]))
    return text


@pytest.fixture
def app(tmp_path: Path, unique: str) -> Iterator[Decortask]:
    """The memory broker (a queue of its own) and a SQLite store, so threads really race in the store."""
    url = f"sqlite:///{tmp_path}/store.db"
    instance = Decortask("memory://", url, default_queue=f"q-{unique}")
    runs.clear()
    yield instance
    instance.close()
    reset_default_app()


def record_in(app: Decortask, status: TaskStatus, **fields: Any) -> TaskRecord:
    """A record for `admin.echo` brought to `status` through legal transitions, at attempt 1 when it ran."""
    now = time.time()
    record = TaskRecord(
        id=uuid.uuid4().hex, name="admin.echo", queue=app.settings.default_queue, status=TaskStatus.PENDING,
        created_at=now, updated_at=now, args=["again"], **fields,
    )  # fmt: skip
    store = app.store
    store.create(record)
    path = {
        TaskStatus.PENDING: [],
        TaskStatus.SCHEDULED: [TaskStatus.SCHEDULED],
        TaskStatus.RUNNING: [TaskStatus.RUNNING],
        TaskStatus.RETRYING: [TaskStatus.RUNNING, TaskStatus.RETRYING],
        TaskStatus.SUCCESS: [TaskStatus.RUNNING, TaskStatus.SUCCESS],
        TaskStatus.FAILED: [TaskStatus.RUNNING, TaskStatus.FAILED],
        TaskStatus.CANCELLED: [TaskStatus.CANCELLED],
        TaskStatus.INTERRUPTED: [TaskStatus.RUNNING, TaskStatus.INTERRUPTED],
    }[status]
    for step in path:
        changes: dict[str, Any] = {}
        if step is TaskStatus.RUNNING:
            changes = {"attempt": 1, "owner": "worker-a", "started_at": now}
        elif step.terminal:
            changes = {"reason": "test", "error_message": "boom", "finished_at": now, "expires_at": now + 60}
        assert store.transition(record.id, step, **changes) is not None
    found = store.get(record.id)
    assert found is not None
    return found


def take_messages(app: Decortask) -> list[Message]:
    queue = app.settings.default_queue
    session = app.transport.open_consumer([queue], prefetch=1, consume=False)
    found = []
    try:
        while (delivery := session.get(queue)) is not None:
            session.ack(delivery)
            found.append(decode(delivery.body, delivery.content_type, cipher=app.cipher))
    finally:
        session.close()
    return found


@pytest.mark.parametrize(
    "status", [TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.INTERRUPTED, TaskStatus.SUCCESS]
)
def test_retry_from_a_terminal_state_runs_the_next_attempt(app: Decortask, status: TaskStatus) -> None:
    record = record_in(app, status)
    handle = retry_task(app, record.id)
    reopened = handle.record()
    assert (reopened.status, reopened.attempt) == (TaskStatus.PENDING, record.attempt)
    assert (reopened.reason, reopened.error_message, reopened.finished_at, reopened.expires_at) == (
        None,
        None,
        None,
        None,
    )
    assert app.store.count_schedule() == 0
    run_pending(app)
    assert handle.get(timeout=1) == "again"
    assert runs == [(record.id, record.attempt + 1, ["again"])]


def test_retry_of_a_task_that_hit_max_deliveries_runs_again(app: Decortask) -> None:
    record = record_in(app, TaskStatus.FAILED, deliveries=app.settings.max_deliveries)
    assert record.deliveries == app.settings.max_deliveries
    handle = retry_task(app, record.id)
    assert handle.record().deliveries == 0
    run_pending(app)
    assert (handle.status, handle.attempts) == (TaskStatus.SUCCESS, 2)


def test_retry_rebuilds_the_message_from_the_record(app: Decortask) -> None:
    handle = fails_first.apply_async(
        args=(7,), kwargs={"label": "n="}, priority=7, tags={"tenant": "acme"}, idempotency_key="job-7"
    )
    run_pending(app)
    assert handle.status is TaskStatus.FAILED
    retry_task(app, handle.id)
    [message] = take_messages(app)
    assert (message.id, message.task, message.attempt) == (handle.id, "admin.fails_first", 2)
    assert (message.args, message.kwargs, message.tags) == ([7], {"label": "n="}, {"tenant": "acme"})
    assert (message.priority, message.idempotency_key, message.eta, message.expires) == (
        7,
        "job-7",
        None,
        None,
    )


def test_retry_twice_makes_one_new_attempt(app: Decortask) -> None:
    handle = fails_first.delay(1)
    run_pending(app)
    retry_task(app, handle.id)
    with pytest.raises(TaskStateConflict, match=f"task {handle.id} is already PENDING") as second:
        retry_task(app, handle.id)
    assert (second.value.task_id, second.value.status) == (handle.id, TaskStatus.PENDING)
    assert app.transport.queue_size(app.settings.default_queue) == 1
    run_pending(app, now=FAR_FUTURE)
    assert handle.get(timeout=1) == "1"
    assert [attempt for _, attempt, _ in runs] == [1, 2]


def test_concurrent_retries_make_one_new_attempt(app: Decortask) -> None:
    handle = fails_first.delay(3)
    run_pending(app)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def press() -> None:
        barrier.wait()
        try:
            retry_task(app, handle.id)
            results.append("ok")
        except TaskStateConflict:
            results.append("conflict")

    threads = [threading.Thread(target=press) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["conflict"] * 7 + ["ok"]
    assert [m.attempt for m in take_messages(app)] == [2]


@pytest.mark.parametrize(
    "status, words",
    [
        (TaskStatus.RUNNING, "is RUNNING (attempt 1 on worker worker-a); only a task that has ended"),
        (TaskStatus.PENDING, "is already PENDING (attempt 1 is queued)"),
        (TaskStatus.SCHEDULED, "is already SCHEDULED"),
        (TaskStatus.RETRYING, "is already RETRYING (attempt 2 is queued)"),
    ],
)
def test_retry_of_a_task_that_has_not_ended_conflicts(app: Decortask, status: TaskStatus, words: str) -> None:
    record = record_in(app, status)
    with pytest.raises(TaskStateConflict) as conflict:
        retry_task(app, record.id)
    assert words in str(conflict.value)
    assert isinstance(conflict.value, DecortaskError) and conflict.value.status is status
    after = app.store.get(record.id)
    assert after is not None and (after.status, after.attempt) == (status, record.attempt)
    assert app.transport.queue_size(app.settings.default_queue) == 0


def test_retry_of_an_unknown_task_says_where_it_looked(app: Decortask) -> None:
    with pytest.raises(TaskNotFound, match=r"no task nope in the store sqlite:///.*decortask tasks"):
        retry_task(app, "nope")


def test_retry_while_the_broker_is_down_is_published_by_the_scheduler(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = fails_first.delay(5)
    run_pending(app)

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise BrokerUnavailable("cannot reach the broker at memory://")

    with monkeypatch.context() as patch:
        patch.setattr(app.transport, "publish", broker_down)
        with pytest.raises(BrokerUnavailable, match="waits in the store's schedule"):
            retry_task(app, handle.id)
    assert handle.status is TaskStatus.PENDING
    assert app.store.count_schedule() == 1
    run_pending(app)  # a worker's scheduler tick publishes the waiting entry
    assert handle.get(timeout=1) == "5"
    assert [attempt for _, attempt, _ in runs] == [1, 2]


def test_retry_and_replay_keep_arguments_encrypted(tmp_path: Path, unique: str) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    app = Decortask(
        "memory://", url, default_queue=f"q-{unique}", encryption_keys=Fernet.generate_key().decode()
    )
    try:
        runs.clear()
        handle = echo.delay("sealed-5f1")
        run_pending(app)
        retry_task(app, handle.id)
        queue = app.settings.default_queue
        session = app.transport.open_consumer([queue], prefetch=1, consume=False)
        try:
            delivery = session.get(queue)
            assert delivery is not None
            assert b"sealed-5f1" not in delivery.body and "enc" in json.loads(delivery.body)
            session.requeue(delivery)
        finally:
            session.close()
        run_pending(app)
        assert [attempt for _, attempt, _ in runs] == [1, 2]
        # A dead letter of an encrypted message replays with its token untouched.
        task_id = uuid.uuid4().hex
        message = Message(id=task_id, task="admin.not_yet", args=["sealed-77a"], cipher=app.cipher)
        app.transport.publish(message.encode(), queue)
        run_pending(app)
        try:

            @task(name="admin.not_yet")
            def not_yet(text: str) -> str:
                return text.upper()

            [outcome] = replay(app, queue, [task_id]).outcomes
            assert outcome.action == REPLAYED
            run_pending(app)
            assert app.handle(task_id).get(timeout=1) == "SEALED-77A"
        finally:
            from decortask import registry

            registry.unregister("admin.not_yet")
    finally:
        app.close()
        reset_default_app()


# -- purge_queue -----------------------------------------------------------------------------------------------


def test_purge_cancels_pending_tasks_and_leaves_finished_ones(app: Decortask) -> None:
    queue = app.settings.default_queue
    done = echo.delay("done")
    run_pending(app)
    waiting = [echo.delay(str(n)) for n in range(2)]
    stale = Message(id=done.id, task="admin.echo", args=["done"], attempt=1).encode()
    app.transport.publish(stale, queue)  # a duplicate of a finished task's message
    app.transport.publish(b"not json", queue)
    report = purge_queue(app, queue)
    assert (report.deleted, report.cancelled) == (4, 2)
    assert app.transport.queue_size(queue) == 0
    for handle in waiting:
        assert (handle.status, handle.record().reason) == (TaskStatus.CANCELLED, "purged")
    assert done.status is TaskStatus.SUCCESS
    assert purge_queue(app, f"{queue}-never-used").deleted == 0


def test_purge_deletes_a_compressed_message_without_expanding_it(app: Decortask) -> None:
    queue = app.settings.default_queue
    handle = echo.delay("kept")
    conn = app.transport.connection()
    try:
        channel = conn.default_channel
        app.transport.queue(queue)(channel).declare()
        kombu.Producer(channel).publish(
            b"plain", routing_key=queue, content_type="application/json", content_encoding="binary",
            serializer=None, headers={"compression": "application/x-gzip"},
        )  # fmt: skip
    finally:
        conn.release()
    report = purge_queue(app, queue)
    assert (report.deleted, report.cancelled, report.unreadable) == (2, 1, 0)
    assert handle.status is TaskStatus.CANCELLED
    assert app.transport.queue_size(queue) == 0


# -- CLI -------------------------------------------------------------------------------------------------------


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decortask", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def test_cli_retry(tmp_path: Path, unique: str) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    queue = f"cli-{unique}"
    app = Decortask(url, url, default_queue=queue)
    env = {"DECORTASK_BROKER_URL": url, "DECORTASK_STORE_URL": url, "DECORTASK_DEFAULT_QUEUE": queue}
    try:
        runs.clear()
        handle = fails_first.delay(9)
        run_pending(app)
        first = _cli(env, "retry", handle.id)
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == f"task {handle.id} (admin.fails_first): attempt 2 queued on {queue}"
        second = _cli(env, "retry", handle.id)
        assert second.returncode == 1
        [line] = _error_lines(second)
        assert "already PENDING" in line and "once it has ended" in line
        unknown = _cli(env, "retry", "no-such-task")
        assert unknown.returncode == 1
        [line] = _error_lines(unknown)
        assert "no task no-such-task" in line
        running = record_in(app, TaskStatus.RUNNING)
        busy = _cli(env, "retry", running.id)
        assert busy.returncode == 1
        [line] = _error_lines(busy)
        assert "is RUNNING" in line and "cancel it first" in line
        run_pending(app, now=FAR_FUTURE)
        assert handle.get(timeout=1) == "9"
        assert [attempt for task_id, attempt, _ in runs if task_id == handle.id] == [1, 2]
    finally:
        app.close()
        reset_default_app()
