"""The embedded SQLite broker, exercised through real kombu connections, threads and processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.exceptions import ChannelError
from kombu.message import Message

from decortask.transports.sqlite import SQLiteTransport

ROOT = Path(__file__).resolve().parents[1]
QUEUE = Queue("jobs", Exchange(""), routing_key="jobs")


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "broker.db")


@contextmanager
def connection(path: str, lease_seconds: float = 30.0) -> Iterator[Connection]:
    options = {"path": path, "lease_seconds": lease_seconds, "polling_interval": 0.01}
    with Connection(transport=SQLiteTransport, transport_options=options) as conn:
        yield conn


def publish(path: str, bodies: Iterable[bytes], priority: int = 0, **headers: Any) -> None:
    with connection(path) as conn:
        channel = conn.channel()
        QUEUE(channel).declare()
        producer = Producer(channel, exchange=Exchange(""))
        for body in bodies:
            producer.publish(
                body,
                routing_key=QUEUE.name,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                priority=priority,
                headers=headers or None,
            )


def numbered(count: int, start: int = 0) -> list[bytes]:
    return [json.dumps({"n": n}).encode() for n in range(start, start + count)]


def take(
    conn: Connection, channel: Any, count: int, *, ack: bool = True, prefetch: int = 0, timeout: float = 5.0
) -> list[Message]:
    """Consume up to `count` messages from QUEUE on `channel` within `timeout`; ack each unless told not to."""
    got: list[Message] = []

    def on_message(body: Any, message: Message) -> None:
        got.append(message)
        if ack:
            message.ack()

    channel.basic_qos(prefetch_count=prefetch)
    deadline = time.monotonic() + timeout
    with Consumer(channel, queues=[QUEUE], callbacks=[on_message], no_ack=False):
        while len(got) < count and time.monotonic() < deadline:
            with suppress(TimeoutError):
                conn.drain_events(timeout=0.05)
    return got


def nothing_arrives(conn: Connection, channel: Any, seconds: float) -> bool:
    return not take(conn, channel, 1, ack=False, timeout=seconds)


def ready_count(conn: Connection) -> int:
    count: int = QUEUE(conn.channel()).queue_declare(passive=True).message_count
    return count


def rows(path: str) -> int:
    with closing(sqlite3.connect(path)) as raw:
        count: int = raw.execute("SELECT count(*) FROM decortask_messages").fetchone()[0]
    return count


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- one consumer ---------------------------------------------------------------------------------------------


def test_round_trip_keeps_body_headers_and_content_type(db: str) -> None:
    publish(db, [b'{"task": "x"}'], trace="abc")
    with connection(db) as conn:
        [message] = take(conn, conn.channel(), 1)
    assert message.body == b'{"task": "x"}'
    assert message.headers == {"trace": "abc"}
    assert message.content_type == "application/json"
    assert message.delivery_info["redelivered"] is False
    assert message.delivery_info["delivery_count"] == 1


def test_typed_header_values_come_back_as_the_same_types(db: str) -> None:
    when = datetime(2026, 11, 22, 23, 0, tzinfo=timezone.utc)
    publish(db, numbered(2), when=when, ref=uuid.UUID(int=7), note='a "__type__" in a string')
    with connection(db) as conn:
        got = take(conn, conn.channel(), 2, prefetch=2)
    assert [m.headers for m in got] == [
        {"when": when, "ref": uuid.UUID(int=7), "note": 'a "__type__" in a string'}
    ] * 2


def test_a_fetched_message_stays_in_the_file_until_ack_deletes_it(db: str) -> None:
    publish(db, numbered(1))
    with connection(db) as conn:
        channel = conn.channel()
        [message] = take(conn, channel, 1, ack=False)
        assert rows(db) == 1
        assert ready_count(conn) == 0  # leased: counted as neither ready nor visible to others
        message.ack()
        assert rows(db) == 0


@pytest.mark.parametrize("give_back", ["reject", "requeue"])
def test_reject_with_requeue_and_requeue_redeliver_at_once(db: str, give_back: str) -> None:
    publish(db, numbered(2))
    with connection(db) as conn:
        channel = conn.channel()
        first, _ = take(conn, channel, 2, ack=False)
        first.reject(requeue=True) if give_back == "reject" else first.requeue()
        [again] = take(conn, channel, 1)
    assert again.body == first.body
    assert again.delivery_info["redelivered"] is True
    assert again.delivery_info["delivery_count"] == 2


def test_reject_without_requeue_drops_the_message(db: str) -> None:
    publish(db, numbered(1))
    with connection(db) as conn:
        channel = conn.channel()
        [message] = take(conn, channel, 1, ack=False)
        message.reject(requeue=False)
        assert rows(db) == 0
        assert nothing_arrives(conn, channel, 0.2)


def test_higher_priority_first_and_fifo_within_a_priority(db: str) -> None:
    publish(db, [b'"low-1"', b'"low-2"'], priority=1)
    publish(db, [b'"high-1"', b'"high-2"'], priority=9)
    publish(db, [b'"mid-1"', b'"mid-2"'], priority=5)
    with connection(db) as conn:
        got = take(conn, conn.channel(), 6)
    assert [m.decode() for m in got] == ["high-1", "high-2", "mid-1", "mid-2", "low-1", "low-2"]


def test_passive_declare_counts_ready_messages_and_rejects_unknown_queues(db: str) -> None:
    publish(db, numbered(5))
    with connection(db) as conn:
        assert ready_count(conn) == 5
        take(conn, conn.channel(), 2, ack=False)
        assert ready_count(conn) == 3
        with pytest.raises(ChannelError):
            Queue("never-declared", Exchange(""))(conn.channel()).queue_declare(passive=True)


def test_purge_removes_ready_messages_and_leaves_leased_ones_to_their_consumer(db: str) -> None:
    publish(db, numbered(5))
    with connection(db) as conn:
        [held] = take(conn, conn.channel(), 1, ack=False)
        assert QUEUE(conn.channel()).purge() == 4
        assert ready_count(conn) == 0
        held.ack()
    assert rows(db) == 0


def test_queue_delete_drops_the_queue_and_its_messages(db: str) -> None:
    publish(db, numbered(3))
    with connection(db) as conn:
        QUEUE(conn.channel()).delete()
        assert rows(db) == 0
        with pytest.raises(ChannelError):
            QUEUE(conn.channel()).queue_declare(passive=True)


def test_no_ack_consumers_take_messages_for_good(db: str) -> None:
    publish(db, numbered(2))
    with connection(db) as conn:
        channel = conn.channel()
        assert channel.basic_get(QUEUE.name, no_ack=True).body == b'{"n": 0}'
        got: list[Message] = []
        with Consumer(channel, queues=[QUEUE], callbacks=[lambda _b, m: got.append(m)], no_ack=True):
            conn.drain_events(timeout=1)
        assert [m.body for m in got] == [b'{"n": 1}']
    assert rows(db) == 0  # closing gave nothing back


def test_messages_survive_closing_and_reopening_the_file(db: str) -> None:
    publish(db, numbered(3))  # publish() closes its connection
    with connection(db) as conn:
        assert [m.body for m in take(conn, conn.channel(), 1)] == numbered(1)
    with connection(db) as conn:
        assert [m.body for m in take(conn, conn.channel(), 2)] == numbered(2, start=1)


def test_a_missing_path_is_a_clear_error() -> None:
    with (
        pytest.raises(ValueError, match="path"),
        Connection(transport=SQLiteTransport, transport_options={}) as conn,
    ):
        conn.channel()


# -- leases ---------------------------------------------------------------------------------------------------


def test_closing_a_connection_gives_unacked_messages_back_at_once(db: str) -> None:
    publish(db, numbered(3))
    with connection(db) as first:
        assert len(take(first, first.channel(), 3, ack=False)) == 3
    with connection(db) as second:
        assert ready_count(second) == 3
        assert len(take(second, second.channel(), 3, timeout=1.0)) == 3
    assert rows(db) == 0


def test_closing_while_the_file_is_locked_loses_nothing(db: str, caplog: pytest.LogCaptureFixture) -> None:
    publish(db, numbered(1))
    options = {"path": db, "lease_seconds": 0.5, "polling_interval": 0.01, "busy_timeout": 0.1}
    with Connection(transport=SQLiteTransport, transport_options=options) as conn:
        assert len(take(conn, conn.channel(), 1, ack=False)) == 1
        with closing(sqlite3.connect(db, isolation_level=None)) as blocker:
            blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock past the busy timeout
            conn.release()
            blocker.execute("ROLLBACK")
    assert "leases run out" in caplog.text
    with connection(db) as conn:
        assert len(take(conn, conn.channel(), 1, timeout=3.0)) == 1  # back once the lease ran out


def test_a_live_consumer_keeps_its_message_across_many_lease_periods(db: str) -> None:
    publish(db, numbered(1))
    with connection(db, lease_seconds=0.5) as holder, connection(db, lease_seconds=0.5) as rival:
        holder_channel, rival_channel = holder.channel(), rival.channel()
        [held] = take(holder, holder_channel, 1, ack=False)
        deadline = time.monotonic() + 2.5  # five lease periods
        with Consumer(holder_channel, queues=[QUEUE], callbacks=[], no_ack=False):
            while time.monotonic() < deadline:
                with suppress(TimeoutError):  # the holder's polling path renews its lease
                    holder.drain_events(timeout=0.05)
                assert nothing_arrives(rival, rival_channel, 0.05)
        held.ack()
    assert rows(db) == 0


def test_a_message_kombu_rejects_through_another_channel_is_released(db: str) -> None:
    publish(db, numbered(1))
    with connection(db) as conn:
        first, second = conn.channel(), conn.channel()
        cancelled = Consumer(first, queues=[QUEUE], callbacks=[lambda _b, m: None])
        cancelled.consume()
        Consumer(second, queues=[QUEUE], callbacks=[lambda _b, m: None]).consume()
        cancelled.cancel()  # drops the connection's callback for the queue while `second` still polls it
        with suppress(TimeoutError):
            conn.drain_events(timeout=0.2)  # `second` leases it, kombu rejects it through `first`
        with connection(db) as other:
            assert ready_count(other) == 1


def test_renew_leases_can_be_called_directly(db: str) -> None:
    publish(db, numbered(2))
    with connection(db, lease_seconds=0.4) as holder, connection(db, lease_seconds=0.4) as rival:
        channel = holder.channel()
        assert len(take(holder, channel, 2, ack=False)) == 2
        for _ in range(4):
            time.sleep(0.2)
            assert channel.renew_leases() == 2
        assert ready_count(rival) == 0


# -- batched leases and acks ---------------------------------------------------------------------------------


def leased(path: str) -> int:
    """Rows some consumer holds a live lease on (delivered or not, acked or not)."""
    with closing(sqlite3.connect(path)) as raw:
        query = "SELECT count(*) FROM decortask_messages WHERE leased_until > ?"
        count: int = raw.execute(query, (time.time(),)).fetchone()[0]
    return count


def test_a_consumer_leases_its_whole_prefetch_window_at_once_and_never_more(db: str) -> None:
    publish(db, numbered(10))
    with connection(db) as conn, connection(db) as rival:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=4)
        got: list[Message] = []
        with Consumer(channel, queues=[QUEUE], callbacks=[lambda _b, m: got.append(m)], no_ack=False):
            conn.drain_events(timeout=1)  # kombu hands over one message per call
            assert len(got) == 1
            assert leased(db) == 4  # the other three wait in the channel, invisible to everyone else
            assert ready_count(rival) == 6
            while len(got) < 4:
                conn.drain_events(timeout=1)
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=0.1)
            assert len(got) == 4 and leased(db) == 4  # a full window leases nothing more
            for message in got:
                message.ack()
    assert rows(db) == 6


def test_a_leased_batch_is_handed_out_by_priority_then_in_order(db: str) -> None:
    publish(db, [b'"low-1"', b'"low-2"'], priority=1)
    publish(db, [b'"high-1"', b'"high-2"'], priority=9)
    with connection(db) as conn:
        got = take(conn, conn.channel(), 4, prefetch=4)
    assert [m.decode() for m in got] == ["high-1", "high-2", "low-1", "low-2"]


def test_cancelling_a_consumer_gives_back_what_it_leased_but_never_handed_over(db: str) -> None:
    publish(db, numbered(10))
    with connection(db) as conn, connection(db) as other:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=4)
        got: list[Message] = []
        consumer = Consumer(channel, queues=[QUEUE], callbacks=[lambda _b, m: got.append(m)], no_ack=False)
        consumer.consume()
        conn.drain_events(timeout=1)
        consumer.cancel()
        assert ready_count(other) == 9  # only the delivered message is still held
        assert [m.body for m in take(other, other.channel(), 9, timeout=2.0)] == numbered(9, start=1)
        got[0].ack()
    assert rows(db) == 0


def test_a_consumers_ack_is_deleted_with_its_next_poll_and_the_row_stays_leased_until_then(db: str) -> None:
    publish(db, numbered(3))
    with connection(db) as conn, connection(db) as rival:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=1)
        got: list[Message] = []
        with Consumer(channel, queues=[QUEUE], callbacks=[lambda _b, m: got.append(m)], no_ack=False):
            conn.drain_events(timeout=1)
            got[0].ack()
            assert rows(db) == 3  # deferred, never advanced: the delete has not happened yet ...
            assert ready_count(rival) == 2  # ... and the row is still this consumer's, never redelivered
            conn.drain_events(timeout=1)  # the delete commits with the lease of the next message
            assert rows(db) == 2
            assert [m.body for m in got] == numbered(2)
            got[1].ack()
        assert rows(db) == 1  # cancelling the last consumer deletes what is still pending at once


def test_a_deferred_ack_is_deleted_even_when_the_window_stays_full(db: str) -> None:
    publish(db, numbered(3))
    with connection(db) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=2)
        got: list[Message] = []
        with Consumer(channel, queues=[QUEUE], callbacks=[lambda _b, m: got.append(m)], no_ack=False):
            conn.drain_events(timeout=1)
            conn.drain_events(timeout=1)
            got[0].ack()
            got.append(channel.basic_get(QUEUE.name))  # refills the window outside the consumer's polls
            assert rows(db) == 3
            with pytest.raises(TimeoutError):  # a poll that leases nothing still deletes
                conn.drain_events(timeout=0.1)
            assert rows(db) == 2


def test_an_idle_consumer_polls_without_waiting_for_the_write_lock(db: str) -> None:
    publish(db, [])
    options = {"path": db, "polling_interval": 0.01, "busy_timeout": 0.1}
    with Connection(transport=SQLiteTransport, transport_options=options) as conn:
        channel = conn.channel()
        with Consumer(channel, queues=[QUEUE], callbacks=[], no_ack=False):
            assert nothing_arrives(conn, channel, 0.05)  # finds the queue empty once
            with closing(sqlite3.connect(db, isolation_level=None)) as blocker:
                blocker.execute("BEGIN IMMEDIATE")  # e.g. a long store transaction on the same file
                with pytest.raises(TimeoutError):  # not "database is locked"
                    conn.drain_events(timeout=0.3)
                blocker.execute("ROLLBACK")
        publish(db, numbered(1))
        assert [m.body for m in take(conn, channel, 1)] == numbered(1)


# -- many consumers -------------------------------------------------------------------------------------------


def test_two_threads_on_separate_connections_never_get_the_same_message(db: str) -> None:
    publish(db, numbered(500))
    results: list[list[bytes]] = [[], []]

    def consume(into: list[bytes]) -> None:
        with connection(db) as conn:
            channel = conn.channel()
            while batch := take(conn, channel, 50, prefetch=10, timeout=0.5):
                into.extend(m.body for m in batch)

    threads = [threading.Thread(target=consume, args=(into,)) for into in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    union = results[0] + results[1]
    assert sorted(union) == sorted(numbered(500))  # every message once: none lost, none twice
    assert results[0] and results[1]
    assert rows(db) == 0


CHILD = r"""
import json, socket, sys
from kombu import Connection, Consumer, Exchange, Queue
from decortask.transports.sqlite import SQLiteTransport

path, mode, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
got = []

def on_message(body, message):
    got.append(message.body.decode())
    if mode == "drain":
        message.ack()

options = {"path": path, "lease_seconds": lease, "polling_interval": 0.01}
with Connection(transport=SQLiteTransport, transport_options=options) as conn:
    channel = conn.channel()
    channel.basic_qos(prefetch_count=5 if mode == "hold" else 10)
    queue = Queue("jobs", Exchange(""), routing_key="jobs")
    with Consumer(channel, queues=[queue], callbacks=[on_message], no_ack=False):
        print("ready", flush=True)
        sys.stdin.readline()
        while mode == "drain" or len(got) < 5:
            try:
                conn.drain_events(timeout=1.0)
            except socket.timeout:
                if mode == "drain":
                    break
        print(json.dumps(got), flush=True)
        while mode == "hold":  # keep polling (and so renewing) until killed
            try:
                conn.drain_events(timeout=1.0)
            except socket.timeout:
                pass
"""


def spawn(path: str, mode: str, lease: float = 30.0) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, mode, str(lease)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def go(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()


def test_two_consumer_processes_deliver_each_message_exactly_once(db: str) -> None:
    publish(db, [])  # create the queue before the children declare it concurrently
    children = [spawn(db, "drain"), spawn(db, "drain")]
    publish(db, numbered(1000))
    for child in children:
        go(child)
    outputs = [child.communicate(timeout=30)[0] for child in children]
    got = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert all(child.returncode == 0 for child in children)
    assert sorted(got[0] + got[1]) == sorted(b.decode() for b in numbered(1000))
    assert got[0] and got[1]  # both really competed
    assert rows(db) == 0


def test_a_killed_consumers_messages_come_back_after_the_lease(db: str) -> None:
    publish(db, numbered(10))
    child = spawn(db, "hold", lease=1.5)
    try:
        go(child)
        assert child.stdout is not None
        held = json.loads(child.stdout.readline())
        assert len(held) == 5
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with connection(db) as conn:
        assert ready_count(conn) == 5  # still leased by the dead consumer
        got = take(conn, conn.channel(), 10, timeout=10.0)
    bodies = [m.body.decode() for m in got]
    assert sorted(bodies) == sorted(b.decode() for b in numbered(10))
    assert {m.body.decode() for m in got if m.delivery_info["redelivered"]} == set(held)
    assert rows(db) == 0
