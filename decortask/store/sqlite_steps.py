"""Transitions on a SQLite store: one step, or a group commit's batch, inside the caller's write transaction.

Nearly every claim and outcome is one `UPDATE ... RETURNING` (`sqlite_cas.py`); the rest take the general
path here, which reads the record, applies the step in Python (`base.apply_transition`) and writes the
whole record back. In a batch, a step that fails leaves nothing behind while the other steps commit.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from . import sqlite_cas, sqlite_rows
from .base import LogLine, TaskRecord, TransitionStep, apply_transition
from .follow_state import marks
from .sql_follow import mark_sqlite


class NeedsSavepoints(Exception):
    """A step without a savepoint failed after its statement ran: the batch must be applied again with them."""


def apply_steps(
    conn: sqlite3.Connection, steps: Sequence[TransitionStep], *, savepoints: bool
) -> list[TaskRecord | Exception | None]:
    """The steps of `transition_many` inside its transaction: for each, its record, None or its own error."""
    if len(steps) == 1:  # its own transaction is its savepoint: a failed step rolls it all back
        try:
            return [transition(conn, steps[0])]
        except sqlite3.Error:
            raise
        except Exception as exc:
            conn.execute("ROLLBACK")
            return [exc]
    outcomes: list[TaskRecord | Exception | None] = []
    for step in steps:
        in_sql = True  # whether `transition` should still try the one-statement path
        if not savepoints and step.schedule is None and not step.logs:
            # One statement, atomic by itself, and each statement costs the writer a GIL round trip
            # (the step's log lines, if any, are one more; should that fail, the batch is redone with
            # savepoints).
            try:
                done = sqlite_cas.update(conn, step, time.time())
                if done is not sqlite_cas.UNSUPPORTED:
                    append_lines(conn, step.task_id, step.log_lines)
            except sqlite3.Error:
                raise
            except Exception as exc:
                raise NeedsSavepoints from exc
            if done is not sqlite_cas.UNSUPPORTED:
                outcomes.append(done if isinstance(done, TaskRecord) else None)
                continue
            in_sql = False  # it just said no: the general path, without asking again
        # A savepoint per step: a step that fails part-way (after its UPDATE) leaves nothing behind,
        # while the other steps of the batch still commit.
        conn.execute("SAVEPOINT decortask_step")
        try:
            outcomes.append(transition(conn, step, in_sql=in_sql))
        except sqlite3.Error:
            raise  # the store failed: the whole batch rolls back, and every caller retries
        except Exception as exc:  # this step's own error: undo what it wrote, keep the rest
            conn.execute("ROLLBACK TO decortask_step")
            outcomes.append(exc)
        conn.execute("RELEASE decortask_step")
    return outcomes


def transition(conn: sqlite3.Connection, step: TransitionStep, *, in_sql: bool = True) -> TaskRecord | None:
    """One compare-and-set transition inside the caller's write transaction; see `TaskStore.transition`.

    In SQL when it can (nearly every claim and outcome); `in_sql=False` goes straight to the general path.
    """
    now = time.time()
    done = sqlite_cas.update(conn, step, now) if in_sql else sqlite_cas.UNSUPPORTED
    if done is sqlite_cas.UNSUPPORTED:
        done = transition_in_python(conn, step, now)
    append_lines(conn, step.task_id, step.log_lines)
    if not isinstance(done, TaskRecord):
        return None
    if step.schedule is not None:
        sqlite_rows.put_schedule(conn, step.schedule)
    if step.logs:
        done.logs = sqlite_rows.load_logs(conn, [step.task_id]).get(step.task_id, [])
    return done


def transition_in_python(conn: sqlite3.Connection, step: TransitionStep, now: float) -> TaskRecord | None:
    """The general path: read the record, apply the transition in Python, write the whole record back."""
    current = sqlite_rows.load(conn, step.task_id, logs=False)
    if current is None:
        return None
    updated = apply_transition(current, step, now)
    if updated is None:
        return None
    conn.execute(
        "UPDATE decortask_tasks SET status = ?, expires_at = ?, record = ? WHERE id = ?",
        (updated.status.value, updated.expires_at, sqlite_rows.blob(updated), step.task_id),
    )
    if marks(updated):
        mark_sqlite(conn, step.task_id, now)
    return updated


def append_lines(conn: sqlite3.Connection, task_id: str, lines: Sequence[LogLine]) -> None:
    """Append `lines`, in order, if the task exists (for a step: whether or not its compare-and-set held)."""
    if lines:
        conn.executemany(
            "INSERT INTO decortask_logs (task_id, line) "
            "SELECT ?, ? WHERE EXISTS (SELECT 1 FROM decortask_tasks WHERE id = ?)",
            [(task_id, sqlite_rows.line_json(line), task_id) for line in lines],
        )
