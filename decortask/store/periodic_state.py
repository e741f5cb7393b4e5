"""What the periodic scheduler keeps in the store: named leases and the state of each schedule.

A lease is a compare-and-set on (owner, until): `acquire_lease` takes it when it is free, has lapsed, or is
already the caller's, and then holds it until `now + ttl`. The periodic scheduler leads a schedule only
while it holds that schedule's lease, so a killed leader's schedules move to another worker once its
lease lapses. Times are the callers' clocks (UNIX seconds), so the workers' clocks must agree (NTP).

A schedule's state is the last slot published for it (only ever moved forward) and whether it is paused.
Every backend (memory, SQLite, Redis) implements `PeriodicStateStore`; tests/test_store_contract.py checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..errors import ConfigurationError


@dataclass(frozen=True)
class ScheduleState:
    """One schedule's state in the store.

    Attributes:
        name: the schedule's name (a task's name, or its key in the `schedules` setting).
        last_slot: the latest slot published, or skipped by the missed-slot policy or a pause (UNIX seconds).
        paused: while true the schedule's slots are skipped, never run later.
    """

    name: str
    last_slot: float | None = None
    paused: bool = False


@runtime_checkable
class PeriodicStateStore(Protocol):
    """Leases and schedule state; every store backend implements it."""

    def acquire_lease(self, name: str, owner: str, ttl: float, now: float) -> bool:
        """Take or renew the lease `name` for `owner` until `now + ttl`; atomic.

        Succeeds when nobody holds it, its holder's time ran out (`until <= now`), or `owner` holds it.
        """
        ...

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, if `owner` holds it (a clean shutdown hands over at once)."""
        ...

    def lease_owner(self, name: str, now: float) -> str | None:
        """Who holds the lease at `now`, or None."""
        ...

    def schedule_state(self, name: str) -> ScheduleState | None:
        """The schedule's state, or None if the store has never seen it."""
        ...

    def schedule_states(self) -> list[ScheduleState]:
        """Every schedule the store knows, by name."""
        ...

    def advance_schedule(self, name: str, slot: float) -> ScheduleState:
        """Set the last slot to `slot` unless it is already later; atomic. Returns the state."""
        ...

    def set_schedule_paused(self, name: str, paused: bool) -> ScheduleState:
        """Pause or resume the schedule; returns the state."""
        ...


def periodic_state(store: object) -> PeriodicStateStore:
    """`store` as a `PeriodicStateStore`, or a `ConfigurationError` naming what lacks it."""
    if not isinstance(store, PeriodicStateStore):
        raise ConfigurationError(
            f"the store {type(store).__name__} keeps no periodic-task state (leases, schedule state); "
            "periodic tasks need a memory://, sqlite://, redis:// or postgresql:// store"
        )
    return store
