"""SQLite state store: the default, one host, many threads and processes sharing one WAL file.

Every read-modify-write runs inside one `BEGIN IMMEDIATE` transaction, so SQLite's single writer lock is the
compare-and-set. This module holds the `TaskStore` methods, the listing queries, and the connections and
transactions they run in (one connection per thread, lock retries, error messages); the tables and the SQL
on their rows are in `sqlite_rows.py`, transitions in `sqlite_steps.py` and `sqlite_cas.py`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

from .. import sqlitelocks
from ..config import sqlite_path
from ..errors import ConfigurationError, StoreError
from . import (
    sql_follow,
    sql_workers,
    sqlite_events,
    sqlite_expiry,
    sqlite_limits,
    sqlite_outbox,
    sqlite_periodic,
    sqlite_queries,
    sqlite_rows,
    sqlite_spawn,
    sqlite_steps,
    sqlite_workflow,
)
from .base import LogLine, ScheduleEntry, TaskQuery, TaskRecord, TaskStore, TransitionStep, running_at
from .outbox_state import OutboxEntry, OutboxItem, OutboxStore
from .periodic_state import PeriodicStateStore, ScheduleState
from .sql_follow import SQLiteFollow
from .sql_listing import queue_filter
from .sqlite_limits import SQLiteLimits
from .sqlite_queries import SQLITE
from .sqlite_wait import OutcomeWatcher

T = TypeVar("T")

#: Seconds a statement waits for another process's write lock before SQLite reports "database is locked".
BUSY_TIMEOUT = 30.0
#: Extra attempts after a lock timeout, with this first backoff (doubled each time).
LOCK_RETRIES = 3
LOCK_BACKOFF = 0.05


class SQLiteStore(
    TaskStore, PeriodicStateStore, OutboxStore, SQLiteLimits, sqlite_spawn.SQLiteSpawn, SQLiteFollow
):
    """A `TaskStore` in one SQLite file, shared by every thread and process on the host."""

    def __init__(self, url: str, *, read_only: bool = False, events: int = 0) -> None:
        """Open (and create, unless `read_only`) the store a `sqlite://` URL names.

        `read_only` (`decortask show`, `tasks`): the file must exist and hold a decortask store; nothing is
        created or written, and a missing file is a `StoreError` naming the absolute path looked for.
        `events`: when > 0, this store's writes also append to the event feed, which keeps about that many
        events (`sqlite_events.py`, docs/events.md).
        """
        self.url = url
        self.read_only = read_only
        self.path: Path = sqlite_path(url)
        self.busy_timeout = _busy_timeout(url)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._generation = 0
        self._pid = os.getpid()
        self.events = 0  # set once the tables exist: `_open` gives new connections the event triggers
        self._outcomes = OutcomeWatcher(self._open, str(self.path))  # started by the first wait_for_outcome
        self._batches = SharedConnection(self._open)
        self.outcome_notices = self._outcomes.notices
        #: How much one write transaction of `purge_expired` may do, and who hears about each one.
        self.expiry_limits = sqlite_expiry.ExpiryLimits()
        self.on_purge_batch: Callable[[sqlite_expiry.PurgeBatch], None] | None = None
        if read_only:
            if not self.path.is_file():
                raise StoreError(f"there is no SQLite store at {self.path.resolve()} (nothing was created)")
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory for the SQLite store {self.path}: {exc}") from exc
        self._run(sqlite_rows.create_schema)
        self._run(sqlite_periodic.create_schema)
        self._run(sqlite_outbox.create_schema)
        self._run(sqlite_workflow.create_schema)
        self._run(sqlite_spawn.create_schema)
        self._run(sql_follow.create_sqlite_schema)
        self._run(sqlite_events.create_schema)
        self._run(sqlite_limits.create_schema)
        if events > 0:
            self._run(lambda conn: sqlite_events.install_triggers(conn, events))
            self.events = events

    # -- records -------------------------------------------------------------------------------------------

    def create(self, record: TaskRecord) -> TaskRecord:
        return self._run(lambda conn: sqlite_rows.insert(conn, record))

    def create_many(self, records: Sequence[TaskRecord]) -> list[TaskRecord]:
        return self._run(lambda conn: [sqlite_rows.insert(conn, record) for record in records])

    def get(self, task_id: str) -> TaskRecord | None:
        return self._run(lambda conn: sqlite_rows.load(conn, task_id), write=False)

    def delete(self, task_id: str) -> None:
        self._run(lambda conn: sqlite_rows.delete(conn, [task_id]))

    def apply_step(self, step: TransitionStep) -> TaskRecord | None:
        return self._run(lambda conn: sqlite_steps.transition(conn, step))

    def transition_many(self, steps: Sequence[TransitionStep]) -> list[TaskRecord | Exception | None]:
        """Apply `steps` in order in one transaction (group commit; see `store/writer.py`).

        A step that fails leaves nothing behind while the other steps still commit. Steps done by one
        statement (`sqlite_cas`) need no savepoint for that; the others get one each. Should a one-statement
        step fail after its statement ran (its returned record unreadable), the whole batch is rolled back
        and applied again with a savepoint around every step.
        """
        with self._batches.lock:  # one connection for every batch, whichever thread leads it
            try:
                return self._run(
                    lambda conn: sqlite_steps.apply_steps(conn, steps, savepoints=False),
                    connect=self._batches.conn,
                )
            except sqlite_steps.NeedsSavepoints:
                return self._run(
                    lambda conn: sqlite_steps.apply_steps(conn, steps, savepoints=True),
                    connect=self._batches.conn,
                )

    def append_log(self, task_id: str, line: LogLine) -> None:
        # One statement: the line is written only if the task exists, with no window for a delete in between.
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO decortask_logs (task_id, line) "
                "SELECT ?, ? WHERE EXISTS (SELECT 1 FROM decortask_tasks WHERE id = ?)",
                (task_id, sqlite_rows.line_json(line), task_id),
            )
        )

    def append_logs(self, task_id: str, lines: Sequence[LogLine]) -> None:
        """Append several lines of one task in one transaction (captured output, `capture.py`)."""
        rows = [(task_id, sqlite_rows.line_json(line), task_id) for line in lines]
        if rows:
            self._run(
                lambda conn: conn.executemany(
                    "INSERT INTO decortask_logs (task_id, line) "
                    "SELECT ?, ? WHERE EXISTS (SELECT 1 FROM decortask_tasks WHERE id = ?)",
                    rows,
                )
            )

    def set_running_fields(
        self, task_id: str, fields: dict[str, Any], log_lines: Sequence[LogLine], attempt: int | None
    ) -> None:
        def body(conn: sqlite3.Connection) -> None:
            record = sqlite_rows.load(conn, task_id, logs=False)
            if record is not None:
                sqlite_steps.append_lines(conn, task_id, log_lines)
                if not running_at(record, attempt):
                    return
                for name, value in fields.items():
                    setattr(record, name, value)
                conn.execute(
                    "UPDATE decortask_tasks SET record = ? WHERE id = ?", (sqlite_rows.blob(record), task_id)
                )

        self._run(body)

    def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        sql, params = sqlite_queries.page(query)
        if sql is None:
            return []

        def body(conn: sqlite3.Connection) -> list[TaskRecord]:
            records = [TaskRecord.from_json(row[0]) for row in conn.execute(sql, params).fetchall()]
            logs = sqlite_rows.load_logs(conn, [r.id for r in records])
            for record in records:
                record.logs = logs.get(record.id, [])
            return records

        return self._run(body, write=False)

    def count_tasks(self, query: TaskQuery) -> int:
        sql, params = sqlite_queries.count(query)
        if sql is None:
            return 0
        return int(self._run(lambda conn: conn.execute(sql, params).fetchone()[0], write=False))

    def purge_expired(self, now: float) -> int:
        """Delete expired terminal records in short batches, then return the freed pages (`sqlite_expiry`)."""
        try:
            return sqlite_expiry.purge(self._run, self._conn, now, self.expiry_limits, self.on_purge_batch)
        except sqlite3.Error as exc:  # a vacuum step: the batches' own errors come as StoreError from _run
            raise self._error(exc) from exc

    # -- schedule ------------------------------------------------------------------------------------------

    def add_schedule(self, entry: ScheduleEntry) -> None:
        self._run(lambda conn: sqlite_rows.put_schedule(conn, entry))

    def claim_due(self, now: float, limit: int, owner: str, lease: float) -> list[ScheduleEntry]:
        if limit <= 0:
            return []
        due_sql = "SELECT 1 FROM decortask_schedule WHERE due_at <= ? AND claimed_until <= ? LIMIT 1"
        # Every worker polls this several times a second: look without the write lock first.
        if self._run(lambda conn: conn.execute(due_sql, (now, now)).fetchone(), write=False) is None:
            return []

        def body(conn: sqlite3.Connection) -> list[ScheduleEntry]:
            rows = conn.execute(
                "SELECT id, task_id, queue, due_at, body, priority FROM decortask_schedule "
                "WHERE due_at <= ? AND claimed_until <= ? ORDER BY due_at, rowid LIMIT ?",
                (now, now, limit),
            ).fetchall()
            entries = [ScheduleEntry(*row) for row in rows]
            conn.executemany(
                "UPDATE decortask_schedule SET claimed_until = ?, claimed_by = ? WHERE id = ?",
                [(now + lease, owner, e.id) for e in entries],
            )
            return entries

        return self._run(body)

    def remove_schedule(self, entry_ids: Sequence[str], *, claimed_by: str | None = None) -> None:
        ids = list(entry_ids)
        if not ids:
            return
        owner = "" if claimed_by is None else " AND claimed_by = ?"

        def body(conn: sqlite3.Connection) -> None:
            for chunk in sqlite_rows.chunks(ids):
                marks = ", ".join("?" * len(chunk))
                params = [*chunk, claimed_by] if claimed_by is not None else chunk
                conn.execute(f"DELETE FROM decortask_schedule WHERE id IN ({marks}){owner}", params)

        self._run(body)

    def count_schedule(self, queues: Iterable[str] | None = None) -> int:
        where, params = queue_filter(queues, SQLITE)
        if where is None:
            return 0
        sql = f"SELECT COUNT(*) FROM decortask_schedule{where}"
        return int(self._run(lambda conn: conn.execute(sql, params).fetchone()[0], write=False))

    def next_due(self, queues: Iterable[str] | None = None) -> float | None:
        where, params = queue_filter(queues, SQLITE)
        if where is None:
            return None
        sql = f"SELECT MIN(due_at) FROM decortask_schedule{where}"
        value = self._run(lambda conn: conn.execute(sql, params).fetchone()[0], write=False)
        return float(value) if value is not None else None

    # -- workers -------------------------------------------------------------------------------------------

    def heartbeat(self, worker_id: str, now: float) -> None:
        self._run(lambda conn: sql_workers.stamp(conn, "decortask_heartbeats", "?", worker_id, now))

    def last_heartbeat(self, worker_id: str) -> float | None:
        sql = "SELECT ts FROM decortask_heartbeats WHERE worker_id = ?"
        row = self._run(lambda conn: conn.execute(sql, (worker_id,)).fetchone(), write=False)
        return float(row[0]) if row is not None else None

    def heartbeats(self) -> dict[str, float]:
        return self._run(lambda conn: sql_workers.stamps(conn, "decortask_heartbeats"), write=False)

    def worker_stopped(self, worker_id: str, now: float) -> None:
        self._run(lambda conn: sql_workers.stamp(conn, "decortask_worker_stops", "?", worker_id, now))

    def stopped_workers(self) -> dict[str, float]:
        return self._run(lambda conn: sql_workers.stamps(conn, "decortask_worker_stops"), write=False)

    # -- periodic tasks (SQL in sqlite_periodic.py) ---------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, ttl: float, now: float) -> bool:
        return self._run(lambda conn: sqlite_periodic.acquire_lease(conn, name, owner, ttl, now))

    def release_lease(self, name: str, owner: str) -> None:
        self._run(lambda conn: sqlite_periodic.release_lease(conn, name, owner))

    def lease_owner(self, name: str, now: float) -> str | None:
        return self._run(lambda conn: sqlite_periodic.lease_owner(conn, name, now), write=False)

    def schedule_state(self, name: str) -> ScheduleState | None:
        found = self._run(lambda conn: sqlite_periodic.schedule_states(conn, name), write=False)
        return found[0] if found else None

    def schedule_states(self) -> list[ScheduleState]:
        return self._run(sqlite_periodic.schedule_states, write=False)

    def advance_schedule(self, name: str, slot: float) -> ScheduleState:
        return self._run(lambda conn: sqlite_periodic.advance_schedule(conn, name, slot))

    def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState:
        return self._run(lambda conn: sqlite_periodic.set_schedule_paused(conn, name, paused))

    # -- waiting for outcomes (sqlite_wait.py) ---------------------------------------------------------------

    def wait_for_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        """Woken by this process's watcher thread, which looks at `PRAGMA data_version` every millisecond."""
        watcher = self._outcomes
        return watcher.notices.wait(task_id, timeout, self.get, watcher.ready)

    async def await_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        watcher = self._outcomes
        return await watcher.notices.await_outcome(task_id, timeout, self.get, watcher.ready)

    # -- the event feed (SQL in sqlite_events.py) -----------------------------------------------------------

    def read_events(self, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` events after id `after`, oldest first (`decortask.events` reads them)."""
        return self._run(lambda conn: sqlite_events.read(conn, after, limit), write=False)

    def event_bounds(self) -> tuple[int, int]:
        """(the oldest event id kept, the newest id ever written)."""
        return self._run(sqlite_events.bounds, write=False)

    def trim_events(self, keep: int) -> int:
        """Delete all but the newest `keep` events; returns how many were deleted."""
        return self._run(lambda conn: sqlite_events.trim(conn, keep))

    # -- workflow joins (SQL in sqlite_workflow.py) ---------------------------------------------------------

    def join_member(self, join_id: str, member: int) -> int:
        return self._run(lambda conn: sqlite_workflow.join_member(conn, join_id, member))

    # -- outbox (SQL in sqlite_outbox.py) -------------------------------------------------------------------

    def create_outboxed(
        self, records: Sequence[TaskRecord], entries: Sequence[OutboxEntry]
    ) -> list[TaskRecord]:
        return self._run(lambda conn: sqlite_outbox.create(conn, records, entries))

    def mark_published(self, task_ids: Sequence[str], now: float) -> None:
        if task_ids:
            self._run(lambda conn: sqlite_outbox.mark_published(conn, task_ids, now))

    def outbox_due(self, unpublished_since: float, published_since: float, limit: int) -> list[OutboxItem]:
        return self._run(
            lambda conn: sqlite_outbox.due(conn, unpublished_since, published_since, limit), write=False
        )

    def outbox_remove(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            self._run(lambda conn: sqlite_outbox.remove(conn, task_ids))

    def outbox_add(self, entries: Sequence[OutboxEntry]) -> None:
        if entries:
            self._run(lambda conn: sqlite_outbox.add(conn, entries))

    # -- connections ---------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            conns, self._conns = self._conns, []
        for _, conn in conns:
            _close_quietly(conn)
        self._batches.close()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after `close()` or a fork)."""
        local = self._local
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == pid and local.generation == self._generation:
            return conn
        with self._lock:
            if self._pid != pid:
                # Connections must not cross a fork; the parent's are abandoned, never closed, here.
                self._pid, self._conns = pid, []
            stale = [c for t, c in self._conns if not t.is_alive()]
            self._conns = [(t, c) for t, c in self._conns if t.is_alive()]
            generation = self._generation
        for old in stale:
            _close_quietly(old)
        conn = self._open()
        with self._lock:
            self._conns.append((threading.current_thread(), conn))
        local.conn, local.pid, local.generation = conn, pid, generation
        return conn

    def _open(self) -> sqlite3.Connection:
        # SQLite checks the header, never a plain read of the file: closing any other descriptor of the
        # database drops every POSIX lock this process's connections hold on it, and another process that
        # then closes its last connection checkpoints and removes the WAL under them ("database disk
        # image is malformed").
        # Lock waits in fine steps (sqlitelocks.py): SQLite's own handler sleeps a millisecond or more.
        if self.read_only:  # mode=ro: SQLite itself refuses every write, and never creates the file
            target, uri = f"file:{quote(str(self.path.resolve()))}?mode=ro", True
        else:
            target, uri = str(self.path), False
        conn = sqlitelocks.connect(target, self.busy_timeout, uri=uri)
        try:
            if self.read_only:
                sqlite_rows.require_schema(conn, self.path)
            else:
                conn.execute(sqlitelocks.AUTO_VACUUM)  # before WAL, which writes a new file's header
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if self.events:
                    sqlite_events.install_triggers(conn, self.events)
        except sqlite3.DatabaseError as exc:
            _close_quietly(conn)
            if "not a database" in str(exc):  # SQLite read the header and wrote nothing
                raise _not_a_database(self.path) from None
            raise
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    def _run(
        self,
        body: Callable[[sqlite3.Connection], T],
        *,
        write: bool = True,
        connect: Callable[[], sqlite3.Connection] | None = None,
    ) -> T:
        """Run `body` in one transaction (IMMEDIATE when it writes), retrying when the file stays locked.

        `connect`: where to get the connection (default: this thread's own).
        """
        delay = LOCK_BACKOFF
        get = self._conn if connect is None else connect
        for attempt in range(LOCK_RETRIES + 1):
            try:
                conn = get()
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = body(conn)
                    if conn.in_transaction:  # a body may have rolled back on its own (transition_many)
                        conn.execute("COMMIT")
                    return result
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if not sqlitelocks.is_locked(exc) or attempt == LOCK_RETRIES:
                    raise self._error(exc) from exc
                time.sleep(delay)
                delay *= 2
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if sqlitelocks.is_locked(exc):
            return StoreError(
                f"the SQLite store {self.path} stayed locked for over {self.busy_timeout:g} s "
                f"({LOCK_RETRIES} retries): another process holds a long write transaction on it; stop stuck "
                "decortask processes, or use a Redis store (redis://) when many processes write heavily"
            )
        if "not a database" in text:
            return _not_a_database(self.path)
        if "malformed" in text:
            return StoreError(
                f"the SQLite store {self.path} is corrupt ({text}); stop every decortask process using it "
                "and restore it from a backup, or move it away to start with an empty store"
            )
        return StoreError(
            f"the SQLite store {self.path} failed: {text}; check that the file and its directory are "
            "writable and on a local disk (SQLite locking does not work on network filesystems)"
        )


class SharedConnection:
    """One connection that threads take turns on, under `lock`: the group commits' (`transition_many`).

    Each group commit is led by whichever pool thread came first (`store/writer.py`). On that thread's own
    connection it found a cold page cache (SQLite drops a connection's cache when another connection
    committed since its last transaction) and read every page it touched again: about 40 KB per task in a
    drain. One connection for all of them keeps the pages the last batch used.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._after_fork()
        _SHARED.add(self)

    def _after_fork(self) -> None:
        # A child forked while a thread held the lock would wait for ever; the parent's connection is
        # abandoned there, never used or closed (connections must not cross a fork).
        self.lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def conn(self) -> sqlite3.Connection:
        """The connection (call with `lock` held), opened on first use and again after `close`."""
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        with self.lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)


_SHARED: weakref.WeakSet[SharedConnection] = weakref.WeakSet()


def _shared_after_fork() -> None:
    for shared in list(_SHARED):
        shared._after_fork()


os.register_at_fork(after_in_child=_shared_after_fork)


def _not_a_database(path: Path) -> StoreError:
    return StoreError(
        f"{path} is not a SQLite database, so decortask cannot use it as its store and left it untouched; "
        "point the store URL (sqlite:///path.db) at another file, or move this one away if it is garbage"
    )


def _close_quietly(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()


def _busy_timeout(url: str) -> float:
    """How long one statement waits for a lock: `?busy_timeout=` in the URL, else
    `DECORTASK_SQLITE_BUSY_TIMEOUT`, else BUSY_TIMEOUT seconds."""
    query = parse_qs(urlsplit(url).query)
    raw = (query.get("busy_timeout") or [os.environ.get("DECORTASK_SQLITE_BUSY_TIMEOUT", "")])[0]
    if not raw:
        return BUSY_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(
            f"busy_timeout={raw!r} in the SQLite store settings is not a number of seconds"
        ) from None
    if value < 0:
        raise ConfigurationError(f"busy_timeout must be >= 0 seconds, got {value}")
    return value
