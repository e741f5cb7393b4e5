"""Outcome notices for a SQLite store: one watcher thread per store looks for the tasks this process waits for.

SQLite has no notifications across processes, but `PRAGMA data_version` (a few microseconds, no lock taken)
changes on a connection whenever another connection commits. While someone waits, the watcher waits for a
commit (`sqlitewatch.CommitWatch`: woken by the kernel at a write to the `-wal` on Linux, else looking every
millisecond); only when the version changed does it read the statuses of the awaited tasks (one query for
all of them) and wake those that ended. With nobody waiting it sleeps on a condition, and after `LINGER`
seconds it closes its connection and exits; the next wait starts it again.

Race-free: a commit after the watcher read the version shows at its next read, and the query that follows
looks at every task awaited by then; a commit before a waiter registered is in the waiter's own first read.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

from ..sqlitewatch import CommitWatch
from ..states import TERMINAL
from .outcome_waiters import OutcomeNotices

#: Longest the watcher waits for a commit before it looks at who waits again.
BLOCK = 0.25
#: Seconds the watcher lingers with nobody waiting before it closes its connection and exits.
LINGER = 30.0
_TERMINAL = frozenset(status.value for status in TERMINAL)
_CHUNK = 500  # ids per IN (...) list, far below SQLite's bound-parameter limit

logger = logging.getLogger(__name__)


class OutcomeWatcher:
    """The watcher thread of one store in one process, and its waiters.

    Args:
        connect: opens a connection to the store's file (the store's own opener).
        path: the store's file.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], path: str) -> None:
        self._connect = connect
        self._path = path
        self.notices = OutcomeNotices()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def ready(self, left: float | None) -> None:
        """Start the watcher thread unless it runs (in this process: threads do not survive a fork)."""
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
            if not alive:
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._watch, name=f"decortask-outcomes-{self._path}", daemon=True
                )
                self._thread.start()

    def _watch(self) -> None:
        conn: sqlite3.Connection | None = None
        commits: CommitWatch | None = None
        seen: int | None = None  # the data_version the awaited tasks were last looked at with
        try:
            while True:
                if not self.notices.waiting():
                    seen = None  # commits made while nobody waited were never looked at
                    if self._idle():
                        return
                    continue
                try:
                    if conn is None:
                        conn = self._connect()
                    version = _data_version(conn)
                    if version != seen:
                        self._look(conn)
                        seen = version
                    if commits is None:
                        commits = CommitWatch(self._path)  # after the connection: the -wal exists
                    commits.wait(functools.partial(_changed, conn, version), BLOCK)
                except sqlite3.Error as exc:
                    logger.debug("outcome watcher: %s; waiters read their records again", exc)
                    self.notices.notify_all()
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                    conn = None
                    time.sleep(self.notices.recheck)
        finally:
            if commits is not None:
                commits.close()
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _idle(self) -> bool:
        """Sleep until someone waits; True when nobody did for `LINGER` seconds (the thread then exits)."""
        if self.notices.sleep_until_awaited(1.0):
            return False
        with self._lock:
            if self.notices.idle_for() < LINGER:
                return False
            self._thread = None
            return True

    def _look(self, conn: sqlite3.Connection) -> None:
        """Wake the waiters of tasks that ended (or whose record is gone)."""
        waiting = self.notices.waiting()
        found: dict[str, str] = {}
        for start in range(0, len(waiting), _CHUNK):
            chunk = waiting[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, status FROM decortask_tasks WHERE id IN ({marks})"
            found.update(conn.execute(sql, chunk).fetchall())
        for task_id in waiting:
            status = found.get(task_id)
            if status is None or status in _TERMINAL:
                self.notices.notify(task_id)


def _changed(conn: sqlite3.Connection, version: int) -> bool:
    return _data_version(conn) != version


def _data_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return version
