"""What the SQL stores' task listings share, whatever the dialect: the ORDER BY of each order, the WHERE of
a `TaskQuery` (or of a queue filter) and the escaping of its text search.

Each dialect says how it writes a parameter, a status filter and a text match (`Dialect`); the queries
around them (`sqlite_queries.py`, `postgres_queries.py`) stay with the store that runs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from .base import TASK_ORDERS, TaskQuery


@dataclass(frozen=True)
class Dialect:
    """How one SQL dialect writes the parts of a listing's WHERE clause that differ."""

    #: The parameter placeholder ("?" or "%s").
    mark: str
    #: Match id or name against a LIKE pattern given twice, case-folded (the same pattern as a parameter).
    text_match: str
    #: Whether a set of values is one array parameter (`= ANY(%s)`) rather than one parameter per value.
    arrays: bool = False


def order_clauses(newest: str, oldest: str) -> dict[str, str]:
    """The ORDER BY clause of each of TASK_ORDERS, given the store's newest-first and oldest-first orders.

    Ties on any other key are broken newest first, as `base.ordered` does.
    """
    clauses = {"-created": newest, "created": oldest}
    for column in ("name", "status", "queue"):
        clauses[column] = f"{column} ASC, {newest}"
        clauses[f"-{column}"] = f"{column} DESC, {newest}"
    return clauses


def order_by(clauses: dict[str, str], order: str) -> str:
    """`order`'s clause from `clauses` (`order_clauses`); ConfigurationError for an unknown order."""
    try:
        return clauses[order]
    except KeyError:
        raise ConfigurationError(
            f"cannot order tasks by {order!r}: use one of {', '.join(sorted(TASK_ORDERS))}"
        ) from None


def where(
    query: TaskQuery, dialect: Dialect, *, status_column: str = "status"
) -> tuple[str | None, list[Any]]:
    """SQL WHERE clause and parameters for `query`; None when it can match nothing."""
    mark = dialect.mark
    clauses: list[str] = []
    params: list[Any] = []
    if query.statuses is not None:
        if not query.statuses:
            return None, []
        clause, values = one_of(status_column, sorted(s.value for s in query.statuses), dialect)
        clauses.append(clause)
        params.extend(values)
    for column, value in (("name", query.name), ("queue", query.queue), ("root_id", query.root_id)):
        if value is not None:
            clauses.append(f"{column} = {mark}")
            params.append(value)
    if query.created_after is not None:
        clauses.append(f"created_at >= {mark}")
        params.append(query.created_after)
    if query.created_before is not None:
        clauses.append(f"created_at < {mark}")
        params.append(query.created_before)
    if query.text:
        needle = "%" + escape_like(query.text) + "%"
        clauses.append(dialect.text_match)
        params.extend([needle, needle])
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def one_of(column: str, values: list[Any], dialect: Dialect) -> tuple[str, list[Any]]:
    """A clause matching `column` against any of `values` (not empty), and its parameters."""
    if dialect.arrays:
        return f"{column} = ANY({dialect.mark})", [values]
    return f"{column} IN ({', '.join([dialect.mark] * len(values))})", list(values)


def queue_filter(queues: Iterable[str] | None, dialect: Dialect) -> tuple[str | None, list[Any]]:
    """A WHERE clause keeping `queues` ("" for all when None), and its parameters; None for no queue."""
    if queues is None:
        return "", []
    wanted = sorted(set(queues))
    if not wanted:
        return None, []
    clause, params = one_of("queue", wanted, dialect)
    return " WHERE " + clause, params


def escape_like(text: str) -> str:
    """`text` with LIKE's wildcards and its escape character (a backslash) escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
