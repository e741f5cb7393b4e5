"""The test helpers and the pytest plugin's fixtures, used here the way a project's own tests use them.

`decortask_app`, `decortask_eager` and `decortask_worker` come from the installed plugin (the `pytest11`
entry point), not from conftest.py. Pytester runs of user test files are in test_pytest_plugin.py.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import AMQP_URL, REDIS_URL, require_amqp, require_redis
from pytest_mock import MockerFixture
from workers import poll_until

from decortask import (
    ArgumentEncodingError,
    Decortask,
    DecortaskError,
    TaskContext,
    TaskFailed,
    TaskStatus,
    WaitTimeout,
    current_app,
    task,
)
from decortask.store import TaskQuery
from decortask.testing import WorkerThread, eager, isolated_app, run_pending

EXTRA_QUEUE = "tt-extra"
SQLITE = "sqlite:///{tmp_path}/decortask.db"


@task(name="tt.add")
def add(a: int, b: int) -> int:
    return a + b


@task(name="tt.kind_of")
def kind_of(value: Any) -> str:
    return type(value).__name__


@task(name="tt.thread_name")
def thread_name() -> str:
    return threading.current_thread().name


@task(name="tt.always_fails", retries=2, delay=3600)
def always_fails() -> None:
    raise ConnectionError("still down")


@task(name="tt.parent")
def parent(a: int) -> str:
    return add.delay(a, a).id


@task(name="tt.async_double")
async def async_double(a: int) -> int:
    return 2 * a


@task(name="tt.on_extra_queue", queue=EXTRA_QUEUE)
def on_extra_queue() -> str:
    return "extra"


@task(name="tt.with_context")
def with_context(ctx: TaskContext, a: int) -> int:
    return a + ctx.attempt


def fetch_rate(currency: str) -> float:
    raise ConnectionError("the real rate service is not reachable from tests")


@task(name="tt.convert", retries=3, delay=60)
def convert(amount: float, currency: str) -> float:
    return amount * fetch_rate(currency)


@task(name="tt.fails_once", retries=1, delay=0.2)
def fails_once(ctx: TaskContext) -> int:
    if ctx.attempt == 1:
        raise ConnectionError("first attempt fails")
    return ctx.attempt


def _task_count(app: Decortask) -> int:
    return app.store.count_tasks(TaskQuery())


# -- decortask_app and isolated_app --------------------------------------------------------------------------


def test_decortask_app_is_the_current_app_on_the_memory_broker(decortask_app: Decortask) -> None:
    assert current_app() is decortask_app
    assert (decortask_app.settings.broker_url, decortask_app.settings.store_url) == ("memory://", "memory://")
    assert decortask_app.settings.default_queue.startswith("test-")
    assert add.delay(1, 2).status is TaskStatus.PENDING
    assert decortask_app.transport.queue_size(decortask_app.settings.default_queue) == 1


def test_isolated_app_gives_back_the_previous_current_app() -> None:
    with isolated_app() as outer:
        with isolated_app() as inner:
            assert current_app() is inner and inner is not outer
        assert current_app() is outer


def test_isolated_app_empties_its_queues_on_the_memory_broker_before_and_after(unique: str) -> None:
    # Every app in the process shares memory://, and a task's own queue is shared by every app.
    queue = f"tt-left-{unique}"
    plain = Decortask("memory://", "memory://", default_queue=queue, set_default=False)
    add.apply_async(args=(1, 1), app=plain)
    on_extra_queue.apply_async(app=plain)
    assert (plain.transport.queue_size(queue), plain.transport.queue_size(EXTRA_QUEUE)) == (1, 1)
    with isolated_app(default_queue=queue) as app:
        assert (app.transport.queue_size(queue), app.transport.queue_size(EXTRA_QUEUE)) == (0, 0)
        add.delay(2, 2)
        on_extra_queue.delay()
    assert (plain.transport.queue_size(queue), plain.transport.queue_size(EXTRA_QUEUE)) == (0, 0)
    plain.close()


@pytest.mark.decortask(max_deliveries=2, default_queue="tt-{token}")
def test_marker_settings_configure_the_app(decortask_app: Decortask) -> None:
    assert decortask_app.settings.max_deliveries == 2
    queue = decortask_app.settings.default_queue
    assert queue.startswith("tt-") and "{token}" not in queue and len(queue) > len("tt-")


@pytest.mark.decortask(max_deliveries=2, result_ttl=10.0)
class TestMarkersMerge:
    @pytest.mark.decortask(max_deliveries=3)
    def test_the_closest_marker_wins_per_setting(self, decortask_app: Decortask) -> None:
        assert (decortask_app.settings.max_deliveries, decortask_app.settings.result_ttl) == (3, 10.0)


@pytest.mark.decortask(broker_url=SQLITE, store_url=SQLITE)
def test_tmp_path_in_a_marker_url_puts_the_app_in_the_tests_directory(
    decortask_app: Decortask, tmp_path: Path
) -> None:
    assert decortask_app.settings.broker_url == f"sqlite:///{tmp_path}/decortask.db"
    handle = add.delay(2, 2)
    assert (tmp_path / "decortask.db").exists()
    assert run_pending() == 1
    assert handle.get() == 4


# -- eager mode ----------------------------------------------------------------------------------------------


def test_eager_delay_returns_a_finished_handle(decortask_eager: Decortask) -> None:
    handle = add.delay(2, 3)
    assert handle.status is TaskStatus.SUCCESS
    assert handle.value() == 5
    assert decortask_eager.transport.queue_size(decortask_eager.settings.default_queue) == 0


def test_eager_arguments_go_through_json_like_in_production(decortask_eager: Decortask) -> None:
    assert kind_of.delay((1, 2)).value() == "list"


def test_eager_refuses_a_non_json_argument_at_the_call(decortask_eager: Decortask) -> None:
    with pytest.raises(ArgumentEncodingError, match=r"args\[0\] \(a set\)"):
        kind_of.delay({1, 2})
    assert _task_count(decortask_eager) == 0


def test_eager_runs_every_retry_skipping_the_delays(decortask_eager: Decortask) -> None:
    handle = always_fails.delay()
    assert handle.status is TaskStatus.FAILED
    assert handle.attempts == 3
    assert handle.result().error_type == "builtins.ConnectionError"


def test_eager_runs_a_countdown_task_at_once(decortask_eager: Decortask) -> None:
    assert add.apply_async(args=(1, 1), countdown=3600).value() == 2


def test_eager_keeps_expiry_honest_when_it_skips_time(decortask_eager: Decortask) -> None:
    handle = add.apply_async(args=(1, 1), countdown=3600, expires=60)
    assert handle.status is TaskStatus.CANCELLED
    assert handle.record().reason == "expired"


def test_eager_runs_tasks_sent_by_a_task_before_it_returns(decortask_eager: Decortask) -> None:
    child_id = parent.delay(21).value()
    assert decortask_eager.handle(child_id).value() == 42


def test_eager_runs_every_task_of_a_batch(decortask_eager: Decortask) -> None:
    handles = add.map([(1, 1), (2, 2), (3, 3)])
    assert [h.value() for h in handles] == [2, 4, 6]


def test_eager_runs_async_tasks(decortask_eager: Decortask) -> None:
    assert async_double.delay(4).value() == 8


def test_eager_with_propagate_raises_the_tasks_failure(decortask_app: Decortask) -> None:
    with eager(decortask_app, propagate=True), pytest.raises(TaskFailed, match="still down"):
        always_fails.delay()


def test_eager_mode_ends_with_its_block(decortask_app: Decortask) -> None:
    with eager(decortask_app):
        assert add.delay(1, 1).status is TaskStatus.SUCCESS
    assert add.delay(1, 1).status is TaskStatus.PENDING


# -- pytest-mock ---------------------------------------------------------------------------------------------


def test_patching_a_function_the_task_calls_is_seen_in_eager_mode(
    decortask_eager: Decortask, mocker: MockerFixture
) -> None:
    rate = mocker.patch(f"{__name__}.fetch_rate", side_effect=[ConnectionError("blip"), 1.5])
    handle = convert.delay(10.0, "EUR")
    assert handle.value() == 15.0
    assert handle.attempts == 2
    assert rate.call_count == 2


def test_a_patched_task_body_is_what_the_worker_runs(
    decortask_worker: WorkerThread, mocker: MockerFixture
) -> None:
    fake = mocker.patch.object(convert, "fn", return_value=99.0)
    handle = convert.delay(10.0, "EUR")
    decortask_worker.wait(handle)
    assert handle.value() == 99.0
    fake.assert_called_once_with(10.0, "EUR")


def test_a_patched_body_of_a_context_task_gets_the_context_too(
    decortask_worker: WorkerThread, mocker: MockerFixture
) -> None:
    fake = mocker.patch(f"{__name__}.with_context.fn", return_value=0)
    handle = with_context.delay(5)
    decortask_worker.wait(handle)
    assert handle.value() == 0
    ctx, a = fake.call_args.args
    assert isinstance(ctx, TaskContext) and ctx.task_id == handle.id and a == 5


def test_an_async_task_body_can_be_replaced_by_an_async_mock(
    decortask_eager: Decortask, mocker: MockerFixture
) -> None:
    fake = mocker.patch.object(async_double, "fn", new=mocker.AsyncMock(return_value=-1))
    assert async_double.delay(4).value() == -1
    fake.assert_awaited_once_with(4)


def test_a_spy_on_the_task_body_records_the_real_call(
    decortask_worker: WorkerThread, mocker: MockerFixture
) -> None:
    spy = mocker.spy(add, "fn")
    handle = add.delay(3, 4)
    decortask_worker.wait(handle)
    assert handle.value() == 7
    spy.assert_called_once_with(3, 4)


# -- decortask_worker ----------------------------------------------------------------------------------------


def test_the_worker_runs_tasks_in_a_background_thread(decortask_worker: WorkerThread) -> None:
    handles = [add.delay(n, n) for n in range(10)] + [thread_name.delay()]
    results = decortask_worker.wait(*handles)
    assert [r.value for r in results[:10]] == [2 * n for n in range(10)]
    assert results[-1].value != threading.current_thread().name


@pytest.mark.decortask_worker(queues=[EXTRA_QUEUE], concurrency=1)
def test_the_worker_marker_sets_its_queues(decortask_worker: WorkerThread) -> None:
    assert decortask_worker.queues == [EXTRA_QUEUE]
    [result] = decortask_worker.wait(on_extra_queue.delay())
    assert result.value == "extra"


@pytest.mark.decortask_worker(queues=[EXTRA_QUEUE])
def test_waiting_for_a_task_on_a_queue_nobody_consumes_names_it(
    decortask_worker: WorkerThread, decortask_app: Decortask
) -> None:
    handle = add.delay(1, 1)  # the app's default queue, which this worker does not consume
    with pytest.raises(WaitTimeout, match=rf"1 of 1 tasks not done .*tt\.add {handle.id} \(PENDING\)"):
        decortask_worker.wait(handle, timeout=0.2)


def test_a_worker_that_dies_reports_why(decortask_app: Decortask, tmp_path: Path) -> None:
    unreachable = Decortask(
        f"sqlite:///{tmp_path}/missing-dir/broker.db", "memory://", set_default=False, publish_retries=0
    )
    worker = WorkerThread(unreachable).start()
    poll_until(lambda: not worker.running, 30, "the worker to give up on its broker")
    with pytest.raises(DecortaskError, match="worker thread died: BrokerUnavailable"):
        worker.wait()
    with pytest.raises(DecortaskError, match="worker thread died"):
        worker.stop()


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.decortask(broker_url=SQLITE, store_url=SQLITE)),
        pytest.param(
            "redis", marks=[pytest.mark.broker, pytest.mark.decortask(broker_url=REDIS_URL, store_url=SQLITE)]
        ),
        pytest.param(
            "amqp", marks=[pytest.mark.broker, pytest.mark.decortask(broker_url=AMQP_URL, store_url=SQLITE)]
        ),
    ]
)
def broker_worker(request: pytest.FixtureRequest) -> WorkerThread:
    """`decortask_worker` on each real broker (the server is checked before the app is built)."""
    if request.param == "redis":
        require_redis()
    elif request.param == "amqp":
        require_amqp()
    worker: WorkerThread = request.getfixturevalue("decortask_worker")
    return worker


def test_the_worker_fixture_runs_tasks_and_retries_on_every_broker(broker_worker: WorkerThread) -> None:
    scheme = broker_worker.app.settings.broker_url.split(":", 1)[0]
    assert scheme in ("sqlite", "redis", "amqp")
    added, retried = add.delay(20, 22), fails_once.delay()
    results = broker_worker.wait(added, retried)
    assert [r.value for r in results] == [42, 2]
    assert [r.attempts for r in results] == [1, 2]
