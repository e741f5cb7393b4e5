"""Calling a task: arguments are checked in the caller, delayed work is scheduled, keys deduplicate."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from decortask import (
    ArgumentEncodingError,
    ConfigurationError,
    Decortask,
    PayloadTooLargeError,
    TaskStatus,
    task,
)


@task(name="calling.add")
def add(a: int, b: int = 0) -> int:
    return a + b


def test_delay_records_pending_and_publishes(decortask_app: Decortask) -> None:
    handle = add.delay(1, b=2)
    record = handle.record()
    assert (record.status, record.args, record.kwargs, record.attempt) == (
        TaskStatus.PENDING,
        [1],
        {"b": 2},
        0,
    )
    assert decortask_app.transport.queue_size(decortask_app.settings.default_queue) == 1


@pytest.mark.parametrize(("args", "kwargs"), [((), {}), ((1, 2, 3), {}), ((1,), {"c": 3})])
def test_wrong_arguments_raise_type_error_in_the_caller(
    decortask_app: Decortask, args: tuple[int, ...], kwargs: dict[str, int]
) -> None:
    with pytest.raises(TypeError, match=r"calling\.add"):
        add.apply_async(args=args, kwargs=kwargs)
    assert decortask_app.transport.queue_size(decortask_app.settings.default_queue) == 0
    assert decortask_app.store.count_tasks(_all()) == 0


def test_non_json_argument_is_refused_naming_its_path(decortask_app: Decortask) -> None:
    with pytest.raises(ArgumentEncodingError, match=r"kwargs\['b'\] \(a datetime\)"):
        add.delay(1, b=datetime.now(timezone.utc))  # type: ignore[arg-type]
    assert decortask_app.store.count_tasks(_all()) == 0


@pytest.mark.decortask(max_payload_bytes=2048)
def test_payload_over_the_limit_is_refused_at_the_call(decortask_app: Decortask) -> None:
    with pytest.raises(PayloadTooLargeError):
        add.apply_async(args=("x" * 4096,))
    assert decortask_app.store.count_tasks(_all()) == 0


def test_countdown_schedules_instead_of_publishing(decortask_app: Decortask) -> None:
    handle = add.apply_async(args=(1,), countdown=60)
    assert handle.status is TaskStatus.SCHEDULED
    assert decortask_app.transport.queue_size(decortask_app.settings.default_queue) == 0
    due = decortask_app.store.next_due()
    assert due is not None and 59 < due - time.time() <= 60


def test_naive_eta_is_rejected_and_past_eta_runs_now(decortask_app: Decortask) -> None:
    with pytest.raises(ConfigurationError, match="naive"):
        add.apply_async(args=(1,), eta=datetime.now() + timedelta(seconds=5))
    past = add.apply_async(args=(1,), eta=datetime.now(timezone.utc) - timedelta(days=1))
    assert past.status is TaskStatus.PENDING


def test_idempotency_key_returns_the_existing_task(decortask_app: Decortask) -> None:
    first = add.apply_async(args=(1,), idempotency_key="invoice-42")
    second = add.apply_async(args=(2,), idempotency_key="invoice-42")
    assert second.id == first.id
    assert decortask_app.transport.queue_size(decortask_app.settings.default_queue) == 1


def test_priority_and_tags_are_validated(decortask_app: Decortask) -> None:
    with pytest.raises(ConfigurationError, match="priority"):
        add.apply_async(args=(1,), priority=11)
    with pytest.raises(ConfigurationError, match="tags"):
        add.apply_async(args=(1,), tags={"n": 1})  # type: ignore[dict-item]


def _all():  # type: ignore[no-untyped-def]
    from decortask.store import TaskQuery

    return TaskQuery()
