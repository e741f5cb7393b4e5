"""Outcome notices for a PostgreSQL store: one LISTEN connection per store and process.

A transition to a terminal status (and a delete) sends the task's id with `pg_notify` in its own
transaction, so the notice is delivered at commit and only then. While someone in this process waits, a
listener thread holds a connection that LISTENs on the store's channel and wakes the waiters of each id
it hears (`OutcomeNotices`). Race-free: a wait registers, then `ready` returns only once the LISTEN is in
place, and only then does the wait read the record; an outcome committed before the LISTEN is in that
read, one after it is heard. A lost connection wakes every waiter to read again and reconnects; with
nobody waiting for `LINGER` seconds the thread closes its connection and exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from .outcome_waiters import OutcomeNotices

#: Longest the listener blocks for a notice before it looks at who waits (and whether to stop).
BLOCK = 0.25
#: Seconds the listener lingers with nobody waiting before it closes its connection and exits.
LINGER = 30.0
#: Longest `ready` waits for the LISTEN; after that the wait reads anyway and rechecks every second.
READY_TIMEOUT = 5.0

logger = logging.getLogger(__name__)


class NotifyListener:
    """The listener thread of one store in one process.

    Args:
        conninfo: the libpq connection string of the store's database.
        channel: the store's notification channel (its schema's).
    """

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self.notices = OutcomeNotices()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._listening = threading.Event()
        self._stop = threading.Event()

    def ready(self, left: float | None) -> None:
        """Start the listener unless it runs, and return once it LISTENs (or after READY_TIMEOUT)."""
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
            if not alive:
                self._pid = os.getpid()
                self._listening, self._stop = threading.Event(), threading.Event()
                self._thread = threading.Thread(
                    target=self._listen,
                    args=(self._listening, self._stop),
                    name="decortask-pg-outcomes",
                    daemon=True,
                )
                self._thread.start()
            listening = self._listening
        listening.wait(READY_TIMEOUT if left is None else min(left, READY_TIMEOUT))

    def close(self) -> None:
        """Stop the listener (within BLOCK seconds); the next wait starts another (a store used again)."""
        with self._lock:
            self._stop.set()
            self._thread = None

    def _listen(self, listening: threading.Event, stop: threading.Event) -> None:
        import psycopg

        conn: Any = None
        try:
            while not stop.is_set():
                try:
                    if conn is None:
                        conn = psycopg.connect(self._conninfo, autocommit=True, application_name="decortask")
                        conn.execute(f'LISTEN "{self._channel}"')
                        listening.set()
                    for notice in conn.notifies(timeout=BLOCK):
                        self.notices.notify(notice.payload)
                    if self._idle():
                        return
                except psycopg.Error as exc:
                    logger.debug("outcome listener: %s; waiters read their records again", exc)
                    listening.clear()
                    self.notices.notify_all()
                    if conn is not None:
                        with contextlib.suppress(psycopg.Error):
                            conn.close()
                    conn = None
                    stop.wait(min(self.notices.recheck, 1.0))
        finally:
            listening.clear()
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _idle(self) -> bool:
        """True when nobody waited for LINGER seconds (the thread then exits, forgetting itself)."""
        if self.notices.waiting() or self.notices.idle_for() < LINGER:
            return False
        with self._lock:
            if self.notices.waiting():
                return False
            if self._thread is threading.current_thread():
                self._thread = None
            return True
