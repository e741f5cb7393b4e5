"""Schedules (issue 14): which slots `cron()` and `every()` produce, DST days included, by pure computation."""

from __future__ import annotations

from datetime import datetime, timezone
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import pytest

from decortask import ConfigurationError, cron, every
from decortask.schedules import next_slot, slot_time, slots_between

PARIS = ZoneInfo("Europe/Paris")


def at(text: str, zone: ZoneInfo | timezone = timezone.utc) -> float:
    """UNIX seconds of a wall-clock time in `zone` (the first one, if the clock shows it twice)."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def utc(slots: list[float]) -> list[str]:
    return [slot_time(s)[:-6] for s in slots]  # without the +00:00, for readable expectations


def paris(slots: list[float]) -> list[str]:
    return [datetime.fromtimestamp(s, PARIS).strftime("%H:%M%z") for s in slots]


def test_every_slots_are_multiples_of_the_interval_since_the_epoch() -> None:
    schedule = every(seconds=30)
    assert next_slot(schedule, 1000.0) == 1020.0
    assert next_slot(schedule, 1020.0) == 1050.0  # strictly after
    assert slots_between(schedule, 995.0, 1080.0, 10) == [1020.0, 1050.0, 1080.0]
    assert schedule.last_at_or_before(1079.9) == 1050.0
    assert every(minutes=1, seconds=30).seconds == 90
    assert every(hours=1).describe() == "every 1h"


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: every(seconds=0), "whole number of seconds >= 1"),
        (lambda: every(seconds=1.5), "whole number of seconds"),
        (lambda: every(seconds=5, missed="some"), "missed='some' is not a missed-slot policy"),  # type: ignore[arg-type]
        (lambda: every(seconds=5, grace=-1), "grace=-1 must be a number of seconds >= 0"),
        (lambda: cron("61 * * * *"), "not a cron expression"),
        (lambda: cron("* * *"), "not a cron expression"),
        (lambda: cron("* * * * *", tz="Mars/Olympus"), "unknown time zone"),
    ],
)
def test_bad_schedules_are_refused_with_what_to_write(call: object, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        call()  # type: ignore[operator]


def test_cron_in_utc_is_the_plain_expression() -> None:
    schedule = cron("*/5 * * * *")
    start = at("2026-01-01T10:02:00")
    assert utc(slots_between(schedule, start, start + 900, 10)) == [
        "2026-01-01T10:05:00",
        "2026-01-01T10:10:00",
        "2026-01-01T10:15:00",
    ]
    assert schedule.last_at_or_before(start) == at("2026-01-01T10:00:00")


def test_cron_follows_the_zone_wall_clock() -> None:
    schedule = cron("0 3 * * *", tz="Europe/Paris")
    assert utc([next_slot(schedule, at("2026-01-10T00:00:00"))]) == ["2026-01-10T02:00:00"]  # CET, UTC+1
    assert utc([next_slot(schedule, at("2026-07-10T00:00:00"))]) == ["2026-07-10T01:00:00"]  # CEST, UTC+2


# Europe/Paris, 2026-03-29: at 02:00 CET the clock jumps to 03:00 CEST (01:00 UTC); 02:xx never shows.


def test_spring_forward_a_daily_slot_in_the_skipped_hour_runs_at_the_jump_not_never() -> None:
    schedule = cron("30 2 * * *", tz="Europe/Paris")
    slots = slots_between(schedule, at("2026-03-27T12:00:00"), at("2026-03-31T12:00:00"), 10)
    assert utc(slots) == [
        "2026-03-28T01:30:00",  # 02:30 CET
        "2026-03-29T01:00:00",  # 02:30 does not exist: runs at the jump, 03:00 CEST
        "2026-03-30T00:30:00",  # 02:30 CEST
        "2026-03-31T00:30:00",
    ]


def test_spring_forward_every_fifteen_minutes_keeps_running_every_fifteen_real_minutes() -> None:
    schedule = cron("*/15 * * * *", tz="Europe/Paris")
    slots = slots_between(schedule, at("2026-03-29T01:20:00", PARIS), at("2026-03-29T03:35:00", PARIS), 20)
    # 02:00-02:45 map to the jump (03:00 CEST), which is the 03:00 slot itself: one run there, none lost
    # in real time (01:45 CET to 03:00 CEST is 15 minutes).
    assert paris(slots) == ["01:30+0100", "01:45+0100", "03:00+0200", "03:15+0200", "03:30+0200"]


def test_spring_forward_slots_seen_from_just_before_the_jump() -> None:
    schedule = cron("30 2 * * *", tz="Europe/Paris")
    just_before = at("2026-03-29T00:59:59")
    assert utc([next_slot(schedule, just_before)]) == ["2026-03-29T01:00:00"]
    assert schedule.last_at_or_before(at("2026-03-29T01:00:00")) == at("2026-03-29T01:00:00")
    assert schedule.last_at_or_before(just_before) == at("2026-03-28T01:30:00")


# Europe/Paris, 2026-10-25: at 03:00 CEST the clock goes back to 02:00 CET (01:00 UTC); 02:xx shows twice.


def test_fall_back_a_daily_slot_in_the_repeated_hour_runs_once() -> None:
    schedule = cron("30 2 * * *", tz="Europe/Paris")
    slots = slots_between(schedule, at("2026-10-23T12:00:00"), at("2026-10-27T12:00:00"), 10)
    assert utc(slots) == [
        "2026-10-24T00:30:00",  # 02:30 CEST
        "2026-10-25T00:30:00",  # the first 02:30 (CEST); the second one (CET, 01:30 UTC) is no slot
        "2026-10-26T01:30:00",  # 02:30 CET
        "2026-10-27T01:30:00",
    ]


def test_fall_back_every_fifteen_minutes_runs_each_wall_time_once() -> None:
    schedule = cron("*/15 * * * *", tz="Europe/Paris")
    slots = slots_between(schedule, at("2026-10-25T00:10:00"), at("2026-10-25T02:20:00"), 20)
    assert paris(slots) == [
        "02:15+0200",
        "02:30+0200",
        "02:45+0200",
        # the clock shows 02:00-02:59 again (CET): those wall times already ran
        "03:00+0100",
        "03:15+0100",
    ]


def test_fall_back_seen_from_inside_the_repeated_hour() -> None:
    schedule = cron("30 2 * * *", tz="Europe/Paris")
    second_pass = at("2026-10-25T01:10:00")  # 02:10 CET, after 02:30 CEST already ran
    assert utc([next_slot(schedule, second_pass)]) == ["2026-10-26T01:30:00"]
    assert schedule.last_at_or_before(second_pass) == at("2026-10-25T00:30:00")


def test_a_year_of_paris_slots_has_one_per_day() -> None:
    schedule = cron("30 2 * * *", tz="Europe/Paris")
    slots = list(islice(schedule.slots_after(at("2026-01-01T00:00:00")), 365))
    days = {datetime.fromtimestamp(s, PARIS).date() for s in slots}
    assert len(days) == 365
    assert all(b - a >= 23 * 3600 for a, b in pairwise(slots))
