"""kombu's in-process transport, made to give unacked messages back on close like every real broker."""

from __future__ import annotations


def restoring_memory_transport() -> type:
    """The transport class for `memory://` (built once; kombu's memory queues are process-wide)."""
    global _MEMORY_TRANSPORT
    if _MEMORY_TRANSPORT is None:
        from kombu.transport import memory

        class RestoringChannel(memory.Channel):  # type: ignore[misc]
            do_restore = True

        class RestoringTransport(memory.Transport):  # type: ignore[misc]
            Channel = RestoringChannel

        _MEMORY_TRANSPORT = RestoringTransport
    return _MEMORY_TRANSPORT


_MEMORY_TRANSPORT: type | None = None
