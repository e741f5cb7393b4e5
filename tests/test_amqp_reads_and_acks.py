"""RabbitMQ consumer sessions: reads in chunks (transports/amqp.py) and acks sent in runs (transports/session.py).

A session holds the acks of one settling round and sends them with `send_acks`: one `multiple` ack for the
run of settled deliveries from the oldest unsettled one, one frame for each other. These tests check that
such a run never settles a delivery that was not acked, and that a read split mid-frame loses no byte.
"""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from amqp.exceptions import UnexpectedFrame
from conftest import AMQP_URL, require_amqp
from transport_helpers import receive

from decortask.config import Settings
from decortask.transport import BrokerTransport, Delivery
from decortask.transports.amqp import READ_CHUNK, BufferedTCPTransport


@pytest.fixture
def transport() -> Iterator[BrokerTransport]:
    require_amqp()
    made = BrokerTransport(AMQP_URL, Settings.load({"broker_url": AMQP_URL}))
    yield made
    made.close()


@pytest.fixture
def queue(transport: BrokerTransport) -> Iterator[str]:
    name = f"acks-{uuid.uuid4().hex[:10]}"
    yield name
    transport.delete_queue(name)


def _publish(transport: BrokerTransport, queue: str, count: int) -> None:
    transport.publish_many([(str(n).encode(), queue, 0, None) for n in range(count)])


def _bodies(deliveries: list[Delivery]) -> list[bytes]:
    return sorted(d.body for d in deliveries)


def test_acks_out_of_order_settle_exactly_the_acked_deliveries(
    transport: BrokerTransport, queue: str
) -> None:
    _publish(transport, queue, 5)
    session = transport.open_consumer([queue], prefetch=5)
    try:
        got = receive(session, 5)
        assert [d.body for d in got] == [b"0", b"1", b"2", b"3", b"4"]
        for n in (1, 0, 3):  # 0-1 is a run; 3 is not (2 is unsettled), 4 stays unsettled too
            session.ack(got[n])
        session.send_acks()
    finally:
        session.close(abort=True)  # the broker takes back what was not acked
    again = transport.open_consumer([queue], prefetch=5)
    try:
        assert _bodies(receive(again, 2)) == [b"2", b"4"]
        assert receive(again, 1, timeout=0.3) == []
    finally:
        again.close(abort=True)


def test_a_requeued_delivery_inside_a_run_comes_back_once(transport: BrokerTransport, queue: str) -> None:
    _publish(transport, queue, 3)
    session = transport.open_consumer([queue], prefetch=3)
    try:
        first, second, third = receive(session, 3)
        session.requeue(second)
        session.ack(first)
        session.ack(third)
        session.send_acks()  # one multiple ack up to the third: the requeued second is not the channel's
        (back,) = receive(session, 1)
        assert back.body == b"1"
        session.ack(back)
        assert receive(session, 1, timeout=0.3) == []
    finally:
        session.close()
    assert transport.queue_size(queue) == 0


def test_a_closing_session_sends_the_acks_it_holds(transport: BrokerTransport, queue: str) -> None:
    _publish(transport, queue, 2)
    session = transport.open_consumer([queue], prefetch=2)
    try:
        for delivery in receive(session, 2):
            session.ack(delivery)
    finally:
        session.close()  # no send_acks: the close must not let the broker take them back
    assert transport.queue_size(queue) == 0


def test_large_and_small_bodies_arrive_whole_through_chunked_reads(
    transport: BrokerTransport, queue: str
) -> None:
    big = bytes(range(256)) * (3 * READ_CHUNK // 256 + 7)  # spans several chunks, not a multiple of one
    transport.publish_many([(big, queue, 0, None), *[(str(n).encode(), queue, 0, None) for n in range(20)]])
    session = transport.open_consumer([queue], prefetch=21)
    try:
        got = receive(session, 21)
        assert got[0].body == big
        assert [d.body for d in got[1:]] == [str(n).encode() for n in range(20)]
        for delivery in got:
            session.ack(delivery)
    finally:
        session.close()


def test_a_read_that_times_out_mid_frame_keeps_its_bytes_for_the_next_read() -> None:
    ours, broker = socket.socketpair()
    transport = BufferedTCPTransport.__new__(BufferedTCPTransport)  # no connection: frames from `broker`
    transport.sock = ours
    transport.raise_on_initial_eintr = True
    transport._setup_transport()
    payload = b"x" * 1000
    frame = struct.pack(">BHI", 1, 7, len(payload)) + payload + b"\xce"
    try:
        broker.sendall(frame[:500])
        with pytest.raises(socket.timeout), transport.having_timeout(0.05):
            transport.read_frame()
        broker.sendall(frame[500:] + frame)  # the rest of the first frame, then a second one whole
        with transport.having_timeout(5):
            assert transport.read_frame() == (1, 7, payload)
            assert transport.read_frame() == (1, 7, payload)
    finally:
        ours.close()
        broker.close()


class HandledFrames:
    """How many inbound frames went through py-amqp's own frame handler (`count_handled_frames`)."""

    count = 0


def count_handled_frames(session: Any) -> HandledFrames:
    """Count the frames the session's py-amqp connection hands to its frame handler from now on."""
    raw = session._conn._connection  # the py-amqp connection
    handled = HandledFrames()
    on_frame = raw.on_inbound_frame

    def counted(frame: tuple[int, int, bytes]) -> object:
        handled.count += 1
        return on_frame(frame)

    raw.on_inbound_frame = counted
    return handled


def test_frames_already_buffered_are_read_without_touching_the_socket(
    transport: BrokerTransport, queue: str
) -> None:
    _publish(transport, queue, 20)
    session = transport.open_consumer([queue], prefetch=20)
    raw = session._conn._connection._transport  # type: ignore[union-attr]  # the py-amqp socket transport
    timeouts = 0
    having_timeout = raw.having_timeout

    def counted(timeout: float | None) -> object:  # py-amqp sets the socket's timeout for each read here
        nonlocal timeouts
        timeouts += 1
        return having_timeout(timeout)

    raw.having_timeout = counted
    try:
        got = receive(session, 20)
        assert [d.body for d in got] == [str(n).encode() for n in range(20)]
        # 20 deliveries are 60 frames; only the reads that find the buffer short go to the socket (at most
        # one per delivery, should the broker's bytes come in that many pieces), not one per frame.
        assert timeouts <= 30, f"{timeouts} socket reads for 60 frames"
        for delivery in got:
            session.ack(delivery)
    finally:
        session.close()
    assert transport.queue_size(queue) == 0


def test_a_malformed_buffered_frame_is_refused_as_py_amqp_refuses_it() -> None:
    ours, broker = socket.socketpair()
    transport = BufferedTCPTransport.__new__(BufferedTCPTransport)
    transport.sock = ours
    transport.raise_on_initial_eintr = True
    transport._setup_transport()
    payload = b"y" * 10
    good = struct.pack(">BHI", 1, 3, len(payload)) + payload + b"\xce"
    try:
        broker.sendall(good + good[:-1] + b"\x00")  # the second frame's end octet is wrong
        with transport.having_timeout(5):
            transport._read_buffer = transport._read(len(good) * 2)
        assert transport.buffered_frame() == (1, 3, payload)
        assert transport.buffered_frame() is None  # left to read_frame, which raises
        with pytest.raises(UnexpectedFrame), transport.having_timeout(5):
            transport.read_frame()
    finally:
        ours.close()
        broker.close()


def test_buffered_deliveries_reach_the_consumer_whole_without_py_amqps_frame_handler(
    transport: BrokerTransport, queue: str
) -> None:
    bodies = [b"", b"\xff not utf-8 \xfe", "caf\u00e9".encode(), *[str(n).encode() for n in range(17)]]
    for body in bodies:
        transport.publish_many([(body, queue, 0, {"x-n": len(body)})])
    session = transport.open_consumer([queue], prefetch=len(bodies))
    frames = count_handled_frames(session)
    try:
        got = receive(session, len(bodies))
        assert [d.body for d in got] == bodies  # bytes as sent, empty and non-UTF-8 ones too
        assert all(isinstance(d.body, bytes) for d in got)
        assert [d.headers["x-n"] for d in got] == [len(b) for b in bodies]
        assert {d.queue for d in got} == {queue} and not any(d.redelivered for d in got)
        # 20 deliveries are 60 frames; a delivery buffered whole goes to its channel in one step (the
        # empty body, a delivery without a body frame, and any split by the network take py-amqp's path).
        assert frames.count <= 30, f"{frames.count} frames went through py-amqp's frame handler"
        session.requeue(got[3])
        (again,) = receive(session, 1)
        assert again.body == bodies[3] and again.redelivered
        for delivery in [*got[:3], *got[4:], again]:
            session.ack(delivery)
    finally:
        session.close()
    assert transport.queue_size(queue) == 0


def test_a_delivery_arriving_into_an_empty_buffer_is_read_whole_and_taken_whole(
    transport: BrokerTransport, queue: str
) -> None:
    _publish(transport, queue, 5)
    session = transport.open_consumer([queue], prefetch=1)  # one at a time: each lands in an empty buffer
    frames = count_handled_frames(session)
    try:
        bodies = []
        for _ in range(5):
            (delivery,) = receive(session, 1)
            bodies.append(delivery.body)
            session.ack(delivery)
            session.send_acks()
        assert bodies == [b"0", b"1", b"2", b"3", b"4"]
        # 15 frames; the socket is read before the buffer is looked at, so each delivery is taken whole
        # (one split by the network, rare on a local broker, would send its frames py-amqp's way).
        assert frames.count <= 6, f"{frames.count} frames went through py-amqp's frame handler"
    finally:
        session.close()
    assert transport.queue_size(queue) == 0
