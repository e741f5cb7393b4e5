"""The SQL of the task listings (`SQLiteStore.list_tasks` and `count_tasks`): filters, order and paging.

A page deep in a large listing is found on the indexes alone: the inner query orders and skips rowids,
and only the page's own rows are read and decoded, so the 50,000th row costs about what the first does.
The listing index (created_at, id, name, queue) holds every column a name, queue or text filter reads, so
those walk the index, never the records. A status filter walks the status index (status, created_at, id),
one range per status, merged. The status is in that index only: an index holding it is rewritten by every
claim and outcome a worker writes. Only ordering by name, queue or status sorts every match (no index
leads with name or queue: each would cost every enqueue).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .base import TaskQuery
from .sql_listing import Dialect, order_by, order_clauses, where

#: The listing and status indexes' own order: by creation time, ties (a batch shares one) by id, so a page
#: deep in the list is found by walking an index, never by sorting every row.
_BY_CREATED = "created_at {0}, id {0}"
#: The columns an order reads, selected by each status's branch of a several-status page.
_COLUMNS = "created_at, status, name, queue, id"
#: ORDER BY clauses for each `TaskQuery.order`.
_ORDER_SQL = order_clauses(newest=_BY_CREATED.format("DESC"), oldest=_BY_CREATED.format("ASC"))
#: LIKE folds ASCII case, as `matches` folds case (ids and task names are ASCII in practice); it runs on
#: the listing index alone, about twice as fast as instr(lower(...)).
SQLITE = Dialect(mark="?", text_match="(id LIKE ? ESCAPE '\\' OR name LIKE ? ESCAPE '\\')")


def page(query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SELECT of the records on `query`'s page, in its order; None when it can match nothing."""
    if query.limit <= 0:
        return None, []
    order = order_by(_ORDER_SQL, query.order)
    statuses = sorted(query.statuses or (), key=lambda status: status.value)
    if len(statuses) > 1:
        # Several statuses: each walks its own range of the status index in order and stops at the page's
        # end; only those few rows are merged and sorted (`status IN` sorted every match).
        branches, params = [], []
        for status in statuses:
            clause, values = where(replace(query, statuses=frozenset({status})), SQLITE)
            branches.append(
                f"SELECT * FROM (SELECT rowid AS row, {_COLUMNS} FROM decortask_tasks{clause} "
                f"ORDER BY {order} LIMIT ?)"
            )
            params += [*values, query.limit + max(query.offset, 0)]
        rowids = f"SELECT row FROM ({' UNION ALL '.join(branches)}) ORDER BY {order} LIMIT ? OFFSET ?"
    else:
        clause, params = where(query, SQLITE)
        if clause is None:
            return None, []
        rowids = f"SELECT rowid FROM decortask_tasks{clause} ORDER BY {order} LIMIT ? OFFSET ?"
    sql = f"SELECT record FROM decortask_tasks WHERE rowid IN ({rowids}) ORDER BY {order}"
    return sql, [*params, query.limit, max(query.offset, 0)]


def count(query: TaskQuery) -> tuple[str | None, list[Any]]:
    """SELECT COUNT(*) of the records `query` matches; None when it can match nothing."""
    clause, params = where(query, SQLITE)
    if clause is None:
        return None, []
    return f"SELECT COUNT(*) FROM decortask_tasks{clause}", params
