"""The outbox (issue 12, F-12): `.delay()` returns once the record is durable, a background publisher sends.

On RabbitMQ and Redis, `.delay()` writes the record and its outbox entry in one store write and hands the
message to this process's publisher; `confirm=True` waits for the broker as every call did before. A
producer killed before its publisher ran loses nothing: a worker's relay publishes the entry.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import behaviour_tasks as bt
import pytest
from conftest import (
    AMQP_URL,
    REDIS_URL,
    require_amqp,
    require_redis,
)
from outbox_helpers import FreezableLink, assert_relayed_exactly_once, free_port, task_of_killed_producer
from store_helpers import BACKENDS, fresh_store_url
from workers import REPO

from decortask import Decortask, TaskStatus
from decortask.app import reset_default_app
from decortask.errors import BrokerUnavailable
from decortask.store import TaskQuery, open_store
from decortask.store.base import TaskRecord
from decortask.store.outbox_state import OutboxEntry, OutboxStore
from decortask.testing import run_pending

pytestmark = pytest.mark.broker


def _broker(kind: str) -> str:
    if kind == "redis":
        require_redis()
        return REDIS_URL
    require_amqp()
    return AMQP_URL


@pytest.fixture
def queue() -> str:
    return f"outbox-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["redis", "amqp"])
def network_app(request: pytest.FixtureRequest, tmp_path: Path, queue: str) -> Iterator[Decortask]:
    """An app on a network broker (the outbox's) with a SQLite store, its queue deleted afterwards."""
    app = Decortask(_broker(request.param), f"sqlite:///{tmp_path}/store.db", default_queue=queue)
    try:
        yield app
    finally:
        app.close()
        _observer(app).transport.delete_queue(queue)
        reset_default_app()


def _observer(app: Decortask) -> Decortask:
    """Another app on the same broker and store: it looks at the queue without flushing `app`'s publisher."""
    return Decortask(app.settings.broker_url, app.settings.store_url, set_default=False)


def _outbox(app: Decortask) -> OutboxStore:
    store = app.store
    assert isinstance(store, OutboxStore)
    return store


# -- the store's outbox, on every backend ----------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_store_url(request, tmp_path, "outbox")


def _record(now: float, key: str | None = None) -> TaskRecord:
    return TaskRecord(
        id=uuid.uuid4().hex, name="t", queue="q", status=TaskStatus.PENDING, created_at=now, updated_at=now,
        idempotency_key=key,
    )  # fmt: skip


def test_a_record_and_its_outbox_entry_are_written_together_and_read_by_age(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, OutboxStore)
    now = time.time()
    records = [_record(now, key=f"k-{uuid.uuid4().hex}"), _record(now), _record(now)]
    entries = [OutboxEntry(r.id, "q", 3, True, f'{{"id":"{r.id}"}}', now + i) for i, r in enumerate(records)]
    assert [r.id for r in store.create_outboxed(records, entries)] == [r.id for r in records]

    due = store.outbox_due(now + 1.5, now + 1.5, 10)  # written up to 1.5 s after `now`, oldest first
    assert [item.entry for item in due] == entries[:2]
    assert all(item.waiting and not item.published for item in due)

    # Published entries are due after their own age: here, not before now + 100.
    store.mark_published([records[0].id, "unknown"], now + 50)
    assert [i.entry.task_id for i in store.outbox_due(now + 10, now + 49, 10)] == [r.id for r in records[1:]]
    later = store.outbox_due(now + 10, now + 50, 10)
    assert (
        later[-1].published and later[-1].entry.task_id == records[0].id and later[-1].entry.since == now + 50
    )
    assert later[-1].entry.body == entries[0].body and later[-1].entry.priority == 3

    # A task that left PENDING no longer waits; a deleted one is reported gone.
    store.transition(records[1].id, TaskStatus.RUNNING, expect=[TaskStatus.PENDING], attempt=1)
    store.delete(records[2].id)
    states = {i.entry.task_id: i for i in store.outbox_due(now + 100, now + 100, 10)}
    assert not states[records[1].id].waiting and states[records[1].id].status is TaskStatus.RUNNING
    assert states[records[2].id].status is None

    store.outbox_remove([r.id for r in records])
    store.mark_published([records[0].id], now)  # marking never brings a removed entry back
    assert store.outbox_due(now + 1000, now + 1000, 10) == []
    store.close()


def test_an_entry_added_for_a_published_retry_waits_until_that_attempt_starts(store_url: str) -> None:
    """`outbox_add` (the scheduler's): published at its `since`, replacing the task's older entry, and
    waiting while the record is PENDING one attempt before the message's."""
    store = open_store(store_url)
    assert isinstance(store, OutboxStore)
    now = time.time()
    record = _record(now)
    first = OutboxEntry(record.id, "q", 0, True, f'{{"id":"{record.id}","attempt":1}}', now)
    store.create_outboxed([record], [first])
    store.transition(record.id, TaskStatus.RUNNING, expect=[TaskStatus.PENDING], attempt=1)
    store.transition(record.id, TaskStatus.PENDING, expect=[TaskStatus.RUNNING])  # attempt 1 ended; 2 is next
    retry = OutboxEntry(record.id, "q", 2, True, f'{{"id":"{record.id}","attempt":2}}', now + 5)
    store.outbox_add([retry])

    assert store.outbox_due(now + 10, now + 4, 10) == []  # published at now + 5: not due before
    [item] = store.outbox_due(now + 10, now + 5, 10)
    assert (item.entry, item.published, item.waiting) == (retry, True, True)
    store.transition(record.id, TaskStatus.RUNNING, expect=[TaskStatus.PENDING], attempt=2)
    [item] = store.outbox_due(now + 10, now + 5, 10)
    assert not item.waiting  # attempt 2 started: the relay drops the entry
    store.outbox_remove([record.id])
    store.close()


def test_a_call_whose_idempotency_key_is_held_writes_no_entry(store_url: str) -> None:
    store = open_store(store_url)
    assert isinstance(store, OutboxStore)
    now = time.time()
    first, second = _record(now, key="same"), _record(now, key="same")
    store.create_outboxed([first], [OutboxEntry(first.id, "q", 0, True, "{}", now)])
    held = store.create_outboxed([second], [OutboxEntry(second.id, "q", 0, True, "{}", now)])
    assert held[0].id == first.id
    assert [i.entry.task_id for i in store.outbox_due(now + 1, now + 1, 10)] == [first.id]
    store.close()


# -- .delay() and the background publisher ------------------------------------------------------------------


def test_delay_returns_with_the_record_durable_before_the_publisher_sent_it(network_app: Decortask) -> None:
    app = Decortask(
        network_app.settings.broker_url, network_app.settings.store_url,
        default_queue=network_app.settings.default_queue, publisher_delay=1.0,
    )  # fmt: skip
    try:
        handle = bt.add.delay(1, 2)
        observer = _observer(app)
        assert handle.status is TaskStatus.PENDING
        assert observer.transport.queue_size(app.settings.default_queue) == 0  # not yet published
        unpublished = _outbox(app).outbox_due(time.time(), time.time(), 10)
        assert [(i.entry.task_id, i.published) for i in unpublished] == [(handle.id, False)]

        assert app.flush_published(10)
        assert observer.transport.queue_size(app.settings.default_queue) == 1
        marked = _outbox(app).outbox_due(time.time(), time.time(), 10)
        assert [(i.entry.task_id, i.published) for i in marked] == [(handle.id, True)]
        assert run_pending(app) == 1 and handle.get(timeout=5) == 3
    finally:
        app.close()


def test_many_delays_are_published_in_batches_and_each_runs_once(network_app: Decortask) -> None:
    handles = [bt.add.delay(i, i) for i in range(300)]
    handles += bt.add.map([(i, 1000) for i in range(50)])
    assert network_app.flush_published(30)
    assert _observer(network_app).transport.queue_size(network_app.settings.default_queue) == 350
    assert run_pending(network_app) == 350
    assert [h.get(timeout=5) for h in handles] == [2 * i for i in range(300)] + [i + 1000 for i in range(50)]


def test_run_pending_and_queue_size_see_what_this_process_handed_to_the_publisher(
    network_app: Decortask,
) -> None:
    slow = Decortask(
        network_app.settings.broker_url, network_app.settings.store_url,
        default_queue=network_app.settings.default_queue, publisher_delay=0.3,
    )  # fmt: skip
    try:
        bt.add.delay(2, 2)
        assert slow.transport.queue_size(slow.settings.default_queue) == 1  # flushed first
        handle = bt.add.delay(3, 3)
        assert run_pending(slow) == 2 and handle.get(timeout=5) == 6
    finally:
        slow.close()


def test_an_app_used_again_after_close_publishes_again(network_app: Decortask) -> None:
    first = bt.add.delay(1, 1)
    network_app.close()  # flushes the publisher and stops its thread
    second = bt.add.delay(2, 2)  # reopens what it needs and starts a new thread
    assert network_app.flush_published(10)
    assert _observer(network_app).transport.queue_size(network_app.settings.default_queue) == 2
    assert run_pending(network_app) == 2 and (first.get(timeout=5), second.get(timeout=5)) == (2, 4)


def test_a_broker_that_is_down_at_delay_leaves_the_record_for_the_relay_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = Decortask(
        f"redis://127.0.0.1:{free_port()}/0", f"sqlite:///{tmp_path}/store.db", publish_retries=0,
        default_queue="down",
    )  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="decortask.outbox"):
            handles = [bt.add.delay(i, i) for i in range(3)]
            assert not app.flush_published(1.5)
        assert [h.status for h in handles] == [TaskStatus.PENDING] * 3
        waiting = _outbox(app).outbox_due(time.time(), time.time(), 10)
        assert sorted(i.entry.task_id for i in waiting if not i.published) == sorted(h.id for h in handles)
        lines = [r for r in caplog.records if r.name == "decortask.outbox"]
        assert len(lines) == 1 and "relay" in lines[0].getMessage()
    finally:
        app.close()
        reset_default_app()


def test_a_process_that_exits_normally_flushes_its_publisher(tmp_path: Path, queue: str) -> None:
    require_redis()
    store = f"sqlite:///{tmp_path}/store.db"
    script = (
        "import behaviour_tasks as bt\n"
        "from decortask import Decortask\n"
        f"Decortask({REDIS_URL!r}, {store!r}, default_queue={queue!r}, publisher_delay=0.5)\n"
        "print(bt.add.delay(4, 5).id)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO / "tests", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    observer = Decortask(REDIS_URL, store, set_default=False)
    try:
        assert observer.transport.queue_size(queue) == 1
        record = observer.store.get(done.stdout.decode().strip())
        assert record is not None and record.status is TaskStatus.PENDING
    finally:
        observer.transport.delete_queue(queue)
        observer.close()


# -- confirm=True: the broker's word before returning (F-11, F-12) ---------------------------------------------


def test_with_confirm_a_broker_that_is_down_raises_and_leaves_no_record(tmp_path: Path) -> None:
    app = Decortask(
        f"amqp://guest:guest@127.0.0.1:{free_port()}//", f"sqlite:///{tmp_path}/store.db", publish_retries=0
    )
    try:
        with pytest.raises(BrokerUnavailable, match="cannot reach the broker"):
            bt.add.apply_async((1, 2), confirm=True)
        assert app.store.list_tasks(TaskQuery()) == []
    finally:
        app.close()
        reset_default_app()


def test_f12_confirm_true_fails_within_confirm_timeout(tmp_path: Path, queue: str) -> None:
    require_amqp()
    link = FreezableLink(5672)
    url = f"amqp://guest:guest@127.0.0.1:{link.port}//"
    app = Decortask(url, f"sqlite:///{tmp_path}/store.db", default_queue=queue, confirm_timeout=1)
    try:
        raised: list[BaseException] = []

        def call() -> None:
            # Producer connections are per thread: this one opens its connection before the freeze.
            warm_up = bt.add.apply_async((0, 0), confirm=True)
            app.store.delete(warm_up.id)
            link.freeze()
            try:
                bt.add.apply_async((1, 2), confirm=True)
            except BaseException as exc:
                raised.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        caller.join(timeout=30)  # far past confirm_timeout: the call must not block for ever
        assert not caller.is_alive(), "apply_async(confirm=True) blocked past its confirm_timeout"
        assert len(raised) == 1 and isinstance(raised[0], BrokerUnavailable)
        assert "did not confirm a publish within confirm_timeout=1 s" in str(raised[0])
        assert app.store.list_tasks(TaskQuery()) == []  # no record for a call that reported failure

        # The default call does not wait for the broker at all: it returns with its record durable.
        returned = threading.Event()
        threading.Thread(target=lambda: (bt.add.delay(5, 5), returned.set()), daemon=True).start()
        assert returned.wait(30)
    finally:
        link.close()
        app.close()
        Decortask(AMQP_URL, "memory://", set_default=False).transport.delete_queue(queue)
        reset_default_app()


# -- F-12: a producer SIGKILLed right after .delay() returned ----------------------------------------------------


PRODUCER = """
import os, sys, time
import behaviour_tasks as bt
from decortask import Decortask
Decortask(sys.argv[1], sys.argv[2], default_queue=sys.argv[3], publisher_delay=3600)
handle = bt.sleep_not_opted_in.delay(0.1)
print(handle.id, flush=True)
time.sleep(3600)
"""


@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_f12_producer_sigkilled_after_delay_loses_no_task(kind: str, tmp_path: Path, queue: str) -> None:
    broker, store = _broker(kind), f"sqlite:///{tmp_path}/store.db"
    task_id = task_of_killed_producer(PRODUCER, broker, store, queue)
    app = Decortask(broker, store, default_queue=queue)
    try:
        assert_relayed_exactly_once(app, broker, store, queue, task_id, tmp_path)
        assert app.store.count_tasks(TaskQuery(statuses=frozenset({TaskStatus.SUCCESS}))) == 1
    finally:
        app.transport.delete_queue(queue)
        app.close()
        reset_default_app()
