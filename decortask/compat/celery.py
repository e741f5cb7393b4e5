"""Celery's task API on decortask: a Celery tasks module runs under decortask with only its import changed.

    from decortask.compat.celery import shared_task  # was: from celery import shared_task

`@shared_task` (and `Celery(...).task`) accepts Celery's task options and maps each one onto decortask
(`bind=True` with `self.request` and `self.retry()`, `autoretry_for` with `retry_backoff`, `max_retries`,
`acks_late`, `time_limit`...); an option it cannot honour raises `TaskDefinitionError` naming it, never
silently ignored. Tasks compose as in Celery: `.s()`, `.si()`, `.signature()`, `chain`, `group`, `chord`,
`link=` and `link_error=` are decortask's canvas underneath (`celery_canvas`, `celery_errback`).
docs/migrating-from-celery.md lists every idiom and what behaves differently.
"""

from __future__ import annotations

import inspect
import random
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, NoReturn

from ..app import Decortask
from ..canvas import Signature
from ..context import TaskContext, current_task_context
from ..errors import ConfigurationError, DecortaskError, Retry, TaskDefinitionError
from ..task import Task as NativeTask
from ..task import task as native_task
from .celery_canvas import (
    UnsupportedCeleryFeature,
    call_signature,
    chain,
    chord,
    group,
    linked,
    maybe_signature,
    signature,
)
from .celery_errback import errback_signatures, remember_errback
from .celery_request import Request, current_request
from .celery_result import CELERY_STATES, AsyncResult
from .celery_result import AsyncResult as Result  # the name inside classes that define an AsyncResult method

#: decortask's own retry count for these tasks: unbounded, because `Task.retry()` checks Celery's
#: `max_retries` (which one call may raise or lower) before it asks decortask for another attempt.
UNBOUNDED_RETRIES = sys.maxsize

#: Celery's defaults for the options that have one.
CELERY_DEFAULTS: dict[str, Any] = {
    "max_retries": 3,
    "default_retry_delay": 180,
    "retry_backoff": False,
    "retry_backoff_max": 600,
    "retry_jitter": True,
}

#: The task options accepted; docs/migrating-from-celery.md says what each one becomes.
TASK_OPTIONS = frozenset(
    {
        *CELERY_DEFAULTS,
        "name",
        "bind",
        "queue",
        "priority",
        "expires",
        "serializer",
        "autoretry_for",
        "dont_autoretry_for",
        "retry_kwargs",
        "acks_late",
        "reject_on_worker_lost",
        "acks_on_failure_or_timeout",
        "ignore_result",
        "store_errors_even_if_ignored",
        "track_started",
        "typing",
        "time_limit",
        "soft_time_limit",
        "rate_limit",
    }
)

#: Celery options with a reason they cannot be honoured, said in the error.
REFUSED_TASK_OPTIONS = {
    "base": "custom Task classes (on_success, on_failure, before_start...) are not supported; use decortask "
    "middleware (docs/middleware.md) for hooks around every task",
    "throws": "decortask logs every failure alike; catch the expected exceptions in the task instead",
    "pydantic": "decortask sends JSON values only; convert models with .model_dump() before calling",
}

#: apply_async() options with a reason they cannot be honoured.
REFUSED_CALL_OPTIONS = {
    "task_id": "decortask chooses the id: read it from the returned result's .id",
    "routing_key": "route with queue=",
    "exchange": "route with queue=",
    "headers": "pass what the task needs as arguments, or tags= (strings stored with the task)",
    "shadow": "a task is shown under its registered name",
}

_RETRY_KWARGS = frozenset({"countdown", "max_retries"})


class MaxRetriesExceededError(DecortaskError):
    """`self.retry()` was called with no retries left and no `exc` to raise instead (as in Celery)."""


def _checked_options(fn: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Celery's options with its defaults filled in; an option that cannot be honoured raises, named."""
    where = f"@shared_task on {getattr(fn, '__qualname__', fn)!r}"
    for option, reason in REFUSED_TASK_OPTIONS.items():
        if option in options:
            raise TaskDefinitionError(f"{where}: option {option}= is not supported by decortask: {reason}")
    unknown = sorted(set(options) - TASK_OPTIONS)
    if unknown:
        raise TaskDefinitionError(
            f"{where}: unknown option(s) {', '.join(unknown)}; decortask.compat.celery accepts "
            f"{', '.join(sorted(TASK_OPTIONS))} (docs/migrating-from-celery.md)"
        )
    serializer = options.get("serializer", "json")
    if serializer != "json":
        raise TaskDefinitionError(
            f"{where}: serializer={serializer!r} is not supported: decortask sends JSON only (never pickle)"
        )
    if options.get("acks_on_failure_or_timeout", True) is not True:
        raise TaskDefinitionError(
            f"{where}: acks_on_failure_or_timeout=False is not supported: decortask acknowledges a message "
            "once the task's outcome is stored, whatever it is; use acks_late=True to run it again if its "
            "worker dies"
        )
    retry_kwargs = options.get("retry_kwargs", {})
    if not isinstance(retry_kwargs, Mapping) or set(retry_kwargs) - _RETRY_KWARGS:
        raise TaskDefinitionError(
            f"{where}: retry_kwargs={retry_kwargs!r} is invalid: expected a dict with countdown and/or "
            "max_retries"
        )
    return {**CELERY_DEFAULTS, **options, "rate_limit": _rate_limit(where, options.get("rate_limit"))}


def _rate_limit(where: str, value: Any) -> str | None:
    """Celery's `rate_limit` as decortask's: "10/s", "10/m", "10/h" as they are, a number as per second.

    decortask's limit holds across every worker (Celery's is per worker process); docs/limits.md.
    """
    if value is None or value == 0 or value == "0":
        return None  # Celery: no limit
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value}/s"
    if isinstance(value, str) and value.strip().isdigit():
        return f"{value.strip()}/s"
    if isinstance(value, str):
        return value
    raise TaskDefinitionError(
        f"{where}: rate_limit={value!r} is invalid: expected tasks per second as a whole number, or a "
        "string like '10/s', '100/m' or '1000/h'"
    )


def _exception_classes(where: str, option: str, value: Any) -> tuple[type[BaseException], ...]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(item, type) and issubclass(item, BaseException) for item in items):
        raise TaskDefinitionError(
            f"{where}: {option}={value!r} is invalid: expected a tuple of exception classes"
        )
    return items


def _utc(when: datetime) -> datetime:
    """Celery reads a naive datetime as UTC (its default `enable_utc`); decortask wants an aware one."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


class Task:
    """A Celery-style task: what `@shared_task` returns, and with `bind=True` the `self` its function gets.

    Calling it runs the function here; `.delay()` and `.apply_async()` enqueue it and return an
    `AsyncResult`. The decortask task registered underneath is `.native`.
    """

    def __init__(
        self, fn: Callable[..., Any], options: Mapping[str, Any], app: Decortask | None = None
    ) -> None:
        where = f"@shared_task on {getattr(fn, '__qualname__', fn)!r}"
        if not callable(fn) or inspect.iscoroutinefunction(fn):
            raise TaskDefinitionError(
                f"{where}: Celery tasks are plain functions; for an async def task use decortask's own @task"
            )
        checked = _checked_options(fn, options)
        self.run = fn
        self.bind = bool(checked.get("bind", False))
        self.max_retries: int | None = checked["max_retries"]
        self.default_retry_delay: float = checked["default_retry_delay"]
        self.autoretry_for = _exception_classes(where, "autoretry_for", checked.get("autoretry_for", ()))
        self.dont_autoretry_for = _exception_classes(
            where, "dont_autoretry_for", checked.get("dont_autoretry_for", ())
        )
        self.retry_kwargs: dict[str, Any] = dict(checked.get("retry_kwargs", {}))
        self.retry_backoff = float(checked["retry_backoff"])  # True is a factor of 1, as in Celery
        self.retry_backoff_max = float(checked["retry_backoff_max"])
        self.retry_jitter = bool(checked["retry_jitter"])
        self.acks_late = bool(checked.get("acks_late", False))
        self.ignore_result = bool(checked.get("ignore_result", False))
        self.rate_limit = checked.get("rate_limit")
        self._app = app
        self.native: NativeTask[..., Any] = native_task(**self._native_options(checked))(self._runner(where))
        self.name = self.native.name
        remember_errback(self.name, fn, self.bind, self.native.options.queue)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__qualname__ = getattr(fn, "__qualname__", self.name)
        self.__module__ = getattr(fn, "__module__", "")
        self.__wrapped__ = fn

    def _native_options(self, checked: Mapping[str, Any]) -> dict[str, Any]:
        """The `@task` options this task becomes: Celery decides its retries (`retry()`), so decortask
        retries only a `Retry` and fails every other exception at once, as Celery does."""
        limits = [checked[key] for key in ("soft_time_limit", "time_limit") if checked.get(key) is not None]
        return {
            "name": checked.get("name"),
            "queue": checked.get("queue"),
            "priority": checked.get("priority", 0),
            "expires": checked.get("expires"),
            # One limit: should_stop() turns true at the first of Celery's two, and the attempt is stopped
            # by force timeout_grace later (Celery's hard time_limit kills at its own time).
            "timeout": min(limits) if limits else None,
            # acks_late's purpose in Celery: a task whose worker died runs again instead of being lost.
            "requeue_on_interrupt": self.acks_late,
            "rate_limit": checked.get("rate_limit"),  # enforced across the cluster (docs/limits.md)
            "retries": UNBOUNDED_RETRIES,
            "dont_retry_on": (BaseException,),
        }

    def _runner(self, where: str) -> Callable[..., Any]:
        """The function decortask registers: the Celery function's parameters (without `self` when bound)
        after a `TaskContext`, which becomes `self.request` for the call."""
        parameters = list(inspect.signature(self.run).parameters.values())
        if self.bind:
            if not parameters or parameters[0].kind not in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            ):
                raise TaskDefinitionError(f"{where}: bind=True needs the task as the first parameter (self)")
            parameters = parameters[1:]
        context = inspect.Parameter(
            "celery_context", inspect.Parameter.POSITIONAL_ONLY, annotation=TaskContext
        )

        def runner(ctx: TaskContext, /, *args: Any, **kwargs: Any) -> Any:
            request = Request(
                id=ctx.task_id,
                retries=ctx.attempt - 1,
                args=args,
                kwargs=kwargs,
                task=ctx.name,
                hostname=ctx.worker_id,
                delivery_info={"routing_key": ctx.queue, "queue": ctx.queue},
                called_directly=False,
            )
            return self._invoke(request, args, kwargs)

        runner.__signature__ = inspect.Signature([context, *parameters])  # type: ignore[attr-defined]
        runner.__annotations__ = {"celery_context": TaskContext}
        runner.__module__ = self.run.__module__
        runner.__name__ = self.run.__name__
        runner.__qualname__ = self.run.__qualname__
        runner.__doc__ = self.run.__doc__
        return runner

    def _invoke(self, request: Request, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Run the function with `request` current, turning an `autoretry_for` exception into `retry()`."""
        token = current_request.set(request)
        try:
            return self.run(*((self, *args) if self.bind else args), **kwargs)
        except Retry:
            raise
        except self.autoretry_for as exc:
            if isinstance(exc, self.dont_autoretry_for):
                raise
            retry_kwargs = dict(self.retry_kwargs)
            if self.retry_backoff:
                retry_kwargs["countdown"] = self.backoff_countdown(request.retries)
            self.retry(exc=exc, **retry_kwargs)
        finally:
            current_request.reset(token)

    def backoff_countdown(self, retries: int) -> float:
        """Celery's `retry_backoff` delay before retry number `retries + 1`: `retry_backoff * 2**retries`
        seconds, at most `retry_backoff_max`, and with `retry_jitter` a random whole number of seconds
        from 0 to that."""
        countdown = min(self.retry_backoff_max, self.retry_backoff * 2.0 ** min(retries, 64))
        if self.retry_jitter:
            return float(random.randrange(int(countdown) + 1))
        return max(0.0, countdown)

    @property
    def request(self) -> Request:
        """The running call's request (`self.request.id`, `.retries`...); an empty one outside a task."""
        return current_request.get() or Request(task=self.name)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> NoReturn:
        """Ask for another attempt of this call, as Celery's `self.retry()` does (`raise self.retry(...)`).

        Raises decortask's `Retry` with the delay: the attempt ends RETRYING and the next one waits in the
        store's schedule for `countdown` seconds (or until `eta`; else `default_retry_delay`). With no
        retries left (`max_retries`, this call's or the task's; None retries for ever) it raises `exc`, or
        `MaxRetriesExceededError` without one, and the task ends FAILED.
        """
        where = f"{self.name}.retry()"
        if args is not None or kwargs is not None:
            raise UnsupportedCeleryFeature(
                f"{where}: args=/kwargs= are not supported: a retry runs the same call again; enqueue a new "
                "call with .delay(...) and return instead"
            )
        if not throw:
            raise UnsupportedCeleryFeature(
                f"{where}: throw=False is not supported: the retry is the exception"
            )
        if options:
            raise UnsupportedCeleryFeature(
                f"{where}: option(s) {', '.join(sorted(options))} are not supported; a retry keeps the call's "
                "queue and priority"
            )
        request = self.request
        if request.called_directly:
            if exc is not None:
                raise exc
            raise Retry(message=f"{self.name} asked for a retry in a direct call, which does not retry")
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries + 1 > limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}]: retried {request.retries} times, max_retries={limit}"
            )
        if eta is not None:
            delay = max(0.0, (_utc(eta) - datetime.now(timezone.utc)).total_seconds())
        else:
            delay = float(self.default_retry_delay if countdown is None else countdown)
        if exc is None:
            raise Retry(delay=delay, message=f"self.retry() in {delay:g} s")
        raise Retry(delay=delay, message=f"self.retry() in {delay:g} s: {type(exc).__name__}: {exc}") from exc

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None) -> None:
        """Celery's custom states: stored as the task's live output `{"state": state, "meta": meta}`
        (`ctx.set_output`, read from `result.handle.output`); the task's own state stays decortask's."""
        if task_id is not None and task_id != self.request.id:
            raise UnsupportedCeleryFeature(
                f"{self.name}.update_state(): a task can update only its own state, not {task_id}"
            )
        ctx = current_task_context()
        if ctx is not None:
            ctx.set_output({"state": state, "meta": meta})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here and now, as Celery does (`self.request.called_directly` is True)."""
        return self._invoke(Request(args=args, kwargs=dict(kwargs), task=self.name), args, kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> Result:
        """Enqueue with the task's options; returns an `AsyncResult`."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: datetime | float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        serializer: str | None = None,
        ignore_result: bool | None = None,
        link: Any = None,
        link_error: Any = None,
        **options: Any,
    ) -> Result:
        """Enqueue with per-call options, as Celery's `apply_async`; returns an `AsyncResult`.

        decortask's own call options (`idempotency_key=`, `tags=`, `confirm=`) are accepted too. A naive
        `eta`/`expires` datetime is read as UTC, as Celery does. `link=` signatures are sent with the result
        first in their arguments once the task succeeded, `link_error=` ones once it did not: with the failed
        task's id, or as Celery does with `(request, exc, traceback)` for an errback taking more than one
        positional argument (`celery_errback`).
        """
        del ignore_result  # every outcome is stored; reading it is up to the caller
        where = f"{self.name}.apply_async()"
        for option, reason in REFUSED_CALL_OPTIONS.items():
            if option in options:
                raise UnsupportedCeleryFeature(f"{where}: option {option}= is not supported: {reason}")
        unknown = sorted(set(options) - {"idempotency_key", "tags", "confirm"})
        if unknown:
            raise UnsupportedCeleryFeature(
                f"{where}: unknown option(s) {', '.join(unknown)}; supported: countdown, eta, expires, "
                "priority, queue, serializer='json', ignore_result, idempotency_key, tags, confirm"
            )
        if serializer not in (None, "json"):
            raise ConfigurationError(f"{where}: serializer={serializer!r}: decortask sends JSON only")
        handle = self.native.apply_async(
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            countdown=countdown,
            eta=_utc(eta) if isinstance(eta, datetime) else eta,
            expires=_utc(expires) if isinstance(expires, datetime) else expires,
            priority=priority,
            queue=queue,
            app=self._app,
            link=linked(where, "link", link),
            link_error=errback_signatures(linked(where, "link_error", link_error)),
            **options,
        )
        return Result(handle.id, handle.app, handle=handle)

    def AsyncResult(self, task_id: str) -> Result:
        """The result of an earlier call of this task, by id."""
        return Result(task_id, self._app)

    def s(self, *args: Any, **kwargs: Any) -> Signature[Any]:
        """A signature of this call (decortask's, of `.native`): in a chain the previous result comes first."""
        return self.native.s(*args, **kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature[Any]:
        """An immutable signature: in a chain it ignores the previous step's result."""
        return self.native.si(*args, **kwargs)

    def signature(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> Signature[Any]:
        """Celery's `task.signature(args, kwargs, countdown=..., immutable=...)`: a decortask signature with
        call options `countdown`, `queue`, `priority`, `expires`; others raise, named."""
        return call_signature(self.name, args, kwargs, options, **extra)

    subtask = signature

    def map(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise UnsupportedCeleryFeature(
            f"{self.name}.map(): Celery's map (one task looping over the items) has no decortask equivalent; "
            f"use group({self.name.rsplit('.', 1)[-1]}.s(item) for item in items) to run one task per item "
            "in parallel, or .native.map(items) to enqueue them"
        )

    def starmap(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise UnsupportedCeleryFeature(
            f"{self.name}.starmap(): Celery's starmap has no decortask equivalent; use "
            f"group({self.name.rsplit('.', 1)[-1]}.s(*item) for item in items) to run one task per item "
            "in parallel"
        )

    def chunks(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise UnsupportedCeleryFeature(
            f"{self.name}.chunks(): Celery's chunks has no decortask equivalent; write a task that takes a "
            "list of items and loops over it, and use group(that.s(items[i:i + n]) for i in "
            "range(0, len(items), n))"
        )

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"


def shared_task(*args: Any, **options: Any) -> Any:
    """Celery's `@shared_task`, bare or with options: registers a decortask task, returns a `Task`."""
    return _decorator(None, args, options)


def _decorator(app: Decortask | None, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
    if len(args) == 1 and callable(args[0]) and not options:
        return Task(args[0], {}, app)
    if args:
        raise TaskDefinitionError(f"@shared_task takes options by keyword only, got {args!r}")

    def decorate(fn: Callable[..., Any]) -> Task:
        return Task(fn, options, app)

    return decorate


class Celery:
    """A stand-in for `celery.Celery`: its `.task` decorator makes tasks that call through one decortask app.

    `Celery("proj", broker=..., backend=...)` makes a `Decortask(broker, backend)` (`.decortask`) the
    current app, so `decortask worker -A proj.celery` (or `-A proj.celery:app`) runs on it; without URLs
    the environment's settings apply. Nothing else of Celery's app (`conf`, `config_from_object`,
    `autodiscover_tasks`, `beat_schedule`) is provided: see docs/migrating-from-celery.md.
    """

    def __init__(
        self, main: str | None = None, *, broker: str | None = None, backend: str | None = None
    ) -> None:
        self.main = main
        self.decortask = Decortask(broker, backend)
        #: Where `decortask worker -A module:app` finds the decortask app (as for Flask's extension).
        self.extensions = {"decortask": self.decortask}

    def task(self, *args: Any, **options: Any) -> Any:
        """`@app.task`, bare or with options: the same as `@shared_task`, calling through this app."""
        return _decorator(self.decortask, args, options)

    def AsyncResult(self, task_id: str) -> Result:
        return Result(task_id, self.decortask)


__all__ = [
    "CELERY_STATES",
    "AsyncResult",
    "Celery",
    "MaxRetriesExceededError",
    "Request",
    "Task",
    "UnsupportedCeleryFeature",
    "chain",
    "chord",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
]
