"""One rule for an interrupted attempt, whichever path finds it (DESIGN §2; issue 11 item 1).

Four paths find an attempt that will not finish: the redelivery of its message after its worker was
SIGKILLed, a shutdown past the grace period (SIGTERM), the reaper (a dead worker's RUNNING record that no
redelivery resolves), and a process-pool child that died. Each test drives one path with two tasks at once,
one opted in to `requeue_on_interrupt` and one not, and checks the same outcome on every path:

- opted in: attempt 2 runs exactly once and the task ends SUCCESS; a lost worker's delivery counts toward
  `max_deliveries` (2 deliveries), an orderly shutdown's does not (1);
- not opted in: INTERRUPTED with the path's reason, the same error text, kept for its `persist` lifetime,
  and never run again, not even after every lease has lapsed.

The real brokers run real `decortask worker` processes (the rigs of test_faults.py and test_pools.py); the
memory broker has no separate processes, so its paths are driven in this process: a claim by a worker id
that never beats stands for the dead worker, `run_pending()` for the next worker, a `Worker` on a thread for
the shutdown. The process pool needs a store its children share, so that path has no memory:// variant.
"""

from __future__ import annotations

import ast
import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import behaviour_tasks as bt
import pytest
from behaviour_tasks import record_effect
from conftest import BROKERS
from workers import LEASE, REPO, Rig, WorkerProcess, poll_until, short_lease_rig

from decortask import Decortask, Task, TaskContext, TaskHandle, TaskStatus, recovery, task
from decortask.app import reset_default_app
from decortask.store.base import TaskRecord, claim_step
from decortask.testing import run_pending
from decortask.worker import Worker

#: The broker paths: the memory one driven in this process, the others on real worker processes.
PATHS = ("memory", *BROKERS)
#: A worker id that never sends a heartbeat: the worker that took up an attempt and died.
DEAD_WORKER = "dead-worker"
#: Seconds a task of the real-process tests runs: longer than any grace period here.
TASK_SECONDS = 4.0
#: Seconds a task runs that a SIGKILL interrupts (its attempt 2 runs in this process).
KILLED_TASK_SECONDS = 2.0

#: Holds attempt 1 of the memory tasks on their worker thread until the test lets it go.
RELEASE = threading.Event()


def _held(ctx: TaskContext) -> int:
    record_effect(ctx, "started")
    if ctx.attempt == 1:
        RELEASE.wait(30)  # the interrupted attempt: its worker never writes its outcome
    else:
        record_effect(ctx, "finished")
    return ctx.attempt


@task(name="interrupted.held_opted_in", requeue_on_interrupt=True)
def held_opted_in(ctx: TaskContext) -> int:
    return _held(ctx)


@task(name="interrupted.held_not_opted_in")
def held_not_opted_in(ctx: TaskContext) -> int:
    return _held(ctx)


@task(name="interrupted.transient", persist=False)
def transient(ctx: TaskContext) -> int:
    return _held(ctx)


@pytest.fixture(params=PATHS)
def rig(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    # Tasks that run in this process record their executions too (always in the rig's effects file).
    monkeypatch.setenv("DECORTASK_TEST_EFFECTS", str(tmp_path / "effects.jsonl"))
    if request.param != "memory":
        request.applymarker(pytest.mark.broker)
        with short_lease_rig(request.param, tmp_path, "interrupted") as real:
            yield real
        return
    with _memory_rig(tmp_path) as memory:
        yield memory


@pytest.fixture(params=BROKERS)
def pools(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    request.applymarker(pytest.mark.broker)
    with short_lease_rig(request.param, tmp_path, "interrupted-pool", ("--pool", "processes")) as real:
        yield real


@contextlib.contextmanager
def _memory_rig(tmp: Path) -> Iterator[Rig]:
    queue = f"interrupted-{uuid.uuid4().hex[:10]}"
    app = Decortask("memory://", "memory://", default_queue=queue, lease_timeout=1.5)
    RELEASE.clear()
    try:
        yield Rig("memory", app, "memory://", "memory://", queue, tmp / "effects.jsonl", tmp)
    finally:
        RELEASE.set()  # let held attempt-1 threads end
        app.close()
        reset_default_app()


@dataclass
class Pair:
    """An opted-in and a plain task interrupted together, and the executions each had until then."""

    opted_in: TaskHandle[Any]
    plain: TaskHandle[Any]
    seen: dict[str, list[tuple[int, str]]]

    @classmethod
    def sent(cls, rig: Rig, opted_in: Task[Any, Any], plain: Task[Any, Any], *args: Any) -> Pair:
        return cls(rig.app.send_task(opted_in, args, {}), rig.app.send_task(plain, args, {}), {})

    @property
    def handles(self) -> tuple[TaskHandle[Any], TaskHandle[Any]]:
        return self.opted_in, self.plain

    def interrupted_now(self, rig: Rig) -> None:
        """Remember what ran before the interruption: what follows is checked against it."""
        self.seen = {h.id: rig.effects_of(h) for h in self.handles}

    def runs_since(self, rig: Rig, handle: TaskHandle[Any]) -> list[tuple[int, str]]:
        before = self.seen[handle.id]
        effects = rig.effects_of(handle)
        assert effects[: len(before)] == before
        return effects[len(before) :]


def _wait_running(
    rig: Rig, handles: tuple[TaskHandle[Any], ...], worker: WorkerProcess | None = None
) -> None:
    """Wait until attempt 1 of every task runs its code (claimed, and its start recorded)."""

    def started() -> bool:
        return all(h.status is TaskStatus.RUNNING and (1, "started") in rig.effects_of(h) for h in handles)

    try:
        poll_until(started, 30, "the tasks to start")
    except AssertionError:
        if worker is None:
            raise
        worker.kill()
        raise AssertionError(worker.log_tail()) from None


def _final(handle: TaskHandle[Any], timeout: float = 60) -> Any:
    return poll_until(lambda: handle.done() and handle.result(), timeout, f"{handle.id} to finish")


def _taken_up_by_a_worker_that_died(app: Decortask, handle: TaskHandle[Any]) -> None:
    """Claim attempt 1 as a worker's claim does (one delivery counted), for a worker that never beats."""
    step = claim_step(handle.id, 1, app.settings.max_deliveries, owner=DEAD_WORKER, started_at=time.time())
    assert app.store.apply_step(step) is not None


def _interrupted_error(reason: str) -> str:
    return (
        f"attempt 1 was interrupted ({reason}) and the task is not opted in to requeue_on_interrupt; re-run it "
        "with `decortask retry ID`"
    )


def assert_settled_by_the_one_rule(rig: Rig, pair: Pair, reason: str) -> None:
    """The outcome every path gives (see the module docstring)."""
    result = _final(pair.opted_in)
    record = pair.opted_in.record()
    deliveries = 1 if reason == "shutdown" else 2
    assert (result.status, record.attempt, record.deliveries) == (TaskStatus.SUCCESS, 2, deliveries)
    assert pair.runs_since(rig, pair.opted_in) == [(2, "started"), (2, "finished")]

    plain = pair.plain.record()
    assert (plain.status, plain.reason, plain.attempt, plain.deliveries) == (
        TaskStatus.INTERRUPTED,
        reason,
        1,
        1,
    )
    assert plain.error_message == _interrupted_error(reason)
    assert _kept_for(plain) == rig.app.settings.history_ttl
    assert pair.runs_since(rig, pair.plain) == []


def _kept_for(record: TaskRecord) -> float:
    assert record.finished_at is not None and record.expires_at is not None
    return round(record.expires_at - record.finished_at, 3)


def _nothing_more_runs(rig: Rig, pair: Pair) -> None:
    """Every lease lapses and every schedule entry falls due, with a worker consuming: nothing runs again."""
    if rig.kind == "memory":
        run_pending(rig.app, now=time.time() + 3600)
    else:
        with rig.worker("after"):
            time.sleep(LEASE + 1)
    assert pair.runs_since(rig, pair.plain) == []
    assert pair.runs_since(rig, pair.opted_in) == [(2, "started"), (2, "finished")]


# -- the four paths -------------------------------------------------------------------------------------------


def test_a_redelivery_after_sigkill_settles_by_the_one_rule(rig: Rig) -> None:
    if rig.kind == "memory":
        pair = Pair.sent(rig, held_opted_in, held_not_opted_in)
        for handle in pair.handles:  # their messages stay queued: the broker hands them out again
            _taken_up_by_a_worker_that_died(rig.app, handle)
        pair.interrupted_now(rig)
        run_pending(rig.app)
    else:
        pair = Pair.sent(rig, bt.sleep_opted_in, bt.sleep_not_opted_in, KILLED_TASK_SECONDS)
        first = rig.worker("w1").start()
        _wait_running(rig, pair.handles, first)
        first.kill()
        pair.interrupted_now(rig)
        _receive_the_redeliveries(rig, pair)
    assert_settled_by_the_one_rule(rig, pair, "worker_lost")
    # Attempt 2 ran at once, where the redelivery was received: the schedule entry that would have
    # published it had that worker died too is gone.
    assert rig.app.store.count_schedule([rig.queue]) == 0
    _nothing_more_runs(rig, pair)


def _receive_the_redeliveries(rig: Rig, pair: Pair) -> None:
    """The next worker receives the killed worker's messages once its heartbeat is stale: the receipt rules
    of a `Worker` in this process, fed by a consuming session, with no reaper.

    A worker process runs its reaper before it consumes, and every second after: it settles the attempts
    before the broker's redelivery reaches it (the reaper's test below). Redis hands an unacked message out
    again after the visibility timeout, shortened here from an hour to the embedded broker's lease.
    """
    owner = pair.plain.record().owner
    assert owner is not None
    app = Decortask(
        rig.broker_url,
        rig.store_url,
        default_queue=rig.queue,
        sqlite_lease=LEASE,
        lease_timeout=rig.app.settings.lease_timeout,
        redis_visibility_timeout=LEASE,
    )
    worker = Worker(app, concurrency=1, worker_id="next-worker")
    poll_until(lambda: not worker.owner_alive(owner), 30, f"the heartbeat of {owner} to go stale")
    session = app.transport.open_consumer(worker.queues, prefetch=1)
    try:
        deadline = time.monotonic() + 60
        while not all(h.done() for h in pair.handles):
            assert time.monotonic() < deadline, "the redeliveries did not settle the tasks"
            for delivery in session.drain(0.2):
                worker.settle(session, delivery, worker.process(delivery))
    finally:
        session.close()
        app.close()


def test_a_shutdown_past_the_grace_period_settles_by_the_one_rule(rig: Rig) -> None:
    if rig.kind == "memory":
        pair = Pair.sent(rig, held_opted_in, held_not_opted_in)
        worker = Worker(rig.app, concurrency=2, grace=0.0)
        thread = threading.Thread(target=worker.run)
        thread.start()
        _wait_running(rig, pair.handles)
        pair.interrupted_now(rig)
        worker.stop()
        thread.join(30)
        assert not thread.is_alive()
        _shutdown_left_the_next_attempt_queued(rig, pair)
        run_pending(rig.app)
    else:
        pair = Pair.sent(rig, bt.sleep_opted_in, bt.sleep_not_opted_in, TASK_SECONDS)
        first = rig.worker("w1", "--grace", "1").start()
        _wait_running(rig, pair.handles, first)
        pair.interrupted_now(rig)
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.log_tail()
        _shutdown_left_the_next_attempt_queued(rig, pair)
        with rig.worker("w2"):
            _final(pair.opted_in)
    assert_settled_by_the_one_rule(rig, pair, "shutdown")
    _nothing_more_runs(rig, pair)


def _shutdown_left_the_next_attempt_queued(rig: Rig, pair: Pair) -> None:
    record = pair.opted_in.record()
    assert (record.status, record.attempt, record.deliveries) == (TaskStatus.PENDING, 1, 0)
    assert rig.app.transport.queue_size(rig.queue) == 1  # attempt 2, published before the worker exited


def test_the_reaper_settles_by_the_one_rule(rig: Rig) -> None:
    if rig.kind == "memory":
        pair = Pair.sent(rig, held_opted_in, held_not_opted_in)
        assert rig.app.transport.purge(rig.queue) == 2  # no broker holds the messages any more
        for handle in pair.handles:
            _taken_up_by_a_worker_that_died(rig.app, handle)
        pair.interrupted_now(rig)
        assert recovery.reap(rig.app, Worker(rig.app, worker_id="reaper").owner_alive) == 2
        run_pending(rig.app)
    else:
        pair = Pair.sent(rig, bt.sleep_opted_in, bt.sleep_not_opted_in, TASK_SECONDS)
        first = rig.worker("w1").start()
        _wait_running(rig, pair.handles, first)
        first.kill()
        pair.interrupted_now(rig)
        # A worker on another queue: the killed worker's messages can reach no one, only its reaper acts.
        with _worker_on_another_queue(rig):
            poll_until(
                lambda: all(h.status is not TaskStatus.RUNNING for h in pair.handles), 30, "the reaper"
            )
        assert pair.runs_since(rig, pair.opted_in) == []
        with rig.worker("w3"):  # now the redelivered attempt 1 (skipped) and attempt 2 (run) arrive
            _final(pair.opted_in)
    assert_settled_by_the_one_rule(rig, pair, "worker_lost")
    _nothing_more_runs(rig, pair)


@contextlib.contextmanager
def _worker_on_another_queue(rig: Rig) -> Iterator[WorkerProcess]:
    other = rig.queue + "-reaper"
    settings = {"DECORTASK_TEST_EFFECTS": str(rig.effects), **rig.worker_env}
    worker = WorkerProcess(rig.broker_url, rig.store_url, other, rig.tmp / "reaper.log", env=settings)
    try:
        with worker:
            yield worker
    finally:
        rig.app.transport.delete_queue(other)


def test_a_dead_process_pool_child_settles_by_the_one_rule(pools: Rig) -> None:
    pair = Pair.sent(pools, bt.kills_itself_once, bt.kills_itself_once_not_opted_in)
    with pools.worker("w1") as worker:
        _final(pair.opted_in)
        _final(pair.plain)
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
    # Each task's attempt 1 started in a child and ended it (the interruption): exactly once.
    pair.seen = {h.id: [(1, "started")] for h in pair.handles}
    assert_settled_by_the_one_rule(pools, pair, "worker_lost")
    _nothing_more_runs(pools, pair)


# -- what else the one rule decides, on the paths driven in this process -----------------------------------


def _memory_interruption(path: str, rig: Rig, handles: tuple[TaskHandle[Any], ...]) -> None:
    """Interrupt the (attempt 1 of the) tasks through `path` on the memory broker."""
    if path == "shutdown":
        worker = Worker(rig.app, concurrency=len(handles), grace=0.0)
        thread = threading.Thread(target=worker.run)
        thread.start()
        _wait_running(rig, handles)
        worker.stop()
        thread.join(30)
        return
    for handle in handles:
        _taken_up_by_a_worker_that_died(rig.app, handle)
    if path == "reaper":
        rig.app.transport.purge(rig.queue)
        recovery.reap(rig.app, lambda owner: False)
    run_pending(rig.app)


@pytest.fixture
def memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.setenv("DECORTASK_TEST_EFFECTS", str(tmp_path / "effects.jsonl"))
    with _memory_rig(tmp_path) as rig:
        yield rig


@pytest.mark.parametrize(
    ("path", "reason"), [("redelivery", "worker_lost"), ("reaper", "worker_lost"), ("shutdown", "shutdown")]
)
def test_an_interrupted_task_that_does_not_persist_is_kept_for_result_ttl(
    memory: Rig, path: str, reason: str
) -> None:
    handle = memory.app.send_task(transient, (), {})
    _memory_interruption(path, memory, (handle,))
    record = handle.record()
    assert (record.status, record.reason) == (TaskStatus.INTERRUPTED, reason)
    assert _kept_for(record) == memory.app.settings.result_ttl


@pytest.mark.parametrize("path", ["redelivery", "reaper"])
def test_a_task_cancelled_before_its_worker_died_ends_cancelled_and_is_not_requeued(
    memory: Rig, path: str
) -> None:
    handle = memory.app.send_task(held_opted_in, (), {})
    _taken_up_by_a_worker_that_died(memory.app, handle)
    handle.cancel()
    assert handle.status is TaskStatus.RUNNING  # its worker was to stop it, and died first
    if path == "reaper":
        memory.app.transport.purge(memory.queue)
        recovery.reap(memory.app, lambda owner: False)
    run_pending(memory.app, now=time.time() + 3600)
    record = handle.record()
    assert (record.status, record.reason, record.attempt) == (TaskStatus.CANCELLED, "cancelled", 1)
    assert record.error_message == "cancelled; its worker stopped (worker_lost) before the task did"
    assert memory.effects_of(handle) == []


def test_the_opt_in_is_read_by_one_decision_function_only() -> None:
    readers = set()
    for path in sorted((REPO / "decortask").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, ast.Attribute) and node.attr == "requeue_on_interrupt":
                        readers.add(f"{path.relative_to(REPO)}:{function.name}")
    assert readers == {"decortask/recovery.py:decide_interrupted"}
