"""Liveness from the connection (issue 16): a SIGKILLed worker is known dead in about a second.

The kill matrix: 12 tasks run on a worker that is SIGKILLed while a second worker idles. The leases are
the defaults (`lease_timeout` 20 s, `sqlite_lease` 40 s), and recovery must come well before either could
act: only the broker connection's probe (liveness.py) can have seen the death. The seconds from the kill
to recovery are printed (run with `-s`); the tests assert the behaviour, with a deadline below the lease.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import behaviour_tasks as bt
import pytest
from conftest import BROKERS, broker_urls, drop_postgres_schema
from workers import Rig, WorkerProcess, poll_until

from decortask import Decortask, TaskHandle, TaskStatus
from decortask.app import reset_default_app
from decortask.liveness import Liveness, Verdict

pytestmark = pytest.mark.broker

TASKS = 12
#: Long enough that no attempt ends before the kill, on a loaded machine.
SLEEP = 8.0
#: Recovery must happen before this; the default lease_timeout (20 s) is what heartbeats alone would take.
RECOVERY_DEADLINE = 15.0
KILL_MATRIX = [*BROKERS, "amqp+postgres"]


@contextmanager
def default_lease_rig(kind: str, tmp: Path) -> Iterator[Rig]:
    """A rig on broker `kind` with the default leases (unlike `workers.short_lease_rig`)."""
    token = uuid.uuid4().hex[:10]
    broker_url, store_url = broker_urls(kind, tmp, token)
    kind, _, store_kind = kind.partition("+")
    queue = f"liveness-{token}"
    app = Decortask(broker_url, store_url, default_queue=queue)
    assert app.settings.lease_timeout >= 20 and app.settings.sqlite_lease >= 40
    try:
        yield Rig(kind, app, broker_url, store_url, queue, tmp / "effects.jsonl", tmp, concurrency=TASKS)
    finally:
        app.transport.delete_queue(queue)
        app.close()
        reset_default_app()
        if store_kind == "postgres":
            drop_postgres_schema(token)


@pytest.fixture(params=KILL_MATRIX)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with default_lease_rig(request.param, tmp_path) as made:
        yield made


def _worker_id(worker: WorkerProcess) -> str:
    """The id a started worker logs in its ready line."""

    def ready() -> str | None:
        found = re.search(r"worker (\S+) ready:", worker.log_tail(200))
        return found.group(1) if found else None

    worker_id: str = poll_until(ready, 30, "the worker to be ready")
    return worker_id


def _all(handles: list[TaskHandle[str]], test: Callable[[Any], bool]) -> bool:
    return all(test(handle.record()) for handle in handles)


@contextmanager
def _kill_while_running(
    rig: Rig, handles: list[TaskHandle[str]], *victim_args: str
) -> Iterator[tuple[WorkerProcess, float]]:
    """Run `handles` on a victim worker, start an idle survivor, SIGKILL the victim: (survivor, kill time).
    Both workers are gone when the block ends, whatever happened in it."""
    victim = rig.worker("victim", *victim_args).start()
    survivor = rig.worker("survivor")
    try:
        try:
            poll_until(
                lambda: _all(handles, lambda r: r.status is TaskStatus.RUNNING), 30, "all tasks to run"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{victim.log_tail()}") from None
        survivor.start()
        _worker_id(survivor)  # started and consuming: the measurement below is recovery, not start-up
        assert _all(handles, lambda r: r.status is TaskStatus.RUNNING and r.attempt == 1), "ended before"
        victim.kill()
        yield survivor, time.monotonic()
    finally:
        victim.kill()
        survivor.stop()


def _report(what: str, rig: Rig, seconds: float) -> None:
    store = rig.store_url.split("://", 1)[0]
    print(f"\n[kill matrix] {rig.kind} broker, {store} store: {what} {seconds:.2f} s after the SIGKILL")


def _assert_opted_in_recover(rig: Rig, count: int, *victim_args: str) -> None:
    handles = [bt.sleep_opted_in.delay(SLEEP) for _ in range(count)]
    with _kill_while_running(rig, handles, *victim_args) as (survivor, killed_at):

        def recovered(record: Any) -> bool:
            return record.status is TaskStatus.SUCCESS or (
                record.status is TaskStatus.RUNNING and record.attempt == 2
            )

        try:
            poll_until(lambda: _all(handles, recovered), RECOVERY_DEADLINE, f"all {count} to run again", 0.02)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{survivor.log_tail()}") from None
        _report(f"{count} opted-in tasks running again", rig, time.monotonic() - killed_at)
        poll_until(lambda: _all(handles, lambda r: r.status is TaskStatus.SUCCESS), 60, "all to succeed")
    for handle in handles:
        assert handle.result().attempts == 2
        assert rig.effects_of(handle) == [(1, "started"), (2, "started"), (2, "finished")]


def test_f05_sigkill_12_opted_in_tasks_recover_within_seconds(rig: Rig) -> None:
    _assert_opted_in_recover(rig, TASKS)


@pytest.mark.parametrize("rig", ["redis"], indirect=True)
def test_f05_sigkill_of_a_process_pool_worker_recovers_within_seconds(rig: Rig) -> None:
    """The children own the attempts (`<worker id>/<pid>`) and die with their worker's identity."""
    rig.concurrency = 4
    _assert_opted_in_recover(rig, 4, "--pool", "processes")


def test_f06_sigkill_12_tasks_not_opted_in_end_interrupted_within_seconds(rig: Rig) -> None:
    handles = [bt.sleep_not_opted_in.delay(SLEEP) for _ in range(TASKS)]
    with _kill_while_running(rig, handles) as (survivor, killed_at):
        try:
            poll_until(
                lambda: _all(handles, lambda r: r.status is TaskStatus.INTERRUPTED),
                RECOVERY_DEADLINE,
                "all 12 to end INTERRUPTED",
                0.02,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{survivor.log_tail()}") from None
        _report(f"{TASKS} tasks not opted in INTERRUPTED", rig, time.monotonic() - killed_at)
    for handle in handles:
        assert handle.record().reason == "worker_lost"
        assert rig.effects_of(handle) == [(1, "started")]


@pytest.mark.parametrize("rig", BROKERS, indirect=True)
def test_a_live_worker_whose_heartbeat_lags_is_not_declared_dead(rig: Rig) -> None:
    """SIGSTOP freezes a worker (its heartbeat thread too) for longer than any heartbeat-age rule of a
    second or two would allow; its connection stays open, so the probe says ALIVE and nobody takes over."""
    handle = bt.sleep_opted_in.delay(SLEEP)
    with rig.worker("slow") as slow:
        slow_id = _worker_id(slow)
        poll_until(lambda: handle.status is TaskStatus.RUNNING, 30, "the task to run")
        assert handle.record().owner == slow_id
        with rig.worker("other") as other:
            _worker_id(other)
            slow.signal(signal.SIGSTOP)
            try:
                assert handle.status is TaskStatus.RUNNING, "ended before it was stopped"
                beat = rig.app.store.last_heartbeat(slow_id)
                probe = rig.app.transport.liveness_probe()
                assert probe is not None
                try:
                    time.sleep(4.0)  # the other worker's reaper looks about every second meanwhile
                    assert probe.look([slow_id]) == {slow_id: Verdict.ALIVE}
                finally:
                    probe.close()
                assert rig.app.store.last_heartbeat(slow_id) == beat  # it really was silent
                assert handle.status is TaskStatus.RUNNING
            finally:
                slow.signal(signal.SIGCONT)
            result = poll_until(lambda: handle.done() and handle.result(), 30, "the task to finish")
            assert (result.status, result.attempts) == (TaskStatus.SUCCESS, 1), other.log_tail()
    assert rig.effects_of(handle) == [(1, "started"), (1, "finished")]


@pytest.mark.parametrize("broker", BROKERS)
def test_a_probe_says_alive_then_dead_and_unknown_for_an_id_never_held(broker: str, tmp_path: Path) -> None:
    broker_url, _ = broker_urls(broker, tmp_path, uuid.uuid4().hex[:10])
    app = Decortask(broker_url, "memory://")
    worker_id = f"holder-{uuid.uuid4().hex[:8]}"
    script = (
        "import sys, time; from decortask import Decortask; "
        "probe = Decortask(sys.argv[1], 'memory://').transport.liveness_probe(); "
        "probe.hold(sys.argv[2]); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, broker_url, worker_id], stdout=subprocess.PIPE)
    probe = app.transport.liveness_probe()
    assert probe is not None
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert probe.look([worker_id, "never-held"]) == {
            worker_id: Verdict.ALIVE,
            "never-held": Verdict.UNKNOWN,
        }
        holder.kill()
        holder.wait(10)
        poll_until(
            lambda: probe.look([worker_id]) == {worker_id: Verdict.DEAD}, 5, "the probe to see it dead"
        )
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        probe.close()
        app.close()
        reset_default_app()


def test_a_clean_release_is_never_read_as_a_death(tmp_path: Path) -> None:
    app = Decortask(f"sqlite:///{tmp_path}/d.db", "memory://")
    holder, looker = app.transport.liveness_probe(), app.transport.liveness_probe()
    assert holder is not None and looker is not None
    holder.hold("w1")
    assert looker.look(["w1"]) == {"w1": Verdict.ALIVE}
    holder.release("w1")
    assert looker.look(["w1"]) == {"w1": Verdict.UNKNOWN}
    app.close()
    reset_default_app()


def test_f05_the_embedded_broker_gives_back_a_killed_consumers_messages_at_once(tmp_path: Path) -> None:
    """A consumer holding 3 unacked messages is SIGKILLed: another consumer gets all 3 long before the
    40 s `sqlite_lease` would have let them go (its sweep finds the dead consumer's lock file free)."""
    url = f"sqlite:///{tmp_path}/broker.db"
    app = Decortask(url, "memory://", default_queue="q")
    for n in range(3):
        app.transport.publish(b'{"n": %d}' % n, "q")
    script = (
        "import sys; from decortask import Decortask; "
        "session = Decortask(sys.argv[1], 'memory://').transport.open_consumer(['q'], 3); session.connect(); "
        "got = []\nwhile len(got) < 3: got += session.drain(0.1)\n"
        "print(len(got), flush=True); import time; time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, url], stdout=subprocess.PIPE)
    session = app.transport.open_consumer(["q"], 3)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"3\n"
        session.connect()
        assert session.drain(1.5) == []  # leased by a live consumer: nothing for this one
        holder.kill()
        holder.wait(10)
        killed_at = time.monotonic()
        got: list[Any] = []

        def all_back() -> bool:
            got.extend(session.drain(0.1))
            return len(got) == 3

        poll_until(all_back, 10, "the messages to come back")
        print(
            f"\n[kill matrix] sqlite broker: 3 unacked messages back {time.monotonic() - killed_at:.2f} s after"
        )
        assert sorted(delivery.body for delivery in got) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        session.close()
        app.close()
        reset_default_app()


def test_a_redis_holder_whose_connection_was_reset_holds_again_at_its_next_keep(tmp_path: Path) -> None:
    import redis

    broker_url, _ = broker_urls("redis", tmp_path, uuid.uuid4().hex[:10])
    app = Decortask(broker_url, "memory://")
    holder, looker = app.transport.liveness_probe(), app.transport.liveness_probe()
    assert holder is not None and looker is not None
    admin = redis.Redis.from_url(broker_url)
    worker_id = f"holder-{uuid.uuid4().hex[:8]}"
    try:
        holder.hold(worker_id)
        assert looker.look([worker_id]) == {worker_id: Verdict.ALIVE}
        # A network reset of its connection (not of the process): redis-py reconnects at the next command.
        connection_id = admin.get(f"decortask:liveness:held:{worker_id}")
        assert admin.client_kill_filter(_id=connection_id) == 1
        holder.keep()
        assert looker.look([worker_id]) == {worker_id: Verdict.ALIVE}
        assert admin.get(f"decortask:liveness:held:{worker_id}") != connection_id  # the new connection's
        holder.release(worker_id)
        assert looker.look([worker_id]) == {worker_id: Verdict.UNKNOWN}
    finally:
        holder.close()
        looker.close()
        admin.close()
        app.close()
        reset_default_app()


class _CountingProbe:
    """A probe that says every id is dead, slowly, and counts how often it was asked."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def hold(self, worker_id: str) -> None: ...

    def keep(self) -> None: ...

    def release(self, worker_id: str) -> None: ...

    def close(self) -> None: ...

    def look(self, worker_ids: Iterable[str]) -> dict[str, Verdict]:
        ids = list(worker_ids)
        self.asked.append(ids)
        time.sleep(0.1)
        return {worker_id: Verdict.DEAD for worker_id in ids}


def test_a_burst_of_questions_about_one_dead_worker_asks_the_probe_once() -> None:
    """12 pool threads receive redeliveries of one dead worker's tasks at once (records owned by its
    process-pool children too): one look, for the worker's id, answers all of them."""
    app = Decortask("memory://", "memory://")
    probe = _CountingProbe()
    liveness = Liveness(app, lambda owner: owner == "me", probe)
    answers: list[bool] = []
    owners = ["dead-worker", "dead-worker/4242"] * 6
    threads = [threading.Thread(target=lambda o=o: answers.append(liveness.alive(o))) for o in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert answers == [False] * 12
    assert probe.asked == [["dead-worker"]]
    assert liveness.alive("me") is True and probe.asked == [["dead-worker"]]  # its own id is never asked
    app.close()
    reset_default_app()
