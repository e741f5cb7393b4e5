"""Executing messages through the real decode -> execute -> settle path (run_pending, memory broker)."""

from __future__ import annotations

import ast
import asyncio
import json
import time
from pathlib import Path

import pytest
from store_helpers import BACKENDS, fresh_store_url

import decortask
from decortask import (
    Decortask,
    Retry,
    TaskContext,
    TaskFailed,
    TaskNotDone,
    TaskNotFound,
    TaskStatus,
    WaitTimeout,
    get_task_context,
    task,
    task_log,
)
from decortask.dashboard.queries import task_detail
from decortask.message import Message
from decortask.outcomes import Reason
from decortask.retry import RetryPolicy
from decortask.store.base import TaskRecord
from decortask.testing import isolated_app, run_pending

FAR_FUTURE = time.time() + 10 * 365 * 86400


@task(name="exec.add")
def add(a: int, b: int) -> int:
    return a + b


@task(name="exec.flaky", retries=3, delay=5.0, backoff=2.0)
def flaky(ctx: TaskContext, succeed_on: int) -> str:
    task_log("attempt started", attempt=ctx.attempt)
    if ctx.attempt < succeed_on:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return f"ok on {ctx.attempt}"


@task(name="exec.boom", retries=2)
def boom() -> None:
    raise ValueError("password=hunter2 in amqp://u:hunter2@host//")


@task(name="exec.picky", retries=5, dont_retry_on=(KeyError,))
def picky() -> None:
    raise KeyError("missing")


@task(name="exec.asks_retry", retries=1)
def asks_retry(ctx: TaskContext) -> int:
    if ctx.attempt == 1:
        raise Retry(delay=30)
    return ctx.attempt


@task(name="exec.reports")
def reports(ctx: TaskContext) -> str:
    task_log("starting", step=1)
    ctx.set_progress(0.25, "a quarter")
    get_task_context().log("via get_task_context")
    return "done"


@task(name="exec.returns_object")
def returns_object() -> object:
    return object()


def test_success_stores_result_and_times(decortask_app: Decortask) -> None:
    handle = add.delay(2, 3)
    assert run_pending(decortask_app) == 1
    record = handle.record()
    assert (record.status, record.result, record.attempt) == (TaskStatus.SUCCESS, 5, 1)
    assert record.started_at is not None and record.finished_at is not None
    assert record.started_at <= record.finished_at
    assert handle.get(timeout=1) == 5 and handle.value() == 5 and handle.done()


def test_fails_twice_then_succeeds_with_three_attempts(decortask_app: Decortask) -> None:
    handle = flaky.delay(3)
    run_pending(decortask_app)
    assert handle.status is TaskStatus.RETRYING  # the retry waits in the store's schedule, not in memory
    assert decortask_app.transport.queue_size(decortask_app.settings.default_queue) == 0
    run_pending(decortask_app, now=FAR_FUTURE)
    assert handle.get(timeout=1) == "ok on 3"
    assert handle.attempts == 3
    started = [line.extra["attempt"] for line in handle.logs if line.message == "attempt started"]
    assert started == [1, 2, 3]
    history = [
        line.attempt for line in handle.logs if line.message.startswith(f"attempt {line.attempt} failed")
    ]
    assert history == [1, 2]


def test_retry_delays_follow_backoff(decortask_app: Decortask) -> None:
    handle = flaky.delay(99)
    due_after = []
    for _ in range(4):
        run_pending(decortask_app, now=FAR_FUTURE, max_tasks=1)
        record = handle.record()
        if record.status is TaskStatus.RETRYING:
            assert record.scheduled_for is not None
            due_after.append(record.scheduled_for - record.updated_at)
    assert [round(d) for d in due_after] == [5, 10, 20]


def test_always_failing_task_ends_failed_with_error_strings(decortask_app: Decortask) -> None:
    handle = boom.delay()
    run_pending(decortask_app, now=FAR_FUTURE)
    run_pending(decortask_app, now=FAR_FUTURE)
    record = handle.record()
    assert (record.status, record.attempt) == (TaskStatus.FAILED, 3)
    assert record.error_type == "builtins.ValueError"
    assert record.error_message is not None and "hunter2" not in record.error_message
    assert (
        record.traceback is not None and "Traceback" in record.traceback and "hunter2" not in record.traceback
    )
    with pytest.raises(TaskFailed, match="ValueError"):
        handle.get(timeout=1)


def test_dont_retry_on_fails_at_once(decortask_app: Decortask) -> None:
    handle = picky.delay()
    run_pending(decortask_app, now=FAR_FUTURE)
    assert (handle.status, handle.attempts) == (TaskStatus.FAILED, 1)


def test_raise_retry_uses_its_delay(decortask_app: Decortask) -> None:
    handle = asks_retry.delay()
    run_pending(decortask_app)
    record = handle.record()
    assert record.status is TaskStatus.RETRYING and record.scheduled_for is not None
    assert 29 < record.scheduled_for - record.updated_at <= 30
    run_pending(decortask_app, now=FAR_FUTURE)
    assert handle.get(timeout=1) == 2


def test_logs_and_progress_are_readable_from_the_handle(decortask_app: Decortask) -> None:
    handle = reports.delay()
    run_pending(decortask_app)
    assert [(line.message, line.extra) for line in handle.logs] == [
        ("starting", {"step": 1}),
        ("via get_task_context", {}),
    ]
    assert handle.progress == 0.25
    assert handle.record().progress_message == "a quarter"


def test_result_that_is_not_json_fails_the_task(decortask_app: Decortask) -> None:
    handle = returns_object.delay()
    run_pending(decortask_app)
    assert (handle.status, handle.record().reason) == (TaskStatus.FAILED, "result_not_serializable")


def test_handle_before_the_end_says_not_done(decortask_app: Decortask) -> None:
    handle = add.delay(1, 1)
    with pytest.raises(TaskNotDone):
        handle.result()
    assert not handle.done()


def test_countdown_runs_only_when_due(decortask_app: Decortask) -> None:
    handle = add.apply_async(args=(1, 1), countdown=3600)
    assert run_pending(decortask_app) == 0
    assert handle.status is TaskStatus.SCHEDULED
    assert run_pending(decortask_app, now=time.time() + 3601) == 1
    assert handle.get(timeout=1) == 2


def test_expired_task_is_cancelled_not_run(decortask_app: Decortask) -> None:
    handle = add.apply_async(args=(1, 1), expires=0.01)
    time.sleep(0.05)
    run_pending(decortask_app)
    assert (handle.status, handle.record().reason) == (TaskStatus.CANCELLED, "expired")


def test_duplicate_delivery_of_a_finished_task_is_skipped(decortask_app: Decortask) -> None:
    handle = add.delay(1, 1)
    body = json.dumps(Message(id=handle.id, task="exec.add", args=[1, 1]).to_dict()).encode()
    run_pending(decortask_app)
    decortask_app.transport.publish(body, decortask_app.settings.default_queue)
    assert run_pending(decortask_app) == 1
    assert handle.record().attempt == 1


def test_foreign_message_gets_a_record(decortask_app: Decortask) -> None:
    body = json.dumps(Message(id="foreign-1", task="exec.add", args=[4, 5]).to_dict()).encode()
    decortask_app.transport.publish(body, decortask_app.settings.default_queue)
    run_pending(decortask_app)
    assert decortask_app.handle("foreign-1").get(timeout=1) == 9


def test_unregistered_task_is_dead_lettered_and_failed(decortask_app: Decortask) -> None:
    queue = decortask_app.settings.default_queue
    body = json.dumps(Message(id="ghost-1", task="exec.ad", args=[1]).to_dict()).encode()
    decortask_app.transport.publish(body, queue)
    run_pending(decortask_app)
    record = decortask_app.handle("ghost-1").record()
    assert (record.status, record.reason) == (TaskStatus.FAILED, "unregistered_task")
    assert "did you mean 'exec.add'" in (record.error_message or "")
    assert decortask_app.transport.queue_size(queue + ".dlq") == 1


def test_malformed_body_is_dead_lettered_with_its_bytes(decortask_app: Decortask) -> None:
    queue = decortask_app.settings.default_queue
    decortask_app.transport.publish(b"{oops", queue)
    run_pending(decortask_app)
    session = decortask_app.transport.open_consumer([queue + ".dlq"], prefetch=1, consume=False)
    try:
        dead = session.get(queue + ".dlq")
        assert dead is not None
        assert dead.body == b"{oops"
        assert dead.headers["x-decortask-reason"] == "decode_error"
        session.ack(dead)
    finally:
        session.close()


def test_bad_arguments_in_a_hand_made_message_fail_once(decortask_app: Decortask) -> None:
    body = json.dumps(Message(id="bad-args", task="exec.add", args=[1, 2, 3]).to_dict()).encode()
    decortask_app.transport.publish(body, decortask_app.settings.default_queue)
    run_pending(decortask_app, now=FAR_FUTURE)
    record = decortask_app.handle("bad-args").record()
    assert (record.status, record.reason, record.attempt) == (TaskStatus.FAILED, "bad_arguments", 1)


def test_foreign_message_with_a_future_eta_waits_in_the_schedule(decortask_app: Decortask) -> None:
    eta = time.time() + 3600
    body = json.dumps(Message(id="later-1", task="exec.add", args=[2, 2], eta=eta).to_dict()).encode()
    decortask_app.transport.publish(body, decortask_app.settings.default_queue)
    assert run_pending(decortask_app) == 1
    handle = decortask_app.handle("later-1")
    assert handle.status is TaskStatus.SCHEDULED
    assert decortask_app.store.next_due() == pytest.approx(eta)
    run_pending(decortask_app, now=eta + 1)
    assert handle.get(timeout=1) == 4


def test_two_copies_of_a_new_foreign_message_run_once(decortask_app: Decortask) -> None:
    body = json.dumps(Message(id="twice-1", task="exec.add", args=[1, 2]).to_dict()).encode()
    decortask_app.transport.publish_many([(body, decortask_app.settings.default_queue, 0, None)] * 2)
    assert run_pending(decortask_app) == 2
    assert decortask_app.handle("twice-1").record().attempt == 1


def test_unknown_task_id_is_not_found(decortask_app: Decortask) -> None:
    with pytest.raises(TaskNotFound):
        decortask_app.handle("no-such-id")


def test_handles_are_awaitable(decortask_app: Decortask) -> None:
    handle = add.delay(20, 22)
    run_pending(decortask_app)

    async def read() -> tuple[int, int, TaskStatus]:
        snapshot = await handle.await_result(timeout=1)
        return await handle, await handle.aget(timeout=1), snapshot.status

    assert asyncio.run(read()) == (42, 42, TaskStatus.SUCCESS)


def test_async_wait_times_out_without_blocking_the_loop(decortask_app: Decortask) -> None:
    handle = add.delay(1, 1)

    async def wait_briefly() -> None:
        await handle.aget(timeout=0.05)

    with pytest.raises(WaitTimeout):
        asyncio.run(wait_briefly())


@task(name="exec.async_double")
async def async_double(ctx: TaskContext, x: int) -> int:
    await asyncio.sleep(0)
    task_log("inside the coroutine", task=get_task_context().task_id == ctx.task_id)
    return x * 2


def test_async_tasks_run_on_the_event_loop_with_their_context(decortask_app: Decortask) -> None:
    handle = async_double.delay(21)
    run_pending(decortask_app)
    assert handle.get(timeout=1) == 42
    assert [(line.message, line.extra) for line in handle.logs] == [("inside the coroutine", {"task": True})]


@task(name="exec.transient", persist=False)
def transient(a: int) -> int:
    return a


@task(name="exec.transient_failure", persist=False)
def transient_failure() -> None:
    raise ValueError("no")


@pytest.mark.decortask(result_ttl=60.0, history_ttl=7200.0)
def test_an_ended_record_is_kept_for_result_ttl_without_persist_and_history_ttl_with_it(
    decortask_app: Decortask,
) -> None:
    kept = add.delay(1, 2)
    short = transient.delay(3)
    short_failed = transient_failure.delay()
    run_pending(decortask_app)
    ttl = {}
    for handle in (kept, short, short_failed):
        record = handle.record()
        assert record.status.terminal and record.finished_at is not None and record.expires_at is not None
        ttl[handle.id] = round(record.expires_at - record.finished_at)
    assert (ttl[kept.id], ttl[short.id], ttl[short_failed.id]) == (7200, 60, 60)


# -- issue 10 item 7: SUCCESS after a retry clears the earlier attempt's error ---------------------------------


@task(name="exec.fails_once", retries=1, delay=5.0)
def fails_once(ctx: TaskContext) -> str:
    if ctx.attempt == 1:
        raise ConnectionError("attempt 1 lost its connection")
    return "ok on 2"


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store backend: the worker's SUCCESS write takes each one's own path (Python, SQL, Lua)."""
    return fresh_store_url(request, tmp_path, "dt-test")


def test_success_after_a_retry_clears_the_earlier_attempts_error_on_every_store(store_url: str) -> None:
    with isolated_app("memory://", store_url) as app:
        handle = fails_once.delay()
        run_pending(app)
        failed = handle.record()
        assert (failed.status, failed.error_type) == (TaskStatus.RETRYING, "builtins.ConnectionError")
        run_pending(app, now=FAR_FUTURE)
        record = handle.record()
        assert (record.status, record.result, record.attempt) == (TaskStatus.SUCCESS, "ok on 2", 2)
        assert (record.error_type, record.error_message, record.traceback, record.reason) == (None,) * 4
        result = handle.wait(timeout=1)
        assert (result.error_type, result.error_message, result.traceback) == (None, None, None)
        detail = task_detail(record)
        assert (detail["error_type"], detail["error_message"], detail["traceback"]) == (None, None, None)
        # The attempts' history keeps the error: each failed attempt leaves a line in the task's log.
        [history] = [line for line in record.logs if line.attempt == 1]
        assert "attempt 1 failed" in history.message
        assert "builtins.ConnectionError: attempt 1 lost its connection" in history.message
        assert history.extra["error_type"] == "builtins.ConnectionError"


# -- one outcome vocabulary ---------------------------------------------------------------------------------


def test_a_failed_attempt_is_judged_once_by_its_retry_policy(
    decortask_app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    judged: list[int] = []
    next_delay = RetryPolicy.next_delay

    def counted(policy: RetryPolicy, failed_attempt: int, exc: BaseException) -> float | None:
        judged.append(failed_attempt)
        return next_delay(policy, failed_attempt, exc)

    monkeypatch.setattr(RetryPolicy, "next_delay", counted)
    handle = boom.delay()
    run_pending(decortask_app, now=FAR_FUTURE)
    assert (handle.status, handle.record().attempt) == (TaskStatus.FAILED, 3)
    assert judged == [1, 2, 3]  # one decision per failed attempt, the last one included


def test_reasons_print_and_serialize_as_the_strings_stores_have_always_held() -> None:
    assert {reason.value for reason in Reason} >= {
        "worker_lost", "shutdown", "timeout", "expired", "cancelled", "max_deliveries", "unregistered_task",
        "decode_error", "integrity_error", "bad_arguments", "payload_too_large", "duplicate", "stale",
        "lost_claim", "deferred", "running_elsewhere", "result_not_serializable",
    }  # fmt: skip
    reason = Reason.WORKER_LOST
    shown = (str(reason), f"{reason}", format(reason), json.dumps(reason))
    assert shown == ("worker_lost", "worker_lost", "worker_lost", '"worker_lost"')
    assert reason == "worker_lost" and Reason("worker_lost") is reason


def test_a_reason_is_stored_as_its_plain_string_and_read_back_equal_on_every_store(store_url: str) -> None:
    with isolated_app("memory://", store_url) as app:
        handle = add.apply_async(args=(1, 1), expires=0.01)
        time.sleep(0.05)
        run_pending(app)
        record = handle.record()
        assert (record.status, record.reason) == (TaskStatus.CANCELLED, Reason.EXPIRED)
        assert json.loads(json.dumps(record.to_dict()))["reason"] == "expired"
        # A record an older version wrote holds the bare string: it compares equal to its member.
        now = time.time()
        older = TaskRecord(
            id="older", name="exec.add", queue="q", status=TaskStatus.INTERRUPTED, created_at=now,
            updated_at=now, reason="worker_lost",
        )  # fmt: skip
        app.store.create(older)
        assert app.handle("older").record().reason == Reason.WORKER_LOST


def test_every_reason_the_package_writes_is_in_the_vocabulary() -> None:
    """Refusals (`MessageError`, a transport's `refused`) and `reason=` keywords all name a `Reason`."""
    written: dict[str, str] = {}
    for path in sorted(Path(decortask.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            texts: list[ast.expr] = []
            if isinstance(node, ast.Call):
                name = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                if name == "MessageError" and node.args:
                    texts.append(node.args[0])
                texts += [kw.value for kw in node.keywords if kw.arg == "reason"]
            elif isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Attribute) and target.attr == "refused" for target in node.targets
            ):
                texts.append(node.value)
            for text in texts:
                if isinstance(text, ast.Constant) and isinstance(text.value, str):
                    written[text.value] = f"{path.name}:{text.lineno}"
    assert written, "the scan found nothing: it no longer reads the package"
    unknown = {text: where for text, where in written.items() if text not in {r.value for r in Reason}}
    assert unknown == {}
