"""The SQL of a PostgreSQL store's task listings (`list_tasks`, `count_tasks`): filters, order and paging.

Each order has an index that leads with its key (`postgres_schema.py`): newest first walks
(created_at, seq), a status, name or queue filter walks its own (column, created_at, seq) index, so a page
stops at its limit instead of sorting every match. Ties on created_at (a batch shares one time) are broken
by `seq`, the insertion order, newest first, as `base.ordered` does. The text search is an ILIKE on id and
name: a trigram index serves it when pg_trgm is installed, else it scans.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .base import TASK_ORDERS, TaskQuery

_NEWEST = "created_at DESC, seq DESC"
_ORDER_SQL = {
    "-created": _NEWEST,
    "created": "created_at ASC, seq ASC",
    "name": "name ASC, " + _NEWEST,
    "-name": "name DESC, " + _NEWEST,
    "status": "status ASC, " + _NEWEST,
    "-status": "status DESC, " + _NEWEST,
    "queue": "queue ASC, " + _NEWEST,
    "-queue": "queue DESC, " + _NEWEST,
}


def where(query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SQL WHERE clause and parameters for `query`; None when it can match nothing."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.statuses is not None:
        if not query.statuses:
            return None, []
        clauses.append("status = ANY(%s)")
        params.append(sorted(s.value for s in query.statuses))
    for column, value in (("name", query.name), ("queue", query.queue)):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if query.created_after is not None:
        clauses.append("created_at >= %s")
        params.append(query.created_after)
    if query.created_before is not None:
        clauses.append("created_at < %s")
        params.append(query.created_before)
    if query.text:
        needle = "%" + _escape_like(query.text) + "%"
        clauses.append("(id ILIKE %s OR name ILIKE %s)")
        params.extend([needle, needle])
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def page(s: str, columns: str, query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SELECT of `columns` of the records on `query`'s page, in its order; None when it matches nothing."""
    clause, params = where(query)
    if clause is None or query.limit <= 0:
        return None, []
    sql = (
        f"SELECT id, {columns} FROM {s}.decortask_tasks{clause} ORDER BY {order_by(query.order)} "
        "LIMIT %s OFFSET %s"
    )
    return sql, [*params, query.limit, max(query.offset, 0)]


def count(s: str, query: TaskQuery) -> tuple[str | None, list[Any]]:
    clause, params = where(query)
    if clause is None:
        return None, []
    return f"SELECT count(*) FROM {s}.decortask_tasks{clause}", params


def order_by(order: str) -> str:
    try:
        return _ORDER_SQL[order]
    except KeyError:
        raise ConfigurationError(
            f"cannot order tasks by {order!r}: use one of {', '.join(sorted(TASK_ORDERS))}"
        ) from None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
