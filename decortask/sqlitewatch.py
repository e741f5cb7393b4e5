"""Waiting for another connection's commit to a SQLite file in WAL mode, without polling while nothing happens.

Used by the embedded broker's idle consumers (`transports/sqlite.py`) and the SQLite store's outcome
watcher (`store/sqlite_wait.py`). A commit writes frames to the file's `-wal`: on Linux an inotify watch on it
wakes the waiter at the first write, at no cost while the file is quiet. The commit becomes visible a few
microseconds after its last write (when the writer updates the WAL index), so after a wake-up the waiter
looks at `PRAGMA data_version` (the caller's `changed`) every `STEP` for up to `SETTLE` before it blocks again.
Without inotify (another OS, the per-user instance limit reached) it looks every `STEP` all along.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import sys
import time
from collections.abc import Callable

#: Seconds between two looks at `PRAGMA data_version` (all along without inotify, else after a wake-up).
STEP = 0.001
#: Seconds a wake-up keeps looking for the commit that caused it (every SETTLE_STEP) before it blocks again.
SETTLE = 0.005
SETTLE_STEP = 0.0002
_IN_MODIFY = 0x2

logger = logging.getLogger(__name__)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


class CommitWatch:
    """Waits for writes to the `-wal` of the SQLite file at `path`; one per waiting thread, closed after use."""

    def __init__(self, path: str) -> None:
        self._fd: int | None = None
        if _LIBC is None:
            return
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:  # e.g. fs.inotify.max_user_instances reached: look every STEP instead
            logger.debug(
                "no inotify instance (errno %d); polling %s every %g s", ctypes.get_errno(), path, STEP
            )
            return
        if _LIBC.inotify_add_watch(fd, os.fsencode(f"{path}-wal"), _IN_MODIFY) < 0:
            os.close(fd)
            return
        self._fd = fd

    @property
    def notified(self) -> bool:
        """Whether the kernel tells this watch of writes (False: it looks every STEP)."""
        return self._fd is not None

    def wait(self, changed: Callable[[], bool], timeout: float) -> bool:
        """True as soon as `changed()` is (another connection committed), False after `timeout` seconds.

        `changed` is called after each write to the file, or every STEP without inotify; it must be cheap.
        """
        end = time.monotonic() + timeout
        if self._fd is None:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(STEP, left))
                if changed():
                    return True
        # Writes seen before this wait may belong to a commit not yet visible: settle them like new ones.
        written = self._drain()
        while True:
            if changed():
                return True
            if written and self._settle(changed, end):
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            written = self._block(left)

    def _settle(self, changed: Callable[[], bool], end: float) -> bool:
        settle_end = min(end, time.monotonic() + SETTLE)
        while time.monotonic() < settle_end:
            time.sleep(SETTLE_STEP)
            if changed():
                return True
        return False

    def _block(self, timeout: float) -> bool:
        """Wait up to `timeout` s for writes; True if some came (their events are consumed)."""
        assert self._fd is not None
        poller = select.poll()  # not select(): a descriptor past FD_SETSIZE is fine
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000)) and self._drain()

    def _drain(self) -> bool:
        assert self._fd is not None
        got = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 4096):
                got = True
        return got

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
