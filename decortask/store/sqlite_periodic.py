"""The SQL of a SQLite store's periodic-task state: leases and schedule state (see `periodic_state.py`).

Each function runs on one connection inside the caller's transaction (`SQLiteStore._run`; writes in
`BEGIN IMMEDIATE`), which makes its read-then-write atomic across processes.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .periodic_state import ScheduleState

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS decortask_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL,"
    " until REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS decortask_periodic (name TEXT PRIMARY KEY, last_slot REAL,"
    " paused INTEGER NOT NULL DEFAULT 0)",
)


def create_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA:
        conn.execute(statement)


def acquire_lease(conn: sqlite3.Connection, name: str, owner: str, ttl: float, now: float) -> bool:
    conn.execute(
        "INSERT INTO decortask_leases (name, owner, until) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
        "SET owner = excluded.owner, until = excluded.until "
        "WHERE decortask_leases.until <= ? OR decortask_leases.owner = excluded.owner",
        (name, owner, now + ttl, now),
    )
    row = conn.execute("SELECT owner FROM decortask_leases WHERE name = ?", (name,)).fetchone()
    return row is not None and row[0] == owner


def release_lease(conn: sqlite3.Connection, name: str, owner: str) -> None:
    conn.execute("DELETE FROM decortask_leases WHERE name = ? AND owner = ?", (name, owner))


def lease_owner(conn: sqlite3.Connection, name: str, now: float) -> str | None:
    row = _read(conn, "SELECT owner FROM decortask_leases WHERE name = ? AND until > ?", (name, now))
    return str(row[0][0]) if row else None


def schedule_states(conn: sqlite3.Connection, name: str | None = None) -> list[ScheduleState]:
    """Every schedule's state by name, or only `name`'s."""
    sql = "SELECT name, last_slot, paused FROM decortask_periodic"
    rows = (
        _read(conn, sql + " WHERE name = ?", (name,))
        if name is not None
        else _read(conn, sql + " ORDER BY name", ())
    )
    return [
        ScheduleState(str(n), float(last) if last is not None else None, bool(paused))
        for n, last, paused in rows
    ]


def advance_schedule(conn: sqlite3.Connection, name: str, slot: float) -> ScheduleState:
    conn.execute(
        "INSERT INTO decortask_periodic (name, last_slot) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
        "SET last_slot = excluded.last_slot "
        "WHERE decortask_periodic.last_slot IS NULL OR decortask_periodic.last_slot < excluded.last_slot",
        (name, slot),
    )
    return schedule_states(conn, name)[0]


def set_schedule_paused(conn: sqlite3.Connection, name: str, paused: bool) -> ScheduleState:
    conn.execute(
        "INSERT INTO decortask_periodic (name, paused) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused",
        (name, int(paused)),
    )
    return schedule_states(conn, name)[0]


def _read(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        # A store file written before periodic tasks existed, opened read-only (`decortask schedules`):
        # no table means no state yet.
        if "no such table" in str(exc):
            return []
        raise
