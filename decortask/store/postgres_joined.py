"""A PostgreSQL store joined to the caller's own transaction: what `app.transaction()` writes through.

`join` opens a transaction block on the caller's psycopg connection and yields a view of the store whose
every call runs on that connection, inside that block (each call in a savepoint, so a failed call undoes
only itself); nothing it writes is visible, or committed, apart from the caller's transaction.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row

if TYPE_CHECKING:
    from .postgres import PostgresStore


class Joined:
    """What `join` yields: the store view in the caller's transaction, and whether that has committed."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.committed = False


class TupleRows:
    """The caller's connection as the store's SQL uses it: rows as tuples, whatever its row factory."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def execute(self, query: Any, params: Any = None) -> Any:
        return self._connection.cursor(row_factory=tuple_row).execute(query, params)

    def cursor(self) -> Any:
        return self._connection.cursor(row_factory=tuple_row)

    def transaction(self) -> Any:
        return self._connection.transaction()


@contextlib.contextmanager
def join(store: PostgresStore, connection: Any, *, owner_commits: bool = False) -> Iterator[Joined]:
    """A transaction block on the caller's psycopg `connection`, and `store` as a view inside it.

    `Joined.committed` turns True once the block has committed: when the block was the connection's
    outermost transaction and ended without an exception. Inside an outer transaction it stays False
    (the commit comes later, out of sight). `owner_commits`: the connection's owner commits it (Django
    inside `atomic()`, with autocommit off): its transaction is started if it was not yet, and the block
    is a savepoint in it. The connection must reach the same database as the store's URL.
    """
    idle = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if owner_commits and idle:
        connection.execute("SELECT 1")  # autocommit is off: this opens the owner's transaction
    view = copy.copy(store)
    view._joined = TupleRows(connection)
    state = Joined(view)
    with connection.transaction():
        yield state
    state.committed = idle and not owner_commits
