"""What flow control keeps in the store: rate-limit start logs and concurrency slots (see `limits.py`).

**Rates.** A rate bucket (task, limit, key) holds a log of starts: one score (UNIX seconds) per member
(one attempt of one task) that is either a start or a reservation. `reserve_rate` answers, atomically over
every bucket of a task, "start now" or "the earliest time this attempt may start", and reserves that time,
so attempts that must wait queue up one behind the other instead of all coming back at once. The rule: no
more than `count` starts lie in any half-open window of `window` seconds. Starts are recorded when they
happen, not when they were reserved: a member back for its reservation is let in only if the window
ending at that moment has room, so a late start cannot crowd a window.
`reserve` below is that decision, written once in Python for every backend that can run Python inside
its own atomic step (memory under a lock, SQLite and PostgreSQL in a transaction); the Redis store runs the
same steps as a Lua script (`redis_limits.py`), and tests/test_limits_store.py holds all of them to it.

**Concurrency.** A slot bucket holds at most `limit` leases, each held by one task id for one worker (the
owner). A lease is tied to its owner's liveness, not to a clock: the caller evicts the leases of dead
owners (`release_slot` with the owner) using the worker-liveness rules it already has.

Times are the callers' clocks (UNIX seconds), as for heartbeats: the workers' clocks must agree (NTP).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class RateBucket:
    """One rate limit of one task (and key): at most `count` starts in any `window` seconds.

    `spacing` (at least `window`; None: `window`) is how far apart a newcomer's reservation is put from
    the `count`-th latest entry: a little more than the window, since a parked attempt comes back a moment
    after its time and is let in early, within the window's rule (see `reserve`).
    """

    name: str
    count: int
    window: float
    spacing: float | None = None

    @property
    def apart(self) -> float:
        return max(self.window, self.spacing or 0.0)


@dataclass(frozen=True)
class Lease:
    """One held concurrency slot: task `holder` runs (or is about to) on worker `owner` since `since`."""

    holder: str
    owner: str
    since: float


@runtime_checkable
class LimitStore(Protocol):
    """Rate logs and concurrency slots; every store backend implements it."""

    def reserve_rate(
        self, member: str, buckets: Sequence[RateBucket], now: float, early: float = 0.0
    ) -> float:
        """Reserve a start for `member` in every bucket, atomically; returns when it may start.

        A result <= `now` means "start now" (the start is recorded at `now`). A later one is a reservation:
        the caller comes back then (up to `early` seconds before it) with the same member, and starts if the
        windows have room at that moment; else it gets a new reservation for when they will.
        """
        ...

    def acquire_slot(self, bucket: str, holder: str, owner: str, limit: int, now: float) -> bool:
        """Take one of `limit` slots of `bucket` for task `holder` on worker `owner`; atomic.

        True when taken, or when `holder` holds one already for `owner`. False when all are held, or when
        `holder`'s slot is held for another worker (a duplicate delivery; evict that lease first if its
        worker is dead).
        """
        ...

    def release_slot(self, bucket: str, holder: str, owner: str | None = None) -> None:
        """Give `holder`'s slot back; with `owner`, only if that worker holds it (evicting a dead one)."""
        ...

    def slot_holders(self, bucket: str) -> list[Lease]:
        """The leases held in `bucket`, oldest first."""
        ...


class RateLog(Protocol):
    """The operations `reserve` needs on the rate logs, inside the backend's atomic step.

    A log holds one entry per member: a score and whether it is a start (True) or a reservation (False).
    """

    def trim(self, bucket: str, upto: float) -> None:
        """Forget the entries scored <= `upto` (they can no longer crowd any window that matters)."""

    def entry(self, bucket: str, member: str) -> tuple[float, bool] | None: ...

    def nth_latest(self, bucket: str, n: int, *, starts_only: bool = False) -> float | None:
        """The n-th highest score (1: the highest) among all entries, or only the starts; None if fewer."""

    def count_starts(self, bucket: str, after: float) -> int:
        """How many starts are scored after `after` (a start another caller's clock put a moment ahead of
        this caller's counts too)."""

    def put(self, bucket: str, member: str, score: float, started: bool) -> None: ...

    def remove(self, bucket: str, member: str) -> None: ...


def reserve(
    log: RateLog, member: str, buckets: Sequence[RateBucket], now: float, early: float = 0.0
) -> float:
    """The decision of `LimitStore.reserve_rate` on `log` (the caller makes it atomic); see the module.

    A newcomer is placed behind every entry (first come, first served) and at least `spacing` after the
    `count`-th latest one. A member back for its reservation (or up to `early` seconds before it) starts if
    fewer than `count` starts lie in the window ending now (reservations not taken up do not count against
    it), else it waits until the `count`-th latest start leaves the window.
    """
    for bucket in buckets:
        log.trim(bucket.name, now - bucket.apart)
    held = [log.entry(bucket.name, member) for bucket in buckets]
    if held and all(entry is not None and not entry[1] for entry in held):
        due = max(entry[0] for entry in held if entry is not None)
        if due > now + early:  # back early: the reservation stands
            return due
        if all(log.count_starts(b.name, now - b.window) < b.count for b in buckets):
            return _put(log, member, buckets, now, started=True)
        start = now
        for bucket in buckets:
            nth = log.nth_latest(bucket.name, bucket.count, starts_only=True)
            if nth is not None:
                start = max(start, nth + bucket.window)
        return _put(log, member, buckets, start, started=False)
    start = now
    for bucket in buckets:
        log.remove(bucket.name, member)
        latest = log.nth_latest(bucket.name, 1)
        nth = log.nth_latest(bucket.name, bucket.count)
        if latest is not None:  # behind everyone reserved already: first come, first served
            start = max(start, latest)
        if nth is not None:  # the window ending at `start` must hold fewer than `count` others
            start = max(start, nth + bucket.apart)
    return _put(log, member, buckets, start, started=start <= now)


def _put(log: RateLog, member: str, buckets: Sequence[RateBucket], score: float, *, started: bool) -> float:
    for bucket in buckets:
        log.put(bucket.name, member, score, started)
    return score
