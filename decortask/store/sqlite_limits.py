"""The SQLite store's rate logs and concurrency slots (`limit_state.py`; the SQL is `sql_limits.py`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from . import sql_limits
from .limit_state import Lease, LimitStore, RateBucket

T = TypeVar("T")
RATES = "decortask_rates"
SLOTS = "decortask_slots"


def create_schema(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({RATES})")}
    if columns and "started" not in columns:
        # A file from before the rate log told starts from reservations (cf89520..8bb0b3b): its entries
        # count as starts, so the limit never lets more in after the upgrade than it would have.
        conn.execute(f"ALTER TABLE {RATES} ADD COLUMN started INTEGER NOT NULL DEFAULT 1")
    for statement in sql_limits.schema(RATES, SLOTS, "REAL", if_not="IF NOT EXISTS "):
        conn.execute(statement)


class SQLiteLimits(LimitStore):
    """`LimitStore` for `SQLiteStore`: each call is one `BEGIN IMMEDIATE` transaction (`_run`)."""

    if TYPE_CHECKING:

        def _run(self, body: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T: ...

    def reserve_rate(
        self, member: str, buckets: Sequence[RateBucket], now: float, early: float = 0.0
    ) -> float:
        return self._run(lambda conn: sql_limits.reserve_rate(conn, RATES, "?", member, buckets, now, early))

    def acquire_slot(self, bucket: str, holder: str, owner: str, limit: int, now: float) -> bool:
        return self._run(
            lambda conn: sql_limits.acquire_slot(conn, SLOTS, "?", bucket, holder, owner, limit, now)
        )

    def release_slot(self, bucket: str, holder: str, owner: str | None = None) -> None:
        self._run(lambda conn: sql_limits.release_slot(conn, SLOTS, "?", bucket, holder, owner))

    def slot_holders(self, bucket: str) -> list[Lease]:
        return self._run(lambda conn: sql_limits.slot_holders(conn, SLOTS, "?", bucket), write=False)
