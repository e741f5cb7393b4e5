"""AMQP connections that read the socket in chunks: py-amqp reads each frame with three `recv` calls.

py-amqp's `TCPTransport._read` asks the socket for exactly the bytes it needs next: a frame's 7-byte
header, its payload, its 1-byte end. A delivery is three frames (method, header, body), so nine `recv`
system calls, each of which releases the GIL and must win it back from the pool threads: on a busy
worker the consumer thread spent a quarter of its time there. Here `_read` takes whatever the socket
holds (up to `READ_CHUNK`) and serves the next frames from that buffer. What a frame is and how a read
that times out part-way keeps its bytes (`read_frame` puts them back in `_read_buffer`) is py-amqp's,
unchanged; tests/test_kombu_contract.py checks the method this replaces.

One recv brings a whole prefetch window of deliveries, so most frames are in the buffer already: for those
`BufferedConnection.blocking_read` cuts the frame out of the buffer itself (`buffered_frame`; with an empty
buffer it first reads what the socket holds, `fill`), skipping
py-amqp's per-frame socket-timeout context (two `settimeout` calls and a generator) and its three reads.
A delivery whose three frames (basic.deliver, content header, one body frame) are all buffered goes
straight to the channel's `_on_basic_deliver`, as py-amqp's frame handler and `dispatch_method` would hand
it, without their per-frame bookkeeping, and with the body left as bytes (py-amqp decodes it to `str`,
and the consumer encodes it back). Anything else (a partial or malformed frame, another method, a body in
several frames, a closing channel, a waiter for the delivery) takes py-amqp's own path, unchanged.
"""

from __future__ import annotations

import errno
import select
import struct
from collections.abc import Callable
from typing import Any

from amqp.basic_message import Message
from amqp.serialization import loads
from amqp.transport import _UNAVAIL, TCPTransport
from kombu.transport import pyamqp

#: Most bytes one `recv` takes. The broker sends at most the prefetch window of deliveries ahead, so the
#: buffer stays a few kilobytes and slicing it costs nothing that matters.
READ_CHUNK = 65536
#: An AMQP frame: type (octet), channel (short), payload size (long), payload, then this end octet.
_FRAME_HEADER = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">HH")
#: A content header's body size: after its class id (short) and weight (short).
_BODY_SIZE = struct.Struct(">Q")
_FRAME_END = 0xCE
#: basic.deliver's (class, method) and its arguments: consumer tag, delivery tag, redelivered, exchange,
#: routing key (py-amqp's `spec.method(spec.Basic.Deliver, 'sLbss', content=True)`).
_BASIC_DELIVER = (60, 60)
_DELIVER_ARGS = "sLbss"
_METHOD, _HEADER, _BODY = 1, 2, 3


class BufferedTCPTransport(TCPTransport):  # type: ignore[misc]  # py-amqp is untyped
    """`TCPTransport` whose reads take what the socket holds and keep the rest for the next frames."""

    _read_buffer: bytes  # py-amqp's: read from the socket, not yet framed

    def _read(
        self, n: int, initial: bool = False, _errnos: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)
    ) -> bytes:
        rbuf = self._read_buffer
        if len(rbuf) < n:
            recv = self._quick_recv
            try:
                while len(rbuf) < n:
                    try:
                        chunk = recv(max(n - len(rbuf), READ_CHUNK))
                    except OSError as exc:
                        if exc.errno in _errnos:
                            if initial and self.raise_on_initial_eintr:
                                raise TimeoutError() from None
                            continue
                        raise
                    if not chunk:
                        raise OSError("Server unexpectedly closed connection")
                    rbuf += chunk
            except BaseException:
                self._read_buffer = rbuf
                raise
        result, self._read_buffer = rbuf[:n], rbuf[n:]
        return result

    def frame_buffered(self) -> bool:
        """Whether the buffer holds at least one whole frame (header, payload and end octet)."""
        rbuf = self._read_buffer
        return len(rbuf) >= 8 and len(rbuf) > 7 + _FRAME_HEADER.unpack_from(rbuf)[2]

    def fill(self) -> None:
        """Add what the socket holds (at least one byte, waiting up to the socket's timeout) to the buffer.

        Raises as py-amqp's `read_frame` does: `socket.timeout` with the buffer kept, and an `OSError` that
        marks the transport disconnected unless the socket was only unavailable for now.
        """
        try:
            got = self._read(len(self._read_buffer) + 1, True)
        except TimeoutError:  # socket.timeout: the caller's wait ran out, the buffer is kept
            raise
        except OSError as exc:
            if exc.errno not in _UNAVAIL:
                self.connected = False
            raise
        self._read_buffer = got + self._read_buffer

    def buffered_frame(self) -> tuple[int, int, bytes] | None:
        """The next frame as `read_frame` returns it, if the buffer holds all of it; else None, and the
        buffer is untouched (`read_frame` then reads the rest, or raises on a malformed frame)."""
        rbuf = self._read_buffer
        if len(rbuf) < 8:
            return None
        frame_type, channel, size = _FRAME_HEADER.unpack_from(rbuf)
        end = 7 + size
        if len(rbuf) <= end or rbuf[end] != _FRAME_END:
            return None
        self._read_buffer = rbuf[end + 1 :]
        return frame_type, channel, rbuf[7:end]

    def buffered_delivery(self) -> tuple[int, bytes, bytes, bytes] | None:
        """The next delivery (channel, method payload, header payload, body) if the buffer holds all of it
        as three frames (basic.deliver, content header, one body frame), without taking it; else None."""
        rbuf = self._read_buffer
        size = len(rbuf)
        if size < 8 + 12 + 8 + 8:  # three frames: headers, end octets, and the header frame's fixed fields
            return None
        kind, channel, method_size = _FRAME_HEADER.unpack_from(rbuf)
        if kind != _METHOD or method_size < 4 or _METHOD_ID.unpack_from(rbuf, 7) != _BASIC_DELIVER:
            return None
        at = 7 + method_size
        if size <= at + 8 or rbuf[at] != _FRAME_END:
            return None
        kind, header_channel, header_size = _FRAME_HEADER.unpack_from(rbuf, at + 1)
        method_end, at = at, at + 8
        if kind != _HEADER or header_channel != channel or header_size < 14 or size <= at + header_size + 8:
            return None
        header_end = at + header_size
        if rbuf[header_end] != _FRAME_END:
            return None
        (body_size,) = _BODY_SIZE.unpack_from(rbuf, at + 4)
        kind, body_channel, frame_size = _FRAME_HEADER.unpack_from(rbuf, header_end + 1)
        body_at = header_end + 8
        body_end = body_at + frame_size
        if (
            kind != _BODY
            or body_channel != channel
            or frame_size != body_size
            or not body_size
            or size <= body_end
            or rbuf[body_end] != _FRAME_END
        ):
            return None
        return channel, rbuf[7:method_end], rbuf[at:header_end], rbuf[body_at:body_end]

    def take(self, delivery: tuple[int, bytes, bytes, bytes]) -> None:
        """Drop the delivery `buffered_delivery` returned from the buffer (its three frames)."""
        _channel, method, header, body = delivery
        self._read_buffer = self._read_buffer[len(method) + len(header) + len(body) + 24 :]

    def input_waiting(self) -> bool:
        """Whether a read would find bytes now (buffered, or on the socket), without reading.

        A consumer that takes every delivery already sent asks this before each further read: py-amqp's
        read with no wait finds out by letting the socket raise a timeout through five frames of its code.
        """
        return bool(self._read_buffer) or bool(select.select([self.sock], [], [], 0)[0])


def input_waiting(conn: Any) -> Callable[[], bool] | None:
    """`BufferedTCPTransport.input_waiting` of a kombu connection's socket; None on other transports."""
    # `_connection`, not `connection`: kombu's property connects when there is no connection.
    transport = getattr(getattr(conn, "_connection", None), "_transport", None)
    return transport.input_waiting if isinstance(transport, BufferedTCPTransport) else None


class BufferedConnection(pyamqp.Connection):  # type: ignore[misc]
    """kombu's py-amqp connection on a `BufferedTCPTransport` (TLS connections keep py-amqp's own)."""

    def blocking_read(self, timeout: float | None = None) -> Any:
        """py-amqp's `blocking_read`, without touching the socket when the next frame is buffered whole."""
        transport = self._transport
        if isinstance(transport, BufferedTCPTransport):
            if not transport.frame_buffered():  # read first, so a delivery that arrives whole is taken whole
                with transport.having_timeout(timeout):
                    transport.fill()
            delivery = transport.buffered_delivery()
            if delivery is not None and self._deliver(transport, delivery):
                return True
            frame = transport.buffered_frame()
            if frame is not None:
                return self.on_inbound_frame(frame)
        return super().blocking_read(timeout)

    def _deliver(self, transport: BufferedTCPTransport, delivery: tuple[int, bytes, bytes, bytes]) -> bool:
        """Hand a whole buffered delivery to its channel as py-amqp would; False (buffer untouched) when
        py-amqp's own path must take it: an unknown or closing channel, or someone waiting for a delivery."""
        channel_id, method, header, body = delivery
        channel = (self.channels or {}).get(channel_id)
        if (
            channel is None
            or getattr(channel, "is_closing", True)
            or _BASIC_DELIVER in channel._pending
            or channel._callbacks.get(_BASIC_DELIVER) != channel._on_basic_deliver
        ):
            return False
        transport.take(delivery)
        self.bytes_recv += 3  # py-amqp's frame handler counts frames here (the heartbeat check reads it)
        message = Message()
        message.inbound_header(header)
        message.inbound_body(body)
        args, _ = loads(_DELIVER_ARGS, method, 4)
        channel._on_basic_deliver(*args, message)
        return True

    def Transport(  # py-amqp's name and signature
        self,
        host: str,
        connect_timeout: float | None,
        ssl: Any = False,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
        socket_settings: Any = None,
        **kwargs: Any,
    ) -> Any:
        if ssl:
            return super().Transport(
                host, connect_timeout, ssl, read_timeout, write_timeout, socket_settings, **kwargs
            )
        return BufferedTCPTransport(
            host,
            connect_timeout=connect_timeout,
            ssl=ssl,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            socket_settings=socket_settings,
            **kwargs,
        )


class BufferedAmqpTransport(pyamqp.Transport):  # type: ignore[misc]
    """kombu's `pyamqp` transport with `BufferedConnection`s."""

    Connection = BufferedConnection
