"""SQLite connections that wait for another connection's lock in fine steps instead of SQLite's coarse ones.

SQLite's own busy handler sleeps 1 ms after the first failed attempt to take a lock, then 2, 5, 10, ... ms,
while the write transactions of a task queue hold the lock for tens of microseconds. A producer that
inserted a record while a worker committed an outcome waited a whole millisecond for a lock that was free
again after 50 microseconds: about half of a round trip's latency on Redis, and a share of every drain on
the embedded broker, where the broker and the store write the same file.

`PatientConnection` turns SQLite's handler off (timeout 0) and retries a statement that could not start for
a lock, sleeping 20 microseconds at first and doubling up to 2 ms, until `patience` seconds have passed.
Only statements that start a transaction are retried (an autocommit statement, `BEGIN`); a statement inside
an open transaction fails as before, and the caller rolls the transaction back and retries it whole.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any

FIRST_PAUSE = 0.00002
MAX_PAUSE = 0.002
#: Run by every read-write connection before `PRAGMA journal_mode=WAL` (which writes a new file's header):
#: a new file, store or embedded broker, is created with incremental auto-vacuum, so the pages its deleted
#: rows free can be returned to the file system (`store/sqlite_expiry.py`). On an existing file it
#: changes nothing until a `VACUUM`.
AUTO_VACUUM = "PRAGMA auto_vacuum=INCREMENTAL"


def is_locked(exc: sqlite3.Error) -> bool:
    """Whether `exc` is SQLite's "database is locked" / "busy" (another connection holds the lock)."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class PatientConnection(sqlite3.Connection):
    """A connection whose transaction-starting statements wait up to `patience` seconds for a lock."""

    patience: float = 30.0

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if self.in_transaction:
            return super().execute(sql, parameters)
        return self._retry(lambda: super(PatientConnection, self).execute(sql, parameters))

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        if self.in_transaction:
            return super().executemany(sql, parameters)
        rows = list(parameters)  # an iterator must survive a retry
        return self._retry(lambda: super(PatientConnection, self).executemany(sql, rows))

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        return self._retry(lambda: super(PatientConnection, self).executescript(sql_script), script=True)

    def _retry(self, run: Callable[[], sqlite3.Cursor], script: bool = False) -> sqlite3.Cursor:
        """Run a statement that starts a transaction, again after each lock error until patience runs out."""
        pause, deadline = FIRST_PAUSE, 0.0
        while True:
            try:
                return run()
            except sqlite3.OperationalError as exc:
                if script and self.in_transaction:  # a statement of the script failed part-way: not ours
                    raise
                pause, deadline = self._wait(exc, pause, deadline)

    def _wait(self, exc: sqlite3.OperationalError, pause: float, deadline: float) -> tuple[float, float]:
        """Sleep before the next attempt, or re-raise `exc` if it is no lock error or patience ran out."""
        if not is_locked(exc):
            raise exc
        now = time.monotonic()
        if not deadline:
            deadline = now + self.patience
        if now >= deadline:
            raise exc
        time.sleep(min(pause, deadline - now))
        return min(pause * 2, MAX_PAUSE), deadline


def connect(path: str, patience: float, *, uri: bool = False) -> PatientConnection:
    """Open `path` in autocommit mode (`isolation_level=None`) with lock waits of up to `patience` seconds.

    `uri`: `path` is a `file:` URI (e.g. `?mode=ro` for a read-only connection).

    `check_same_thread=False` only so an owner may close every thread's connection; each is used by one.
    """
    conn = sqlite3.connect(
        path,
        timeout=0.0,
        isolation_level=None,
        check_same_thread=False,
        factory=PatientConnection,
        uri=uri,
    )
    assert isinstance(conn, PatientConnection)
    conn.patience = patience
    return conn
