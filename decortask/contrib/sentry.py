"""Sentry for decortask tasks, built only on the public middleware hooks (extra `sentry`).

```python
import sentry_sdk
from decortask import Decortask
from decortask.contrib.sentry import SentryMiddleware

sentry_sdk.init(dsn=..., traces_sample_rate=0.1)
app = Decortask(middleware=[SentryMiddleware()])
```

What it does: the enqueuing code's trace (`sentry-trace` and `baggage`) travels in the message's `meta`, and
each attempt continues it in an isolation scope of its own, tagged with the task's name, id, attempt, queue and
worker. A task's exception is reported once, when the task finally fails (or on every failed attempt with
`report="every_attempt"`), with the task's `task_log` lines as breadcrumbs. A task that succeeds after retries
reports nothing, and `Retry` raised by a task is control flow, never an error.

No argument value reaches Sentry through decortask's own frames: sentry-sdk sends each frame's local
variables by default, and decortask's frames (executor, task, records, messages) hold whole copies of the
message and record, which its name-based scrubber cannot recognise. An event processor therefore blanks the
local variables of every decortask frame in every event this process sends; the task's own frames keep
sentry-sdk's rules (`include_local_variables`, `event_scrubber`, `before_send`).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

try:
    import sentry_sdk
    from sentry_sdk.integrations.logging import ignore_logger
    from sentry_sdk.scope import add_global_event_processor
    from sentry_sdk.tracing import NoOpSpan, Transaction, TransactionSource
    from sentry_sdk.utils import event_from_exception
except ImportError as exc:  # pragma: no cover - depends on the environment
    from importlib.metadata import PackageNotFoundError, version

    from decortask.errors import ConfigurationError

    try:
        installed = version("sentry-sdk")
    except PackageNotFoundError:
        installed = ""
    if installed and not installed.startswith("2."):
        # sentry-sdk 3 removed transactions (start_transaction, Transaction) that this integration uses.
        raise ConfigurationError(
            f"decortask.contrib.sentry supports sentry-sdk 2.x, and sentry-sdk {installed} is installed: "
            "pip install 'sentry-sdk>=2,<3' (or reinstall 'decortask[sentry]', which pins it)"
        ) from exc
    raise ConfigurationError(
        "decortask.contrib.sentry needs sentry-sdk: pip install 'decortask[sentry]'"
    ) from exc

import decortask
from decortask.errors import Retry
from decortask.middleware import ExecutionOutcome, Middleware
from decortask.states import TaskStatus

if TYPE_CHECKING:
    from sentry_sdk._types import Event

    from decortask.app import Decortask
    from decortask.context import TaskContext
    from decortask.message import Message
    from decortask.store.base import LogLine

#: The `meta` keys that carry the trace, as Sentry names its propagation headers.
TRACE_KEYS = ("sentry-trace", "baggage")
#: Breadcrumbs taken from a task's log, newest last (Sentry keeps at most `max_breadcrumbs` anyway).
MAX_LOG_BREADCRUMBS = 100

Report = Literal["final", "every_attempt"]
#: What a decortask frame's local variables become in an event (sentry-sdk's own word for a scrubbed value).
FILTERED = "[Filtered]"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(decortask.__file__)) + os.sep


@dataclass
class _Attempt:
    """What `before_execute` opened for one attempt, closed again by `after_execute`."""

    scope: AbstractContextManager[Any]
    transaction: Transaction | NoOpSpan
    reported: bool = False


_attempt: ContextVar[_Attempt | None] = ContextVar("decortask_sentry_attempt", default=None)


class SentryMiddleware(Middleware):
    """Reports task failures to Sentry and continues the enqueuing request's trace in the task.

    Args:
        report: `"final"` (default) reports a task's exception only when no attempt follows; `"every_attempt"`
            also reports the failed attempts that are retried (never a `Retry` the task raised itself).
        propagate_traces: carry the producer's trace to the worker in the message `meta`.
        log_breadcrumbs: add the task's `task_log` lines to the reported event as breadcrumbs.
    """

    def __init__(
        self, report: Report = "final", *, propagate_traces: bool = True, log_breadcrumbs: bool = True
    ) -> None:
        if report not in ("final", "every_attempt"):
            from decortask.errors import ConfigurationError

            raise ConfigurationError(f"SentryMiddleware(report={report!r}): use 'final' or 'every_attempt'")
        self.report = report
        self.propagate_traces = propagate_traces
        self.log_breadcrumbs = log_breadcrumbs
        _install_frame_scrubber()
        if log_breadcrumbs:
            # The lines arrive as breadcrumbs from the task's record instead, once each and with their fields.
            ignore_logger("decortask.task")

    def before_enqueue(self, app: Decortask, message: Message, meta: dict[str, str]) -> None:
        if not self.propagate_traces:
            return
        traceparent = sentry_sdk.get_traceparent()
        if traceparent:
            meta["sentry-trace"] = traceparent
            baggage = sentry_sdk.get_baggage()
            if baggage:
                meta["baggage"] = baggage

    def before_execute(self, app: Decortask, message: Message, ctx: TaskContext) -> None:
        scope_cm = sentry_sdk.isolation_scope()
        scope = scope_cm.__enter__()
        try:
            scope.set_tag("decortask.task", ctx.name)
            scope.set_tag("decortask.task_id", ctx.task_id)
            scope.set_tag("decortask.attempt", str(ctx.attempt))
            scope.set_tag("decortask.queue", ctx.queue)
            scope.set_tag("decortask.worker", ctx.worker_id)
            scope.set_context(
                "decortask",
                {"task": ctx.name, "task_id": ctx.task_id, "attempt": ctx.attempt, "tags": dict(ctx.tags)},
            )
            scope.set_transaction_name(ctx.name, source=TransactionSource.TASK)
            headers = {key: message.meta[key] for key in TRACE_KEYS if key in message.meta}
            transaction = sentry_sdk.continue_trace(
                headers,
                op="queue.process",
                name=ctx.name,
                source=TransactionSource.TASK,
                origin="auto.queue.decortask",
            )
            transaction.set_tag("decortask.task_id", ctx.task_id)
            started = sentry_sdk.start_transaction(transaction)
            started.__enter__()  # makes it the scope's span, so events and child spans join the trace
        except BaseException:
            scope_cm.__exit__(None, None, None)
            raise
        _attempt.set(_Attempt(scope_cm, started))

    def on_failure(
        self, app: Decortask, message: Message, ctx: TaskContext, exc: BaseException, *, final: bool
    ) -> None:
        attempt = _attempt.get()
        if attempt is None or attempt.reported or (isinstance(exc, Retry) and not final):
            return
        if not final and self.report != "every_attempt":
            return
        attempt.reported = True
        if self.log_breadcrumbs:
            ctx.flush_log()  # the attempt's lines wait in the worker until its outcome's write
            for line in _log_lines(app, ctx.task_id):
                sentry_sdk.add_breadcrumb(
                    category="task_log",
                    message=line.message,
                    level="info",
                    timestamp=line.ts,
                    data={"attempt": line.attempt, **line.extra},
                )
        client = sentry_sdk.get_client()
        event, hint = event_from_exception(
            exc,
            client_options=client.options,
            mechanism={"type": "decortask", "handled": False},
        )
        event.setdefault("tags", {})["decortask.final"] = "true" if final else "false"
        sentry_sdk.capture_event(event, hint=hint)

    def after_execute(
        self, app: Decortask, message: Message, ctx: TaskContext, outcome: ExecutionOutcome
    ) -> None:
        attempt = _attempt.get()
        if attempt is None:
            return
        _attempt.set(None)
        status = {
            TaskStatus.SUCCESS: "ok",
            TaskStatus.CANCELLED: "cancelled",
            TaskStatus.RETRYING: "aborted",
        }.get(outcome.status, "internal_error")
        try:
            attempt.transaction.set_status(status)
            attempt.transaction.__exit__(None, None, None)
        finally:
            attempt.scope.__exit__(None, None, None)


def _log_lines(app: Decortask, task_id: str) -> list[LogLine]:
    record = app.store.get(task_id)
    return [] if record is None else record.logs[-MAX_LOG_BREADCRUMBS:]


def scrub_decortask_frames(event: Event, hint: dict[str, Any]) -> Event:
    """Sentry event processor: blank the local variables of every decortask frame in `event`.

    Covers the frames of exceptions, of threads and of a message's own stack trace, whichever integration
    made the event (this middleware, the logging integration, the threading integration). Variable names are
    kept, so a trace still shows which locals existed; their values become `[Filtered]`.
    """
    data = cast("dict[str, Any]", event)  # sentry-sdk's TypedDict leaves most of these fields untyped
    stacktraces = [data.get("stacktrace")]
    for kind in ("exception", "threads"):
        container = data.get(kind)
        if isinstance(container, dict):
            stacktraces += [value.get("stacktrace") for value in container.get("values") or ()]
    for stacktrace in stacktraces:
        if not isinstance(stacktrace, dict):
            continue
        for frame in stacktrace.get("frames") or ():
            variables = frame.get("vars")
            if isinstance(variables, dict) and _is_decortask_frame(frame):
                frame["vars"] = {str(name): FILTERED for name in variables}
    return event


def _is_decortask_frame(frame: dict[str, Any]) -> bool:
    module = frame.get("module") or ""
    if module == "decortask" or module.startswith("decortask."):
        return True
    # The path too: a frame's module name may be missing (e.g. code run from a zip or by exec).
    path = frame.get("abs_path") or ""
    return bool(path) and os.path.abspath(path).startswith(_PACKAGE_DIR)


_scrubber_installed = False


def _install_frame_scrubber() -> None:
    # Global, not on the attempt's scope: events about a task are also made outside its scope (an error the
    # worker logs, a thread's crash), and they hold the same frames. Installed once per process; it survives
    # a later `sentry_sdk.init`, as global processors do.
    global _scrubber_installed
    if not _scrubber_installed:
        add_global_event_processor(scrub_decortask_frames)
        _scrubber_installed = True
