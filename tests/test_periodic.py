"""The periodic scheduler (issue 14), driven by `tick(now)` with an injected clock on memory:// apps.

Several `PeriodicScheduler`s on one app stand for several workers sharing a store; "killing" one is
simply no longer ticking it. Slots are counted from the store's records (one per slot task id) and from
the messages on the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from decortask import ConfigurationError, Decortask, TaskDefinitionError, TaskStatus, cron, every, task
from decortask.periodic import LEASE_TTL, PeriodicScheduler, slot_task_id
from decortask.periodic_config import entries_from_setting
from decortask.registry import registry
from decortask.store.base import TaskQuery
from decortask.store.periodic_state import PeriodicStateStore
from decortask.testing import run_pending

T0 = 1_800_000_000.0  # a multiple of 10 (and of 60)
RUNS: list[tuple[str, Any]] = []


@pytest.fixture
def app(unique: str) -> Iterator[Decortask]:
    made = Decortask("memory://", "memory://", default_queue=f"periodic-{unique}")
    yield made
    made.close()


@pytest.fixture
def scheduled(request: pytest.FixtureRequest) -> Iterator[str]:
    """A task `tp.tick` scheduled every 10 s (missed policy from the test's param), unregistered after."""
    missed = getattr(request, "param", "last")
    RUNS.clear()

    @task(name="tp.tick", schedule=every(seconds=10, missed=missed))
    def tick() -> None:
        RUNS.append(("tp.tick", None))

    yield "tp.tick"
    registry.unregister("tp.tick")


def records(app: Decortask) -> list[Any]:
    return sorted(app.store.list_tasks(TaskQuery(limit=10_000)), key=lambda r: r.tags["slot"])


def slots_of(app: Decortask) -> list[float]:
    return [datetime.fromisoformat(r.tags["slot"]).timestamp() for r in records(app)]


def drive(schedulers: list[PeriodicScheduler], start: float, end: float, step: float = 0.5) -> None:
    now = start
    while now <= end:
        for scheduler in schedulers:
            scheduler.tick(now)
        now += step


def test_a_scheduled_task_runs_each_slot_once_from_the_first_slot_after_it_is_first_seen(
    app: Decortask, scheduled: str
) -> None:
    workers = [PeriodicScheduler(app, f"w{i}") for i in range(3)]
    drive(workers, T0 + 3, T0 + 60)
    assert slots_of(app) == [T0 + 10 * k for k in range(1, 7)]
    assert [r.id for r in records(app)] == [slot_task_id(scheduled, T0 + 10 * k) for k in range(1, 7)]
    assert app.transport.queue_size(app.settings.default_queue) == 6
    assert sum(1 for w in workers if w.leading()) == 1
    assert run_pending(app) == 6
    assert len(RUNS) == 6
    assert {r.status for r in records(app)} == {TaskStatus.SUCCESS}


def test_when_the_leader_dies_another_worker_takes_over_and_publishes_the_slots_it_missed(
    app: Decortask, scheduled: str
) -> None:
    workers = [PeriodicScheduler(app, f"w{i}") for i in range(3)]
    drive(workers, T0 + 1, T0 + 25)
    leader = next(w for w in workers if w.leading())
    survivors = [w for w in workers if w is not leader]
    drive(survivors, T0 + 25.5, T0 + 70)  # the leader no longer ticks: SIGKILL
    assert slots_of(app) == [T0 + 10 * k for k in range(1, 8)]
    assert app.transport.queue_size(app.settings.default_queue) == 7
    assert sum(1 for w in survivors if w.leading()) == 1


def test_a_slot_whose_task_failed_is_not_run_again_by_a_leader_that_finds_it(
    app: Decortask, scheduled: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = app.store
    assert isinstance(store, PeriodicStateStore)
    first = PeriodicScheduler(app, "w1")
    first.tick(T0 + 1)
    real_advance = store.advance_schedule

    def die_after_publishing(name: str, slot: float) -> Any:
        raise RuntimeError("SIGKILL between the publish and moving the schedule on")

    monkeypatch.setattr(store, "advance_schedule", die_after_publishing)
    with pytest.raises(RuntimeError):
        first.tick(T0 + 10)
    monkeypatch.setattr(store, "advance_schedule", real_advance)
    (record,) = records(app)
    store.transition(record.id, TaskStatus.FAILED, error_message="boom")  # it ran and failed at once
    second = PeriodicScheduler(app, "w2")
    drive([second], T0 + 10 + LEASE_TTL, T0 + 19)
    assert slots_of(app) == [T0 + 10]
    assert app.transport.queue_size(app.settings.default_queue) == 1  # not published again
    assert store.schedule_state(scheduled).last_slot == T0 + 10  # type: ignore[union-attr]


def test_a_slot_recorded_but_never_published_is_published_by_the_next_leader(
    app: Decortask, scheduled: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = PeriodicScheduler(app, "w1")
    first.tick(T0 + 1)
    real_publish = app.transport.publish

    def die_before_publishing(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("SIGKILL between recording the slot and publishing it")

    monkeypatch.setattr(app.transport, "publish", die_before_publishing)
    with pytest.raises(RuntimeError):
        first.tick(T0 + 10)
    monkeypatch.setattr(app.transport, "publish", real_publish)
    assert [r.status for r in records(app)] == [TaskStatus.PENDING]
    assert app.transport.queue_size(app.settings.default_queue) == 0
    second = PeriodicScheduler(app, "w2")
    drive([second], T0 + 10 + LEASE_TTL, T0 + 19)
    assert app.transport.queue_size(app.settings.default_queue) == 1
    assert run_pending(app) == 1 and len(RUNS) == 1


@pytest.mark.parametrize(
    ("scheduled", "expected_missed"),
    [("last", [T0 + 940]), ("all", [T0 + 10 * k for k in range(1, 95)]), ("none", [])],
    indirect=["scheduled"],
)
def test_slots_missed_while_no_worker_ran_follow_the_schedule_policy_and_are_logged(
    app: Decortask, scheduled: str, expected_missed: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    PeriodicScheduler(app, "w1").tick(T0 + 1)  # the schedule starts; then every worker is down
    caplog.set_level(logging.WARNING, logger="decortask.periodic")
    back = PeriodicScheduler(app, "w2")
    drive([back], T0 + 1000, T0 + 1000)  # grace 60 s: slots up to T0 + 940 (60 s late) are missed
    on_time = [T0 + 10 * k for k in range(95, 101)]  # 950 to 1000
    while back.tick(T0 + 1000):  # a long backlog is published over several ticks
        pass
    assert slots_of(app) == expected_missed + on_time
    assert "94 slots missed from 2027-01-15T08:00:10+00:00 to 2027-01-15T08:15:40+00:00" in caplog.text
    assert f"missed='{back.entries[0].schedule.missed}'" in caplog.text


def test_a_paused_schedule_skips_its_slots_and_resumes_with_the_next_one(
    app: Decortask, scheduled: str
) -> None:
    store = app.store
    assert isinstance(store, PeriodicStateStore)
    worker = PeriodicScheduler(app, "w1")
    drive([worker], T0 + 1, T0 + 15)
    store.set_schedule_paused(scheduled, True)
    drive([worker], T0 + 15.5, T0 + 45)
    store.set_schedule_paused(scheduled, False)
    drive([worker], T0 + 45.5, T0 + 60)
    assert slots_of(app) == [T0 + 10, T0 + 50, T0 + 60]


def test_schedules_from_settings_carry_their_arguments_and_queue(app: Decortask, unique: str) -> None:
    @task(name="tp.add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    try:
        configured = app.reconfigured(
            schedules={
                "sum": {"task": "tp.add", "every": 10, "args": [1], "kwargs": {"b": 2}, "queue": unique}
            }
        )
        worker = PeriodicScheduler(configured, "w1")
        drive([worker], T0 + 1, T0 + 10)
        (record,) = configured.store.list_tasks(TaskQuery())
        assert (record.name, record.args, record.kwargs, record.queue) == ("tp.add", [1], {"b": 2}, unique)
        assert record.id == slot_task_id("sum", T0 + 10)
        assert run_pending(configured, [unique]) == 1
        assert configured.store.get(record.id).result == 3  # type: ignore[union-attr]
    finally:
        registry.unregister("tp.add")


def test_schedules_setting_accepts_json_text_as_the_environment_gives_it() -> None:
    (entry,) = entries_from_setting('{"nightly": {"task": "x.y", "cron": "0 3 * * *", "tz": "Europe/Paris"}}')
    assert (entry.name, entry.task, entry.schedule) == (
        "nightly",
        "x.y",
        cron("0 3 * * *", tz="Europe/Paris"),
    )


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("{not json", "not valid JSON"),
        ('{"a": {"every": 5}}', "needs task"),
        ('{"a": {"task": "x"}}', "exactly one of cron"),
        ('{"a": {"task": "x", "every": 5, "cron": "* * * * *"}}', "exactly one of cron"),
        ('{"a": {"task": "x", "every": 5, "tz": "Europe/Paris"}}', "tz applies to cron schedules only"),
        ('{"a": {"task": "x", "cron": "bad"}}', r"schedules\['a'\]: cron\('bad'\): not a cron expression"),
        ('{"a": {"task": "x", "every": 5, "when": 1}}', "unknown key"),
        ('{"a": {"task": "x", "every": 5, "args": {"no": 1}}}', "args must be a list"),
    ],
)
def test_a_bad_schedules_setting_is_refused_when_the_app_is_configured(setting: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Decortask("memory://", "memory://", schedules=setting)


def test_schedule_option_needs_a_schedule_and_a_task_callable_without_arguments() -> None:
    with pytest.raises(TaskDefinitionError, match="option schedule='\\*/5 \\* \\* \\* \\*' is invalid"):

        @task(name="tp.bad1", schedule="*/5 * * * *")  # type: ignore[call-overload]
        def bad1() -> None: ...

    with pytest.raises(TaskDefinitionError, match="a scheduled task is called with no arguments"):

        @task(name="tp.bad2", schedule=every(minutes=1))
        def bad2(x: int) -> None: ...

    assert "tp.bad1" not in registry and "tp.bad2" not in registry


def test_workers_with_the_periodic_setting_off_never_lead(app: Decortask, scheduled: str) -> None:
    off = PeriodicScheduler(app.reconfigured(periodic=False), "w1")
    drive([off], T0 + 1, T0 + 30)
    assert records(app) == [] and off.leading() == []


PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        # the clock jumps from 02:00 CET to 03:00 CEST: 02:30 runs at the jump, once
        ("2026-03-29", ["2026-03-28T02:30+01:00", "2026-03-29T03:00+02:00", "2026-03-30T02:30+02:00"]),
        # the clock goes back from 03:00 CEST to 02:00 CET: 02:30 runs once, at its first showing
        ("2026-10-25", ["2026-10-24T02:30+02:00", "2026-10-25T02:30+02:00", "2026-10-26T02:30+01:00"]),
    ],
)
def test_a_cron_schedule_across_a_dst_change_runs_once_that_day(
    app: Decortask, day: str, expected: list[str]
) -> None:
    @task(name="tp.nightly", schedule=cron("30 2 * * *", tz="Europe/Paris"))
    def nightly() -> None: ...

    try:
        noon_before = datetime.fromisoformat(f"{day}T12:00:00+00:00").timestamp() - 86400
        workers = [PeriodicScheduler(app, f"w{i}") for i in range(2)]
        drive(workers, noon_before - 86400, noon_before + 2 * 86400, step=60.0)
        shown = [datetime.fromtimestamp(s, PARIS).isoformat(timespec="minutes") for s in slots_of(app)]
        assert shown == expected
    finally:
        registry.unregister("tp.nightly")


def test_slot_task_ids_are_the_same_in_every_process_and_differ_per_schedule_and_slot() -> None:
    assert slot_task_id("a", T0) == slot_task_id("a", T0)
    assert len({slot_task_id("a", T0), slot_task_id("b", T0), slot_task_id("a", T0 + 1)}) == 3
    when = datetime.fromtimestamp(T0, timezone.utc).isoformat()
    assert when == "2027-01-15T08:00:00+00:00"
