"""The SQL of the task listings (`SQLiteStore.list_tasks` and `count_tasks`): filters, order and paging.

A page deep in a large listing is found on the index alone: the inner query orders and skips rowids
(the `created_at` and `status` indexes cover it), and only the page's own rows are read and decoded, so
the 50,000th row costs about what the first does. The list index (created_at, status, name, queue, id)
holds every column a filter or a text search reads, so those walk the index, never the records; only
ordering by name or queue sorts every match (no index leads with them: each would cost every enqueue).
"""

from __future__ import annotations

from typing import Any

from .base import TaskQuery
from .sql_listing import Dialect, order_by, order_clauses, where

#: The list index's own order: by creation time, ties (a batch shares one) in the index's column order,
#: so a page deep in the list is found by walking the index, never by sorting every row.
_BY_CREATED = "created_at {0}, status {0}, name {0}, queue {0}, id {0}"
#: ORDER BY clauses for each `TaskQuery.order`.
_ORDER_SQL = order_clauses(newest=_BY_CREATED.format("DESC"), oldest=_BY_CREATED.format("ASC"))
#: LIKE folds ASCII case, as `matches` folds case (ids and task names are ASCII in practice); it runs on
#: the list index alone, about twice as fast as instr(lower(...)).
SQLITE = Dialect(mark="?", text_match="(id LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\')")


def page(query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SELECT of the records on `query`'s page, in its order; None when it can match nothing."""
    # `+status` keeps the planner off the status index (a unary `+` makes it unindexable), so a page is
    # found walking the list index in order; the status index would need every match sorted.
    clause, params = where(query, SQLITE, status_column="+status")
    if clause is None or query.limit <= 0:
        return None, []
    order = order_by(_ORDER_SQL, query.order)
    sql = (
        "SELECT record FROM decortask_tasks WHERE rowid IN "
        f"(SELECT rowid FROM decortask_tasks{clause} ORDER BY {order} LIMIT ? OFFSET ?) ORDER BY {order}"
    )
    return sql, [*params, query.limit, max(query.offset, 0)]


def count(query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SELECT COUNT(*) of the records `query` matches; None when it can match nothing."""
    clause, params = where(query, SQLITE)
    if clause is None:
        return None, []
    return f"SELECT COUNT(*) FROM decortask_tasks{clause}", params
