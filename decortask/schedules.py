"""When periodic tasks run: `cron(...)` and `every(...)` schedules and the slots they produce.

A slot is one moment a schedule is due, as UNIX seconds (UTC). Every worker must compute the same slots
from the same schedule, so they depend on nothing but the schedule: `every()` slots are multiples of the
interval counted from the UNIX epoch, and cron slots come from the expression and its zone.

Time zones and DST (the rule, tested in tests/test_periodic_schedules.py): a cron slot at wall-clock time
W runs at the first instant at which the zone's clock shows W or later. So on the day the clock goes
back, a slot in the repeated hour runs once, at its first occurrence; on the day the clock goes forward,
a slot in the skipped hour runs at the moment of the jump (02:30 in Europe/Paris on 2026-03-29 runs at
03:00 CEST), never silently skipped. Slots that fall on the same instant that way are one slot.

Cron expressions are parsed by cronsim (Debian cron's syntax, optional seconds as a sixth leading field);
it iterates wall-clock times only, and the rule above turns them into instants.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal, Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import ConfigurationError

MissedPolicy = Literal["last", "all", "none"]
MISSED_POLICIES: tuple[MissedPolicy, ...] = ("last", "all", "none")
#: Seconds a slot may wait for its publish and still count as on time (a leader change takes a few).
DEFAULT_GRACE = 60.0
#: Longest DST shift looked around when walking back from an instant (real zones shift by 1 h at most).
_MAX_SHIFT = timedelta(hours=2)


@runtime_checkable
class Schedule(Protocol):
    """What the periodic scheduler needs of a schedule."""

    missed: MissedPolicy
    grace: float

    def slots_after(self, after: float) -> Iterator[float]:
        """Every slot strictly after `after`, ascending, without repeats (an endless iterator)."""
        ...

    def last_at_or_before(self, moment: float) -> float | None:
        """The latest slot at or before `moment`, or None if there is none."""
        ...

    def describe(self) -> str:
        """One short line for listings: `every 30s`, `cron '0 3 * * *' (Europe/Paris)`."""
        ...


def next_slot(schedule: Schedule, after: float) -> float:
    """The first slot of `schedule` strictly after `after`."""
    return next(schedule.slots_after(after))


def slots_between(schedule: Schedule, after: float, until: float, limit: int) -> list[float]:
    """Up to `limit` slots in (`after`, `until`], ascending."""
    found: list[float] = []
    for slot in schedule.slots_after(after):
        if slot > until or len(found) >= limit:
            break
        found.append(slot)
    return found


def _check_policy(missed: str, grace: float) -> None:
    if missed not in MISSED_POLICIES:
        raise ConfigurationError(
            f"missed={missed!r} is not a missed-slot policy; use one of {', '.join(MISSED_POLICIES)}"
        )
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        raise ConfigurationError(f"grace={grace!r} must be a number of seconds >= 0")


@dataclass(frozen=True)
class Every:
    """Slots every `seconds` seconds, at multiples of the interval since the UNIX epoch (UTC).

    `every(hours=1)` runs on the hour and `every(days=1)` at 00:00 UTC; use `cron()` for local times.
    """

    seconds: int
    missed: MissedPolicy = "last"
    grace: float = DEFAULT_GRACE

    def __post_init__(self) -> None:
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, int) or self.seconds < 1:
            raise ConfigurationError(
                f"every(): the interval must be a whole number of seconds >= 1, got {self.seconds!r}"
            )
        _check_policy(self.missed, self.grace)

    def slots_after(self, after: float) -> Iterator[float]:
        slot = (int(after // self.seconds) + 1) * self.seconds
        while True:
            yield float(slot)
            slot += self.seconds

    def last_at_or_before(self, moment: float) -> float | None:
        return float(int(moment // self.seconds) * self.seconds)

    def describe(self) -> str:
        return f"every {_duration(self.seconds)}"


@dataclass(frozen=True)
class Cron:
    """Slots where a cron expression matches the wall clock of the zone `tz` (see the module's DST rule)."""

    expression: str
    tz: str = "UTC"
    missed: MissedPolicy = "last"
    grace: float = DEFAULT_GRACE
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str):
            raise ConfigurationError(f"cron(): the expression must be a string, got {self.expression!r}")
        try:
            CronSim(self.expression, datetime(2000, 1, 1))
        except (CronSimError, ValueError) as exc:
            raise ConfigurationError(
                f"cron({self.expression!r}): not a cron expression ({exc}); write five fields "
                "'minute hour day-of-month month day-of-week', e.g. '*/5 * * * *'"
            ) from None
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(
                f"cron(..., tz={self.tz!r}): unknown time zone; use an IANA name such as 'Europe/Paris' "
                "(on a system without a time zone database, pip install tzdata)"
            ) from None
        object.__setattr__(self, "zone", zone)
        _check_policy(self.missed, self.grace)

    def slots_after(self, after: float) -> Iterator[float]:
        # No wall time before the clock's reading at `after` can map past `after` (its first showing came
        # earlier), so the walk starts there; slots of a repeated hour map back before it and are dropped.
        previous = after
        for wall in CronSim(self.expression, self._wall(after)):
            slot = self._instant(wall)
            if slot > previous:
                previous = slot
                yield slot

    def last_at_or_before(self, moment: float) -> float | None:
        # After the clock goes back, wall times later than the clock's reading can map to earlier instants.
        start = self._wall(moment) + _MAX_SHIFT
        for wall in CronSim(self.expression, start, reverse=True):
            slot = self._instant(wall)
            if slot <= moment:
                return slot
        return None  # pragma: no cover - cron expressions repeat for ever

    def describe(self) -> str:
        return f"cron {self.expression!r} ({self.tz})"

    def _wall(self, moment: float) -> datetime:
        """The zone's clock reading at `moment`, naive (cronsim walks naive wall times)."""
        return datetime.fromtimestamp(int(moment), self.zone).replace(tzinfo=None)

    def _instant(self, wall: datetime) -> float:
        """The first instant at which the zone's clock shows `wall` or later."""
        first = wall.replace(tzinfo=self.zone, fold=0)  # fold=0: the earlier of a repeated time
        moment = int(first.timestamp())
        if self._wall(moment) == wall:
            return float(moment)
        # `wall` falls in a gap (the clock jumped over it): find the jump, the first second that reads later.
        other = int(wall.replace(tzinfo=self.zone, fold=1).timestamp())
        low, high = min(moment, other), max(moment, other)
        while high - low > 1:
            middle = (low + high) // 2
            if self._wall(middle) >= wall:
                high = middle
            else:
                low = middle
        return float(high)


def every(
    seconds: float = 0,
    *,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
    missed: MissedPolicy = "last",
    grace: float = DEFAULT_GRACE,
) -> Every:
    """A schedule every so long: `every(seconds=30)`, `every(minutes=5)`, `every(hours=1, minutes=30)`.

    Slots are multiples of the interval since the UNIX epoch, so every worker agrees on them.

    Args:
        missed: what to run for slots missed while no worker published them for longer than `grace`:
            `last` (default) the newest missed slot once, `all` every one, `none` none. Always logged.
        grace: seconds a slot may be late and still run as on time (a leader change takes a few).

    Raises:
        ConfigurationError: the interval is not a whole number of seconds >= 1, or a bad policy.
    """
    total = seconds + 60 * minutes + 3600 * hours + 86400 * days
    whole = round(total)
    if abs(total - whole) > 1e-9:
        raise ConfigurationError(f"every(): the interval must be a whole number of seconds, got {total!r}")
    return Every(whole, missed=missed, grace=grace)


def cron(
    expression: str, *, tz: str = "UTC", missed: MissedPolicy = "last", grace: float = DEFAULT_GRACE
) -> Cron:
    """A cron schedule: `cron("*/5 * * * *")`, `cron("0 3 * * mon-fri", tz="Europe/Paris")`.

    Five fields (minute hour day-of-month month day-of-week), or six with seconds first. Times are the wall
    clock of `tz` (an IANA zone, default UTC); see docs/periodic.md for DST.

    Args:
        missed: `last` (default), `all` or `none`: as for `every()`.
        grace: seconds a slot may be late and still run as on time.

    Raises:
        ConfigurationError: the expression does not parse, the zone is unknown, or a bad policy.
    """
    return Cron(expression, tz=tz, missed=missed, grace=grace)


def slot_time(slot: float) -> str:
    """A slot as UTC ISO 8601 text (`2026-03-29T01:00:00+00:00`), as slot ids and listings show it."""
    return datetime.fromtimestamp(slot, timezone.utc).isoformat(timespec="seconds")


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
