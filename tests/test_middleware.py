"""Middleware hooks: order, failure isolation, where each hook runs, and the async producer API."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import middleware_tasks
import pytest
from conftest import broker_urls
from workers import poll_until

from decortask import (
    ArgumentEncodingError,
    ConfigurationError,
    Decortask,
    ExecutionOutcome,
    Middleware,
    Retry,
    TaskContext,
    TaskStatus,
    get_task_context,
    recovery,
    task,
)
from decortask.app import reset_default_app
from decortask.errors import MessageError
from decortask.message import Message, decode
from decortask.testing import run_pending
from decortask.worker import Worker

LATER = 10_000.0
Event = tuple[str, str, Any]


class Recorder(Middleware):
    """Appends (name, hook, detail) for every hook it sees."""

    def __init__(self, name: str, events: list[Event]) -> None:
        self.name = name
        self.events = events

    def _add(self, hook: str, detail: Any = None) -> None:
        self.events.append((self.name, hook, detail))

    def before_enqueue(self, app: Decortask, message: Message, meta: dict[str, str]) -> None:
        self._add("before_enqueue", message.task)

    def after_enqueue(self, app: Decortask, message: Message) -> None:
        self._add("after_enqueue", message.task)

    def before_execute(self, app: Decortask, message: Message, ctx: TaskContext) -> None:
        self._add("before_execute", ctx.attempt)

    def after_execute(
        self, app: Decortask, message: Message, ctx: TaskContext, outcome: ExecutionOutcome
    ) -> None:
        self._add("after_execute", (ctx.attempt, outcome.status, outcome.will_retry))

    def on_retry(
        self, app: Decortask, message: Message, ctx: TaskContext, exc: BaseException, delay: float
    ) -> None:
        self._add("on_retry", (ctx.attempt, type(exc).__name__, delay))

    def on_failure(
        self, app: Decortask, message: Message, ctx: TaskContext, exc: BaseException, *, final: bool
    ) -> None:
        self._add("on_failure", (ctx.attempt, type(exc).__name__, final))

    def on_interrupt(self, app: Decortask, message: Message, reason: str) -> None:
        self._add("on_interrupt", (message.id, reason))

    def worker_start(self, app: Decortask, worker: Worker) -> None:
        self._add("worker_start", worker.id)

    def worker_stop(self, app: Decortask, worker: Worker) -> None:
        self._add("worker_stop", worker.id)


class Exploding(Middleware):
    """Every hook raises, with a secret in the message that must never reach a log line."""

    def _boom(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("cannot reach amqp://admin:hunter2@broker.internal:5672//")

    before_enqueue = after_enqueue = before_execute = after_execute = _boom  # type: ignore[assignment]
    on_retry = on_failure = on_interrupt = worker_start = worker_stop = _boom  # type: ignore[assignment]


class FlaskLikeContext(Middleware):
    """Pushes a context in `before_execute` and pops it in `after_execute`, like a Flask app context."""

    current: contextvars.ContextVar[str | None] = contextvars.ContextVar("flask_like", default=None)

    def __init__(self) -> None:
        self.tokens: dict[str, contextvars.Token[str | None]] = {}
        self.seen: list[tuple[str, int, object]] = []

    def before_execute(self, app: Decortask, message: Message, ctx: TaskContext) -> None:
        self.tokens[ctx.task_id] = self.current.set(f"app-context-for-{ctx.task_id}")
        self.seen.append(("before", threading.get_ident(), _asyncio_task()))

    def after_execute(
        self, app: Decortask, message: Message, ctx: TaskContext, outcome: ExecutionOutcome
    ) -> None:
        self.seen.append(("after", threading.get_ident(), _asyncio_task()))
        self.current.reset(self.tokens.pop(ctx.task_id))


def _asyncio_task() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


@task(name="mw_tests.echo")
def echo(value: int) -> int:
    return value


@task(name="mw_tests.inside")
def inside() -> dict[str, Any]:
    return {"thread": threading.get_ident(), "context": FlaskLikeContext.current.get()}


INSIDE_ASYNC: dict[str, object] = {}


@task(name="mw_tests.inside_async")
async def inside_async() -> str | None:
    INSIDE_ASYNC["task"] = asyncio.current_task()
    await asyncio.sleep(0)
    return FlaskLikeContext.current.get()


@task(retries=2, delay=3.0, name="mw_tests.flaky")
def flaky(ctx: TaskContext, fail_times: int) -> str:
    if ctx.attempt <= fail_times:
        raise ValueError(f"attempt {ctx.attempt} failed")
    return "ok"


@task(retries=1, name="mw_tests.asks_to_retry")
def asks_to_retry(ctx: TaskContext) -> str:
    if ctx.attempt == 1:
        raise Retry(delay=2.0)
    return "again"


@task(name="mw_tests.until_stopped", timeout=30)
def until_stopped() -> str:
    ctx = get_task_context()
    while not ctx.should_stop():
        time.sleep(0.02)
    return "stopped"


@task(name="mw_tests.short_limit", timeout=0.3)
def short_limit() -> str:
    return until_stopped()


RELEASE = threading.Event()


@task(name="mw_tests.stubborn")
def stubborn() -> str:
    RELEASE.wait(60)  # ignores should_stop(): only shutdown past the grace period ends its attempt
    return "late"


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def app(decortask_app: Decortask, events: list[Event]) -> Decortask:
    decortask_app.add_middleware(Recorder("A", events))
    decortask_app.add_middleware(Recorder("B", events))
    return decortask_app


def _hooks(events: list[Event], *names: str) -> list[tuple[str, str]]:
    return [(who, hook) for who, hook, _ in events if hook in names]


@contextmanager
def running_worker(app: Decortask, **options: Any) -> Iterator[Worker]:
    """A real worker consuming in a thread of this process; stopped (and joined) on exit."""
    worker = Worker(app, concurrency=2, **options)
    thread = threading.Thread(target=worker.run, name="test-worker")
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(60)
        assert not thread.is_alive()


# -- registration and order -----------------------------------------------------------------------------------


def test_middleware_is_registered_in_order_from_the_constructor_and_add_middleware(
    events: list[Event],
) -> None:
    first, second = Recorder("A", events), Recorder("B", events)
    app = Decortask("memory://", "memory://", set_default=False, middleware=[first])
    assert app.add_middleware(second) is second
    assert app.middleware == [first, second]


def test_a_reconfigured_app_keeps_the_middleware_and_the_commit_hook(events: list[Event]) -> None:
    hooks = [Recorder("A", events)]
    app = Decortask("memory://", "memory://", set_default=False, middleware=hooks, default_queue="billing")
    app.commit_hook = events.append  # type: ignore[assignment]

    moved = app.reconfigured(broker_url="sqlite:///elsewhere.db")

    assert moved.middleware == hooks and moved.commit_hook == app.commit_hook
    assert (moved.settings.broker_url, moved.settings.store_url) == ("sqlite:///elsewhere.db", "memory://")
    assert moved.settings.default_queue == "billing"


def test_add_middleware_refuses_what_is_not_a_middleware(decortask_app: Decortask) -> None:
    with pytest.raises(ConfigurationError, match=r"decortask\.Middleware subclass"):
        decortask_app.add_middleware(object())  # type: ignore[arg-type]


def test_before_hooks_run_in_registration_order_and_after_hooks_in_reverse(
    app: Decortask, events: list[Event]
) -> None:
    handle = echo.delay(5)
    run_pending(app)

    assert handle.get(timeout=5) == 5
    assert [(who, hook) for who, hook, _ in events] == [
        ("A", "before_enqueue"),
        ("B", "before_enqueue"),
        ("B", "after_enqueue"),
        ("A", "after_enqueue"),
        ("A", "before_execute"),
        ("B", "before_execute"),
        ("B", "after_execute"),
        ("A", "after_execute"),
    ]
    assert events[-1][2] == (1, TaskStatus.SUCCESS, False)


def test_a_failing_hook_is_logged_masked_and_never_breaks_the_task(
    app: Decortask, events: list[Event], caplog: pytest.LogCaptureFixture
) -> None:
    app.middleware = [Exploding(), *app.middleware]
    caplog.set_level(logging.ERROR, logger="decortask.middleware")

    handle = echo.delay(7)
    run_pending(app)

    assert handle.get(timeout=5) == 7
    assert len(_hooks(events, "before_execute", "after_execute")) == 4  # the others still ran
    failures = [r.getMessage() for r in caplog.records if r.name == "decortask.middleware"]
    assert any("Exploding.before_enqueue raised RuntimeError" in line for line in failures)
    assert any("Exploding.after_execute raised RuntimeError" in line for line in failures)
    assert not any("hunter2" in line for line in failures)
    assert not any("hunter2" in r.getMessage() for r in caplog.records)


def test_no_after_enqueue_when_an_idempotency_key_returns_the_existing_task(
    app: Decortask, events: list[Event]
) -> None:
    first = echo.apply_async(args=(1,), idempotency_key="once")
    again = echo.apply_async(args=(1,), idempotency_key="once")

    assert again.id == first.id
    assert _hooks(events, "after_enqueue") == [("B", "after_enqueue"), ("A", "after_enqueue")]


def test_countdown_calls_after_enqueue_once_the_schedule_entry_is_written(
    app: Decortask, events: list[Event]
) -> None:
    handle = echo.apply_async(args=(3,), countdown=60)

    assert _hooks(events, "after_enqueue") == [("B", "after_enqueue"), ("A", "after_enqueue")]
    run_pending(app, now=time.time() + 120)
    assert handle.get(timeout=5) == 3


# -- meta: what before_enqueue attaches, the worker sees ------------------------------------------------------


class AttachMeta(Middleware):
    def __init__(self, entries: dict[str, Any]) -> None:
        self.entries = entries
        self.received: list[dict[str, str]] = []

    def before_enqueue(self, app: Decortask, message: Message, meta: dict[str, str]) -> None:
        meta.update(self.entries)

    def before_execute(self, app: Decortask, message: Message, ctx: TaskContext) -> None:
        self.received.append(dict(message.meta))


@pytest.mark.parametrize("broker", ["memory", "sqlite"])
def test_meta_attached_at_enqueue_travels_in_the_envelope_to_before_execute(
    broker: str, tmp_path: Path, unique: str
) -> None:
    url = "memory://" if broker == "memory" else f"sqlite:///{os.fspath(tmp_path)}/decortask.db"
    hook = AttachMeta({"sentry-trace": "abc-def-1", "tenant": "acme"})
    app = Decortask(url, url, default_queue=f"q-{unique}", middleware=[hook])
    try:
        handle = echo.delay(1)
        run_pending(app)
        assert handle.get(timeout=5) == 1
    finally:
        app.close()
        reset_default_app()
    assert hook.received == [{"sentry-trace": "abc-def-1", "tenant": "acme"}]


def test_meta_entries_that_are_not_short_strings_are_dropped_with_a_warning(
    decortask_app: Decortask, caplog: pytest.LogCaptureFixture
) -> None:
    hook = AttachMeta({"ok": "yes", "number": 5, "x" * 500: "long key", "big": "v" * 10_000})
    decortask_app.add_middleware(hook)
    caplog.set_level(logging.WARNING, logger="decortask.middleware")

    echo.delay(1)
    run_pending(decortask_app)

    assert hook.received == [{"ok": "yes"}]
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 3


def test_a_received_envelope_with_malformed_meta_is_refused_as_invalid() -> None:
    body = b'{"v": 1, "id": "t1", "task": "mw_tests.echo", "args": [1], "meta": {"k": 5}}'
    with pytest.raises(MessageError) as refused:
        decode(body, "application/json")
    assert refused.value.reason == "invalid_envelope"
    assert decode(b'{"v": 1, "id": "t1", "task": "x", "meta": {"k": "v"}}', None).meta == {"k": "v"}


# -- execute hooks: where they run -----------------------------------------------------------------------------


def test_execute_hooks_run_in_the_task_thread_around_the_call(decortask_app: Decortask) -> None:
    context = decortask_app.add_middleware(FlaskLikeContext())
    handle = inside.delay()
    run_pending(decortask_app)

    seen = handle.get(timeout=5)
    assert seen["context"] == f"app-context-for-{handle.id}"  # pushed by before_execute, visible inside
    assert [(when, thread) for when, thread, _ in context.seen] == [
        ("before", seen["thread"]),
        ("after", seen["thread"]),
    ]
    assert FlaskLikeContext.current.get() is None  # popped again by after_execute


def test_execute_hooks_of_an_async_task_run_in_its_own_asyncio_task(decortask_app: Decortask) -> None:
    context = decortask_app.add_middleware(FlaskLikeContext())
    handle = inside_async.delay()
    run_pending(decortask_app)

    assert handle.get(timeout=5) == f"app-context-for-{handle.id}"
    assert [when for when, _, _ in context.seen] == ["before", "after"]
    assert {asyncio_task for _, _, asyncio_task in context.seen} == {INSIDE_ASYNC["task"]}
    assert INSIDE_ASYNC["task"] is not None


def test_execute_hooks_run_in_the_process_pool_child_that_runs_the_task(tmp_path: Path, unique: str) -> None:
    url = f"sqlite:///{os.fspath(tmp_path)}/decortask.db"
    app = Decortask(url, url, default_queue=f"q-{unique}")  # the child takes middleware_tasks.app's hooks
    try:
        handle = middleware_tasks.where.delay()
        Worker(app, pool="processes", concurrency=1, burst=True, app_modules=["middleware_tasks"]).run()
        child = handle.get(timeout=30)
        lines = [(line.message, line.extra) for line in handle.logs]
    finally:
        app.close()
        reset_default_app()
    assert child != os.getpid()
    assert [message for message, _ in lines] == ["before_execute", "task body", "after_execute"]
    assert {extra["pid"] for _, extra in lines} == {child}
    assert lines[-1][1]["status"] == TaskStatus.SUCCESS.value


# -- retries, failures, cancellation, time limits, interrupts ---------------------------------------------------


def test_a_retried_failure_calls_on_failure_not_final_and_on_retry_then_the_final_one_is_final(
    app: Decortask, events: list[Event]
) -> None:
    handle = flaky.delay(5)
    run_pending(app, now=time.time() + LATER)

    assert handle.status is TaskStatus.FAILED
    mine = [(hook, detail) for who, hook, detail in events if who == "A" and "enqueue" not in hook]
    assert mine == [
        ("before_execute", 1),
        ("on_failure", (1, "ValueError", False)),
        ("on_retry", (1, "ValueError", 3.0)),
        ("after_execute", (1, TaskStatus.RETRYING, True)),
        ("before_execute", 2),
        ("on_failure", (2, "ValueError", False)),
        ("on_retry", (2, "ValueError", 3.0)),
        ("after_execute", (2, TaskStatus.RETRYING, True)),
        ("before_execute", 3),
        ("on_failure", (3, "ValueError", True)),
        ("after_execute", (3, TaskStatus.FAILED, False)),
    ]


def test_success_after_a_retry_has_no_final_failure(app: Decortask, events: list[Event]) -> None:
    handle = flaky.delay(1)
    run_pending(app, now=time.time() + LATER)

    assert handle.get(timeout=5) == "ok"
    assert [d for who, hook, d in events if who == "A" and hook == "on_failure"] == [(1, "ValueError", False)]
    assert [d for who, hook, d in events if who == "A" and hook == "after_execute"][-1] == (
        2,
        TaskStatus.SUCCESS,
        False,
    )


def test_retry_raised_by_the_task_reaches_on_retry_only(app: Decortask, events: list[Event]) -> None:
    handle = asks_to_retry.delay()
    run_pending(app, now=time.time() + LATER)

    assert handle.get(timeout=5) == "again"
    assert _hooks(events, "on_failure") == []
    assert [d for who, hook, d in events if who == "A" and hook == "on_retry"] == [(1, "Retry", 2.0)]


@task(name="mw_tests.retries_forever")
def retries_forever() -> None:
    raise Retry(delay=1.0)


def test_retry_with_no_retries_left_is_a_final_failure(app: Decortask, events: list[Event]) -> None:
    handle = retries_forever.delay()
    run_pending(app, now=time.time() + LATER)

    assert handle.status is TaskStatus.FAILED
    assert [d for who, hook, d in events if who == "A" and hook in ("on_failure", "on_retry")] == [
        (1, "Retry", True)
    ]


def test_worker_hooks_and_cancellation_on_a_real_worker(app: Decortask, events: list[Event]) -> None:
    with running_worker(app) as worker:
        handle = until_stopped.delay()
        poll_until(lambda: handle.status is TaskStatus.RUNNING, 30, "the task to start")
        handle.cancel()
        result = handle.wait(timeout=30)
    assert result.status is TaskStatus.CANCELLED
    assert [d for who, hook, d in events if who == "A" and hook == "after_execute"] == [
        (1, TaskStatus.CANCELLED, False)
    ]
    assert _hooks(events, "worker_start", "worker_stop") == [
        ("A", "worker_start"),
        ("B", "worker_start"),
        ("B", "worker_stop"),
        ("A", "worker_stop"),
    ]
    assert {d for _, hook, d in events if hook.startswith("worker_")} == {worker.id}


def test_a_time_limit_is_a_final_failure_in_the_hooks(app: Decortask, events: list[Event]) -> None:
    with running_worker(app):
        handle = short_limit.delay()
        result = handle.wait(timeout=30)
    assert result.status is TaskStatus.FAILED and result.reason == "timeout"
    assert [d for who, hook, d in events if who == "A" and hook == "on_failure"] == [
        (1, "TimeLimitExceeded", True)
    ]


def test_shutdown_past_the_grace_period_calls_on_interrupt(app: Decortask, events: list[Event]) -> None:
    RELEASE.clear()
    try:
        worker = Worker(app, concurrency=1, grace=0.0)
        thread = threading.Thread(target=worker.run)
        thread.start()
        handle = stubborn.delay()
        poll_until(lambda: handle.status is TaskStatus.RUNNING, 30, "the task to start")
        worker.stop()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        RELEASE.set()
    assert handle.status is TaskStatus.INTERRUPTED
    assert [(who, d) for who, hook, d in events if hook == "on_interrupt"] == [
        ("A", (handle.id, "shutdown")),
        ("B", (handle.id, "shutdown")),
    ]


def _claimed_by_a_worker_that_died(app: Decortask) -> str:
    """A task whose attempt 1 a worker claimed (RUNNING) before it died without a trace; its message is queued."""
    handle = echo.delay(1)
    record = app.store.get(handle.id)
    assert record is not None
    claimed = app.store.transition(
        handle.id,
        TaskStatus.RUNNING,
        expect={record.status},
        expect_attempt=record.attempt,
        attempt=1,
        owner="gone-worker",
        started_at=time.time(),
        deliveries=1,
    )
    assert claimed is not None
    return handle.id


def test_a_redelivery_finding_its_worker_dead_calls_on_interrupt_worker_lost(
    app: Decortask, events: list[Event]
) -> None:
    task_id = _claimed_by_a_worker_that_died(app)
    run_pending(app)  # the redelivered message meets the receipt rules

    assert app.handle(task_id).status is TaskStatus.INTERRUPTED
    assert [(who, d) for who, hook, d in events if hook == "on_interrupt"] == [
        ("A", (task_id, "worker_lost")),
        ("B", (task_id, "worker_lost")),
    ]
    assert _hooks(events, "before_execute") == []


def test_the_reaper_calls_on_interrupt_for_the_attempts_of_dead_workers(
    app: Decortask, events: list[Event]
) -> None:
    task_id = _claimed_by_a_worker_that_died(app)
    assert recovery.reap(app, owner_alive=lambda owner: False) == 1

    assert app.handle(task_id).status is TaskStatus.INTERRUPTED
    interrupts = [d for who, hook, d in events if who == "A" and hook == "on_interrupt"]
    assert interrupts == [(task_id, "worker_lost")]


# -- delay_on_commit --------------------------------------------------------------------------------------------


def test_delay_on_commit_sends_only_when_the_commit_hook_runs_the_callback(decortask_app: Decortask) -> None:
    committed: list[Any] = []
    decortask_app.commit_hook = committed.append

    assert echo.delay_on_commit(9) is None
    assert run_pending(decortask_app) == 0  # the transaction has not committed: nothing was sent
    assert len(committed) == 1
    committed.pop()()  # the commit
    assert run_pending(decortask_app) == 1


def test_delay_on_commit_sends_nothing_when_the_transaction_rolls_back(decortask_app: Decortask) -> None:
    rolled_back: list[Any] = []
    decortask_app.commit_hook = rolled_back.append
    echo.delay_on_commit(9)
    rolled_back.clear()  # a rollback drops on_commit callbacks
    assert run_pending(decortask_app) == 0


def test_delay_on_commit_checks_the_arguments_at_the_call_not_at_the_commit(decortask_app: Decortask) -> None:
    committed: list[Any] = []
    decortask_app.commit_hook = committed.append
    with pytest.raises(TypeError, match="too many positional arguments"):
        echo.delay_on_commit(1, 2)  # type: ignore[call-arg]
    with pytest.raises(ArgumentEncodingError, match="args"):
        echo.delay_on_commit(object())
    assert committed == []  # nothing was registered for the commit


def test_delay_on_commit_without_a_commit_hook_says_how_to_set_one(decortask_app: Decortask) -> None:
    with pytest.raises(ConfigurationError, match=r"decortask\.contrib\.django.*INSTALLED_APPS.*commit_hook"):
        echo.delay_on_commit(1)


# -- async producers ----------------------------------------------------------------------------------------------


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


class WaitForLoopProgress(Middleware):
    """Holds the publish until a coroutine on the caller's loop has run: proof the loop was not blocked."""

    def __init__(self) -> None:
        self.progressed = threading.Event()
        self.loop_ran_meanwhile: bool | None = None
        self.request_id: str | None = None

    def before_enqueue(self, app: Decortask, message: Message, meta: dict[str, str]) -> None:
        self.request_id = REQUEST_ID.get()
        self.loop_ran_meanwhile = self.progressed.wait(30)


@pytest.mark.parametrize("broker", ["memory", "redis", "amqp"])
def test_adelay_publishes_without_blocking_the_running_event_loop(
    broker: str, tmp_path: Path, unique: str
) -> None:
    urls = ("memory://", "memory://") if broker == "memory" else broker_urls(broker, tmp_path, unique)
    gate = WaitForLoopProgress()
    app = Decortask(*urls, default_queue=f"q-{unique}", middleware=[gate])

    async def request() -> int:
        REQUEST_ID.set("req-17")
        ticks = 0

        async def other_work() -> None:
            nonlocal ticks
            while not gate.progressed.is_set():
                ticks += 1
                if ticks == 3:
                    gate.progressed.set()
                await asyncio.sleep(0)

        other = asyncio.create_task(other_work())
        handle = await echo.adelay(11)
        await other
        assert await handle.astatus() is TaskStatus.PENDING
        await asyncio.to_thread(run_pending, app)
        assert await handle.adone()
        assert (await handle.aresult()).value == 11
        return await handle.aget(timeout=10)

    try:
        assert asyncio.run(request()) == 11
    finally:
        app.close()
        reset_default_app()
    assert gate.loop_ran_meanwhile is True
    assert gate.request_id == "req-17"  # the caller's context variables reach the producer hooks


def test_aapply_async_takes_the_options_of_apply_async(app: Decortask, events: list[Event]) -> None:
    async def request() -> tuple[TaskStatus, float | None]:
        handle = await echo.aapply_async(args=(4,), countdown=60, tags={"tenant": "acme"})
        record = await handle.arecord()
        return record.status, record.scheduled_for

    status, due = asyncio.run(request())
    assert status is TaskStatus.SCHEDULED and due is not None
    assert _hooks(events, "after_enqueue") == [("B", "after_enqueue"), ("A", "after_enqueue")]


def test_async_producers_and_delay_on_commit_keep_the_task_signature_for_type_checkers() -> None:
    case = Path(__file__).parent / "typing_cases" / "async_producers.py"
    expected = {
        n for n, line in enumerate(case.read_text().splitlines(), 1) if line.rstrip().endswith("# error")
    }
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent", str(case)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    reported = {int(m.group(1)) for m in re.finditer(r"async_producers\.py:(\d+): error", result.stdout)}
    assert reported == expected, result.stdout
