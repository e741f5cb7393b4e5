"""What flow control keeps in the store: rate-limit start logs and concurrency slots (see `limits.py`).

**Rates.** A rate bucket (task, limit, key) holds a log of starts: one score (UNIX seconds) per member
(one attempt of one task). `reserve_rate` answers, atomically over every bucket of a task, "start now"
or "the earliest time this attempt may start", and reserves that time, so attempts that must wait queue
up one behind the other instead of all coming back at once. The rule: no more than `count` scores lie in
any half-open window of `window` seconds. A member coming back for its reservation is checked against the
starts around the time it actually arrives and starts then, so a late start cannot crowd a window.
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
    """One rate limit of one task (and key): at most `count` starts in any `window` seconds."""

    name: str
    count: int
    window: float


@dataclass(frozen=True)
class Lease:
    """One held concurrency slot: task `holder` runs (or is about to) on worker `owner` since `since`."""

    holder: str
    owner: str
    since: float


@runtime_checkable
class LimitStore(Protocol):
    """Rate logs and concurrency slots; every store backend implements it."""

    def reserve_rate(self, member: str, buckets: Sequence[RateBucket], now: float) -> float:
        """Reserve a start for `member` in every bucket, atomically; returns when it may start.

        A result <= `now` means "start now" (the start is recorded at `now`). A later one is a reservation:
        the caller comes back then with the same member, and is let in if the windows around that moment
        still have room (else it gets a new reservation at the end of the line).
        """
        ...

    def acquire_slot(self, bucket: str, holder: str, owner: str, limit: int, now: float) -> bool:
        """Take one of `limit` slots of `bucket` for task `holder` on worker `owner`; atomic.

        True when taken (or when `holder` holds one already: a redelivery), False when all are held.
        """
        ...

    def release_slot(self, bucket: str, holder: str, owner: str | None = None) -> None:
        """Give `holder`'s slot back; with `owner`, only if that worker holds it (evicting a dead one)."""
        ...

    def slot_holders(self, bucket: str) -> list[Lease]:
        """The leases held in `bucket`, oldest first."""
        ...


class RateLog(Protocol):
    """The operations `reserve` needs on the rate logs, inside the backend's atomic step."""

    def trim(self, bucket: str, upto: float) -> None:
        """Forget the scores <= `upto` (they can no longer crowd any window that matters)."""

    def score(self, bucket: str, member: str) -> float | None: ...

    def nth_latest(self, bucket: str, n: int) -> float | None:
        """The n-th highest score (1: the highest), or None when there are fewer than n."""

    def count_in(self, bucket: str, low: float, high: float, member: str) -> int:
        """How many scores lie in (low, high], not counting `member`'s."""

    def put(self, bucket: str, member: str, score: float) -> None: ...

    def remove(self, bucket: str, member: str) -> None: ...


def reserve(log: RateLog, member: str, buckets: Sequence[RateBucket], now: float) -> float:
    """The decision of `LimitStore.reserve_rate` on `log` (the caller makes it atomic); see the module."""
    for bucket in buckets:
        log.trim(bucket.name, now - bucket.window)
    held = [log.score(bucket.name, member) for bucket in buckets]
    if held and all(score is not None for score in held):
        due = max(score for score in held if score is not None)
        if due > now:  # back early: the reservation stands
            return due
        if all(log.count_in(b.name, now - b.window, now, member) < b.count for b in buckets):
            for bucket in buckets:
                log.put(bucket.name, member, now)
            return now
    start = now
    for bucket in buckets:
        log.remove(bucket.name, member)
        latest = log.nth_latest(bucket.name, 1)
        nth = log.nth_latest(bucket.name, bucket.count)
        if latest is not None:  # behind everyone reserved already: first come, first served
            start = max(start, latest)
        if nth is not None:  # the window ending at `start` must hold fewer than `count` others
            start = max(start, nth + bucket.window)
    for bucket in buckets:
        log.put(bucket.name, member, start)
    return start
