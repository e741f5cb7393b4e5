"""The SQL of a PostgreSQL store's task listings (`list_tasks`, `count_tasks`): filters, order and paging.

Each order has an index that leads with its key (`postgres_schema.py`): newest first walks
(created_at, seq), a status, name or queue filter walks its own (column, created_at, seq) index, so a page
stops at its limit instead of sorting every match. Ties on created_at (a batch shares one time) are broken
by `seq`, the insertion order, newest first, as `base.ordered` does. The text search is an ILIKE on id and
name: a trigram index serves it when pg_trgm is installed, else it scans.
"""

from __future__ import annotations

from typing import Any

from .base import TaskQuery
from .sql_listing import Dialect, order_by, order_clauses, where

_NEWEST = "created_at DESC, seq DESC"
_ORDER_SQL = order_clauses(newest=_NEWEST, oldest="created_at ASC, seq ASC")
#: psycopg's parameters; a set of values (statuses, queues) is one array; ILIKE folds case as `matches` does.
POSTGRES = Dialect(mark="%s", text_match="(id ILIKE %s OR name ILIKE %s)", arrays=True)


def page(s: str, columns: str, query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SELECT of `columns` of the records on `query`'s page, in its order; None when it matches nothing."""
    clause, params = where(query, POSTGRES)
    if clause is None or query.limit <= 0:
        return None, []
    sql = (
        f"SELECT id, {columns} FROM {s}.decortask_tasks{clause} ORDER BY {order_by(_ORDER_SQL, query.order)} "
        "LIMIT %s OFFSET %s"
    )
    return sql, [*params, query.limit, max(query.offset, 0)]


def count(s: str, query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SELECT count(*) of the records `query` matches; None when it can match nothing."""
    clause, params = where(query, POSTGRES)
    if clause is None:
        return None, []
    return f"SELECT count(*) FROM {s}.decortask_tasks{clause}", params
