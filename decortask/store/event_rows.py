"""What the stores' event feeds share: the record fields a state or progress event carries, how often a
feed trims itself, and how a SQL store's event row becomes an event's fields (`events.py` reads them)."""

from __future__ import annotations

import json
from typing import Any

#: Record fields each state or progress event carries besides the task's id, name, queue and status, in
#: the order of a SQL store's stored JSON array.
FIELDS = (
    "attempt",
    "owner",
    "reason",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "progress",
    "progress_message",
    "error_type",
)
#: Most rows between two trims (a tenth of what the feed keeps, when that is less).
TRIM_EVERY = 1000


def trim_every(keep: int) -> int:
    """Rows between two trims of a feed keeping `keep`: it holds at most `keep + trim_every(keep)` rows."""
    return max(1, min(TRIM_EVERY, keep // 10))


def event_fields(row: tuple[Any, ...]) -> dict[str, Any]:
    """The fields of the event in a SQL row (id, ts, kind, task_id, name, queue, status, data)."""
    _, ts, kind, task_id, name, queue, status, data = row
    fields: dict[str, Any] = {"ts": ts, "kind": kind, "id": task_id, "name": name, "queue": queue}
    fields["status"] = status
    if kind == "log":
        fields["line"] = json.loads(data) if data else {}
    elif data:
        fields.update(zip(FIELDS, json.loads(data), strict=False))
    return fields
