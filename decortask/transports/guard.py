"""kombu channels whose messages are never decompressed: decortask reads raw bytes only."""

from __future__ import annotations

from typing import Any

_GUARDED: dict[type, type] = {}


def guard_channel(channel: Any) -> None:
    """Make `channel` build messages that kombu never decompresses.

    kombu expands a body whose headers name a compression before anyone can look at it, so a few hundred
    kilobytes could become gigabytes ahead of the payload limit. The subclass drops the `compression`
    header as kombu stores it (its constructor then skips decompression) and remembers it, so the worker
    dead-letters the message as `compression_not_allowed` with its bytes untouched.
    """
    base = channel.Message
    if getattr(base, "_decortask_guarded", False):
        return
    guarded = _GUARDED.get(base)
    if guarded is None:

        class GuardedMessage(base):  # type: ignore[misc, valid-type]
            _decortask_guarded = True

            @property
            def headers(self) -> dict[str, Any]:
                return self.__dict__.get("_decortask_headers", {})  # type: ignore[no-any-return]

            @headers.setter
            def headers(self, value: Any) -> None:
                headers = dict(value or {})
                compression = headers.pop("compression", None)
                if compression is not None:
                    self.__dict__["refused_compression"] = str(compression)
                self.__dict__["_decortask_headers"] = headers

        guarded = _GUARDED[base] = GuardedMessage
    channel.Message = guarded
