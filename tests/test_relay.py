"""The outbox relay (issue 12, F-12, F-13): publishes what no producer confirmed, republishes what a broker lost.

Passes run in-process at a chosen `now` (`Relay.tick(now)`), so a test skips `relay_after` and
`republish_after` instead of sleeping through them; the brokers and stores are real.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import behaviour_tasks as bt
import pytest
from conftest import REDIS_URL, require_redis
from outbox_helpers import OwnRedis

from decortask import Decortask, TaskStatus
from decortask.app import reset_default_app
from decortask.periodic import PeriodicScheduler
from decortask.relay import LEASE, Relay
from decortask.scheduler import BATCH, CLAIM_LEASE, Scheduler
from decortask.store import TaskQuery
from decortask.store.outbox_state import OutboxStore
from decortask.testing import run_pending

pytestmark = pytest.mark.broker


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.jsonl"
    monkeypatch.setenv("DECORTASK_TEST_EFFECTS", str(path))
    return path


def _runs(effects: Path, task_id: str) -> list[str]:
    return [str(row["event"]) for row in bt.read_effects(str(effects)) if row["id"] == task_id]


def _entries(app: Decortask, now: float) -> list[str]:
    store = app.store
    assert isinstance(store, OutboxStore)
    return [item.entry.task_id for item in store.outbox_due(now, now, 1000)]


def test_f13_redis_restart_without_persistence_republishes(
    own_redis: OwnRedis, tmp_path: Path, effects: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = f"f13-{uuid.uuid4().hex[:8]}"
    app = Decortask(own_redis.url, f"sqlite:///{tmp_path}/store.db", default_queue=queue)
    try:
        handles = [bt.sleep_not_opted_in.delay(0) for _ in range(3)]
        assert app.flush_published(10)
        assert app.transport.queue_size(queue) == 3
        own_redis.restart()  # nothing saved: the three messages are gone, the records still PENDING
        assert app.transport.queue_size(queue) == 0

        relay = Relay(app, "relay-test")
        # Within republish_after nothing is touched: the messages may just be waiting their turn.
        assert relay.tick(time.time() + 1) is not None
        assert app.transport.queue_size(queue) == 0
        with caplog.at_level(logging.WARNING, logger="decortask.relay"):
            done = relay.tick(time.time() + app.settings.republish_after + 1)
        assert done is not None and done.republished == 3
        warnings = [r.getMessage() for r in caplog.records if r.name == "decortask.relay"]
        assert len(warnings) == 1 and f"republished 3 PENDING tasks of queue {queue}" in warnings[0]

        assert run_pending(app) == 3
        assert all(h.status is TaskStatus.SUCCESS for h in handles)
        assert all(_runs(effects, h.id) == ["started", "finished"] for h in handles)  # each ran once
        # Consumed: the next pass drops their entries, and republishes nothing.
        later = relay.tick(time.time() + 2 * app.settings.republish_after + 2)
        assert later is not None and later.removed == 3 and later.republished == 0
        assert _entries(app, time.time() + 10 * app.settings.republish_after) == []
    finally:
        app.close()
        reset_default_app()


def test_a_backlog_still_in_its_queue_is_not_republished(tmp_path: Path) -> None:
    require_redis()
    queue = f"backlog-{uuid.uuid4().hex[:8]}"
    app = Decortask(REDIS_URL, f"sqlite:///{tmp_path}/store.db", default_queue=queue)
    try:
        [bt.add.delay(i, i) for i in range(5)]
        assert app.flush_published(10)
        done = Relay(app, "relay-test").tick(time.time() + app.settings.republish_after + 1)
        assert done is not None and (done.kept, done.republished) == (5, 0)
        assert app.transport.queue_size(queue) == 5  # not doubled
    finally:
        app.transport.delete_queue(queue)
        app.close()
        reset_default_app()


def test_the_relay_publishes_what_no_publisher_confirmed_once_relay_after_passed(
    own_redis: OwnRedis, tmp_path: Path, effects: Path
) -> None:
    queue = f"relay-{uuid.uuid4().hex[:8]}"
    app = Decortask(own_redis.url, f"sqlite:///{tmp_path}/store.db", default_queue=queue, publish_retries=0)
    try:
        own_redis.stop()
        handles = [bt.sleep_not_opted_in.delay(0) for _ in range(4)]  # returns: the records are durable
        assert not app.flush_published(1)
        own_redis.start()
        relay = Relay(app, "relay-test")
        early = relay.tick(time.time())  # before relay_after: the producer's publisher may still send them
        assert early is not None and early.published == 0
        done = relay.tick(time.time() + app.settings.relay_after + 1)
        assert done is not None and done.published == 4
        app.flush_published(10)  # the producer's own publisher may send copies too: harmless
        assert run_pending(app) >= 4
        assert all(h.status is TaskStatus.SUCCESS for h in handles)
        assert all(_runs(effects, h.id) == ["started", "finished"] for h in handles)  # each ran once
        assert app.store.count_tasks(TaskQuery()) == 4
    finally:
        app.close()
        reset_default_app()


def test_one_relay_at_a_time_holds_the_lease_and_hands_it_over_on_close(tmp_path: Path) -> None:
    require_redis()
    app = Decortask(REDIS_URL, f"sqlite:///{tmp_path}/store.db", set_default=False)
    try:
        first, second = Relay(app, "worker-1"), Relay(app, "worker-2")
        assert first.tick() is not None
        assert second.tick() is None  # the first one leads
        first.close()
        assert second.tick() is not None
        store = app.store
        assert hasattr(store, "lease_owner") and store.lease_owner(LEASE, time.time()) == "worker-2"
    finally:
        app.close()


def test_no_relay_runs_on_an_embedded_broker(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/decortask.db"
    app = Decortask(url, url, set_default=False)
    try:
        assert Relay(app, "worker-1").tick() is None  # producers there publish inline: nothing to relay
        store = app.store
        assert hasattr(store, "lease_owner") and store.lease_owner(LEASE, time.time()) is None
    finally:
        app.close()


@pytest.mark.parametrize("kind", ["countdown", "retry"])
def test_f13_a_message_the_scheduler_published_is_republished_once_the_broker_lost_it(
    own_redis: OwnRedis, tmp_path: Path, effects: Path, kind: str
) -> None:
    """Delayed work (a countdown, a retry's next attempt) is published by a worker's scheduler, not by
    `.delay()`: the relay watches those messages too, so a broker that loses one does not leave its task
    PENDING for ever."""
    queue = f"f13-scheduled-{uuid.uuid4().hex[:8]}"
    app = Decortask(own_redis.url, f"sqlite:///{tmp_path}/store.db", default_queue=queue)
    try:
        if kind == "countdown":
            handle = bt.sleep_not_opted_in.apply_async(args=(0,), countdown=1)
            runs, attempts = ["started", "finished"], 1
        else:
            handle = bt.fails_first_counted.delay()  # attempt 1 fails; attempt 2 waits 3 s in the schedule
            assert app.flush_published(10)
            assert run_pending(app) == 1 and handle.status is TaskStatus.RETRYING
            runs, attempts = ["started", "started"], 2
        record = app.store.get(handle.id)
        assert record is not None and record.scheduled_for is not None
        # The real clock past the due time: the message's eta too, so a worker runs it when it arrives.
        time.sleep(max(0.0, record.scheduled_for - time.time()) + 0.05)
        later = time.time()
        assert Scheduler(app, "scheduler-test").tick(later) == 1  # published: the record is PENDING
        assert handle.status is TaskStatus.PENDING and app.transport.queue_size(queue) == 1
        own_redis.restart()  # nothing saved: the message is gone, the record still PENDING
        assert app.transport.queue_size(queue) == 0

        done = Relay(app, "relay-test").tick(later + app.settings.republish_after + 1)
        assert done is not None and done.republished == 1
        assert run_pending(app) == 1
        assert handle.status is TaskStatus.SUCCESS and handle.result().attempts == attempts
        assert _runs(effects, handle.id) == runs  # once more, and only once
    finally:
        app.close()
        reset_default_app()


def test_f13_a_periodic_run_the_broker_lost_is_republished(own_redis: OwnRedis, tmp_path: Path) -> None:
    queue = f"f13-periodic-{uuid.uuid4().hex[:8]}"
    schedules = {"f13-every-minute": {"task": "bt.add", "every": 60, "args": [20, 22]}}
    app = Decortask(own_redis.url, f"sqlite:///{tmp_path}/store.db", default_queue=queue, schedules=schedules)
    try:
        leader = PeriodicScheduler(app, "leader")
        start = time.time()
        assert leader.tick(start) == 0  # first seen: the next slot is the first one run
        assert leader.tick(start + 61) == 1
        [record] = app.store.list_tasks(TaskQuery())
        assert record.status is TaskStatus.PENDING and app.transport.queue_size(queue) == 1
        own_redis.restart()  # nothing saved: the run's message is gone
        assert app.transport.queue_size(queue) == 0

        done = Relay(app, "relay-test").tick(time.time() + app.settings.republish_after + 1)
        assert done is not None and done.republished == 1
        assert run_pending(app) == 1
        assert app.handle(record.id).get(timeout=1) == 42
    finally:
        app.close()
        reset_default_app()


def test_a_scheduler_killed_between_claim_and_publish_leaves_the_entry_to_the_next_after_its_claim(
    tmp_path: Path, effects: Path
) -> None:
    """The other half of the scheduler's F-13 gap: a scheduler that claimed a due entry and died before
    publishing it delays the task by the claim's lease, and loses nothing."""
    require_redis()
    queue = f"claimed-{uuid.uuid4().hex[:8]}"
    app = Decortask(REDIS_URL, f"sqlite:///{tmp_path}/store.db", default_queue=queue)
    try:
        handle = bt.sleep_not_opted_in.apply_async(args=(0,), countdown=1)
        record = app.store.get(handle.id)
        assert record is not None and record.scheduled_for is not None
        time.sleep(max(0.0, record.scheduled_for - time.time()) + 0.05)  # due, on the real clock too
        now = time.time()
        # The dead scheduler's whole life: it claimed the entry, then was SIGKILLed.
        assert len(app.store.claim_due(now, BATCH, "dead-scheduler", CLAIM_LEASE)) == 1
        survivor = Scheduler(app, "survivor")
        assert survivor.tick(now + CLAIM_LEASE - 1) == 0  # still claimed: nobody publishes a copy
        assert handle.status is TaskStatus.SCHEDULED
        assert survivor.tick(now + CLAIM_LEASE + 1) == 1  # the claim lapsed: published once
        assert run_pending(app) == 1
        assert handle.status is TaskStatus.SUCCESS and _runs(effects, handle.id) == ["started", "finished"]
    finally:
        app.transport.delete_queue(queue)
        app.close()
        reset_default_app()
