"""PostgreSQL state store: many hosts sharing one database, on psycopg 3 with a connection pool.

`postgresql://user:password@host:5432/db?schema=name` (also `postgres://`). Every method runs in one
transaction on a pooled connection (`_run`): claims and transitions are compare-and-set `UPDATE`s
(`postgres_rows.py`), the schedule is claimed with `FOR UPDATE SKIP LOCKED` so claimers never wait for
each other, and `wait_for_outcome` is woken by LISTEN/NOTIFY (`postgres_wait.py`). decortask creates and
migrates its tables itself (`postgres_schema.py`); its event feed is written by triggers
(`postgres_events.py`).

URL options besides libpq's own: `schema` (default `public`), `pool_min` and `pool_max` (connections,
default 1 and 20), `pool_timeout` (seconds to wait for a free connection, default 30).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool

from ..errors import ConfigurationError, StoreError
from ..security import mask_url
from ..states import TERMINAL
from . import postgres_queries, postgres_schema, sql_workers
from .base import LogLine, ScheduleEntry, TaskQuery, TaskRecord, TaskStore, TransitionStep
from .outbox_state import OutboxEntry, OutboxItem, OutboxStore
from .periodic_state import PeriodicStateStore, ScheduleState
from .postgres_joined import Joined, TupleRows, join
from .postgres_limits import PostgresLimits
from .postgres_queries import POSTGRES
from .postgres_rows import COLUMNS, Rows, decode, one_statement
from .postgres_spawn import PostgresSpawn
from .postgres_wait import NotifyListener
from .sql_follow import PostgresFollow
from .sql_listing import queue_filter
from .workflow_state import WorkflowStore, join_ids

T = TypeVar("T")

#: Records one purge transaction deletes at most: each batch holds its row locks only briefly.
PURGE_BATCH = 1000
#: Retries of a transaction PostgreSQL aborted to break a deadlock (it wrote nothing).
RETRIES = 3
_TERMINAL = sorted(s.value for s in TERMINAL)
_OWN_OPTIONS = ("schema", "pool_min", "pool_max", "pool_timeout")


class PostgresStore(
    TaskStore, PeriodicStateStore, OutboxStore, WorkflowStore, PostgresLimits, PostgresSpawn, PostgresFollow
):
    """A `TaskStore` in a PostgreSQL database, shared by every process and host that reaches it."""

    def __init__(self, url: str, *, events: int = 0, create: bool = True) -> None:
        """Open the store a `postgresql://` URL names, creating or migrating its tables unless `create` is
        False (`decortask tasks`, `show`: a schema without them is a `StoreError`, and nothing is created)."""
        self.url = url
        self._masked = mask_url(url)
        #: > 0: this store's writes also append to the event feed, which keeps about that many events.
        self.events = max(events, 0)
        self.schema, self.conninfo, options = _parse(url)
        self.s = postgres_schema.quoted_schema(self.schema)
        self.channel = ("decortask_" + self.schema)[:63]
        self._rows = Rows(self.s, self.channel)
        self._pool_min = _int_option(options, "pool_min", 1)
        self._pool_max = max(self._pool_min, _int_option(options, "pool_max", 20))
        self._pool_timeout = float(options.get("pool_timeout", "30"))
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._pid = os.getpid()
        self._forked_pools: list[ConnectionPool[Any]] = []  # a parent's pools, never closed from a child
        self._listener = NotifyListener(self.conninfo, self.channel)
        self.outcome_notices = self._listener.notices
        self._joined: TupleRows | None = None  # set on a view bound to a caller's transaction (`joined`)
        try:
            with psycopg.connect(self.conninfo, application_name="decortask") as conn:
                if create:
                    postgres_schema.migrate(conn, self.schema, self._masked)
                else:
                    postgres_schema.require(conn, self.schema, self._masked)
        except psycopg.Error as exc:
            raise self._error(exc) from None

    # -- records -------------------------------------------------------------------------------------------

    def create(self, record: TaskRecord) -> TaskRecord:
        return self.create_many([record])[0]

    def create_many(self, records: Sequence[TaskRecord]) -> list[TaskRecord]:
        if not records:
            return []
        return self._run(lambda conn: self._rows.insert_many(conn, records))

    def get(self, task_id: str) -> TaskRecord | None:
        return self._run(lambda conn: self._rows.load(conn, task_id))

    def delete(self, task_id: str) -> None:
        self._run(lambda conn: self._rows.delete(conn, [task_id]), atomic=False)

    def apply_step(self, step: TransitionStep) -> TaskRecord | None:
        if one_statement(step):  # a claim, most outcomes: one round trip
            return self._run(lambda conn: self._rows.transition_alone(conn, step), atomic=False)
        return self._run(lambda conn: self._rows.transition(conn, step))

    def transition_many(self, steps: Sequence[TransitionStep]) -> list[TaskRecord | Exception | None]:
        """Apply `steps` in order in one transaction (group commit, `store/writer.py`); a step's own error
        rolls back its savepoint only, a failure of the store rolls back them all."""

        def body(conn: Any) -> list[TaskRecord | Exception | None]:
            outcomes: list[TaskRecord | Exception | None] = []
            for step in steps:
                try:
                    if one_statement(step):  # its UPDATE writes all or nothing: no savepoint needed
                        outcomes.append(self._rows.transition_alone(conn, step))
                        continue
                    with conn.transaction():
                        outcomes.append(self._rows.transition(conn, step))
                except psycopg.Error:
                    raise
                except Exception as exc:
                    outcomes.append(exc)
            return outcomes

        return self._run(body)

    def append_log(self, task_id: str, line: LogLine) -> None:
        self.append_logs(task_id, [line])

    def append_logs(self, task_id: str, lines: Sequence[LogLine]) -> None:
        """Append several lines of one task in one statement (captured output, `capture.py`)."""
        if lines:
            self._run(lambda conn: self._rows.append_lines(conn, task_id, lines), atomic=False)

    def set_running_fields(
        self, task_id: str, fields: dict[str, Any], log_lines: Sequence[LogLine], attempt: int | None
    ) -> None:
        self._run(lambda conn: self._rows.set_fields(conn, task_id, fields, log_lines, attempt))

    def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        sql, params = postgres_queries.page(self.s, COLUMNS, query)
        if sql is None:
            return []

        def body(conn: Any) -> list[TaskRecord]:
            records = [decode(row[1:]) for row in conn.execute(sql, params).fetchall()]
            logs = self._rows.load_logs(conn, [r.id for r in records])
            for record in records:
                record.logs = logs.get(record.id, [])
            return records

        return self._run(body)

    def count_tasks(self, query: TaskQuery) -> int:
        sql, params = postgres_queries.count(self.s, query)
        if sql is None:
            return 0
        return int(self._run(lambda conn: conn.execute(sql, params).fetchone()[0], atomic=False))

    def purge_expired(self, now: float) -> int:
        """Delete expired terminal records in batches of PURGE_BATCH, one short transaction each."""
        sql = (
            f"DELETE FROM {self.s}.decortask_tasks WHERE id IN (SELECT id FROM {self.s}.decortask_tasks "
            "WHERE expires_at <= %s AND status = ANY(%s) LIMIT %s FOR UPDATE SKIP LOCKED) "
            "RETURNING record->'workflow'"
        )
        joins = f"DELETE FROM {self.s}.decortask_joins WHERE join_id = ANY(%s)"

        def batch(conn: Any) -> int:
            # The joins these records name go with them (`workflow_state.join_ids`), in one transaction.
            specs = conn.execute(sql, (now, _TERMINAL, PURGE_BATCH)).fetchall()
            named: set[str] = set()
            for (spec,) in specs:
                named |= join_ids(spec)
            if named:
                conn.execute(joins, (sorted(named),))
            return len(specs)

        total = 0
        while True:
            deleted: int = self._run(batch)
            total += deleted
            if deleted < PURGE_BATCH:
                return total

    # -- schedule ------------------------------------------------------------------------------------------

    def add_schedule(self, entry: ScheduleEntry) -> None:
        self._run(lambda conn: self._rows.put_schedule(conn, entry), atomic=False)

    def claim_due(self, now: float, limit: int, owner: str, lease: float) -> list[ScheduleEntry]:
        if limit <= 0:
            return []
        # SKIP LOCKED: claimers racing for due entries take different ones instead of waiting in line.
        sql = (
            f"UPDATE {self.s}.decortask_schedule SET claimed_until = %s, claimed_by = %s WHERE id IN ("
            f"SELECT id FROM {self.s}.decortask_schedule WHERE due_at <= %s AND claimed_until <= %s "
            "ORDER BY due_at, seq LIMIT %s FOR UPDATE SKIP LOCKED) "
            "RETURNING id, task_id, queue, due_at, body, priority, seq"
        )
        rows = self._run(
            lambda conn: conn.execute(sql, (now + lease, owner, now, now, limit)).fetchall(), atomic=False
        )
        rows.sort(key=lambda row: (row[3], row[6]))
        return [ScheduleEntry(*row[:6]) for row in rows]

    def remove_schedule(self, entry_ids: Sequence[str], *, claimed_by: str | None = None) -> None:
        if entry_ids:
            sql = f"DELETE FROM {self.s}.decortask_schedule WHERE id = ANY(%s)"
            params: list[Any] = [list(entry_ids)]
            if claimed_by is not None:
                sql += " AND claimed_by = %s"
                params.append(claimed_by)
            self._run(lambda conn: conn.execute(sql, params), atomic=False)

    def count_schedule(self, queues: Iterable[str] | None = None) -> int:
        where, params = queue_filter(queues, POSTGRES)
        if where is None:
            return 0
        sql = f"SELECT count(*) FROM {self.s}.decortask_schedule{where}"
        return int(self._run(lambda conn: conn.execute(sql, params).fetchone()[0], atomic=False))

    def next_due(self, queues: Iterable[str] | None = None) -> float | None:
        where, params = queue_filter(queues, POSTGRES)
        if where is None:
            return None
        sql = f"SELECT min(due_at) FROM {self.s}.decortask_schedule{where}"
        value = self._run(lambda conn: conn.execute(sql, params).fetchone()[0], atomic=False)
        return float(value) if value is not None else None

    # -- workers -------------------------------------------------------------------------------------------

    def heartbeat(self, worker_id: str, now: float) -> None:
        self._run(
            lambda conn: sql_workers.stamp(conn, f"{self.s}.decortask_heartbeats", "%s", worker_id, now)
        )

    def last_heartbeat(self, worker_id: str) -> float | None:
        sql = f"SELECT ts FROM {self.s}.decortask_heartbeats WHERE worker_id = %s"
        row = self._run(lambda conn: conn.execute(sql, (worker_id,)).fetchone(), atomic=False)
        return float(row[0]) if row is not None else None

    def heartbeats(self) -> dict[str, float]:
        return self._run(
            lambda conn: sql_workers.stamps(conn, f"{self.s}.decortask_heartbeats"), atomic=False
        )

    def worker_stopped(self, worker_id: str, now: float) -> None:
        self._run(
            lambda conn: sql_workers.stamp(conn, f"{self.s}.decortask_worker_stops", "%s", worker_id, now)
        )

    def stopped_workers(self) -> dict[str, float]:
        return self._run(
            lambda conn: sql_workers.stamps(conn, f"{self.s}.decortask_worker_stops"), atomic=False
        )

    # -- periodic tasks ------------------------------------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, ttl: float, now: float) -> bool:
        sql = (
            f"INSERT INTO {self.s}.decortask_leases AS l (name, owner, until) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until "
            "WHERE l.until <= %s OR l.owner = excluded.owner RETURNING owner"
        )
        row = self._run(
            lambda conn: conn.execute(sql, (name, owner, now + ttl, now)).fetchone(), atomic=False
        )
        return row is not None and row[0] == owner

    def release_lease(self, name: str, owner: str) -> None:
        sql = f"DELETE FROM {self.s}.decortask_leases WHERE name = %s AND owner = %s"
        self._run(lambda conn: conn.execute(sql, (name, owner)), atomic=False)

    def lease_owner(self, name: str, now: float) -> str | None:
        sql = f"SELECT owner FROM {self.s}.decortask_leases WHERE name = %s AND until > %s"
        row = self._run(lambda conn: conn.execute(sql, (name, now)).fetchone(), atomic=False)
        return str(row[0]) if row else None

    def schedule_state(self, name: str) -> ScheduleState | None:
        found = self._states(" WHERE name = %s", (name,))
        return found[0] if found else None

    def schedule_states(self) -> list[ScheduleState]:
        return self._states(" ORDER BY name", ())

    def advance_schedule(self, name: str, slot: float) -> ScheduleState:
        sql = (
            f"INSERT INTO {self.s}.decortask_periodic AS p (name, last_slot) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET last_slot = excluded.last_slot "
            "WHERE p.last_slot IS NULL OR p.last_slot < excluded.last_slot"
        )
        self._run(lambda conn: conn.execute(sql, (name, slot)), atomic=False)
        return self._states(" WHERE name = %s", (name,))[0]

    def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState:
        sql = (
            f"INSERT INTO {self.s}.decortask_periodic (name, paused) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused"
        )
        self._run(lambda conn: conn.execute(sql, (name, paused)), atomic=False)
        return self._states(" WHERE name = %s", (name,))[0]

    def _states(self, clause: str, params: tuple[Any, ...]) -> list[ScheduleState]:
        sql = f"SELECT name, last_slot, paused FROM {self.s}.decortask_periodic{clause}"
        rows = self._run(lambda conn: conn.execute(sql, params).fetchall(), atomic=False)
        return [
            ScheduleState(str(n), float(last) if last is not None else None, bool(p)) for n, last, p in rows
        ]

    # -- outbox --------------------------------------------------------------------------------------------

    def create_outboxed(
        self, records: Sequence[TaskRecord], entries: Sequence[OutboxEntry]
    ) -> list[TaskRecord]:
        return self._run(lambda conn: self.create_outboxed_on(conn, records, entries))

    def create_outboxed_on(
        self, conn: Any, records: Sequence[TaskRecord], entries: Sequence[OutboxEntry]
    ) -> list[TaskRecord]:
        """`create_outboxed` inside the transaction open on `conn` (the caller's own, for a transactional
        enqueue): nothing is visible, and nothing published, before that transaction commits."""
        if not records:
            return []
        stored = self._rows.insert_many(conn, records)
        rows = [
            (e.task_id, e.queue, e.priority, e.persistent, e.body, e.since)
            for record, e, kept in zip(records, entries, stored, strict=True)
            if kept.id == record.id
        ]
        if rows:
            conn.cursor().executemany(
                f"INSERT INTO {self.s}.decortask_outbox (id, queue, priority, persistent, body, since) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )
        return stored

    def mark_published(self, task_ids: Sequence[str], now: float) -> None:
        if task_ids:
            sql = f"UPDATE {self.s}.decortask_outbox SET published = true, since = %s WHERE id = ANY(%s)"
            self._run(lambda conn: conn.execute(sql, (now, list(task_ids))), atomic=False)

    def outbox_due(self, unpublished_since: float, published_since: float, limit: int) -> list[OutboxItem]:
        # Each half walks the (published, since) index; the outer ORDER BY merges the two short lists.
        half = f"(SELECT * FROM {self.s}.decortask_outbox WHERE published = %s AND since <= %s ORDER BY since LIMIT %s)"
        sql = (
            "SELECT o.id, o.queue, o.priority, o.persistent, o.body, o.since, o.published, t.status, "
            "(t.record->>'attempt')::bigint, (t.record->>'deliveries')::bigint "
            f"FROM ({half} UNION ALL {half}) o LEFT JOIN {self.s}.decortask_tasks t ON t.id = o.id "
            "ORDER BY o.since LIMIT %s"
        )
        params = (False, unpublished_since, limit, True, published_since, limit, limit)
        rows = self._run(lambda conn: conn.execute(sql, params).fetchall(), atomic=False)
        return [
            OutboxItem(
                OutboxEntry(task_id, queue, int(priority), bool(persistent), body, float(since)),
                bool(published),
                _status(status),
                int(attempt or 0),
                int(deliveries or 0),
            )
            for task_id, queue, priority, persistent, body, since, published, status, attempt, deliveries in rows
        ]

    def outbox_remove(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            sql = f"DELETE FROM {self.s}.decortask_outbox WHERE id = ANY(%s)"
            self._run(lambda conn: conn.execute(sql, (list(task_ids),)), atomic=False)

    def outbox_add(self, entries: Sequence[OutboxEntry]) -> None:
        if not entries:
            return
        sql = (
            f"INSERT INTO {self.s}.decortask_outbox (id, queue, priority, persistent, body, since, published) "
            "VALUES (%s, %s, %s, %s, %s, %s, true) ON CONFLICT (id) DO UPDATE SET queue = EXCLUDED.queue, "
            "priority = EXCLUDED.priority, persistent = EXCLUDED.persistent, body = EXCLUDED.body, "
            "since = EXCLUDED.since, published = true"
        )
        rows = [(e.task_id, e.queue, e.priority, e.persistent, e.body, e.since) for e in entries]
        self._run(lambda conn: conn.cursor().executemany(sql, rows))

    # -- workflow joins (workflow_state.py) -----------------------------------------------------------------

    def join_member(self, join_id: str, member: int) -> int:
        def body(conn: Any) -> int:
            # The join's lock: members ending at once count one after the other, so the last one counts
            # them all (each count is a statement after the lock, with a snapshot that sees the others).
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"decortask join {join_id}",)
            )
            conn.execute(
                f"INSERT INTO {self.s}.decortask_joins (join_id, member, ended_at) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (join_id, member, time.time()),
            )
            row = conn.execute(
                f"SELECT count(*) FROM {self.s}.decortask_joins WHERE join_id = %s", (join_id,)
            )
            return int(row.fetchone()[0])

        return self._run(body)

    # -- waiting for outcomes ------------------------------------------------------------------------------

    def wait_for_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        """Woken by a NOTIFY the terminal transition sends at its commit (`postgres_wait.py`)."""
        return self._listener.notices.wait(task_id, timeout, self.get, self._listener.ready)

    async def await_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        return await self._listener.notices.await_outcome(task_id, timeout, self.get, self._listener.ready)

    # -- connections ---------------------------------------------------------------------------------------

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            pool, self._pool = self._pool, None
            mine = self._pid == os.getpid()
        if pool is not None and mine:
            pool.close()

    def joined(self, connection: Any, *, owner_commits: bool = False) -> AbstractContextManager[Joined]:
        """This store in the caller's psycopg `connection`'s transaction (`postgres_joined.join`)."""
        return join(self, connection, owner_commits=owner_commits)

    def _connections(self) -> ConnectionPool[Any]:
        """This process's pool, opened on first use (and again after `close()` or a fork)."""
        pid = os.getpid()
        with self._lock:
            if self._pid != pid:  # connections must not cross a fork: the parent's pool is left alone
                if self._pool is not None:
                    self._forked_pools.append(self._pool)
                self._pool, self._pid = None, pid
                self._listener = NotifyListener(self.conninfo, self.channel)
                self.outcome_notices = self._listener.notices
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.conninfo,
                    min_size=self._pool_min,
                    max_size=self._pool_max,
                    timeout=self._pool_timeout,
                    kwargs=self._session(),
                    name=f"decortask-{self.schema}",
                    open=True,
                )
            return self._pool

    def _session(self) -> dict[str, Any]:
        """How the pool opens its connections: in autocommit, and asking for events (the feed's triggers,
        `postgres_events.py`) only when this store was opened with them."""
        session: dict[str, Any] = {"application_name": "decortask", "autocommit": True}
        if self.events:
            session["options"] = f"-c decortask.events={int(self.events)}"
        return session

    def _run(self, body: Callable[[Any], T], *, atomic: bool = True) -> T:
        """Run `body` in one transaction on a pooled connection; a deadlock victim is retried.

        `atomic=False`: `body` runs one statement, which is a transaction by itself (the pool's connections
        are in autocommit), so BEGIN and COMMIT would only add two round trips.
        """
        if self._joined is not None:  # a view in the caller's transaction: a savepoint in it, no retry
            try:
                with self._joined.transaction():
                    return body(self._joined)
            except psycopg.Error as exc:
                raise self._error(exc) from None
        for attempt in range(RETRIES + 1):
            try:
                with self._connections().connection() as conn:
                    if not atomic:
                        return body(conn)
                    with conn.transaction():
                        return body(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                if attempt == RETRIES:
                    raise self._error(exc) from None
                time.sleep(0.01 * 2**attempt)
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError):
                    self._drop_dead_connections()
                raise self._error(exc) from None
            except Exception as exc:
                from psycopg_pool import PoolTimeout

                if isinstance(exc, PoolTimeout):
                    raise StoreError(
                        f"the PostgreSQL store {self._masked} had no free connection for "
                        f"{self._pool_timeout:g} s (pool_max={self._pool_max}): the server is unreachable "
                        "or every connection is busy; check the server, or raise ?pool_max="
                    ) from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop_dead_connections(self) -> None:
        """After a lost connection, test the idle ones: a server restart ends them all, and without this
        each would fail one more call before the pool replaced it."""
        pool = self._pool
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.check()

    def _error(self, exc: BaseException) -> StoreError:
        text = str(exc).strip()
        password = urlsplit(self.url).password
        if password:
            text = text.replace(password, "****")
        if isinstance(exc, psycopg.OperationalError):  # connecting, or the connection went away
            hint = (
                "check that the server is up and that the URL's host, user, password and database are right"
            )
        elif isinstance(exc, psycopg.errors.UndefinedTable):
            hint = "its tables are gone: reopen the store (decortask creates them) or check the URL's schema"
        else:
            hint = "decortask could not write or read this record there; the message above says why"
        return StoreError(f"the PostgreSQL store {self._masked} failed: {text}; {hint}")


def _parse(url: str) -> tuple[str, str, dict[str, str]]:
    """(schema, libpq connection string, decortask's own options) of a store URL."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    options = {key: value for key, value in pairs if key in _OWN_OPTIONS}
    libpq = [(key, value) for key, value in pairs if key not in _OWN_OPTIONS]
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(libpq), ""))
    return options.get("schema", "public"), conninfo, options


def _int_option(options: dict[str, str], name: str, default: int) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw!r} in the PostgreSQL store URL is not a whole number"
        ) from None
    if value < 1:
        raise ConfigurationError(f"{name} in the PostgreSQL store URL must be at least 1, got {value}")
    return value


def _status(value: str | None) -> Any:
    from ..states import TaskStatus

    return TaskStatus(value) if value is not None else None
