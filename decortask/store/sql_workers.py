"""Workers' liveness stamps in the SQL stores: one row per worker id in `decortask_heartbeats` (its last
heartbeat) or `decortask_worker_stops` (when it stopped), written and read the same way in every dialect."""

from __future__ import annotations

from typing import Any

from .base import HEARTBEAT_TTL  # stamps older than this are pruned as new ones are written


def stamp(conn: Any, table: str, mark: str, worker_id: str, now: float) -> None:
    """Set `worker_id`'s stamp in `table` (qualified as the dialect needs; `mark` its parameter) to `now`."""
    conn.execute(
        f"INSERT INTO {table} (worker_id, ts) VALUES ({mark}, {mark}) "
        "ON CONFLICT (worker_id) DO UPDATE SET ts = excluded.ts",
        (worker_id, now),
    )
    # Worker ids are per process start: without pruning the table would only grow.
    conn.execute(f"DELETE FROM {table} WHERE ts < {mark}", (now - HEARTBEAT_TTL,))


def stamps(conn: Any, table: str) -> dict[str, float]:
    """Every worker id in `table` with its stamp."""
    rows = conn.execute(f"SELECT worker_id, ts FROM {table}").fetchall()
    return {str(worker_id): float(ts) for worker_id, ts in rows}
