"""The SQL on a PostgreSQL store's records: inserting, reading, and the compare-and-set transitions.

Every function runs on one psycopg connection inside the caller's transaction (`PostgresStore._run`).
A transition is one `UPDATE ... WHERE id = %s AND status = ANY(%s) ... RETURNING`: PostgreSQL re-checks the
`WHERE` on the newest row once a concurrent writer of it commits, so two claims of one task never both
hold. Steps whose outcome SQL cannot decide the same way as `base.apply_transition` (an expected status
from which the move is illegal, an unknown field) take the general path: the row is read `FOR UPDATE`,
the step applied in Python, and the row written back. A transition to a terminal status sends the
task's id with `pg_notify` in the same transaction, which wakes `wait_for_outcome` (`postgres_wait.py`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from ..errors import StoreError
from ..states import ALLOWED, HOLDS_IDEMPOTENCY_KEY
from .base import MUTABLE_FIELDS, LogLine, TaskRecord, TransitionStep, apply_transition
from .follow_state import marks

#: The columns a record is read from, in the order `decode` takes them.
COLUMNS = "record, payload, result, output"
#: Fields kept in `payload`, written once with the record.
_PAYLOAD = ("args", "kwargs", "tags")
#: Fields with columns of their own (`json`, which keeps the caller's key order).
_OWN_COLUMNS = frozenset({"result", "output", *_PAYLOAD, "logs"})
_HOLDING = sorted(s.value for s in HOLDS_IDEMPOTENCY_KEY)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    """`values` fit for the jsonb column: NUL characters in strings become U+FFFD.

    jsonb refuses NUL (`\\u0000`), and an error message or traceback carrying one would otherwise fail
    its outcome write on every retry. The json columns (arguments, result, output) keep NUL as it is.
    """
    return {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in values.items()}


def decode(row: Sequence[Any]) -> TaskRecord:
    """A record from its `COLUMNS` (psycopg has decoded the JSON), without log lines."""
    data = dict(row[0])
    data.update(row[1])
    data["result"] = row[2]
    data["output"] = row[3]
    return TaskRecord.from_dict(data)


def encode(record: TaskRecord) -> tuple[str, str, str, str]:
    """(record, payload, result, output) as the JSON text of their columns."""
    data = record.to_dict()
    scalars = _scalars({key: value for key, value in data.items() if key not in _OWN_COLUMNS})
    payload = {key: data[key] for key in _PAYLOAD}
    return _dumps(scalars), _dumps(payload), _dumps(record.result), _dumps(record.output)


def line_json(line: LogLine) -> str:
    return _dumps(line.to_dict())


class Rows:
    """The SQL on records of one schema (`s`: its quoted name) and its notification channel."""

    def __init__(self, s: str, channel: str) -> None:
        self.s = s
        self.channel = channel

    # -- reading -------------------------------------------------------------------------------------------

    def load(self, conn: Any, task_id: str, *, logs: bool = True, lock: bool = False) -> TaskRecord | None:
        sql = f"SELECT {COLUMNS} FROM {self.s}.decortask_tasks WHERE id = %s" + (
            " FOR UPDATE" if lock else ""
        )
        row = conn.execute(sql, (task_id,)).fetchone()
        if row is None:
            return None
        record = decode(row)
        if logs:
            record.logs = self.load_logs(conn, [task_id]).get(task_id, [])
        return record

    def load_logs(self, conn: Any, task_ids: Sequence[str]) -> dict[str, list[LogLine]]:
        """The log lines of each task that has any, in the order they were written."""
        found: dict[str, list[LogLine]] = {}
        if not task_ids:
            return found
        rows = conn.execute(
            f"SELECT task_id, line FROM {self.s}.decortask_logs WHERE task_id = ANY(%s) ORDER BY seq",
            (list(task_ids),),
        )
        for task_id, line in rows:
            found.setdefault(task_id, []).append(LogLine.from_dict(json.loads(line)))
        return found

    # -- writing -------------------------------------------------------------------------------------------

    def append_lines(self, conn: Any, task_id: str, lines: Sequence[LogLine]) -> None:
        """Append `lines` in order, if the task exists (one statement)."""
        if not lines:
            return
        conn.execute(
            f"INSERT INTO {self.s}.decortask_logs (task_id, line) SELECT %s, x.line "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS x(line, n) "
            f"WHERE EXISTS (SELECT 1 FROM {self.s}.decortask_tasks WHERE id = %s) ORDER BY x.n",
            (task_id, [line_json(line) for line in lines], task_id),
        )

    def insert_many(self, conn: Any, records: Sequence[TaskRecord]) -> list[TaskRecord]:
        """Insert records as `TaskStore.create_many` says: a held idempotency key returns its holder."""
        keys = sorted({r.idempotency_key for r in records if r.idempotency_key is not None})
        holders: dict[str, TaskRecord] = {}
        if keys:
            # One advisory lock per key, in a fixed order: a second creator with the same key waits here
            # until the first commits, and its next statement (a new snapshot) sees the first's record.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(%s::text[]) AS k "
                "ORDER BY k",
                ([f"decortask key {self.s}.{key}" for key in keys],),
            )
            rows = conn.execute(
                f"SELECT i.key, {', '.join('t.' + c for c in COLUMNS.split(', '))} "
                f"FROM {self.s}.decortask_idempotency i JOIN {self.s}.decortask_tasks t ON t.id = i.task_id "
                "WHERE i.key = ANY(%s) AND t.status = ANY(%s)",
                (keys, _HOLDING),
            ).fetchall()
            holders = {row[0]: decode(row[1:]) for row in rows}
        returned: list[tuple[TaskRecord, bool]] = []  # (record, whether it was read from the store)
        inserted: list[TaskRecord] = []
        for record in records:
            key = record.idempotency_key
            holder = holders.get(key) if key is not None else None
            if holder is not None:
                returned.append((holder, holder.id not in {r.id for r in inserted}))
                continue
            kept = record.detached()
            if key is not None and kept.holds_idempotency_key:
                holders[key] = kept
            inserted.append(record)
            returned.append((kept, False))
        if inserted:
            self._insert_rows(conn, inserted)
        return [self._with_logs(conn, r) if stored else r for r, stored in returned]

    def _insert_rows(self, conn: Any, inserted: Sequence[TaskRecord]) -> None:
        try:
            conn.cursor().executemany(
                f"INSERT INTO {self.s}.decortask_tasks (id, name, queue, status, created_at, expires_at, "
                "root_id, record, payload, result, output) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, "
                "%s::json, %s::json, %s::json)",
                [
                    (r.id, r.name, r.queue, r.status.value, r.created_at, r.expires_at, r.root_id, *encode(r))
                    for r in inserted
                ],
            )
        except Exception as exc:
            import psycopg

            if isinstance(exc, psycopg.errors.UniqueViolation):
                detail = exc.diag.message_detail or ""
                raise StoreError(f"a task already exists ({detail}); task ids must be unique") from None
            raise
        keyed = [(r.idempotency_key, r.id) for r in inserted if r.idempotency_key is not None]
        if keyed:
            # The previous holder of a key (failed, cancelled, gone) hands it over; the lock makes it safe.
            conn.cursor().executemany(
                f"INSERT INTO {self.s}.decortask_idempotency (key, task_id) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET task_id = excluded.task_id",
                keyed,
            )
        for record in inserted:
            self.append_lines(conn, record.id, record.logs)

    def _with_logs(self, conn: Any, record: TaskRecord) -> TaskRecord:
        """A holder returned instead of a new record carries its log lines, as `get` would."""
        record.logs = self.load_logs(conn, [record.id]).get(record.id, [])
        return record

    def delete(self, conn: Any, task_ids: Sequence[str]) -> int:
        """Remove records; their log lines and the keys they still hold go with them (ON DELETE CASCADE)."""
        cursor = conn.execute(
            f"WITH gone AS (DELETE FROM {self.s}.decortask_tasks WHERE id = ANY(%s) RETURNING id) "
            "SELECT count(*), count(pg_notify(%s, id)) FROM gone",
            (list(task_ids), self.channel),
        )
        row = cursor.fetchone()
        return int(row[0]) if row else 0

    # -- transitions ---------------------------------------------------------------------------------------

    def transition(self, conn: Any, step: TransitionStep) -> TaskRecord | None:
        """One compare-and-set transition inside the caller's transaction; see `TaskStore.transition`."""
        now = time.time()
        done = self._update(conn, step, now)
        if done is _GENERAL:
            done = self._transition_in_python(conn, step, now)
        self.append_lines(conn, step.task_id, step.log_lines)
        if not isinstance(done, TaskRecord):
            return None
        if step.schedule is not None:
            self.put_schedule(conn, step.schedule)
        if step.logs:
            done.logs = self.load_logs(conn, [step.task_id]).get(step.task_id, [])
        return done

    def transition_alone(self, conn: Any, step: TransitionStep) -> TaskRecord | None:
        """A step of `one_statement` shape: its `UPDATE` alone when SQL decides it (a transaction by itself
        on an autocommit connection; in a batch, all or nothing without a savepoint), else `transition` in
        a transaction block of its own (a savepoint inside a batch)."""
        done = self._update(conn, step, time.time())
        if done is not _GENERAL:
            return done if isinstance(done, TaskRecord) else None
        with conn.transaction():
            return self.transition(conn, step)

    def _update(self, conn: Any, step: TransitionStep, now: float) -> TaskRecord | object | None:
        """The step as one `UPDATE ... RETURNING`, or `_GENERAL` when SQL cannot decide it alike."""
        expect, changes = step.expect, step.changes
        if not expect or any(step.status not in ALLOWED[status] for status in expect):
            return _GENERAL
        if not MUTABLE_FIELDS.issuperset(changes) or ("deliveries" in changes and step.max_deliveries):
            return _GENERAL
        scalars = _scalars({k: v for k, v in changes.items() if k not in _OWN_COLUMNS})
        scalars["status"] = step.status.value
        scalars["updated_at"] = now
        try:
            merged = json.dumps(scalars, separators=(",", ":"), allow_nan=False)
            own = {k: json.dumps(changes[k], allow_nan=False) for k in ("result", "output") if k in changes}
        except (TypeError, ValueError):
            return _GENERAL  # the general path reports it as it does for every backend
        sets = ["status = %s", "record = record || %s::jsonb"]
        params: list[Any] = [step.status.value, merged]
        if step.max_deliveries is not None:  # a claim: count one more delivery, up to the cap
            sets[1] += " || jsonb_build_object('deliveries', coalesce((record->>'deliveries')::int, 0) + 1)"
        if "expires_at" in changes:
            sets.append("expires_at = %s")
            params.append(changes["expires_at"])
        for column, text in own.items():
            sets.append(f"{column} = %s::json")
            params.append(text)
        where = ["id = %s", "status = ANY(%s)"]
        params.extend([step.task_id, sorted(s.value for s in expect)])
        if step.expect_attempt is not None:
            where.append("(record->>'attempt')::bigint = %s")
            params.append(step.expect_attempt)
        if step.max_deliveries is not None:
            where.append("coalesce((record->>'deliveries')::int, 0) < %s")
            params.append(step.max_deliveries)
        update = (
            f"UPDATE {self.s}.decortask_tasks SET {', '.join(sets)} WHERE {' AND '.join(where)} "
            f"RETURNING {COLUMNS}"
        )
        if step.status.terminal:
            # The notice rides in the same statement, sent at commit; so does a workflow's mark of its
            # continuation pending (follow_state.py).
            sql = (
                f"WITH u AS ({update}, id, jsonb_typeof(record->'workflow') = 'object' AS follow), "
                f"f AS (INSERT INTO {self.s}.decortask_follow (task_id, since) SELECT id, %s FROM u "
                "WHERE follow ON CONFLICT (task_id) DO UPDATE SET since = excluded.since) "
                f"SELECT {COLUMNS}, pg_notify(%s, %s) FROM u"
            )
            params.extend([now, self.channel, step.task_id])
        else:
            sql = update
        row = conn.execute(sql, params).fetchone()
        return None if row is None else decode(row[:4])

    def _transition_in_python(self, conn: Any, step: TransitionStep, now: float) -> TaskRecord | None:
        current = self.load(conn, step.task_id, logs=False, lock=True)
        if current is None:
            return None
        updated = apply_transition(current, step, now)
        if updated is None:
            return None
        conn.execute(
            f"UPDATE {self.s}.decortask_tasks SET status = %s, expires_at = %s, record = %s::jsonb, "
            "result = %s::json, output = %s::json WHERE id = %s",
            (updated.status.value, updated.expires_at, *_mutable(updated), step.task_id),
        )
        if updated.status.terminal:
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, step.task_id))
        if marks(updated):
            conn.execute(
                f"INSERT INTO {self.s}.decortask_follow (task_id, since) VALUES (%s, %s) "
                "ON CONFLICT (task_id) DO UPDATE SET since = excluded.since",
                (step.task_id, now),
            )
        return updated

    def set_fields(
        self,
        conn: Any,
        task_id: str,
        scalars: dict[str, Any],
        lines: Sequence[LogLine],
        attempt: int | None = None,
    ) -> None:
        """Merge `scalars` (and `output`, if among them) into an existing record, after its `lines`; with
        `attempt`, only while the record is RUNNING at that attempt (`TaskStore.set_progress`)."""
        self.append_lines(conn, task_id, lines)
        where, params = "id = %s", list[Any]([task_id])
        if attempt is not None:
            where += " AND status = 'RUNNING' AND (record->>'attempt')::bigint = %s"
            params.append(attempt)
        if "output" in scalars:
            conn.execute(
                f"UPDATE {self.s}.decortask_tasks SET output = %s::json WHERE {where}",
                (_dumps(scalars["output"]), *params),
            )
            return
        conn.execute(
            f"UPDATE {self.s}.decortask_tasks SET record = record || %s::jsonb WHERE {where}",
            (_dumps(_scalars(scalars)), *params),
        )

    def put_schedule(self, conn: Any, entry: Any) -> None:
        """Write a schedule entry, unclaimed, replacing one with the same id (which keeps its place)."""
        conn.execute(
            f"INSERT INTO {self.s}.decortask_schedule (id, task_id, queue, due_at, body, priority) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET task_id = excluded.task_id, "
            "queue = excluded.queue, due_at = excluded.due_at, body = excluded.body, "
            "priority = excluded.priority, claimed_until = 0, claimed_by = NULL",
            (entry.id, entry.task_id, entry.queue, entry.due_at, entry.body, entry.priority),
        )


def one_statement(step: TransitionStep) -> bool:
    """Whether `step` writes nothing but its record (no schedule entry, no log lines, no logs read back):
    then its compare-and-set, when SQL decides it, is a single statement."""
    return step.schedule is None and not step.log_lines and not step.logs


def _mutable(record: TaskRecord) -> tuple[str, str, str]:
    scalars, _, result, output = encode(record)
    return scalars, result, output


#: Returned by `Rows._update` when a step must take the general path.
_GENERAL = object()
