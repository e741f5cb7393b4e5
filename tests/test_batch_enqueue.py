"""Batch enqueue (`task.map`, `task.apply_many`): `.delay()`'s guarantees for many calls in one go.

Each call is validated like `.delay()` before anything is written; records are written before the batch is
published; idempotency keys count per call; a failed publish leaves no record without a message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_apps import KINDS, BrokerApp, close_app, open_app

from decortask import BrokerUnavailable, Decortask, PayloadTooLargeError, TaskStatus, task
from decortask.store import TaskQuery
from decortask.testing import run_pending
from decortask.transports.confirms import confirm_tracker


@task(name="batch.add")
def add(a: int, b: int = 0) -> int:
    return a + b


@task(name="batch.echo")
def echo(text: str) -> str:
    return text


@pytest.fixture(params=KINDS)
def broker(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[BrokerApp]:
    setup = open_app(request.param, tmp_path, unique)
    setup.app.set_default()
    yield setup
    close_app(setup)


def _records(app: Decortask) -> int:
    return app.store.count_tasks(TaskQuery())


def test_map_enqueues_one_task_per_item_and_each_runs(broker: BrokerApp) -> None:
    handles = add.map([(1, 2), (3, 4), 5])
    assert broker.app.transport.queue_size(broker.queue) == 3
    assert [h.record().status for h in handles] == [TaskStatus.PENDING] * 3
    assert run_pending(broker.app, [broker.queue]) == 3
    assert [h.get(timeout=5) for h in handles] == [3, 7, 5]


def test_apply_many_returns_handles_in_call_order_with_per_call_arguments(broker: BrokerApp) -> None:
    handles = add.apply_many([add.call(i, b=10 * i) for i in range(20)], tags={"batch": "yes"})
    records = [h.record() for h in handles]
    assert [(r.args, r.kwargs) for r in records] == [([i], {"b": 10 * i}) for i in range(20)]
    assert all(r.tags == {"batch": "yes"} for r in records)
    run_pending(broker.app, [broker.queue])
    assert [h.get(timeout=5) for h in handles] == [11 * i for i in range(20)]


def test_a_call_with_wrong_arguments_fails_the_batch_before_anything_is_written(broker: BrokerApp) -> None:
    calls = [add.call(1), add.call(2), add.call()]  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"item 2 of the batch: batch\.add\(\)"):
        add.apply_many(calls)
    assert _records(broker.app) == 0
    assert broker.app.transport.queue_size(broker.queue) == 0


def test_a_call_over_the_size_limit_fails_the_batch_before_anything_is_written(tmp_path: Path) -> None:
    app = Decortask(
        "memory://", "memory://", default_queue=f"q-{uuid.uuid4().hex[:8]}", max_payload_bytes=1024
    )
    with pytest.raises(PayloadTooLargeError):
        echo.apply_many([echo.call("small"), echo.call("x" * 2000)], app=app)
    assert _records(app) == 0
    assert app.transport.queue_size(app.settings.default_queue) == 0
    app.close()


def test_a_call_whose_key_is_held_gets_the_holder_and_publishes_nothing(broker: BrokerApp) -> None:
    holder = add.apply_async(args=(1,), idempotency_key="order-1")
    handles = add.apply_many(
        [
            add.call(2).keyed("order-1"),
            add.call(3).keyed("order-2"),
            add.call(4).keyed("order-2"),
            add.call(5),
        ]
    )
    assert handles[0].id == holder.id
    assert handles[2].id == handles[1].id  # the key was taken earlier in the same batch
    assert _records(broker.app) == 3
    assert broker.app.transport.queue_size(broker.queue) == 3  # holder, order-2, and the unkeyed call
    run_pending(broker.app, [broker.queue])
    assert [h.get(timeout=5) for h in handles] == [1, 3, 3, 5]


def test_a_delayed_batch_is_scheduled_in_the_store_and_not_published(broker: BrokerApp) -> None:
    handles = add.apply_many([add.call(i) for i in range(4)], countdown=3600)
    assert {h.record().status for h in handles} == {TaskStatus.SCHEDULED}
    assert broker.app.store.count_schedule([broker.queue]) == 4
    assert broker.app.transport.queue_size(broker.queue) == 0


def test_an_empty_batch_does_nothing(broker: BrokerApp) -> None:
    assert add.apply_many([]) == []
    assert add.map([]) == []
    assert _records(broker.app) == 0


def test_with_confirm_a_broker_that_is_down_raises_and_leaves_no_record(tmp_path: Path) -> None:
    app = Decortask("amqp://guest:guest@127.0.0.1:1//", f"sqlite:///{tmp_path}/store.db", publish_retries=0)
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1"):
        add.apply_many([add.call(i) for i in range(5)], app=app, confirm=True)
    assert _records(app) == 0
    app.close()


def test_with_confirm_a_publish_failing_midway_deletes_every_record_and_what_was_sent_still_runs(
    broker: BrokerApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = broker.app.transport
    real_publish_many = transport.publish_many

    def half_then_fail(items: list[tuple[bytes, str, int, None]], *, persistent: bool = True) -> None:
        items = list(items)
        real_publish_many(items[:2], persistent=persistent)
        raise BrokerUnavailable("the broker went away after two messages")

    monkeypatch.setattr(transport, "publish_many", half_then_fail)
    with pytest.raises(BrokerUnavailable):
        add.apply_many([add.call(i) for i in range(5)], confirm=True)
    monkeypatch.undo()
    assert _records(broker.app) == 0  # no PENDING record waits for a message that was never sent
    # The two messages the broker took are not lost: the worker records and runs them on receipt.
    assert run_pending(broker.app, [broker.queue]) == 2
    done = broker.app.store.list_tasks(TaskQuery(statuses=frozenset({TaskStatus.SUCCESS})))
    assert sorted(r.result for r in done) == [0, 1]


def test_on_rabbitmq_with_confirm_the_whole_batch_is_confirmed_before_apply_many_returns(
    tmp_path: Path, unique: str
) -> None:
    setup = open_app("amqp", tmp_path, unique)
    try:
        add.apply_many([add.call(i) for i in range(200)], app=setup.app, confirm=True)
        _conn, producer, _declared = setup.app.transport._producer()
        confirms = confirm_tracker(producer.channel)
        assert confirms.published >= 200
        assert confirms.confirmed == confirms.published
        assert setup.app.transport.queue_size(setup.queue) == 200
    finally:
        close_app(setup)
