"""Broker and store outages of SCENARIOS.md (F-10, F-11, F-12, F-14) on real processes and real servers.

The F-10 and F-12 tests stop, restart or throttle the RabbitMQ and Redis servers on loopback (127.0.0.1
only). Each one puts the server back in a `finally` and waits until it answers again, so later tests find it
healthy. They are marked `slow`: no other test may run beside them (CI runs them in a second, serial pytest
pass); deselect them with `-m "not slow"`. The F-11 and F-14 tests leave the servers alone.

The invariant: every task reaches exactly one terminal state, nothing is lost silently, the worker keeps
running, and every refusal says why. Executions are counted in an effects file, not guessed.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import behaviour_tasks as bt
import kombu
import pytest
import redis
from conftest import AMQP_URL, BROKERS, REDIS_URL, amqp_vhost, broker_urls, require_amqp
from redis.backoff import NoBackoff
from redis.retry import Retry
from workers import Rig, WorkerProcess, poll_until

from decortask import Decortask, TaskHandle, TaskStatus
from decortask.app import reset_default_app
from decortask.errors import BrokerUnavailable
from decortask.security import mask_url
from decortask.store import TaskQuery

pytestmark = pytest.mark.broker

LEASE_TIMEOUT = 3.0
REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip
SENTINEL = "sentinel-pw-7f3a"


# -- the servers ---------------------------------------------------------------------------------------------


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _ctl(*command: str, timeout: float = 120) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}: {done.stderr or done.stdout}")
    return done.stdout


def _amqp_works() -> bool:
    """A connection opens and a channel answers: RabbitMQ serves AMQP again, not just its port."""
    conn = kombu.Connection(AMQP_URL, connect_timeout=2)
    try:
        conn.ensure_connection(max_retries=0)
        conn.default_channel.exchange_declare("amq.direct", "direct", passive=True)
        return True
    except Exception:
        return False
    finally:
        conn.release()


def _redis_works() -> bool:
    if not _answers(6379):
        return False
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _restore_rabbitmq() -> None:
    """Make sure RabbitMQ serves AMQP, whatever state a test left it in."""
    if _amqp_works():
        return
    try:
        _ctl("rabbitmqctl", "start_app")
    except AssertionError:  # the node itself is down: start it
        _ctl("rabbitmq-server", "-detached")
    _ctl("rabbitmqctl", "await_startup")
    poll_until(_amqp_works, 60, "RabbitMQ to serve AMQP again", interval=0.5)


def _restore_redis() -> None:
    if not _redis_works():
        if not _answers(6379):
            _ctl(*REDIS_START, timeout=30)
        poll_until(_redis_works, 30, "Redis to answer PING again", interval=0.2)


@contextmanager
def rabbitmq_stopped() -> Iterator[None]:
    """`rabbitmqctl stop_app` (connections closed, durable queues kept); started again on exit, always."""
    try:
        _ctl("rabbitmqctl", "stop_app")
        poll_until(lambda: not _answers(5672), 30, "RabbitMQ to close its port")
        yield
    finally:
        _restore_rabbitmq()


@contextmanager
def redis_stopped() -> Iterator[None]:
    """`SHUTDOWN NOSAVE`: Redis keeps nothing on disk, so it comes back empty. Started again on exit, always."""
    try:
        subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
            capture_output=True,
            timeout=30,
        )  # it closes the connection it was asked on, so the exit code says nothing
        poll_until(lambda: not _answers(6379), 30, "Redis to close its port")
        yield
    finally:
        _restore_redis()


def _memory_alarm_on() -> bool:
    return "memory" in _ctl("rabbitmqctl", "eval", "rabbit_alarm:get_alarms().")


@contextmanager
def rabbitmq_blocking_publishers() -> Iterator[None]:
    """A memory alarm (high watermark 0.00001): RabbitMQ blocks every connection that publishes.

    The watermark in force before is read first and restored exactly on exit, whatever happened.
    """
    before = _ctl("rabbitmqctl", "eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip()
    relative = re.fullmatch(r"\d+(?:\.\d+)?", before)
    absolute = re.fullmatch(r'\{absolute,"?([^"}]+)"?\}', before)
    if relative:
        restore = [before]
    elif absolute:
        restore = ["absolute", absolute.group(1)]
    else:
        pytest.fail(f"cannot read RabbitMQ's memory high watermark to restore it later: {before!r}")
    try:
        _ctl("rabbitmqctl", "set_vm_memory_high_watermark", "0.00001")
        poll_until(_memory_alarm_on, 30, "RabbitMQ's memory alarm", interval=0.3)
        yield
    finally:
        _ctl("rabbitmqctl", "set_vm_memory_high_watermark", *restore)
        poll_until(lambda: not _memory_alarm_on(), 30, "RabbitMQ's memory alarm to clear", interval=0.3)


def _unacked(kind: str, queue: str, store_file: Path) -> int:
    """Messages of `queue` a consumer holds without having acked them, read from the broker itself."""
    if kind == "amqp":
        out = _ctl("rabbitmqctl", "-q", "-p", amqp_vhost(), "list_queues", "name", "messages_unacknowledged")
        return sum(int(line.split()[1]) for line in out.splitlines() if line.split()[:1] == [queue])
    if kind == "redis":
        held = redis.Redis.from_url(REDIS_URL).hvals("unacked")  # kombu's unacked index: [raw, exchange, key]
        return sum(1 for value in held if json.loads(value)[2] == queue)
    with closing(sqlite3.connect(store_file, timeout=30)) as db:  # the embedded broker: a leased row is held
        row = db.execute(
            "SELECT count(*) FROM decortask_messages WHERE queue = ? AND leased_until > ?",
            (queue, time.time()),
        ).fetchone()
    return int(row[0])


# -- the setup -------------------------------------------------------------------------------------------------


Outage = Rig


@pytest.fixture
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    """The broker kind in `request.param`, always with a SQLite store (a Redis store would restart too)."""
    kind = str(request.param)
    token = uuid.uuid4().hex[:10]
    broker_url, store_url = broker_urls(kind, tmp_path, token)
    store_url = f"sqlite:///{tmp_path}/decortask.db"  # the embedded broker shares this file, as by default
    queue = f"outage-{token}"
    app = Decortask(broker_url, store_url, default_queue=queue, lease_timeout=LEASE_TIMEOUT)
    yield Rig(
        kind,
        app,
        broker_url,
        store_url,
        queue,
        tmp_path / "effects.jsonl",
        tmp_path,
        worker_env={"DECORTASK_LEASE_TIMEOUT": str(LEASE_TIMEOUT)},
        worker_args=("--grace", "10"),
        concurrency=4,
        store_file=tmp_path / "decortask.db",
    )
    try:
        app.transport.delete_queue(queue)
        app.transport.delete_queue(queue + ".dlq")
    finally:
        app.close()
        reset_default_app()


def _final(handle: TaskHandle[Any], timeout: float = 40) -> Any:
    return poll_until(
        lambda: handle.done() and handle.result(), timeout, f"{handle.id} to finish", interval=0.1
    )


def _logged(worker: WorkerProcess, text: str) -> bool:
    return text in worker.log_tail(100_000)


def _stays(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether `condition()` holds at every check for `seconds` (polled, not slept through)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.1)
    return condition()


def _restart_while_tasks_run(outage: Outage, stopped: Callable[[], Any]) -> None:
    """F-10 on any broker server: three tasks run while the broker stops and starts again."""
    handles = [bt.sleep_opted_in.delay(seconds) for seconds in (3.0, 5.0, 7.0)]
    worker = outage.worker("w1").start()
    try:
        poll_until(
            lambda: all(h.status is TaskStatus.RUNNING for h in handles), 20, "all three tasks to start"
        )
        with stopped():
            poll_until(lambda: _logged(worker, "lost the broker"), 20, "the worker to notice the loss")
            # Held down until the worker has failed to reconnect at least once: it retries, with backoff.
            poll_until(
                lambda: _logged(worker, "still unavailable (attempt 2"), 20, "a second reconnect attempt"
            )
            assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
        poll_until(lambda: _logged(worker, "reconnected to"), 30, "the worker to reconnect")
        log = worker.log_tail(100_000)
        assert "next attempt in 0.5 s" in log and "next attempt in 1.0 s" in log  # the backoff doubles

        results = [_final(handle) for handle in handles]
        assert [(r.status, r.attempts, r.value) for r in results] == [(TaskStatus.SUCCESS, 1, "slept")] * 3
        for handle in handles:  # ran once each, finished once each: the restart caused no second run
            assert outage.effects_of(handle) == [(1, "started"), (1, "finished")]
        after = bt.add.delay(2, 3)
        assert (_final(after).status, after.result().value) == (TaskStatus.SUCCESS, 5)
        # Nothing is left RUNNING or PENDING once the redeliveries were settled by the receipt rules.
        poll_until(
            lambda: (
                not outage.app.store.list_tasks(
                    TaskQuery(statuses=frozenset({TaskStatus.RUNNING, TaskStatus.PENDING}))
                )
            ),
            LEASE_TIMEOUT + 10,
            "no record RUNNING or PENDING",
        )
        # Never died, so it was alive throughout; and it shuts down cleanly.
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    log = worker.log_tail(100_000)
    assert "Traceback" not in log, log


# -- F-10 ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["amqp"], indirect=True)
def test_f10_broker_restart_while_tasks_run_rabbitmq(outage: Outage) -> None:
    # The three messages go back to the queue when their connection closes (persistent, durable queue),
    # so the reconnected worker receives them again while it still runs (or has finished) them: the
    # receipt rules park or skip those copies, and nothing runs twice.
    _restart_while_tasks_run(outage, rabbitmq_stopped)


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["redis"], indirect=True)
def test_f10_broker_restart_while_tasks_run_redis(outage: Outage) -> None:
    # Redis keeps nothing on disk here: the running tasks' messages (and any waiting one) are gone after
    # the restart, a documented limitation for tasks still waiting. Tasks already running are unaffected:
    # they finish, their state is written, and nothing stays RUNNING.
    _restart_while_tasks_run(outage, redis_stopped)


# -- F-11 ------------------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "url", ["amqp://guest:{pw}@127.0.0.1:{port}//", "redis://:{pw}@127.0.0.1:{port}/0"], ids=["amqp", "redis"]
)
def test_f11_broker_down_at_delay_raises_broker_unavailable_without_a_phantom_record(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker_url = url.format(pw=SENTINEL, port=_closed_port())
    app = Decortask(broker_url, f"sqlite:///{tmp_path}/decortask.db", default_queue="f11")
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as raised:
            bt.add.apply_async((1, 2), confirm=True)  # the default call returns: the outbox has it
        elapsed = time.monotonic() - started
        assert elapsed < 6, f"took {elapsed:.1f} s"
        assert caplog.text.count("retrying in") >= 2  # bounded retry, not one attempt and not for ever
        message = str(raised.value)
        assert mask_url(broker_url) in message and "****" in message
        assert SENTINEL not in message and SENTINEL not in caplog.text
        assert app.store.list_tasks(TaskQuery()) == []
        with closing(sqlite3.connect(tmp_path / "decortask.db")) as db:
            assert db.execute("SELECT count(*) FROM decortask_tasks").fetchone() == (0,)
    finally:
        app.close()
        reset_default_app()


# -- F-12 ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_f12_unconfirmed_publish_fails_within_the_confirm_timeout(tmp_path: Path) -> None:
    require_amqp()
    queue = f"f12-{uuid.uuid4().hex[:10]}"
    app = Decortask(AMQP_URL, f"sqlite:///{tmp_path}/decortask.db", default_queue=queue, confirm_timeout=2)
    try:
        # Confirmed on this thread: the caller's connection is open before the alarm.
        warm_up = bt.add.apply_async((0, 0), confirm=True)
        app.transport.purge(queue)
        app.store.delete(warm_up.id)
        with rabbitmq_blocking_publishers():
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable) as raised:
                bt.add.apply_async((1, 2), confirm=True)
            elapsed = time.monotonic() - started
            assert 1.9 <= elapsed < 5, f"took {elapsed:.1f} s"
            assert app.store.list_tasks(TaskQuery()) == []
        assert "did not confirm a publish within confirm_timeout=2 s" in str(raised.value)
        # The unconfirmed message was dropped with its connection: the broker does not queue it once it
        # stops blocking, so no task runs that `apply_async(confirm=True)` reported as failed.
        assert _stays(lambda: app.transport.queue_size(queue) == 0, 2.0)
        later = bt.add.delay(1, 2)
        assert app.transport.queue_size(queue) == 1 and later.status is TaskStatus.PENDING
    finally:
        _restore_rabbitmq()
        app.transport.delete_queue(queue)
        app.close()
        reset_default_app()


# -- F-14 ------------------------------------------------------------------------------------------------------


@contextmanager
def exclusive_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """`BEGIN EXCLUSIVE` on the store file from another connection: every writer waits until it ends."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield db
    finally:
        db.execute("ROLLBACK")
        db.close()


@pytest.mark.parametrize("outage", BROKERS, indirect=True)
def test_f14_store_locked_as_the_task_finishes(outage: Outage) -> None:
    ready, go = outage.tmp / "ready", outage.tmp / "go"
    handle = bt.finishes_when_told.delay(str(ready), str(go))
    # The store gives up on a lock after 0.5 s (not 30), so decortask's own retries must carry the write.
    worker = outage.worker("w1", env={"DECORTASK_SQLITE_BUSY_TIMEOUT": "0.5"}, concurrency=2).start()
    try:
        poll_until(ready.exists, 20, "the task to be about to finish")
        with exclusive_lock(outage.store_file):
            go.touch()
            # Held through two of the worker's retries (about 5 s, ten times the store's busy timeout).
            poll_until(
                lambda: worker.log_tail(100_000).count("store write failed") >= 2,
                15,
                "the worker to retry its state write twice",
            )
            # Locked: the state is not written, so the message is not acked; the broker still has it.
            assert handle.status is TaskStatus.RUNNING
            assert _unacked(outage.kind, outage.queue, outage.store_file) == 1
        result = _final(handle, timeout=20)
        assert (result.status, result.attempts, result.value) == (TaskStatus.SUCCESS, 1, "finished")
        poll_until(
            lambda: _unacked(outage.kind, outage.queue, outage.store_file) == 0, 10, "the message to be acked"
        )
        assert outage.app.transport.queue_size(outage.queue) == 0
        second = bt.add.delay(1, 2)
        assert (_final(second, timeout=20).status, second.result().value) == (TaskStatus.SUCCESS, 3)
        assert outage.effects_of(handle) == [(1, "started"), (1, "finished")]
        assert not _logged(worker, f"duplicate delivery of task {handle.id}")  # acked once, never redelivered
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()


@pytest.mark.parametrize("outage", ["amqp"], indirect=True)
def test_f14_store_locked_past_the_write_retry_budget_keeps_the_outcome(outage: Outage) -> None:
    ready, go = outage.tmp / "ready", outage.tmp / "go"
    handle = bt.finishes_when_told.delay(str(ready), str(go))
    worker = outage.worker("w1", env={"DECORTASK_SQLITE_BUSY_TIMEOUT": "0.5"}, concurrency=2).start()
    try:
        poll_until(ready.exists, 20, "the task to be about to finish")
        with exclusive_lock(outage.store_file):
            go.touch()
            poll_until(lambda: _logged(worker, "store write failed"), 20, "the worker to start retrying")
            # Held past the executor's 10 s retry budget: the outcome of an attempt that ran is never given up.
            time.sleep(12)
            assert handle.status is TaskStatus.RUNNING
        result = _final(handle, timeout=30)
        assert (result.status, result.value) == (TaskStatus.SUCCESS, "finished")
        assert outage.effects_of(handle) == [(1, "started"), (1, "finished")]
        assert not _logged(worker, "executing a message failed")
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
