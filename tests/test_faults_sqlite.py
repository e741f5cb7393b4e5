"""Killed workers on the embedded SQLite broker: the message comes back after its lease, nothing is lost.

F-05 and F-06 of SCENARIOS.md on `sqlite://`; the delivery-contract issue extends them to Redis and RabbitMQ.
Executions are counted in an effects file, not guessed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import behaviour_tasks as bt
import pytest
from workers import WorkerProcess, poll_until

from decortask import Decortask, TaskStatus
from decortask.app import reset_default_app

LEASE = 3.0
LEASE_TIMEOUT = 1.5


@dataclass
class Setup:
    app: Decortask
    url: str
    queue: str
    effects: Path
    tmp: Path

    def worker(self, name: str) -> WorkerProcess:
        env = {
            "DECORTASK_SQLITE_LEASE": str(LEASE),
            "DECORTASK_LEASE_TIMEOUT": str(LEASE_TIMEOUT),
            "DECORTASK_TEST_EFFECTS": str(self.effects),
        }
        return WorkerProcess(self.url, self.url, self.queue, self.tmp / f"{name}.log", concurrency=2, env=env)

    def effects_of(self, task_id: str) -> list[tuple[int, str]]:
        return [
            (int(e["attempt"]), str(e["event"]))
            for e in bt.read_effects(str(self.effects))
            if e["id"] == task_id
        ]  # type: ignore[call-overload]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    url = f"sqlite:///{tmp_path}/decortask.db"
    queue = f"faults-{uuid.uuid4().hex[:8]}"
    app = Decortask(url, url, default_queue=queue, sqlite_lease=LEASE, lease_timeout=LEASE_TIMEOUT)
    yield Setup(app, url, queue, tmp_path / "effects.jsonl", tmp_path)
    app.close()
    reset_default_app()


def _kill_while_running(setup: Setup, task_id: str) -> None:
    first = setup.worker("first").start()
    try:
        poll_until(lambda: setup.app.store.get(task_id).status is TaskStatus.RUNNING, 20, "the task to start")  # type: ignore[union-attr]
    except AssertionError:
        first.kill()
        raise AssertionError(first.log_tail()) from None
    first.kill()


def test_f05_sigkill_requeues_opted_in(setup: Setup) -> None:
    handle = bt.sleep_opted_in.delay(2.0)
    _kill_while_running(setup, handle.id)
    assert handle.status is TaskStatus.RUNNING  # the dead worker's record, until someone takes the message
    with setup.worker("second") as second:
        result = poll_until(lambda: handle.done() and handle.result(), 30, "the redelivered task to finish")
        assert result.status is TaskStatus.SUCCESS, second.log_tail()
    assert result.attempts == 2
    assert setup.effects_of(handle.id) == [(1, "started"), (2, "started"), (2, "finished")]
    assert setup.app.transport.queue_size(setup.queue) == 0


def test_f06_sigkill_not_opted_in_ends_interrupted_and_never_runs_again(setup: Setup) -> None:
    handle = bt.sleep_not_opted_in.delay(2.0)
    _kill_while_running(setup, handle.id)
    with setup.worker("second"):
        result = poll_until(
            lambda: handle.done() and handle.result(), 30, "the task to be marked interrupted"
        )
        assert (result.status, result.reason) == (TaskStatus.INTERRUPTED, "worker_lost")
    assert setup.effects_of(handle.id) == [(1, "started")]
    assert setup.app.transport.queue_size(setup.queue) == 0
