"""A SQLite store transition as one `UPDATE ... RETURNING`: the compare-and-set and the change run in SQL.

The general path (`store/sqlite_steps.py` `transition_in_python`) reads the record, decodes its JSON, checks the
expectations in Python, encodes the whole record again and writes it back. A worker does that twice per
task (the claim and the outcome), and the decoding and encoding were a tenth of a draining worker's Python
time. Here the expectations become the `WHERE` clause (the status column, the attempt and delivery count in
the JSON) and the changes a `json_set` of just the changed fields, which SQLite does in C without the GIL;
only the returned record is decoded.

Only steps whose outcome cannot differ from the general path take it: an expected-status set whose every
transition to the target is legal (so `IllegalTransition` cannot arise), known fields only, and values
that JSON keeps exactly. Everything else returns `UNSUPPORTED` and takes the general path.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any, Final

from ..states import ALLOWED
from .base import MUTABLE_FIELDS, NOT_READ_BACK, TaskRecord, TransitionStep
from .sql_follow import mark_sqlite

#: Returned when a step must take the general path.
UNSUPPORTED: Final = object()
#: Integers SQLite binds exactly (64-bit); larger ones travel as JSON text.
_MAX_BOUND_INT = 2**63 - 1


def _json_value(value: Any) -> tuple[str, Any] | None:
    """(SQL placeholder, parameter) that `json_set` stores as the same JSON value; None if it cannot."""
    kind = type(value)
    if value is None or kind is str:
        return "?", value  # NULL becomes JSON null, text a JSON string
    if kind is int and abs(value) <= _MAX_BOUND_INT:
        return "?", value
    if kind is float:
        # A bound REAL is printed with 15 significant digits; repr's text keeps every bit of the float.
        return ("json(?)", repr(value)) if math.isfinite(value) else None
    try:
        return "json(?)", json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None


def update(conn: Any, step: TransitionStep, now: float) -> TaskRecord | object | None:
    """Apply `step` as one `UPDATE ... RETURNING`; the updated record (without logs), None, or UNSUPPORTED.

    A step with `read_back=False` (and no logs asked for) returns `NOT_READ_BACK` instead of the record; a
    record damaged in fields this step does not touch is then not noticed by it (the next read reports it).

    None: the record is missing or an expectation does not hold, exactly when `apply_transition` says so.
    """
    expect, changes = step.expect, step.changes
    if not expect or any(step.status not in ALLOWED[status] for status in expect):
        return UNSUPPORTED
    if not MUTABLE_FIELDS.issuperset(changes) or ("deliveries" in changes and step.max_deliveries):
        return UNSUPPORTED
    setters: list[str] = ["?, ?", "?, json(?)"]
    params: list[Any] = ["$.status", step.status.value, "$.updated_at", repr(float(now))]
    for name, value in changes.items():
        encoded = _json_value(value)
        if encoded is None:
            return UNSUPPORTED
        setters.append(f"?, {encoded[0]}")
        params.extend((f"$.{name}", encoded[1]))
    where = ["id = ?", f"status IN ({', '.join('?' * len(expect))})"]
    where_params: list[Any] = [step.task_id, *sorted(status.value for status in expect)]
    if step.expect_attempt is not None:
        where.append("json_extract(record, '$.attempt') = ?")
        where_params.append(step.expect_attempt)
    if step.max_deliveries is not None:  # a claim: count one more delivery, up to the cap
        deliveries = "coalesce(json_extract(record, '$.deliveries'), 0)"
        setters.append(f"'$.deliveries', {deliveries} + 1")
        where.append(f"{deliveries} < ?")
        where_params.append(step.max_deliveries)
    columns = "status = ?"
    column_params: list[Any] = [step.status.value]
    if "expires_at" in changes:
        columns += ", expires_at = ?"
        column_params.append(changes["expires_at"])
    # Decoding the returned record was a quarter of a claim's and an outcome's cost; an outcome's caller
    # only asks whether it held (its log lines, when asked for, go onto the returned record).
    read_back = step.read_back or step.logs
    returning = "record" if read_back else "1"
    if step.status.terminal:  # a workflow's outcome marks its continuation pending (follow_state.py)
        returning += ", json_type(record, '$.workflow') = 'object'"
    sql = (
        f"UPDATE decortask_tasks SET {columns}, record = json_set(record, {', '.join(setters)}) "
        f"WHERE {' AND '.join(where)} RETURNING {returning}"
    )
    try:
        row = conn.execute(sql, (*column_params, *params, *where_params)).fetchone()
    except sqlite3.OperationalError as exc:
        if "malformed JSON" in str(exc):  # a damaged record: the general path reports it for this step alone
            return UNSUPPORTED
        raise
    if row is None:
        return None
    if step.status.terminal and row[1]:
        mark_sqlite(conn, step.task_id, now)
    return TaskRecord.from_json(row[0]) if read_back else NOT_READ_BACK
