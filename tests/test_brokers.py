"""The core path on every real broker: tasks enqueued here run in a `decortask worker` subprocess.

Parametrised over the embedded SQLite broker, Redis and RabbitMQ, and the first two with a PostgreSQL store. A missing server skips locally and fails
under CI=true. One worker per broker serves every test in this module.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import behaviour_tasks as bt
import pytest
from conftest import broker_urls, postgres_test_store
from workers import WorkerProcess, poll_until

from decortask import Decortask, TaskStatus
from decortask.app import reset_default_app
from decortask.store import TaskQuery

pytestmark = pytest.mark.broker


@dataclass
class BrokerSetup:
    name: str
    app: Decortask
    worker: WorkerProcess


@pytest.fixture(scope="module", params=["sqlite", "redis", "amqp", "sqlite+postgres", "redis+postgres"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSetup]:
    """A worker on each broker with its usual store, and on two of them with a PostgreSQL store ("+postgres")."""
    token = uuid.uuid4().hex[:10]
    kind, _, store_kind = request.param.partition("+")
    tmp = tmp_path_factory.mktemp(f"broker-{kind}")
    broker_url, store_url = broker_urls(kind, tmp, token)
    if store_kind == "postgres":
        store_url = postgres_test_store(request)
    queue = f"behaviour-{token}"
    app = Decortask(broker_url, store_url, default_queue=queue)
    worker = WorkerProcess(broker_url, store_url, queue, tmp / "worker.log", concurrency=8).start()
    yield BrokerSetup(request.param, app, worker)
    code = worker.stop()
    try:
        assert code == 0, f"worker exited {code}:\n{worker.log_tail()}"
    finally:
        for name in (queue, queue + ".dlq"):
            app.transport.delete_queue(name)
        app.close()
        reset_default_app()


def _wait_terminal(setup: BrokerSetup, ids: list[str], timeout: float) -> None:
    store = setup.app.store

    def all_done() -> bool:
        return all(record is not None and record.status.terminal for record in map(store.get, ids))

    try:
        poll_until(all_done, timeout, f"{len(ids)} tasks to finish on {setup.name}", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker log:\n{setup.worker.log_tail()}") from None


def test_a_thousand_tasks_all_succeed_with_the_right_results(broker: BrokerSetup) -> None:
    handles = [bt.add.delay(n, n) for n in range(1000)]
    _wait_terminal(broker, [h.id for h in handles], timeout=180)
    results = {h.id: broker.app.store.get(h.id) for h in handles}
    assert all(r is not None and r.status is TaskStatus.SUCCESS for r in results.values())
    assert [h.get(timeout=1) for h in handles] == [2 * n for n in range(1000)]
    assert (
        broker.app.store.count_tasks(TaskQuery(name="bt.add", statuses=frozenset({TaskStatus.SUCCESS})))
        == 1000
    )


def test_fails_twice_then_succeeds_after_backoff_gaps(broker: BrokerSetup) -> None:
    handle = bt.flaky.delay()
    assert handle.get(timeout=30) == 3
    assert handle.attempts == 3
    starts = {line.extra["attempt"]: line.ts for line in handle.logs if line.message == "attempt started"}
    assert sorted(starts) == [1, 2, 3]
    # delay 0.3 s, backoff 2: the second retry waits at least 0.6 s.
    assert starts[2] - starts[1] >= 0.3
    assert starts[3] - starts[2] >= 0.6


def test_always_failing_task_ends_failed_with_its_error(broker: BrokerSetup) -> None:
    handle = bt.always_fails.delay()
    result = handle.wait(timeout=30)
    assert (result.status, result.attempts) == (TaskStatus.FAILED, 2)
    assert result.error_type == "builtins.RuntimeError"
    assert result.error_message == "this task always fails"
    assert result.traceback is not None and "RuntimeError: this task always fails" in result.traceback


def test_countdown_and_eta_are_honoured(broker: BrokerSetup) -> None:
    sent = time.time()
    by_countdown = bt.started_at.apply_async(countdown=1.5)
    by_eta = bt.started_at.apply_async(eta=datetime.now(timezone.utc) + timedelta(seconds=2))
    assert by_countdown.status is TaskStatus.SCHEDULED
    assert by_countdown.get(timeout=30) >= sent + 1.5
    assert by_eta.get(timeout=30) >= sent + 2.0


def test_logs_progress_and_result_are_readable_from_the_producer(broker: BrokerSetup) -> None:
    handle = bt.report.delay("hello")
    assert handle.get(timeout=30) == "HELLO"
    assert [(line.message, line.extra) for line in handle.logs] == [
        ("received", {"length": 5}),
        ("finished", {}),
    ]
    assert handle.progress == 0.75
    assert handle.record().progress_message == "almost there"
