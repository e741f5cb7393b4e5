"""Calling a task: arguments are checked in the caller, delayed work is scheduled, keys deduplicate."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import time
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

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


AWARE = datetime.now(timezone.utc) + timedelta(hours=1)
NAIVE = datetime.now() + timedelta(hours=1)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"countdown": 5, "eta": AWARE}, "give countdown or eta, not both"),
        ({"countdown": -1}, "countdown must be a number of seconds >= 0, got -1"),
        ({"countdown": "5"}, "countdown must be a number of seconds >= 0, got '5'"),
        ({"countdown": True}, "countdown must be a number of seconds >= 0, got True"),
        ({"eta": NAIVE}, "eta is a naive datetime; pass a timezone-aware one"),
        ({"eta": "tomorrow"}, "eta must be a timezone-aware datetime or UNIX seconds, got 'tomorrow'"),
        ({"expires": 0}, "expires must be seconds > 0 or a timezone-aware datetime, got 0"),
        ({"expires": NAIVE}, "expires is a naive datetime; pass a timezone-aware one"),
        ({"priority": 10}, "priority=10 is invalid: expected an integer from 0 to 9"),
        ({"priority": True}, "priority=True is invalid: expected an integer from 0 to 9"),
        ({"idempotency_key": ""}, "idempotency_key must be a non-empty string"),
        ({"tags": {"n": 1}}, "tags must map strings to strings"),
    ],
)
def test_a_bad_call_option_is_refused_with_what_to_pass_and_nothing_is_sent(
    decortask_app: Decortask, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match="^" + re.escape(says)):
        add.apply_async(args=(1,), **options)
    assert decortask_app.store.count_tasks(_all()) == 0
    assert decortask_app.transport.queue_size(decortask_app.settings.default_queue) == 0


@task(name="calling.ranked", priority=7, queue="calling-ranked")
def ranked() -> None:
    pass


def test_a_call_without_options_takes_the_task_defaults_and_a_call_option_overrides_them(
    decortask_app: Decortask,
) -> None:
    default = ranked.delay().record()
    assert (default.priority, default.queue) == (7, "calling-ranked")
    given = ranked.apply_async(priority=2, queue="calling-other").record()
    assert (given.priority, given.queue) == (2, "calling-other")
    assert add.delay(1).record().queue == decortask_app.settings.default_queue


def test_aapply_async_and_apply_many_take_the_options_of_apply_async() -> None:
    """The per-call options are one set: `CallOptions` carries exactly the keywords of `apply_async`.

    Adding an option means a field on `CallOptions` and the keyword on `apply_async` (`aapply_async` copies
    its parameters); `apply_many` takes the same ones except the idempotency key, which a batch gives per call.
    """
    from decortask.call_options import CallOptions

    def keywords(method: Any) -> dict[str, inspect.Parameter]:
        found = inspect.signature(method).parameters.values()
        return {p.name: p for p in found if p.kind is inspect.Parameter.KEYWORD_ONLY}

    carried = {f.name for f in fields(CallOptions)}
    assert set(keywords(add.apply_async)) == carried | {"app"}
    assert inspect.signature(add.aapply_async) == inspect.signature(add.apply_async)
    assert inspect.iscoroutinefunction(add.aapply_async)
    assert set(keywords(add.apply_many)) == carried - {"idempotency_key"} | {"app"}
    for name, parameter in keywords(add.apply_many).items():
        assert parameter == keywords(add.apply_async)[name], name


def test_call_options_are_type_checked_on_apply_async_aapply_async_and_apply_many() -> None:
    case = Path(__file__).resolve().parent / "typing_cases" / "call_options.py"
    expected = {
        n for n, line in enumerate(case.read_text().splitlines(), 1) if line.rstrip().endswith("# error")
    }
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent", str(case)],
        cwd=case.parent.parent.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    reported = {int(m.group(1)) for m in re.finditer(r"call_options\.py:(\d+): error", result.stdout)}
    assert reported == expected, result.stdout


def _all():  # type: ignore[no-untyped-def]
    from decortask.store import TaskQuery

    return TaskQuery()
