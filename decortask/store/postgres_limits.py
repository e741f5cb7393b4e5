"""The PostgreSQL store's rate logs and concurrency slots (`limit_state.py`; the SQL is `sql_limits.py`).

Each call is one transaction that first takes a transaction-level advisory lock per bucket (in name
order, so two callers never wait on each other crosswise): under READ COMMITTED that is what makes the
read-then-write of `reserve` and `acquire_slot` atomic across processes and hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import sql_limits
from .limit_state import Lease, LimitStore, RateBucket

T = TypeVar("T")

#: Schema version 4: the tables (`{s}` is the quoted schema name, as in postgres_schema.MIGRATIONS).
MIGRATION = sql_limits.schema(
    "{s}.decortask_rates", "{s}.decortask_slots", "double precision", rates_index="decortask_rate_scores"
)


def _lock(conn: Any, schema: str, names: Iterable[str]) -> None:
    for name in sorted(set(names)):
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{schema}:{name}",))


class PostgresLimits(LimitStore):
    """`LimitStore` for `PostgresStore`."""

    if TYPE_CHECKING:
        s: str

        def _run(self, body: Callable[[Any], T], *, atomic: bool = True) -> T: ...

    def reserve_rate(
        self, member: str, buckets: Sequence[RateBucket], now: float, early: float = 0.0
    ) -> float:
        table = f"{self.s}.decortask_rates"

        def body(conn: Any) -> float:
            _lock(conn, self.s, (b.name for b in buckets))
            return sql_limits.reserve_rate(conn, table, "%s", member, buckets, now, early)

        return self._run(body)

    def acquire_slot(self, bucket: str, holder: str, owner: str, limit: int, now: float) -> bool:
        table = f"{self.s}.decortask_slots"

        def body(conn: Any) -> bool:
            _lock(conn, self.s, [bucket])
            return sql_limits.acquire_slot(conn, table, "%s", bucket, holder, owner, limit, now)

        return self._run(body)

    def release_slot(self, bucket: str, holder: str, owner: str | None = None) -> None:
        table = f"{self.s}.decortask_slots"
        self._run(lambda conn: sql_limits.release_slot(conn, table, "%s", bucket, holder, owner))

    def slot_holders(self, bucket: str) -> list[Lease]:
        table = f"{self.s}.decortask_slots"
        return self._run(lambda conn: sql_limits.slot_holders(conn, table, "%s", bucket), atomic=False)
