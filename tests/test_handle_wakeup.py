"""A waiting handle wakes when the outcome is written, and an idle embedded-broker consumer when a message is.

`TaskHandle.wait/get/aget` block in the store's `wait_for_outcome`/`await_outcome`: the memory store
notifies its waiters as it writes a terminal status, Redis PUBLISHes the task id from the transition script,
and SQLite has a watcher thread reading `PRAGMA data_version`. The tests check the mechanism, never a
timing: the waiters' recheck timer is set far beyond the test's deadline, so a wait that returns in time
was woken by a notice, and the store's counters say so.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import delete_redis_namespace
from kombu import Connection, Consumer, Exchange, Producer, Queue
from store_helpers import BACKENDS, first_read_done, fresh_store_url

from decortask import Decortask, sqlitewatch, task
from decortask.errors import WaitTimeout
from decortask.handle import TaskHandle
from decortask.states import TaskStatus
from decortask.store import TaskRecord, TaskStore, open_store, redis_wait, sqlite_wait
from decortask.store.outcome_waiters import OutcomeNotices
from decortask.testing import WorkerThread
from decortask.transports.sqlite import SQLiteTransport

#: The test's own deadline; the waiters' recheck timer is set far beyond it (see `notices`).
DEADLINE = 30.0


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_store_url(request, tmp_path, "dt-wake")


@pytest.fixture
def app(store_url: str) -> Iterator[Decortask]:
    built = Decortask(broker_url="memory://", store_url=store_url)
    yield built
    built.close()


@pytest.fixture
def writer(app: Decortask, store_url: str) -> Iterator[TaskStore]:
    """Where outcomes are written from: another store on the same data (the same one for memory://)."""
    if store_url == "memory://":
        yield app.store
        return
    other = open_store(store_url)
    yield other
    other.close()


@pytest.fixture
def notices(app: Decortask) -> Iterator[OutcomeNotices]:
    """The app store's waiters, with a recheck timer no wait in these tests can reach."""
    found: OutcomeNotices = app.store.outcome_notices  # type: ignore[attr-defined]
    before = found.recheck
    found.recheck = 10 * DEADLINE
    yield found
    found.recheck = before


def pending(app: Decortask) -> TaskHandle[Any]:
    now = time.time()
    record = TaskRecord(
        id=uuid.uuid4().hex, name="tests.wakeup", queue="wakeup", status=TaskStatus.PENDING, created_at=now,
        updated_at=now,
    )  # fmt: skip
    app.store.create(record)
    return TaskHandle(app, record.id, record.name)


def succeed(store: TaskStore, task_id: str, value: Any) -> None:
    store.transition(task_id, TaskStatus.RUNNING, expect=[TaskStatus.PENDING], attempt=1)
    store.transition(task_id, TaskStatus.SUCCESS, expect=[TaskStatus.RUNNING], result=value)


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting until {what}"
        time.sleep(0.002)


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def get_woken_by_outcome(
    app: Decortask, writer: TaskStore, handle: TaskHandle[Any], value: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """`handle.get()` in a thread; once its first read found the task unfinished, `writer` makes `value` its
    outcome. What the get returned ({"value": ...}) or raised ({"error": ...})."""
    read = first_read_done(app.store, monkeypatch)
    thread, box = in_thread(lambda: handle.get(timeout=DEADLINE))
    assert read.wait(DEADLINE)
    succeed(writer, handle.id, value)
    thread.join(DEADLINE)
    return box


def test_get_wakes_on_the_outcome_notice(
    app: Decortask, writer: TaskStore, notices: OutcomeNotices, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = pending(app)
    woken_before = notices.notified
    assert get_woken_by_outcome(app, writer, handle, 42, monkeypatch) == {"value": 42}
    assert notices.notified > woken_before  # woken by the notice ...
    assert notices.rechecked == 0  # ... never by the recheck timer
    assert notices.waiting() == []


def test_wait_timeout_raises_wait_timeout(app: Decortask) -> None:
    handle = pending(app)

    with pytest.raises(WaitTimeout, match=rf"task {handle.id} still PENDING after 0.2 s"):
        handle.wait(timeout=0.2)
    with pytest.raises(WaitTimeout):
        handle.get(timeout=0.0)
    with pytest.raises(WaitTimeout):
        asyncio.run(handle.aget(timeout=0.1))
    assert app.store.outcome_notices.waiting() == []  # type: ignore[attr-defined]


def test_an_outcome_written_between_subscribe_and_wait_is_not_missed(
    app: Decortask, writer: TaskStore, notices: OutcomeNotices, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = pending(app)
    read = app.store.get
    reads: list[TaskStatus] = []

    def read_then_finish(task_id: str) -> TaskRecord | None:
        # The wait reads a PENDING record after subscribing; the outcome lands before it blocks.
        record = read(task_id)
        if not reads:
            succeed(writer, task_id, "late")
        reads.append(record.status if record is not None else TaskStatus.PENDING)
        return record

    monkeypatch.setattr(app.store, "get", read_then_finish)
    thread, box = in_thread(lambda: handle.get(timeout=DEADLINE))
    thread.join(DEADLINE)

    assert box == {"value": "late"}
    assert reads[0] is TaskStatus.PENDING and reads[-1] is TaskStatus.SUCCESS
    assert notices.rechecked == 0


def test_aget_wakes_on_the_notice_without_blocking_the_event_loop(
    app: Decortask, writer: TaskStore, notices: OutcomeNotices, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = pending(app)
    read = first_read_done(app.store, monkeypatch)

    async def main() -> Any:
        waiting = asyncio.create_task(handle.aget(timeout=DEADLINE))
        # This coroutine runs only while aget leaves the loop free.
        deadline = time.monotonic() + DEADLINE
        while not read.is_set():
            assert time.monotonic() < deadline, "aget never read its record"
            await asyncio.sleep(0.002)
        await asyncio.to_thread(succeed, writer, handle.id, {"ok": True})
        return await waiting

    assert asyncio.run(main()) == {"ok": True}
    assert notices.notified >= 1
    assert notices.rechecked == 0


def test_a_deleted_record_ends_the_wait_with_task_not_found(app: Decortask) -> None:
    from decortask.errors import TaskNotFound

    handle = pending(app)
    app.store.delete(handle.id)
    with pytest.raises(TaskNotFound, match=handle.id):
        handle.wait(timeout=DEADLINE)


@pytest.mark.parametrize("store_url", ["sqlite", "redis"], indirect=True)
def test_a_listener_that_nobody_needed_exits_and_the_next_wait_starts_it_again(
    store_url: str,
    app: Decortask,
    writer: TaskStore,
    notices: OutcomeNotices,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_wait, "LINGER", 0.0)
    monkeypatch.setattr(sqlite_wait, "LINGER", 0.0)
    name = (
        store_url.rsplit("namespace=", 1)[-1] if "namespace=" in store_url else store_url.split("///", 1)[1]
    )

    def listening() -> bool:
        return any(name in thread.name for thread in threading.enumerate() if thread.is_alive())

    finished = pending(app)
    succeed(writer, finished.id, 1)
    assert finished.get(timeout=DEADLINE) == 1  # a wait starts the listener, even for a finished task
    assert listening()
    # Other tasks keep ending meanwhile (notices nobody here waits for): the listener exits all the same.
    stop = threading.Event()

    def others_finish() -> None:
        while not stop.is_set():
            succeed(writer, pending(app).id, 0)
            stop.wait(0.01)

    traffic, _ = in_thread(others_finish)
    try:
        until(lambda: not listening(), "the listener exits with nobody waiting")
    finally:
        stop.set()
        traffic.join(DEADLINE)

    handle = pending(app)
    assert get_woken_by_outcome(app, writer, handle, 2, monkeypatch) == {"value": 2}
    assert notices.rechecked == 0


# -- end to end: .delay(i).get() against a worker --------------------------------------------------------


@task(name="tests.wakeup.double")
def double(n: int) -> int:
    return 2 * n


@pytest.mark.parametrize("broker", ["sqlite", "redis"])
def test_delay_get_round_trips_are_woken_by_notices(
    broker: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if broker == "sqlite":
        broker_url = store_url = f"sqlite:///{tmp_path}/decortask.db"
    else:
        broker_url = request.getfixturevalue("redis_url")
        namespace = f"dt-wake-{uuid.uuid4().hex[:10]}"
        request.addfinalizer(lambda: delete_redis_namespace(broker_url, namespace))
        store_url = f"{broker_url}?namespace={namespace}"
    app = Decortask(broker_url, store_url, default_queue=f"wakeup-{uuid.uuid4().hex[:8]}")
    found: OutcomeNotices = app.store.outcome_notices  # type: ignore[attr-defined]
    found.recheck = 10 * DEADLINE
    try:
        with WorkerThread(app, concurrency=2):
            values = [double.apply_async(args=(n,), app=app).get(timeout=DEADLINE) for n in range(5)]
    finally:
        found.recheck = 1.0
        app.close()
    assert values == [0, 2, 4, 6, 8]
    assert found.rechecked == 0


# -- the embedded broker: an idle consumer wakes on a commit ---------------------------------------------


@pytest.mark.parametrize("kernel_notices", [True, False], ids=["inotify", "data_version-polling"])
def test_an_idle_sqlite_consumer_takes_a_new_message_without_sleeping_its_polling_interval(
    kernel_notices: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not kernel_notices:  # as on another OS, or past the per-user inotify limit
        monkeypatch.setattr(sqlitewatch, "_LIBC", None)
    path = str(tmp_path / "broker.db")
    queue = Queue("idle", Exchange(""), routing_key="idle")
    # A polling interval far beyond the test's deadline: only the commit wake-up can deliver in time.
    options = {"path": path, "polling_interval": 10 * DEADLINE}
    got: list[Any] = []
    with (
        Connection(transport=SQLiteTransport, transport_options=options) as consumer_conn,
        Connection(transport=SQLiteTransport, transport_options={"path": path}) as producer_conn,
    ):
        channel = consumer_conn.channel()
        queue(channel).declare()
        transport = consumer_conn.transport
        with Consumer(channel, queues=[queue], callbacks=[lambda body, m: (got.append(body), m.ack())]):
            thread, box = in_thread(lambda: consumer_conn.drain_events(timeout=DEADLINE))
            until(lambda: transport.waits_started > 0, "the consumer idles")
            Producer(producer_conn.channel(), exchange=Exchange("")).publish({"n": 1}, routing_key="idle")
            thread.join(DEADLINE)
    assert box == {"value": None}
    assert got == [{"n": 1}]
    assert transport.woken_by_commit >= 1
