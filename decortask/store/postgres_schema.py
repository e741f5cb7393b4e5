"""The tables of a PostgreSQL store, and the versioned migration that creates and upgrades them.

Every table lives in one PostgreSQL schema (`?schema=` in the URL, `public` by default), so several stores
can share a database. `decortask_schema` holds the version of the tables; `migrate` brings an older
version up to `SCHEMA_VERSION` in one transaction under an advisory lock (processes opening the store at
once migrate it once), and refuses a newer version, which a newer decortask wrote.

Records are split by how they change: `record` (jsonb) holds the scalar fields a transition sets, so a
compare-and-set merges its changes in SQL (`record || changes`); `payload` (args, kwargs, tags), `result`
and `output` are `json`, which keeps the text as written (jsonb would reorder the keys of the caller's
dicts). Text columns that listings sort on use the "C" collation: code point order, as Python sorts.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigurationError, StoreError
from . import postgres_events, postgres_limits, postgres_spawn, sql_follow

#: The version of the tables this decortask writes; a store at a newer one is refused.
SCHEMA_VERSION = 7

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: Statements of each version, run in order by `migrate`; `{s}` is the quoted schema name.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        'CREATE TABLE {s}.decortask_tasks (id text COLLATE "C" PRIMARY KEY, seq bigserial NOT NULL,'
        ' name text COLLATE "C" NOT NULL, queue text COLLATE "C" NOT NULL,'
        ' status text COLLATE "C" NOT NULL, created_at double precision NOT NULL,'
        " expires_at double precision, record jsonb NOT NULL, payload json NOT NULL, result json,"
        " output json)",
        # Listings walk one of these newest first and stop at their page (postgres_queries.py).
        "CREATE INDEX decortask_tasks_created ON {s}.decortask_tasks (created_at, seq)",
        "CREATE INDEX decortask_tasks_status ON {s}.decortask_tasks (status, created_at, seq)",
        "CREATE INDEX decortask_tasks_name ON {s}.decortask_tasks (name, created_at, seq)",
        "CREATE INDEX decortask_tasks_queue ON {s}.decortask_tasks (queue, created_at, seq)",
        "CREATE INDEX decortask_tasks_expires ON {s}.decortask_tasks (expires_at)"
        " WHERE expires_at IS NOT NULL",
        # Log lines in order of seq; deleting a record deletes its lines and the keys it holds.
        'CREATE TABLE {s}.decortask_logs (seq bigserial PRIMARY KEY, task_id text COLLATE "C" NOT NULL'
        " REFERENCES {s}.decortask_tasks (id) ON DELETE CASCADE, line text NOT NULL)",
        "CREATE INDEX decortask_logs_task ON {s}.decortask_logs (task_id, seq)",
        'CREATE TABLE {s}.decortask_idempotency (key text PRIMARY KEY, task_id text COLLATE "C" NOT NULL'
        " REFERENCES {s}.decortask_tasks (id) ON DELETE CASCADE)",
        "CREATE INDEX decortask_idempotency_task ON {s}.decortask_idempotency (task_id)",
        "CREATE TABLE {s}.decortask_schedule (id text PRIMARY KEY, seq bigserial NOT NULL,"
        " task_id text NOT NULL, queue text NOT NULL, due_at double precision NOT NULL, body text NOT NULL,"
        " priority integer NOT NULL DEFAULT 0, claimed_until double precision NOT NULL DEFAULT 0,"
        " claimed_by text)",
        "CREATE INDEX decortask_schedule_due ON {s}.decortask_schedule (due_at, seq)",
        "CREATE INDEX decortask_schedule_queue ON {s}.decortask_schedule (queue, due_at)",
        "CREATE TABLE {s}.decortask_heartbeats (worker_id text PRIMARY KEY, ts double precision NOT NULL)",
        "CREATE TABLE {s}.decortask_worker_stops (worker_id text PRIMARY KEY, ts double precision NOT NULL)",
        "CREATE TABLE {s}.decortask_leases (name text PRIMARY KEY, owner text NOT NULL,"
        " until double precision NOT NULL)",
        "CREATE TABLE {s}.decortask_periodic (name text PRIMARY KEY, last_slot double precision,"
        " paused boolean NOT NULL DEFAULT false)",
        "CREATE TABLE {s}.decortask_outbox (id text PRIMARY KEY, queue text NOT NULL,"
        " priority integer NOT NULL, persistent boolean NOT NULL, body text NOT NULL,"
        " since double precision NOT NULL, published boolean NOT NULL DEFAULT false)",
        "CREATE INDEX decortask_outbox_since ON {s}.decortask_outbox (published, since)",
    ),
    # Workflows (issue 13): one row per ended chord member (`workflow_state.py`).
    2: (
        "CREATE TABLE {s}.decortask_joins (join_id text NOT NULL, member integer NOT NULL,"
        " ended_at double precision NOT NULL, PRIMARY KEY (join_id, member))",
    ),
    # The event feed (`postgres_events.py`): its table, counter and triggers.
    3: postgres_events.MIGRATION,
    # Flow control (issue 17): rate logs and concurrency slots (`postgres_limits.py`).
    4: postgres_limits.MIGRATION,
    # Late results (issue 13): the mailboxes of tasks that spawned children (`postgres_spawn.py`).
    5: postgres_spawn.MIGRATION,
    # A workflow's tasks (issue 13, `TaskQuery.root_id`): a column that never changes, so a transition
    # stays a HOT update, indexed only for the tasks of a workflow.
    6: (
        'ALTER TABLE {s}.decortask_tasks ADD COLUMN root_id text COLLATE "C"',
        "UPDATE {s}.decortask_tasks SET root_id = record->>'root_id' WHERE record->>'root_id' IS NOT NULL",
        "CREATE INDEX decortask_tasks_root ON {s}.decortask_tasks (root_id, created_at, seq)"
        " WHERE root_id IS NOT NULL",
    ),
    # Workflows' continuations pending (issue 13, `follow_state.py`): the tasks whose worker may have died
    # between the outcome and what follows it.
    7: sql_follow.MIGRATION,
}


def quoted_schema(name: str) -> str:
    """The schema name as a quoted SQL identifier; a `ConfigurationError` for a name decortask refuses."""
    if not _SCHEMA_NAME.match(name):
        raise ConfigurationError(
            f"schema={name!r} in the PostgreSQL store URL is not a plain identifier: use letters, digits "
            "and underscores (at most 63, not starting with a digit)"
        )
    return f'"{name}"'


def newer_schema_error(where: str, found: int) -> StoreError:
    return StoreError(
        f"the PostgreSQL store {where} has tables at schema version {found}, newer than version "
        f"{SCHEMA_VERSION}, the newest this decortask knows: a newer decortask wrote it. Upgrade decortask "
        "in this environment to the version the other processes run, or use another schema (?schema=...)"
    )


def migrate(conn: Any, schema: str, where: str) -> int:
    """Create or upgrade the tables of `schema` on `conn` (a psycopg connection, not in autocommit).

    Returns the version found before (0: none). Raises `StoreError` for a newer version.
    """
    s = quoted_schema(schema)
    found = _version(conn, s)
    if found == SCHEMA_VERSION:
        return found
    if found is not None and found > SCHEMA_VERSION:
        raise newer_schema_error(where, found)
    with conn.transaction():
        # Every process opening a new store gets here at once: one migrates, the others then see it done.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"decortask schema {schema}",))
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if exists is None:
            conn.execute(f"CREATE SCHEMA {s}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {s}.decortask_schema (version integer NOT NULL)")
        row = conn.execute(f"SELECT version FROM {s}.decortask_schema FOR UPDATE").fetchone()
        current = 0 if row is None else int(row[0])
        if current > SCHEMA_VERSION:
            raise newer_schema_error(where, current)
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                conn.execute(statement.format(s=s))
        if row is None:
            conn.execute(f"INSERT INTO {s}.decortask_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        else:
            conn.execute(f"UPDATE {s}.decortask_schema SET version = %s", (SCHEMA_VERSION,))
        _trigram_index(conn, s)
    return current


def require(conn: Any, schema: str, where: str) -> None:
    """Raise `StoreError` unless `schema` holds decortask's tables at a version this decortask reads."""
    found = _version(conn, quoted_schema(schema))
    if found is None:
        raise StoreError(
            f"there is no decortask store in schema {schema!r} of {where} (nothing was created): check the "
            "URL's database and ?schema=, or start a worker or producer on it first"
        )
    if found > SCHEMA_VERSION:
        raise newer_schema_error(where, found)


def _version(conn: Any, s: str) -> int | None:
    """The version the store's tables are at, or None when it has none yet (read outside any lock)."""
    import psycopg

    try:
        with conn.transaction():
            row = conn.execute(f"SELECT max(version) FROM {s}.decortask_schema").fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return None
    return None if row is None or row[0] is None else int(row[0])


def _trigram_index(conn: Any, s: str) -> None:
    """A trigram index for the listings' text search, when pg_trgm is installed in the database.

    decortask never installs the extension itself (that takes rights a store's user need not have); without
    it the search scans the records' ids and names.
    """
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'"
    ).fetchone()
    if row is None:
        return
    ops = f'"{row[0]}".gin_trgm_ops'
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS decortask_tasks_text ON {s}.decortask_tasks USING gin (id {ops}, name {ops})"
    )
