"""decortask.compat.celery: a Celery tasks module runs under decortask with only its import changed.

The Celery-style module (tests/celery_style_tasks.py) runs under a real `decortask worker` subprocess on the
embedded SQLite broker and on Redis; the option mapping and the result handle are checked in process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery_style_tasks as tasks
import pytest
from workers import app_with_worker

from decortask import Decortask, TaskCancelled, TaskFailed, TaskStatus
from decortask.app import reset_default_app
from decortask.compat.celery import (
    CELERY_STATES,
    AsyncResult,
    Celery,
    MaxRetriesExceededError,
    UnsupportedCeleryFeature,
    shared_task,
)
from decortask.errors import TaskDefinitionError
from decortask.store.base import LogLine
from decortask.testing import WorkerThread

#: Clock slack between the worker's two readings of time.time() (the failure and the next start).
CLOCK_SLACK = 0.05


# -- the Celery-style module under a real worker ----------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def celery_worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Decortask]:
    """A current app on the broker kind, and a `decortask worker -A tests.celery_style_tasks` on its queue."""
    with app_with_worker(request.param, tmp_path, "tests.celery_style_tasks", "celery-compat") as app:
        yield app


def printed(logs: list[LogLine]) -> list[LogLine]:
    return [line for line in logs if line.extra.get("source") == "stdout"]


def failures(logs: list[LogLine]) -> list[tuple[LogLine, float | None]]:
    """Each failed attempt's line with the delay it gave the next attempt (None: it was the last)."""
    found = []
    for line in logs:
        if line.message.startswith(f"attempt {line.attempt} failed: "):
            delay = re.search(r"; attempt \d+ in ([0-9.]+) s$", line.message)
            found.append((line, float(delay.group(1)) if delay else None))
    return found


def assert_each_retry_waited(logs: list[LogLine]) -> None:
    """Every attempt after the first started no sooner than its predecessor's failure plus the delay."""
    starts = {line.attempt: line.ts for line in printed(logs)}
    for failed, delay in failures(logs):
        if delay is not None:
            assert starts[failed.attempt + 1] >= failed.ts + delay - CLOCK_SLACK, (failed, starts)


def test_self_retry_with_countdown_retries_after_the_countdown_and_ends_success(
    celery_worker: Decortask,
) -> None:
    result = tasks.send_twitter_status.delay("hello")

    assert result.get(timeout=60) == "posted: hello"
    assert (result.state, result.status, result.ready(), result.successful()) == (
        "SUCCESS",
        "SUCCESS",
        True,
        True,
    )
    logs = result.handle.logs
    assert [line.message for line in printed(logs)] == [f"try {n} of {result.id}" for n in (1, 2, 3)]
    assert [(line.message, delay) for line, delay in failures(logs)] == [
        (
            f"attempt {n} failed: decortask.errors.Retry: self.retry() in 1 s: FailWhaleError: over capacity, "
            f"try {n}; attempt {n + 1} in 1.00 s",
            1.0,
        )
        for n in (1, 2)
    ]
    assert_each_retry_waited(logs)


def test_autoretry_for_with_retry_backoff_retries_with_growing_delays_then_fails_after_max_retries(
    celery_worker: Decortask,
) -> None:
    result = tasks.refresh_timeline.delay("ann")

    with pytest.raises(TaskFailed) as failed:
        result.get(timeout=90)
    assert failed.value.error_type == "tests.celery_style_tasks.FailWhaleError"
    assert (result.state, result.ready(), result.successful(), result.failed()) == (
        "FAILURE",
        True,
        False,
        True,
    )
    logs = result.handle.logs
    assert len(printed(logs)) == 4  # the first attempt and max_retries=3 retries
    # retry_backoff=True: 1, 2, 4 seconds (retry_jitter=False), then no retry is left
    assert [delay for _, delay in failures(logs)] == [1.0, 2.0, 4.0, None]
    assert failures(logs)[-1][0].message == (
        "attempt 4 failed: tests.celery_style_tasks.FailWhaleError: the timeline of ann is over capacity"
    )
    assert_each_retry_waited(logs)


def test_bind_true_reads_its_request_id_args_and_queue(celery_worker: Decortask) -> None:
    result = tasks.dump_context.delay(2, 3)

    request = result.get(timeout=60)
    assert request == {
        "id": result.id,
        "retries": 0,
        "args": [2, 3],
        "kwargs": {},
        "task": "celery_style.dump_context",
        "name": "celery_style.dump_context",
        "routing_key": celery_worker.settings.default_queue,
        "sum": 5,
    }
    assert result == result.id and AsyncResult(result.id).get(timeout=5) == request


# -- in process: retries, limits, calls and results --------------------------------------------------------


@shared_task(bind=True, max_retries=1, default_retry_delay=0)
def gives_up_with_exc(self: Any) -> None:
    raise self.retry(exc=KeyError(f"missing on try {self.request.retries + 1}"))


@shared_task(bind=True, max_retries=1)
def gives_up_without_exc(self: Any) -> None:
    raise self.retry(countdown=0)


@shared_task(bind=True)
def raises_retry_limit_per_call(self: Any) -> int:
    if self.request.retries < 4:
        raise self.retry(countdown=0, max_retries=4)  # above the task's max_retries=3
    return self.request.retries


@shared_task(autoretry_for=(ValueError,), dont_autoretry_for=(UnicodeError,), retry_kwargs={"countdown": 0})
def fails_with(kind: str) -> None:
    raise {"value": ValueError, "unicode": UnicodeError, "type": TypeError}[kind](kind)


def test_self_retry_past_max_retries_raises_exc_or_max_retries_exceeded(
    decortask_app: Decortask, decortask_worker: WorkerThread
) -> None:
    with_exc, without_exc = gives_up_with_exc.delay(), gives_up_without_exc.delay()
    decortask_worker.wait(with_exc.handle, without_exc.handle)

    assert with_exc.handle.attempts == 2 and without_exc.handle.attempts == 2
    assert with_exc.handle.result().error_type == "builtins.KeyError"
    assert with_exc.handle.result().error_message == "'missing on try 2'"
    assert without_exc.handle.result().error_type == (
        f"{MaxRetriesExceededError.__module__}.{MaxRetriesExceededError.__qualname__}"
    )
    assert isinstance(without_exc.get(propagate=False), TaskFailed)


def test_max_retries_of_one_retry_call_overrides_the_tasks(
    decortask_app: Decortask, decortask_worker: WorkerThread
) -> None:
    assert raises_retry_limit_per_call.delay().get(timeout=30) == 4


def test_autoretry_for_retries_only_its_exceptions_and_never_those_of_dont_autoretry_for(
    decortask_app: Decortask, decortask_worker: WorkerThread
) -> None:
    value, unicode, other = (fails_with.delay(kind) for kind in ("value", "unicode", "type"))
    decortask_worker.wait(value.handle, unicode.handle, other.handle)

    assert value.handle.attempts == 4  # max_retries=3 by default, as in Celery
    assert (unicode.handle.attempts, other.handle.attempts) == (1, 1)
    assert {value.state, unicode.state, other.state} == {"FAILURE"}


def test_retry_backoff_doubles_up_to_retry_backoff_max_and_jitter_stays_within_it() -> None:
    @shared_task(autoretry_for=(OSError,), retry_backoff=3, retry_backoff_max=20, retry_jitter=False)
    def steady() -> None: ...

    @shared_task(autoretry_for=(OSError,), retry_backoff=True)
    def jittered() -> None: ...

    assert [steady.backoff_countdown(n) for n in range(5)] == [3, 6, 12, 20, 20]
    draws = {jittered.backoff_countdown(3) for _ in range(200)}
    assert draws <= {float(n) for n in range(9)} and len(draws) > 1


def test_a_direct_call_runs_here_with_an_empty_request() -> None:
    seen = []

    @shared_task(bind=True)
    def who(self: Any, x: int) -> int:
        seen.append((self.request.id, self.request.called_directly, self.request.args))
        return x * 2

    assert who(21) == 42 and tasks.add(2, 3) == 5
    assert seen == [(None, True, (21,))]
    with pytest.raises(KeyError):
        gives_up_with_exc()  # a direct call does not retry: retry(exc=) raises exc, as in Celery


def test_eager_mode_runs_a_celery_style_task_through_its_retries(decortask_eager: Decortask) -> None:
    result = tasks.send_twitter_status.delay("hi")

    assert (result.state, result.get(timeout=5), result.handle.attempts) == ("SUCCESS", "posted: hi", 3)


def test_revoke_cancels_a_task_not_started_yet(decortask_app: Decortask) -> None:
    result = tasks.add.apply_async((1, 2), countdown=600)

    assert (result.state, result.decortask_status, result.ready()) == ("PENDING", TaskStatus.SCHEDULED, False)
    assert result.revoke() is True
    assert (result.state, result.ready(), result.failed()) == ("REVOKED", True, False)
    with pytest.raises(TaskCancelled):
        result.get(timeout=5)


def test_every_decortask_state_has_a_celery_name() -> None:
    assert set(CELERY_STATES) == set(TaskStatus)
    assert set(CELERY_STATES.values()) == {"PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"}


# -- options: mapped, refused, never silently ignored ------------------------------------------------------


def test_celery_options_map_onto_the_decortask_task() -> None:
    @shared_task(
        name="compat.mapped",
        queue="reports",
        priority=7,
        expires=60,
        soft_time_limit=30,
        time_limit=40,
        acks_late=True,
        ignore_result=True,
        track_started=True,
        serializer="json",
    )
    def mapped() -> None: ...

    options = mapped.native.options
    assert (options.name, options.queue, options.priority, options.expires) == (
        "compat.mapped",
        "reports",
        7,
        60,
    )
    assert options.timeout == 30  # should_stop() at the soft limit, then stopped by force after timeout_grace
    assert options.requeue_on_interrupt is True  # acks_late: a task whose worker died runs again
    assert mapped.name == "compat.mapped" and mapped.max_retries == 3 and mapped.default_retry_delay == 180


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"bogus": 1}, "unknown option(s) bogus"),
        ({"base": object}, "option base= is not supported"),
        ({"serializer": "pickle"}, "serializer='pickle' is not supported: decortask sends JSON only"),
        ({"retry_kwargs": {"queue": "x"}}, "retry_kwargs={'queue': 'x'} is invalid"),
        ({"autoretry_for": ("ValueError",)}, "autoretry_for=('ValueError',) is invalid"),
        ({"acks_on_failure_or_timeout": False}, "acks_on_failure_or_timeout=False is not supported"),
        ({"priority": 12}, "priority=12 is invalid"),
    ],
)
def test_an_option_that_cannot_be_honoured_raises_naming_it(options: dict[str, Any], named: str) -> None:
    with pytest.raises(TaskDefinitionError, match=re.escape(named)):
        shared_task(**options)(lambda: None)


def test_bind_true_needs_a_self_parameter_and_async_def_is_refused() -> None:
    with pytest.raises(
        TaskDefinitionError, match=re.escape("bind=True needs the task as the first parameter")
    ):
        shared_task(bind=True)(lambda: None)

    async def coroutine() -> None: ...

    with pytest.raises(TaskDefinitionError, match="Celery tasks are plain functions"):
        shared_task(coroutine)


def test_rate_limit_becomes_the_cluster_wide_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery's rate strings are decortask's; a bare number is per second; 0 is no limit (as in Celery)."""
    from decortask.limits import Rate

    def rates(**options: object) -> object:
        native = shared_task(**options)(lambda: None).native
        return native.options.limits.rates if native.options.limits else None

    assert rates(name="ct.rate.s", rate_limit="10/s") == (Rate(10, 1.0, "10/s"),)
    assert rates(name="ct.rate.m", rate_limit="100/m") == (Rate(100, 60.0, "100/m"),)
    assert rates(name="ct.rate.n", rate_limit=3) == (Rate(3, 1.0, "3/s"),)
    assert rates(name="ct.rate.0", rate_limit=0) is None
    with pytest.raises(TaskDefinitionError, match=r"rate_limit=0.5 is invalid"):
        shared_task(name="ct.rate.f", rate_limit=0.5)(lambda: None)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"task_id": "abc"}, "option task_id= is not supported"),
        ({"link": print}, "link=<built-in function print> is not supported: link= takes signatures"),
        ({"routing_key": "x"}, "option routing_key= is not supported: route with queue="),
        ({"retry_policy": {}}, "unknown option(s) retry_policy"),
    ],
)
def test_apply_async_refuses_options_it_cannot_honour(
    decortask_app: Decortask, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(UnsupportedCeleryFeature, match=re.escape(named)):
        tasks.add.apply_async((1, 2), **options)


def test_retry_refuses_new_arguments_and_throw_false() -> None:
    @shared_task(bind=True)
    def changes_args(self: Any, how: str) -> None:
        self.retry(args=(1,)) if how == "args" else self.retry(throw=False)

    with pytest.raises(UnsupportedCeleryFeature, match=re.escape("args=/kwargs= are not supported")):
        changes_args("args")
    with pytest.raises(UnsupportedCeleryFeature, match=re.escape("throw=False is not supported")):
        changes_args("throw")


def test_canvas_hands_over_to_decortask_signatures_and_names_what_to_use_for_the_rest() -> None:
    """The canvas itself is tested in tests/test_compat_celery_canvas.py."""
    assert tasks.add.signature((1, 2)) == tasks.add.native.s(1, 2)
    for make in (tasks.add.map, tasks.add.starmap, tasks.add.chunks):
        with pytest.raises(UnsupportedCeleryFeature, match=re.escape("use group(")):
            make((1, 2))


def test_the_celery_app_stand_in_makes_tasks_calling_through_its_decortask_app() -> None:
    app = Celery("proj", broker="memory://", backend="memory://")
    try:

        @app.task(bind=True, name="compat.through_app")
        def through_app(self: Any) -> str | None:
            return self.request.id

        with WorkerThread(app.decortask, queues=[app.decortask.settings.default_queue]):
            result = through_app.delay()
            assert result.get(timeout=30) == result.id
        assert app.extensions["decortask"] is app.decortask  # `decortask worker -A proj.celery:app`
        assert app.AsyncResult(result.id).state == "SUCCESS"
    finally:
        app.decortask.close()
        reset_default_app()
