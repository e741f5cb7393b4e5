"""A claim whose commit landed but whose reply was lost (a Redis connection reset after the script ran).

`Executor._write` retries the claim after the `StoreError`, and the retry fails its compare-and-set against
the claim the first try already made. The worker must recognise that claim as its own and run the task,
not park it as "running elsewhere" (on itself) and let it end `worker_lost`. With group commit one lost
reply hits every claim of the batch, so this is not a one-task corner.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import postgres_test_store

from decortask import Decortask, TaskStatus, task
from decortask.errors import StoreError
from decortask.executor import Executor, Settle
from decortask.message import Message
from decortask.store.base import TaskRecord
from decortask.store.postgres import PostgresStore
from decortask.store.redis import RedisStore
from decortask.store.sqlite import SQLiteStore
from decortask.store.writer import TransitionStep


@task(name="lost_reply.noop")
def noop() -> str:
    return "done"


@task(name="lost_reply.requeued", requeue_on_interrupt=True)
def requeued() -> str:
    return "done again"


class LosesFirstReply:
    """Mixin: the first batch that claims a task commits, then its caller sees a store error as if the
    reply was lost."""

    lose = 1

    def transition_many(self, steps: Sequence[TransitionStep]) -> list[TaskRecord | Exception | None]:
        outcomes: list[TaskRecord | Exception | None] = super().transition_many(steps)  # type: ignore[misc]
        claimed = any(isinstance(o, TaskRecord) and o.status is TaskStatus.RUNNING for o in outcomes)
        if self.lose and claimed:
            self.lose -= 1
            raise StoreError("connection reset by peer (the reply was lost after the write)")
        return outcomes


class LossySQLiteStore(LosesFirstReply, SQLiteStore):
    pass


class LossyRedisStore(LosesFirstReply, RedisStore):
    pass


class LossyPostgresStore(LosesFirstReply, PostgresStore):
    pass


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Decortask]:
    app = Decortask(broker_url="memory://", store_url=f"sqlite:///{tmp_path / 'store.db'}")
    namespace = ""
    store: Any
    if request.param == "sqlite":
        store = LossySQLiteStore(app.settings.store_url)
    elif request.param == "postgres":
        store = LossyPostgresStore(postgres_test_store(request))
    else:
        base: str = request.getfixturevalue("redis_url")
        namespace = f"dt-lost-{request.getfixturevalue('unique')}"
        store = LossyRedisStore(f"{base}?namespace={namespace}")
    app._store = store
    yield app
    if namespace:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    app.close()


def create(app: Decortask, name: str, **fields: Any) -> TaskRecord:
    now = time.time()
    record = TaskRecord(
        id=f"t-{name}", name=name, queue="q", status=TaskStatus.PENDING, created_at=now, updated_at=now
    )
    for field, value in fields.items():
        setattr(record, field, value)
    return app.store.create(record)


def test_a_claim_whose_reply_was_lost_is_still_run_by_the_worker_that_made_it(app: Decortask) -> None:
    record = create(app, "lost_reply.noop")
    executor = Executor(app, "w1", owner_alive=lambda owner: True)

    outcome = executor.execute(Message(id=record.id, task=record.name, args=[], kwargs={}, attempt=1), "q")

    assert (outcome.settle, outcome.status, outcome.ran) == (Settle.ACK, TaskStatus.SUCCESS, True)
    done = app.store.get(record.id)
    assert done is not None and done.result == "done" and done.deliveries == 1
    assert app.store.count_schedule() == 0  # nothing parked as "running elsewhere"


def test_a_lost_reply_on_the_claim_of_a_requeued_attempt_still_runs_it(app: Decortask) -> None:
    # The owner died mid-task (its heartbeat is gone): the receipt rules claim the next attempt (`_start`).
    record = create(
        app,
        "lost_reply.requeued",
        status=TaskStatus.RUNNING,
        attempt=1,
        owner="dead-worker",
        started_at=time.time() - 60,
    )
    executor = Executor(app, "w1", owner_alive=lambda owner: owner == "w1")

    outcome = executor.execute(Message(id=record.id, task=record.name, args=[], kwargs={}, attempt=1), "q")

    assert (outcome.status, outcome.ran) == (TaskStatus.SUCCESS, True)
    done = app.store.get(record.id)
    assert done is not None and done.attempt == 2 and done.result == "done again"


def test_a_claim_that_another_worker_won_is_not_taken_for_a_lost_reply(app: Decortask) -> None:
    record = create(
        app, "lost_reply.noop", status=TaskStatus.RUNNING, attempt=1, owner="w2", started_at=time.time()
    )
    app.store.lose = 0  # type: ignore[attr-defined]
    executor = Executor(app, "w1", owner_alive=lambda owner: True)

    outcome = executor.execute(Message(id=record.id, task=record.name, args=[], kwargs={}, attempt=1), "q")

    assert outcome.ran is False and outcome.reason == "running_elsewhere"
    assert app.store.get(record.id).owner == "w2"  # type: ignore[union-attr]
