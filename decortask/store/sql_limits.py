"""Rate logs and concurrency slots in SQL (`limit_state.py`), whatever the dialect.

Each function runs on one connection inside the caller's transaction (SQLite's `BEGIN IMMEDIATE`; on
PostgreSQL `lock` first takes a transaction-level advisory lock per bucket), which makes `reserve` (a
read-then-write) and `acquire_slot` atomic across processes. `mark` is the dialect's parameter mark (`?` or
`%s`); `rates` and `slots` are the (qualified) table names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .limit_state import Lease, RateBucket, reserve

#: The tables, by a `{rates}`/`{slots}` template (SQLite creates them IF NOT EXISTS; PostgreSQL migrates).
SCHEMA = (
    "CREATE TABLE {if_not}{rates} (bucket TEXT NOT NULL, member TEXT NOT NULL, score {real} NOT NULL,"
    " started INTEGER NOT NULL, PRIMARY KEY (bucket, member))",
    "CREATE INDEX {if_not}{rates_index} ON {rates} (bucket, score)",
    "CREATE INDEX {if_not}{starts_index} ON {rates} (bucket, started, score)",
    "CREATE TABLE {if_not}{slots} (bucket TEXT NOT NULL, holder TEXT NOT NULL, lease TEXT NOT NULL,"
    " since {real} NOT NULL, PRIMARY KEY (bucket, holder))",
)


def schema(rates: str, slots: str, real: str, if_not: str = "", rates_index: str = "") -> tuple[str, ...]:
    """The CREATE statements for these table names and the dialect's float type."""
    names = {"rates": rates, "slots": slots, "real": real, "if_not": if_not}
    names["rates_index"] = rates_index or "decortask_rate_scores"
    names["starts_index"] = names["rates_index"].replace("scores", "starts")
    return tuple(statement.format(**names) for statement in SCHEMA)


class SqlRateLog:
    """`limit_state.RateLog` on one connection in a transaction."""

    def __init__(self, conn: Any, table: str, mark: str) -> None:
        self.conn, self.table, self.mark = conn, table, mark

    def _one(self, sql: str, *params: Any) -> Any:
        row = self.conn.execute(sql.replace("?", self.mark), params).fetchone()
        return None if row is None else row[0]

    def trim(self, bucket: str, upto: float) -> None:
        self.conn.execute(
            f"DELETE FROM {self.table} WHERE bucket = ? AND score <= ?".replace("?", self.mark),
            (bucket, upto),
        )

    def entry(self, bucket: str, member: str) -> tuple[float, bool] | None:
        sql = f"SELECT score, started FROM {self.table} WHERE bucket = ? AND member = ?"
        row = self.conn.execute(sql.replace("?", self.mark), (bucket, member)).fetchone()
        return None if row is None else (float(row[0]), bool(row[1]))

    def nth_latest(self, bucket: str, n: int, *, starts_only: bool = False) -> float | None:
        only = " AND started = 1" if starts_only else ""
        sql = f"SELECT score FROM {self.table} WHERE bucket = ?{only} ORDER BY score DESC LIMIT 1 OFFSET ?"
        value = self._one(sql, bucket, n - 1)
        return None if value is None else float(value)

    def count_starts(self, bucket: str, after: float) -> int:
        sql = f"SELECT COUNT(*) FROM {self.table} WHERE bucket = ? AND started = 1 AND score > ?"
        return int(self._one(sql, bucket, after) or 0)

    def put(self, bucket: str, member: str, score: float, started: bool) -> None:
        sql = (
            f"INSERT INTO {self.table} (bucket, member, score, started) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (bucket, member) DO UPDATE SET score = excluded.score, started = excluded.started"
        )
        self.conn.execute(sql.replace("?", self.mark), (bucket, member, score, int(started)))

    def remove(self, bucket: str, member: str) -> None:
        sql = f"DELETE FROM {self.table} WHERE bucket = ? AND member = ?"
        self.conn.execute(sql.replace("?", self.mark), (bucket, member))


def reserve_rate(
    conn: Any, table: str, mark: str, member: str, buckets: Sequence[RateBucket], now: float, early: float
) -> float:
    return reserve(SqlRateLog(conn, table, mark), member, buckets, now, early)


def acquire_slot(
    conn: Any, table: str, mark: str, bucket: str, holder: str, owner: str, limit: int, now: float
) -> bool:
    q = SqlRateLog(conn, table, mark)._one
    lease = q(f"SELECT lease FROM {table} WHERE bucket = ? AND holder = ?", bucket, holder)
    if lease is not None:
        return lease_from_json(lease).owner == owner
    if int(q(f"SELECT COUNT(*) FROM {table} WHERE bucket = ?", bucket) or 0) >= limit:
        return False
    sql = f"INSERT INTO {table} (bucket, holder, lease, since) VALUES (?, ?, ?, ?)"
    conn.execute(sql.replace("?", mark), (bucket, holder, lease_json(holder, owner, now), now))
    return True


def release_slot(conn: Any, table: str, mark: str, bucket: str, holder: str, owner: str | None) -> None:
    for lease in slot_holders(conn, table, mark, bucket):
        if lease.holder == holder and (owner is None or lease.owner == owner):
            sql = f"DELETE FROM {table} WHERE bucket = ? AND holder = ?"
            conn.execute(sql.replace("?", mark), (bucket, holder))


def slot_holders(conn: Any, table: str, mark: str, bucket: str) -> list[Lease]:
    sql = f"SELECT lease FROM {table} WHERE bucket = ? ORDER BY since, holder".replace("?", mark)
    return [lease_from_json(row[0]) for row in conn.execute(sql, (bucket,)).fetchall()]


def lease_json(holder: str, owner: str, since: float) -> str:
    return json.dumps({"holder": holder, "owner": owner, "since": since})


def lease_from_json(text: str) -> Lease:
    """A lease as the SQL and Redis stores keep it (JSON: holder, owner, since)."""
    data = json.loads(text)
    return Lease(str(data["holder"]), str(data["owner"]), float(data["since"]))
