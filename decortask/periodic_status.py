"""What `decortask schedules` and the dashboard show and change: schedule rows, pause and resume.

One place computes each schedule's next run, last run and its outcome, and leader, so the command line and
the dashboard can never disagree; one place pauses and resumes, so both skip paused slots the same way.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from .periodic import lease_name, slot_task_id
from .periodic_config import PeriodicEntry
from .schedules import Cron, Every, next_slot
from .store.base import TaskStore
from .store.periodic_state import ScheduleState, periodic_state

#: What a schedule the store knows but the app does not declare shows as its schedule.
UNDECLARED = "(not declared by the -A app)"


def schedule_rows(entries: list[PeriodicEntry], store: TaskStore, now: float) -> list[dict[str, Any]]:
    """One JSON-ready row per schedule the app declares (`entries`) or the store knows, by name.

    Keys: `name`, `task`, `schedule` (one line: `every 30s`, `cron '0 3 * * *' (Europe/Paris)`),
    `expression` (the cron expression, or the interval in seconds), `tz` (cron only), `paused`,
    `next_at`/`next_run` (the next slot: UNIX seconds / UTC text; None when paused or undeclared, and
    `next_run` says `paused`), `last_at`/`last_run` (the last slot published, once its task is in the
    store), `last_task_id`, `last_outcome` (that task's status), `leader` (the lease holder, or None).

    Raises:
        ConfigurationError: the store keeps no periodic state.
    """
    state_store = periodic_state(store)
    states = {state.name: state for state in state_store.schedule_states()}
    by_name = {entry.name: entry for entry in entries}
    rows = []
    for name in sorted(set(by_name) | set(states)):
        entry, state = by_name.get(name), states.get(name, ScheduleState(name))
        last = state.last_slot
        record = store.get(slot_task_id(name, last)) if last is not None else None
        upcoming = None
        if entry is not None and not state.paused:
            upcoming = next_slot(entry.schedule, max(last or now, now))
        rows.append(
            {
                "name": name,
                "task": entry.task if entry is not None else None,
                "schedule": entry.schedule.describe() if entry is not None else UNDECLARED,
                **_expression(entry),
                "paused": state.paused,
                "next_at": upcoming,
                "next_run": "paused" if state.paused else utc_text(upcoming),
                "last_at": last if record is not None else None,
                "last_run": utc_text(last) if record is not None else None,
                "last_task_id": record.id if record is not None else None,
                "last_outcome": record.status.value if record is not None else None,
                "leader": state_store.lease_owner(lease_name(name), now),
            }
        )
    return rows


def _expression(entry: PeriodicEntry | None) -> dict[str, Any]:
    schedule = entry.schedule if entry is not None else None
    if isinstance(schedule, Cron):
        return {"expression": schedule.expression, "tz": schedule.tz}
    if isinstance(schedule, Every):
        return {"expression": schedule.seconds, "tz": None}
    return {"expression": None, "tz": None}


def unknown_schedule(name: str, entries: list[PeriodicEntry], store: TaskStore) -> str | None:
    """Why `name` is no schedule (naming the known ones), or None when the app declares it or the store knows it."""
    declared = {entry.name for entry in entries}
    stored = {state.name for state in periodic_state(store).schedule_states()}
    if name in declared | stored:
        return None
    known = ", ".join(sorted(declared | stored)) or "none"
    return (
        f"no schedule named {name!r} in the -A app or the store (known: {known}); pass -A naming the module "
        "that declares it, and the store its workers use"
    )


def pause_schedule(store: TaskStore, name: str) -> ScheduleState:
    """Pause a schedule: its slots are skipped (never run later) until it is resumed. Kept in the store."""
    return periodic_state(store).set_schedule_paused(name, True)


def resume_schedule(store: TaskStore, name: str, now: float | None = None) -> ScheduleState:
    """Resume a schedule from its next slot: slots that fell while it was paused are not caught up."""
    state = periodic_state(store)
    state.set_schedule_paused(name, False)
    return state.advance_schedule(name, time.time() if now is None else now)


def utc_text(when: float | None) -> str | None:
    """`2026-12-06 02:00:00` (UTC), or None."""
    return None if when is None else datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
