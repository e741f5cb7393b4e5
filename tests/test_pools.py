"""The process pool (`decortask worker --pool processes`) on real worker processes and every broker.

Tasks here run in spawned children of the worker. A child that dies must not take the worker with it
(F-08, F-09); time limits and cancellation terminate the child; shutdown leaves no child behind.
Executions are counted in an effects file whose `pid` field names the child that ran each one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import behaviour_tasks as bt
import pytest
from conftest import BROKERS
from workers import LEASE, REPO, Rig, WorkerProcess, poll_until, short_lease_rig

from decortask import Decortask, TaskHandle, TaskStatus, task
from decortask.app import reset_default_app
from decortask.errors import ConfigurationError
from decortask.executor import Executor, Settle
from decortask.pools import ThreadPool
from decortask.procchild import frame, unframe
from decortask.worker import Worker

Pools = Rig


@pytest.fixture(params=BROKERS)
def pools(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with short_lease_rig(request.param, tmp_path, "pools", ("--pool", "processes")) as rig:
        yield rig


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _children(pid: int, pool_only: bool = True) -> set[int]:
    """The live children of `pid` (Linux /proc): pool children only, or also multiprocessing's helpers."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                spawned = b"spawn_main" in (entry / "cmdline").read_bytes()
                if int(fields[1]) == pid and fields[0] != "Z" and (spawned or not pool_only):
                    found.add(int(entry.name))
    return found


def _started(pools: Pools, worker: WorkerProcess) -> set[int]:
    """Wait until the worker's two pool children are up; returns the pids of all its children."""
    try:
        poll_until(lambda: len(_children(worker.pid)) == 2, 30, "children")
        return _children(worker.pid, pool_only=False)
    except AssertionError:
        worker.kill()
        raise AssertionError(worker.log_tail()) from None


def _wait_running(handle: TaskHandle[object], worker: WorkerProcess) -> None:
    try:
        poll_until(lambda: handle.status is TaskStatus.RUNNING, 30, f"{handle.id} to start")
    except AssertionError:
        worker.kill()
        raise AssertionError(worker.log_tail()) from None


def _final(handle: TaskHandle[object], timeout: float = 30):  # type: ignore[no-untyped-def]
    return poll_until(lambda: handle.done() and handle.result(), timeout, f"{handle.id} to finish")


def _assert_gone(pids: set[int], timeout: float = 10) -> None:
    poll_until(lambda: not any(_alive(pid) for pid in pids), timeout, f"processes {pids} to exit")


def test_ipc_frames_carry_a_json_header_and_raw_bytes() -> None:
    body = b'\x00\xff{"not": json'
    assert unframe(frame({"op": "run", "queue": "q"}, body)) == ({"op": "run", "queue": "q"}, body)
    assert unframe(frame({"op": "ready"})) == ({"op": "ready"}, b"")


RELEASE = threading.Event()


@task(name="test_pools.waits_for_release")
def waits_for_release() -> str:
    RELEASE.wait(30)  # ignores should_stop(): shutdown must settle it without its help
    return "returned late"


def test_thread_pool_settles_an_attempt_interrupted_at_shutdown_through_its_future_once() -> None:
    """The thread pool keeps the `Pool` contract the process pool keeps.

    Past the grace, the interrupted attempt's future holds its Outcome (ACK, `shutdown`), which the worker
    settles like any other; what the task's thread returns later is dropped, and the thread lives on.
    """
    app = Decortask("memory://", "memory://", default_queue="q-threads-interrupt")
    executor = Executor(app, "pool-test")
    pool = ThreadPool(app, executor, 1)
    session = app.transport.open_consumer(["q-threads-interrupt"], prefetch=1, consume=False)
    RELEASE.clear()
    try:
        handle = waits_for_release.delay()
        delivery = session.get("q-threads-interrupt")
        assert delivery is not None
        pool.start()
        future = pool.submit(delivery)
        poll_until(lambda: pool.running(), 10, "the attempt to start")
        pool.request_stop_all()
        pool.interrupt_running()
        outcome = future.result(timeout=0)
        assert (outcome.settle, outcome.status, outcome.reason) == (
            Settle.ACK,
            TaskStatus.INTERRUPTED,
            "shutdown",
        )
        assert handle.status is TaskStatus.INTERRUPTED
        RELEASE.set()
        poll_until(lambda: not executor.settling, 10, "the task's thread to finish")
        assert future.result(timeout=0) is outcome
        assert handle.record().status is TaskStatus.INTERRUPTED
        # The thread outlived the dropped result: it runs the next delivery.
        after = waits_for_release.delay()
        delivery = session.get("q-threads-interrupt")
        assert delivery is not None
        assert pool.submit(delivery).result(timeout=10).status is TaskStatus.SUCCESS
        assert after.get(timeout=1) == "returned late"
    finally:
        RELEASE.set()
        pool.shutdown()
        session.close()
        app.close()
        reset_default_app()


def test_a_memory_store_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    app = Decortask("memory://", "memory://", default_queue="q-memory")
    try:
        with pytest.raises(ConfigurationError, match="memory:// store lives inside one process"):
            Worker(app, pool="processes")
    finally:
        app.close()
        reset_default_app()
    command = [
        sys.executable, "-m", "decortask", "worker", "-A", "tests.behaviour_tasks", "--pool", "processes",
        "--broker-url", f"sqlite:///{tmp_path}/b.db", "--store-url", "memory://",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--pool processes" in errors[0], result.stderr


def test_process_pool_runs_200_tasks_and_async_ones(pools: Pools) -> None:
    handles = [bt.add.delay(n, n) for n in range(200)]
    async_handle = bt.async_add.delay(40, 2)
    with pools.worker("w1") as worker:
        children = _started(pools, worker)
        assert [h.get(timeout=120) for h in handles] == [2 * n for n in range(200)]
        assert async_handle.get(timeout=30) == 42
        ran_in = bt.pid.delay().get(timeout=30)
        assert ran_in in _children(worker.pid)
    assert {h.status for h in handles} == {TaskStatus.SUCCESS}
    assert [line.message for line in async_handle.logs] == ["added asynchronously"]
    _assert_gone(children)


def test_f08_a_task_that_kills_its_own_process_opted_in_runs_again(pools: Pools) -> None:
    handle = bt.kills_itself_once.delay()
    with pools.worker("w1") as worker:
        result = _final(handle)
        assert (result.status, result.value, result.attempts) == (TaskStatus.SUCCESS, 2, 2), worker.log_tail()
        assert worker.process is not None and worker.process.poll() is None
        assert bt.add.delay(2, 3).get(timeout=30) == 5
    assert pools.effects_of(handle) == [(1, "started"), (2, "started"), (2, "finished")]


def test_f08_a_task_that_kills_its_own_process_not_opted_in_ends_interrupted(pools: Pools) -> None:
    handle = bt.kills_itself_once_not_opted_in.delay()
    with pools.worker("w1") as worker:
        result = _final(handle)
        assert (result.status, result.reason) == (TaskStatus.INTERRUPTED, "worker_lost"), worker.log_tail()
        assert worker.process is not None and worker.process.poll() is None
        assert bt.add.delay(2, 3).get(timeout=30) == 5
        time.sleep(LEASE + 1)  # no redelivery may run it again
    assert pools.effects_of(handle) == [(1, "started")]
    assert handle.status is TaskStatus.INTERRUPTED


def test_f09_a_task_that_always_kills_its_process_is_dead_lettered_process_pool(pools: Pools) -> None:
    handle = bt.kills_its_worker.delay()
    with pools.worker("w1") as worker:
        result = _final(handle, timeout=60)
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
        assert bt.add.delay(1, 1).get(timeout=30) == 2
    assert (result.status, result.reason) == (TaskStatus.FAILED, "max_deliveries")
    assert pools.effects_of(handle) == [(1, "started"), (2, "started"), (3, "started")]
    assert pools.app.transport.queue_size(pools.queue + ".dlq") == 1


def test_cancelling_a_cooperative_task_reaches_its_child(pools: Pools) -> None:
    handle = bt.cooperative.delay(30.0)
    with pools.worker("w1") as worker:
        _wait_running(handle, worker)
        assert handle.cancel() is True
        result = _final(handle)
    assert (result.status, result.reason) == (TaskStatus.CANCELLED, "cancelled")
    assert "by force" not in (result.error_message or "")
    assert pools.effects_of(handle) == [(1, "started"), (1, "stopped")]


def test_cancelling_a_task_that_ignores_it_terminates_its_child(pools: Pools) -> None:
    handle = bt.stubborn.delay(60.0)
    with pools.worker("w1", env={"DECORTASK_CANCEL_GRACE": "1"}) as worker:
        _wait_running(handle, worker)
        asked = time.monotonic()
        handle.cancel()
        result = _final(handle)
        assert time.monotonic() - asked < 15
        assert (result.status, result.reason) == (TaskStatus.CANCELLED, "cancelled")
        assert "by force" in (result.error_message or "")
        killed = pools.pids_of(handle)
        _assert_gone(killed)  # terminated, and a replacement serves the next task
        assert bt.add.delay(2, 2).get(timeout=30) == 4
        poll_until(lambda: len(_children(worker.pid) - killed) == 2, 30, "a replacement child")
    assert pools.effects_of(handle) == [(1, "started")]


def test_time_limit_terminates_the_child_and_fails_with_reason_timeout(pools: Pools) -> None:
    handle = bt.over_time_limit.delay()
    with pools.worker("w1", env={"DECORTASK_TIMEOUT_GRACE": "0.5"}) as worker:
        result = _final(handle, timeout=60)
        assert bt.add.delay(2, 2).get(timeout=30) == 4, worker.log_tail()
    assert (result.status, result.reason, result.attempts) == (TaskStatus.FAILED, "timeout", 2)
    assert result.error_type == "decortask.errors.TimeLimitExceeded"
    assert "stopped by force" in (result.error_message or "")
    assert pools.effects_of(handle) == [(1, "started"), (2, "started")]


def test_time_limit_turns_should_stop_true_in_the_child_first(pools: Pools) -> None:
    handle = bt.stops_at_time_limit.delay()
    with pools.worker("w1"):
        result = _final(handle)
    assert (result.status, result.reason) == (TaskStatus.FAILED, "timeout")
    assert "stopped by force" not in (result.error_message or "")
    assert pools.effects_of(handle) == [(1, "started"), (1, "stopped")]


def test_f01_sigterm_lets_a_running_task_finish_process_pool(pools: Pools) -> None:
    handle = bt.sleep_opted_in.delay(3.0)
    worker = pools.worker("w1", "--grace", "10").start()
    children = _started(pools, worker)
    _wait_running(handle, worker)
    worker.signal(signal.SIGTERM)  # the whole process group, children included, as an orchestrator does
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log_tail()
    result = handle.result()
    assert (result.status, result.attempts, result.value) == (TaskStatus.SUCCESS, 1, "slept")
    assert pools.effects_of(handle) == [(1, "started"), (1, "finished")]
    assert pools.pids_of(handle) <= children
    _assert_gone(children, timeout=1)
    assert pools.app.transport.queue_size(pools.queue) == 0


def test_f02_past_grace_an_opted_in_task_goes_back_process_pool(pools: Pools) -> None:
    handle = bt.sleep_opted_in.delay(6.0)
    worker = pools.worker("w1", "--grace", "1").start()
    children = _started(pools, worker)
    _wait_running(handle, worker)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log_tail()
    _assert_gone(children, timeout=1)
    record = handle.record()
    assert (record.status, record.attempt) == (TaskStatus.PENDING, 1)  # attempt 2 is the one queued
    assert pools.app.transport.queue_size(pools.queue) == 1
    with pools.worker("w2"):
        result = _final(handle)
    assert (result.status, result.attempts) == (TaskStatus.SUCCESS, 2)
    assert pools.effects_of(handle) == [(1, "started"), (2, "started"), (2, "finished")]


def test_f03_past_grace_a_task_not_opted_in_ends_interrupted_process_pool(pools: Pools) -> None:
    handle = bt.sleep_not_opted_in.delay(6.0)
    worker = pools.worker("w1", "--grace", "1").start()
    children = _started(pools, worker)
    _wait_running(handle, worker)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log_tail()
    _assert_gone(children, timeout=1)
    result = handle.result()
    assert (result.status, result.reason) == (TaskStatus.INTERRUPTED, "shutdown")
    assert pools.effects_of(handle) == [(1, "started")]


def test_sigkill_of_the_worker_takes_its_children_along_and_the_task_is_settled(pools: Pools) -> None:
    handle = bt.sleep_not_opted_in.delay(30.0)
    first = pools.worker("w1").start()
    children = _started(pools, first)
    _wait_running(handle, first)
    os.kill(first.pid, signal.SIGKILL)  # the parent only: its children must notice and exit
    first.wait(10)
    _assert_gone(children)
    with pools.worker("w2"):
        # The record names the dead child as owner; its heartbeat stopped with the parent.
        result = _final(handle, timeout=60)
    assert (result.status, result.reason) == (TaskStatus.INTERRUPTED, "worker_lost")
    assert pools.effects_of(handle) == [(1, "started")]


def test_shutdown_waits_for_a_must_complete_task_past_grace_process_pool(pools: Pools) -> None:
    handle = bt.must_complete_sleep.delay(3.0)
    worker = pools.worker("w1", "--grace", "0.5").start()
    children = _started(pools, worker)
    _wait_running(handle, worker)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log_tail()
    _assert_gone(children, timeout=1)
    assert (handle.status, handle.result().value) == (TaskStatus.SUCCESS, "slept")
    assert pools.effects_of(handle) == [(1, "started"), (1, "finished")]
