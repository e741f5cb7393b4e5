"""Middleware: hook points around enqueueing and executing tasks, retries, failures, interrupts and workers.

Subclass `Middleware`, override the hooks you need, and register an instance with
`Decortask(middleware=[...])` or `app.add_middleware(...)`. "before" hooks run in registration order,
"after" hooks (`after_enqueue`, `after_execute`, `worker_stop`) in reverse order. A hook that raises is
logged (its exception type and masked message, never argument values) and never breaks the task, the
producer or the worker. See docs/middleware.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from .errors import Retry
from .message import MAX_META_ENTRIES, MAX_META_KEY, MAX_META_VALUE, Message
from .outcomes import ExecutionOutcome as ExecutionOutcome  # re-exported: middleware authors import it here
from .security import mask_text
from .states import TaskStatus

if TYPE_CHECKING:
    from .app import Decortask
    from .context import TaskContext
    from .store.base import TaskRecord
    from .worker import Worker

logger = logging.getLogger("decortask.middleware")


class Middleware:
    """Base class for middleware: every hook does nothing; override the ones you need.

    Producer hooks run in the thread that enqueues (for `adelay`/`aapply_async`, a thread of the event
    loop's default executor, with the caller's context variables copied). Execute hooks run in the thread
    that runs the task function, or for an `async def` task in the same asyncio task as its coroutine, so
    state set up in `before_execute` (a Flask app context, a contextvar, a Sentry scope) is visible inside
    the task and can be torn down in `after_execute`. With `--pool processes` the execute hooks run in the
    child process with the middleware of the app the worker's `-A` modules created; worker hooks and
    `on_interrupt` run in the worker (parent) process.
    """

    # -- producer ------------------------------------------------------------------------------------------

    def before_enqueue(self, app: Decortask, message: Message, meta: dict[str, str]) -> None:
        """Called before a message is recorded and published.

        Args:
            app: the producing app.
            message: the message about to be sent (frozen; its `meta` holds what earlier hooks added).
            meta: string entries to carry in the envelope's `meta` field; add to it (e.g. trace headers).
                The worker exposes them as `message.meta` and `ctx.meta`. Limited to 32 entries, keys up
                to 128 and values up to 4096 characters; an entry beyond the limits is dropped and logged.
        """

    def after_enqueue(self, app: Decortask, message: Message) -> None:
        """Called after the message was published (or, for a countdown/eta, written to the schedule).

        Not called when the publish failed (the caller gets the error) or when an idempotency key
        returned an existing task instead of sending a new one.
        """

    # -- execution -----------------------------------------------------------------------------------------

    def before_execute(self, app: Decortask, message: Message, ctx: TaskContext) -> None:
        """Called right before the task function runs, after the attempt was claimed (RUNNING)."""

    def after_execute(
        self, app: Decortask, message: Message, ctx: TaskContext, outcome: ExecutionOutcome
    ) -> None:
        """Called right after the task function returned or raised, before the outcome is stored.

        Always called when `before_execute` was (success, failure, retry, cancel, timeout), except when a
        process-pool child is killed by force: its process is gone. For a coroutine cancelled by force, it
        may run while the worker already stores the outcome.
        """

    def on_retry(
        self, app: Decortask, message: Message, ctx: TaskContext, exc: BaseException, delay: float
    ) -> None:
        """An attempt failed (or raised `Retry`) and another follows in `delay` seconds.

        Runs between the task function and `after_execute`, in the same thread or asyncio task.
        """

    def on_failure(
        self, app: Decortask, message: Message, ctx: TaskContext, exc: BaseException, *, final: bool
    ) -> None:
        """An attempt raised `exc`.

        Args:
            final: True when no attempt follows (the task ends FAILED); False when it is retried
                (`on_retry` is called as well). A `Retry` the task raised reaches this hook only when no
                retries are left (a final failure); otherwise it is control flow, for `on_retry` alone.
        """

    def on_interrupt(self, app: Decortask, message: Message, reason: str) -> None:
        """A running attempt was interrupted: `reason` is `shutdown` (past the grace period) or `worker_lost`.

        Runs in the worker that settles the interruption (or the reaper), not in the task's thread.
        """

    # -- worker --------------------------------------------------------------------------------------------

    def worker_start(self, app: Decortask, worker: Worker) -> None:
        """The worker is about to consume (its pool is open)."""

    def worker_stop(self, app: Decortask, worker: Worker) -> None:
        """The worker stopped consuming and settled its running tasks; called in reverse order."""


def call_hooks(
    middleware: Sequence[Middleware], hook: str, *args: Any, reverse: bool = False, **kw: Any
) -> None:
    """Call `hook` on every middleware (in reverse with `reverse`); a hook that raises is logged and skipped."""
    for mw in reversed(middleware) if reverse else middleware:
        try:
            getattr(mw, hook)(*args, **kw)
        except Exception as exc:
            # Type and masked message only: a traceback's locals or an exception's args may hold task
            # arguments or secrets.
            logger.error(
                "middleware %s.%s raised %s: %s; ignored",
                type(mw).__name__,
                hook,
                type(exc).__name__,
                mask_text(str(exc)),
            )


def check_meta(meta: dict[str, str]) -> dict[str, str]:
    """The entries of `meta` within the limits (strings, sizes); the rest are dropped with a warning."""
    kept: dict[str, str] = {}
    for key, value in meta.items():
        if len(kept) >= MAX_META_ENTRIES:
            logger.warning("message meta has over %d entries; the rest are dropped", MAX_META_ENTRIES)
            break
        if (
            not isinstance(key, str)
            or not isinstance(value, str)
            or not 0 < len(key) <= MAX_META_KEY
            or len(value) > MAX_META_VALUE
        ):
            logger.warning("message meta entry %r is not a short string pair; dropped", str(key)[:40])
            continue
        kept[key] = value
    return kept


def prepare_enqueue(app: Decortask, message: Message) -> Message:
    """Run `before_enqueue` hooks; returns `message` with the `meta` they attached (the producer's step 1)."""
    middleware = app.middleware
    if not middleware:
        return message
    meta = dict(message.meta)
    call_hooks(middleware, "before_enqueue", app, message, meta)
    return dataclasses.replace(message, meta=check_meta(meta)) if meta != message.meta else message


def finish_enqueue(app: Decortask, message: Message) -> None:
    """Run `after_enqueue` hooks in reverse order (the producer's last step, once the message is sent)."""
    if app.middleware:
        call_hooks(app.middleware, "after_enqueue", app, message, reverse=True)


def report_outcome(
    middleware: Sequence[Middleware],
    app: Decortask,
    message: Message,
    ctx: TaskContext,
    outcome: ExecutionOutcome,
) -> None:
    """After an attempt: `on_failure` and/or `on_retry`, then `after_execute` in reverse order.

    A `Retry` the task raised that leads to another attempt is control flow: it reaches `on_retry` only.
    """
    exc = outcome.exception
    if exc is not None and outcome.status in (TaskStatus.RETRYING, TaskStatus.FAILED):
        retrying = outcome.will_retry
        if not (retrying and isinstance(exc, Retry)):
            call_hooks(middleware, "on_failure", app, message, ctx, exc, final=not retrying)
        if retrying:
            call_hooks(middleware, "on_retry", app, message, ctx, exc, outcome.retry_delay or 0.0)
    call_hooks(middleware, "after_execute", app, message, ctx, outcome, reverse=True)


async def around_coroutine(
    middleware: Sequence[Middleware],
    app: Decortask,
    message: Message,
    ctx: TaskContext,
    coroutine: Coroutine[Any, Any, Any],
    judge: Callable[[Any, BaseException | None], ExecutionOutcome],
) -> Any:
    """Await an `async def` task's coroutine between its execute hooks, all in one asyncio task.

    Args:
        judge: turns (return value, exception) into the attempt's outcome (`RunningTask.judge`).
    """
    call_hooks(middleware, "before_execute", app, message, ctx)
    try:
        value = await coroutine
    except BaseException as exc:
        report_outcome(middleware, app, message, ctx, judge(None, exc))
        raise
    report_outcome(middleware, app, message, ctx, judge(value, None))
    return value


def notify_interrupt(app: Decortask, message: Message | None, record: TaskRecord, reason: str) -> None:
    """Run `on_interrupt` hooks for the interrupted attempt of `record` (`message` rebuilt if unknown)."""
    if not app.middleware:
        return
    if message is None:
        from .records import message_from_record

        message = dataclasses.replace(message_from_record(record), attempt=record.attempt)
    call_hooks(app.middleware, "on_interrupt", app, message, reason)
