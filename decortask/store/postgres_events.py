"""The event feed of a PostgreSQL store: task events appended by triggers in the writer's transaction.

Triggers on `decortask_tasks` (a new record, a change of status or attempt, a change of progress) and on
`decortask_logs` (a line) append one row to `decortask_events` in the statement that made the change, so an
event exists exactly when its change committed. They write only for sessions that asked: a store opened
with events on (`PostgresStore(url, events=N)`) starts its connections with `decortask.events = N`, and for
every other session the triggers return at once.

Events are numbered by one counter row, taken with the event's transaction and held until it ends: event
N + 1 is numbered only once event N's transaction has committed or rolled back (a rollback gives its
number back), so the numbers are contiguous in commit order and a reader that has seen N and next sees
N + k knows k - 1 events were trimmed in between (`events.py` reports a gap). The price: writers that make
events take turns at the counter, as on SQLite. Every 1,000th event (or every N/10th, for a small N) trims
the table to the newest N.
"""

from __future__ import annotations

import time
from typing import Any

from .event_rows import FIELDS, TRIM_EVERY, event_fields

#: How often a read that may wait looks for new events.
POLL = 0.05

_DATA = ", ".join(f"NEW.record->'{name}'" for name in FIELDS)

#: Schema version 3 (`postgres_schema.MIGRATIONS`); `{s}` is the quoted schema name.
MIGRATION = (
    "CREATE TABLE {s}.decortask_events (id bigint PRIMARY KEY, ts double precision NOT NULL,"
    " kind text NOT NULL, task_id text NOT NULL, name text, queue text, status text, data text)",
    "CREATE TABLE {s}.decortask_event_counter (n bigint NOT NULL)",
    "INSERT INTO {s}.decortask_event_counter (n) VALUES (0)",
    "CREATE FUNCTION {s}.decortask_append_event(keep bigint, kind text, task_id text, name text, queue text,"
    " status text, data text) RETURNS void LANGUAGE plpgsql AS $$ DECLARE next_id bigint; BEGIN"
    " UPDATE {s}.decortask_event_counter SET n = n + 1 RETURNING n INTO next_id;"
    " INSERT INTO {s}.decortask_events VALUES (next_id, extract(epoch FROM clock_timestamp()), kind, task_id,"
    " name, queue, status, data);"
    f" IF next_id % greatest(1, least({TRIM_EVERY}, keep / 10)) = 0 THEN"  # event_rows.trim_every
    " DELETE FROM {s}.decortask_events WHERE id <= next_id - keep; END IF; END $$",
    "CREATE FUNCTION {s}.decortask_task_event() RETURNS trigger LANGUAGE plpgsql AS $$"
    " DECLARE keep bigint := nullif(current_setting('decortask.events', true), '')::bigint; kind text;"
    " BEGIN IF keep IS NULL THEN RETURN NULL; END IF;"
    " IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status"
    " OR NEW.record->'attempt' IS DISTINCT FROM OLD.record->'attempt' THEN kind := 'state';"
    " ELSIF NEW.record->'progress' IS DISTINCT FROM OLD.record->'progress'"
    " OR NEW.record->'progress_message' IS DISTINCT FROM OLD.record->'progress_message' THEN kind := 'progress';"
    " ELSE RETURN NULL; END IF;"
    " PERFORM {s}.decortask_append_event(keep, kind, NEW.id, NEW.name, NEW.queue, NEW.status,"
    f" jsonb_build_array({_DATA})::text); RETURN NULL; END $$",
    "CREATE FUNCTION {s}.decortask_log_event() RETURNS trigger LANGUAGE plpgsql AS $$"
    " DECLARE keep bigint := nullif(current_setting('decortask.events', true), '')::bigint; t record;"
    " BEGIN IF keep IS NULL THEN RETURN NULL; END IF;"
    " SELECT name, queue, status INTO t FROM {s}.decortask_tasks WHERE id = NEW.task_id;"
    " PERFORM {s}.decortask_append_event(keep, 'log', NEW.task_id, t.name, t.queue, t.status, NEW.line);"
    " RETURN NULL; END $$",
    "CREATE TRIGGER decortask_task_event AFTER INSERT OR UPDATE ON {s}.decortask_tasks"
    " FOR EACH ROW EXECUTE FUNCTION {s}.decortask_task_event()",
    "CREATE TRIGGER decortask_log_event AFTER INSERT ON {s}.decortask_logs"
    " FOR EACH ROW EXECUTE FUNCTION {s}.decortask_log_event()",
)


class PostgresEventFeed:
    """The `events.EventFeed` of a PostgreSQL store, read through the store's connections.

    A read that may wait looks again every POLL seconds.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def read(self, after: int, limit: int, wait: float) -> list[tuple[int, dict[str, Any]]]:
        sql = (
            f"SELECT id, ts, kind, task_id, name, queue, status, data FROM {self.store.s}.decortask_events "
            "WHERE id > %s ORDER BY id LIMIT %s"
        )
        deadline = time.monotonic() + wait
        while True:
            rows = self.store._run(lambda conn: conn.execute(sql, (after, limit)).fetchall(), atomic=False)
            left = deadline - time.monotonic()
            if rows or left <= 0:
                return [(int(row[0]), event_fields(row)) for row in rows]
            time.sleep(min(POLL, left))

    def bounds(self) -> tuple[int, int]:
        s = self.store.s
        sql = (
            f"SELECT (SELECT min(id) FROM {s}.decortask_events), (SELECT n FROM {s}.decortask_event_counter)"
        )
        oldest, newest = self.store._run(lambda conn: conn.execute(sql).fetchone(), atomic=False)
        newest = int(newest or 0)
        return (int(oldest) if oldest is not None else newest + 1), newest

    def trim(self, keep: int) -> int:
        sql = (
            f"DELETE FROM {self.store.s}.decortask_events WHERE id <= "
            f"(SELECT n FROM {self.store.s}.decortask_event_counter) - %s"
        )
        return int(self.store._run(lambda conn: conn.execute(sql, (max(keep, 0),)).rowcount, atomic=False))

    def close(self) -> None:
        return None
