"""What the SQL stores' task listings share, whatever the dialect: the ORDER BY of each order, the WHERE of
a `TaskQuery` and the escaping of its text search.

Each dialect says how it writes a parameter, a status filter and a text match (`Dialect`); the queries
around them (`sqlite_queries.py`, `postgres_queries.py`) stay with the store that runs them.
"""

from __future__ import annotations

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
    #: Whether a status filter is one array parameter (`= ANY(%s)`) rather than one parameter per status.
    status_array: bool = False


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
        statuses = sorted(s.value for s in query.statuses)
        if dialect.status_array:
            clauses.append(f"{status_column} = ANY({mark})")
            params.append(statuses)
        else:
            clauses.append(f"{status_column} IN ({', '.join([mark] * len(statuses))})")
            params.extend(statuses)
    for column, value in (("name", query.name), ("queue", query.queue)):
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


def escape_like(text: str) -> str:
    """`text` with LIKE's wildcards and its escape character (a backslash) escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
