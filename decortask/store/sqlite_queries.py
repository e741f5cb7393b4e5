"""The SQL of the task listings (`SQLiteStore.list_tasks` and `count_tasks`): filters, order and paging.

A page deep in a large listing is found on the index alone: the inner query orders and skips rowids
(the `created_at` and `status` indexes cover it), and only the page's own rows are read and decoded, so
the 50,000th row costs about what the first does. The list index (created_at, status, name, queue, id)
holds every column a filter or a text search reads, so those walk the index, never the records; only
ordering by name or queue sorts every match (no index leads with them: each would cost every enqueue).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .base import TASK_ORDERS, TaskQuery

#: The list index's own order: by creation time, ties (a batch shares one) in the index's column order,
#: so a page deep in the list is found by walking the index, never by sorting every row.
_BY_CREATED = "created_at {0}, status {0}, name {0}, queue {0}, id {0}"
#: ORDER BY clauses for each `TaskQuery.order`.
_ORDER_SQL = {
    "-created": _BY_CREATED.format("DESC"),
    "created": _BY_CREATED.format("ASC"),
    "name": "name ASC, " + _BY_CREATED.format("DESC"),
    "-name": "name DESC, " + _BY_CREATED.format("DESC"),
    "status": "status ASC, " + _BY_CREATED.format("DESC"),
    "-status": "status DESC, " + _BY_CREATED.format("DESC"),
    "queue": "queue ASC, " + _BY_CREATED.format("DESC"),
    "-queue": "queue DESC, " + _BY_CREATED.format("DESC"),
}


def where(query: TaskQuery, *, walk_list_index: bool = False) -> tuple[str | None, list[Any]]:
    """SQL WHERE clause and parameters for `query`; None when it can match nothing.

    `walk_list_index`: keep the planner off the status index (a unary `+` makes `status` unindexable),
    so a page is found walking the list index in order; the status index would need every match sorted.
    """
    clauses: list[str] = []
    params: list[Any] = []
    if query.statuses is not None:
        if not query.statuses:
            return None, []
        column = "+status" if walk_list_index else "status"
        clauses.append(f"{column} IN ({', '.join('?' * len(query.statuses))})")
        params.extend(sorted(s.value for s in query.statuses))
    for column, value in (("name", query.name), ("queue", query.queue)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.created_after is not None:
        clauses.append("created_at >= ?")
        params.append(query.created_after)
    if query.created_before is not None:
        clauses.append("created_at < ?")
        params.append(query.created_before)
    if query.text:
        # LIKE folds ASCII case, as `matches` folds case (ids and task names are ASCII in practice); it
        # runs on the list index alone, about twice as fast as instr(lower(...)).
        clauses.append("(id LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\')")
        needle = "%" + _escape_like(query.text) + "%"
        params.extend([needle, needle])
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def page(query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SELECT of the records on `query`'s page, in its order; None when it can match nothing."""
    clause, params = where(query, walk_list_index=True)
    if clause is None or query.limit <= 0:
        return None, []
    order = order_by(query.order)
    sql = (
        "SELECT record FROM decortask_tasks WHERE rowid IN "
        f"(SELECT rowid FROM decortask_tasks{clause} ORDER BY {order} LIMIT ? OFFSET ?) ORDER BY {order}"
    )
    return sql, [*params, query.limit, max(query.offset, 0)]


def count(query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SELECT COUNT(*) of the records `query` matches; None when it can match nothing."""
    clause, params = where(query)
    if clause is None:
        return None, []
    return f"SELECT COUNT(*) FROM decortask_tasks{clause}", params


def order_by(order: str) -> str:
    try:
        return _ORDER_SQL[order]
    except KeyError:
        raise ConfigurationError(
            f"cannot order tasks by {order!r}: use one of {', '.join(sorted(TASK_ORDERS))}"
        ) from None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
