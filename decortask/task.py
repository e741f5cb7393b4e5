"""`@task` and `Task`: a decorated function that runs locally when called and remotely via `.delay()`."""

from __future__ import annotations

import asyncio
import inspect
import sys
import typing
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from .context import TaskContext
from .errors import TaskDefinitionError
from .limits import OPTION_NAMES as LIMIT_OPTIONS
from .limits import Limits, parse_limits
from .registry import registry
from .retry import RetryPolicy
from .schedules import Schedule

if TYPE_CHECKING:
    from .app import Decortask
    from .call_options import CallOptions
    from .canvas import Signature
    from .handle import TaskHandle
    from .producer import Call

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
_Self = TypeVar("_Self")
_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")

_UNSET: Any = object()


@dataclass(frozen=True)
class TaskOptions:
    """Validated `@task(...)` options; see docs/tasks.md for each one. Retry options live in `retry_policy`."""

    name: str
    persist: bool = True
    requeue_on_interrupt: bool = False
    must_complete: bool = False
    max_deliveries: int | None = None
    queue: str | None = None
    priority: int = 0
    timeout: float | None = None
    expires: float | None = None
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    schedule: Schedule | None = None
    limits: Limits | None = None  # rate and concurrency limits: limits.py


_OPTION_NAMES = [
    *LIMIT_OPTIONS,
    "retries",
    "delay",
    "backoff",
    "max_delay",
    "jitter",
    "retry_on",
    "dont_retry_on",
    "persist",
    "requeue_on_interrupt",
    "must_complete",
    "max_deliveries",
    "name",
    "queue",
    "priority",
    "timeout",
    "expires",
    "schedule",
]


def _fail(option: str, expected: str, value: Any) -> TaskDefinitionError:
    return TaskDefinitionError(f"@task option {option}={value!r} is invalid: expected {expected}")


def _number(
    option: str, value: Any, *, minimum: float, allow_none: bool = False, strict: bool = False
) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(option, f"a number >= {minimum}" + (" or None" if allow_none else ""), value)
    if value < minimum or (strict and value == minimum):
        raise _fail(option, f"a number {'>' if strict else '>='} {minimum}", value)
    return value


def _exceptions(option: str, value: Any) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise _fail(option, "an exception class or a tuple of them", value)
    return tuple(items)


def build_options(fn: Callable[..., Any], raw: Mapping[str, Any]) -> TaskOptions:
    """Validate decorator options; every error names the option."""
    unknown = sorted(set(raw) - set(_OPTION_NAMES))
    if unknown:
        raise TaskDefinitionError(
            f"@task got unknown option(s) {', '.join(unknown)}; known options: {', '.join(sorted(_OPTION_NAMES))}"
        )
    retries = raw.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise _fail("retries", "an integer >= 0", retries)
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise _fail("priority", "an integer from 0 to 9 (higher runs sooner)", priority)
    name = raw["name"] if raw.get("name") is not None else default_task_name(fn)
    if not isinstance(name, str) or not name.strip():
        raise _fail("name", "a non-empty string", name)
    queue = raw.get("queue")
    if queue is not None and (not isinstance(queue, str) or not queue.strip()):
        raise _fail("queue", "a non-empty string", queue)
    for flag in ("persist", "requeue_on_interrupt", "must_complete"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise _fail(flag, "True or False", raw[flag])
    max_deliveries = raw.get("max_deliveries")
    if max_deliveries is not None and (
        isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int) or max_deliveries < 1
    ):
        raise _fail("max_deliveries", "an integer >= 1 or None (the app's setting)", max_deliveries)
    jitter = _number("jitter", raw.get("jitter", 0.0), minimum=0.0)
    if jitter > 1:
        raise _fail("jitter", "a fraction from 0 to 1", jitter)
    schedule = raw.get("schedule")
    if schedule is not None and not isinstance(schedule, Schedule):
        raise _fail(
            "schedule", "a schedule: cron('*/5 * * * *') or every(seconds=30) from decortask", schedule
        )
    policy = RetryPolicy(
        retries=retries,
        delay=float(_number("delay", raw.get("delay", 0.0), minimum=0.0)),
        backoff=float(_number("backoff", raw.get("backoff", 1.0), minimum=1.0)),
        max_delay=_number("max_delay", raw.get("max_delay"), minimum=0.0, allow_none=True),
        jitter=float(jitter),
        retry_on=_exceptions("retry_on", raw.get("retry_on", ())),
        dont_retry_on=_exceptions("dont_retry_on", raw.get("dont_retry_on", ())),
    )
    return TaskOptions(
        name=name,
        persist=raw.get("persist", True),
        requeue_on_interrupt=raw.get("requeue_on_interrupt", False),
        must_complete=raw.get("must_complete", False),
        max_deliveries=max_deliveries,
        queue=queue,
        priority=priority,
        timeout=_number("timeout", raw.get("timeout"), minimum=0.0, allow_none=True, strict=True),
        expires=_number("expires", raw.get("expires"), minimum=0.0, allow_none=True, strict=True),
        retry_policy=policy,
        schedule=schedule,
        limits=parse_limits(raw),
    )


def default_task_name(fn: Callable[..., Any]) -> str:
    """`module.qualname`; a module run with `python -m pkg.mod` is named `pkg.mod`, not `__main__`."""
    module = getattr(fn, "__module__", None) or "__main__"
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name and spec.name != "__main__":
            module = spec.name
    return f"{module}.{fn.__qualname__}"


def _context_parameter(fn: Callable[..., Any]) -> str | None:
    """The name of the parameter annotated `TaskContext`, if any."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward refs: fall back to the annotation text
        hints = {}
    for param in inspect.signature(fn).parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if annotation is TaskContext or annotation in ("TaskContext", "decortask.TaskContext"):
            return param.name
    return None


def _same_parameters_as(
    sync: Callable[Concatenate[_Self, _Params], _Result],
) -> Callable[
    [Callable[..., Coroutine[Any, Any, _Result]]],
    Callable[Concatenate[_Self, _Params], Coroutine[Any, Any, _Result]],
]:
    """Declare that an async method forwarding `*args, **kwargs` to `sync` takes exactly `sync`'s parameters.

    Type checkers and `inspect.signature` see `sync`'s parameters on it, so `aapply_async` is typed like
    `apply_async` and an option added to `apply_async` needs no second copy.
    """

    def adopt(
        forwarder: Callable[..., Coroutine[Any, Any, _Result]],
    ) -> Callable[Concatenate[_Self, _Params], Coroutine[Any, Any, _Result]]:
        forwarder.__signature__ = inspect.signature(sync)  # type: ignore[attr-defined]
        return forwarder

    return adopt


def _links(
    link: Signature[Any] | Sequence[Signature[Any]] | None,
    link_error: Signature[Any] | Sequence[Signature[Any]] | None,
) -> tuple[tuple[Signature[Any], ...], tuple[Signature[Any], ...]]:
    """`link=` and `link_error=` as tuples of signatures (checked; the canvas is imported only when given)."""
    if not link and not link_error:
        return (), ()
    from .canvas import signatures

    return signatures("link", link), signatures("link_error", link_error)


class Task(Generic[P, R]):
    """A registered task. Call it for a plain local call; `.delay()` / `.apply_async()` to enqueue."""

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.fn = fn
        self.options = options
        self.name = options.name
        self.context_param = _context_parameter(fn)
        signature = inspect.signature(fn)
        #: The function's own signature, context included. Calls are laid out by it rather than by `fn`'s
        #: signature at call time, so a replaced `fn` (`mocker.patch.object(task, "fn")`) is called alike.
        self.fn_signature = signature
        self.signature = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name != self.context_param]
        )
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__qualname__ = getattr(fn, "__qualname__", self.name)
        self.__module__ = getattr(fn, "__module__", "")
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, like a plain call (a fresh local context is injected)."""
        if (
            self.context_param is None
            or self.context_param in kwargs
            or (args and isinstance(args[0], TaskContext))
        ):
            direct: R = self.fn(*args, **kwargs)
            return direct
        local = TaskContext(task_id="local", name=self.name)
        result: R = self.run(local, self.bind_arguments(args, kwargs))
        return result

    def run(self, ctx: TaskContext, bound: inspect.BoundArguments) -> Any:
        """Call the function with arguments bound against the public signature, injecting `ctx`."""
        if self.context_param is None:
            return self.fn(*bound.args, **bound.kwargs)
        positional: list[Any] = []
        keywords: dict[str, Any] = {}
        by_position = True
        for param in self.fn_signature.parameters.values():
            value: Any
            if param.name == self.context_param:
                value, present = ctx, True
            else:
                present = param.name in bound.arguments
                value = bound.arguments.get(param.name)
            if param.kind is param.VAR_POSITIONAL:
                positional.extend(value or ())
            elif param.kind is param.VAR_KEYWORD:
                keywords.update(value or {})
            elif param.kind is param.KEYWORD_ONLY or not by_position:
                if present:
                    keywords[param.name] = value
            elif present:
                positional.append(value)
            else:
                by_position = False  # a defaulted parameter: everything after it goes by keyword
        return self.fn(*positional, **keywords)

    def bind_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        """Check arguments against the signature; raises `TypeError` the way a call would."""
        try:
            return self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}(): {exc}") from None

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Enqueue with the task's default options; returns a handle."""
        return self.apply_async(args=args, kwargs=kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        expires: datetime | float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
        tags: Mapping[str, str] | None = None,
        app: Decortask | None = None,
        confirm: bool = False,
        link: Signature[Any] | Sequence[Signature[Any]] | None = None,
        link_error: Signature[Any] | Sequence[Signature[Any]] | None = None,
    ) -> TaskHandle[R]:
        """Enqueue with per-call options.

        Args:
            args: positional arguments (JSON values).
            kwargs: keyword arguments (JSON values).
            countdown: run no sooner than this many seconds from now.
            eta: run no sooner than this time (timezone-aware datetime, or UNIX seconds).
            expires: seconds from now, or a time, after which the task is not run (CANCELLED, expired).
            priority: 0..9, higher runs sooner where the broker supports priorities.
            queue: overrides the task's queue.
            idempotency_key: while a task holding this key has not failed, return its handle instead.
            tags: string labels stored with the task.
            app: the app to use (default: the current app).
            confirm: return only once the broker confirmed the message, raising `BrokerUnavailable`
                within `confirm_timeout` (and leaving no record) if it does not; by default the call
                returns once the task's record is durable and the message is published in the background
                (the outbox, docs/reliability.md).
            link: signatures sent once this task succeeded, its result first in their arguments (unless
                `.si()`), as a chain's next step is (docs/workflows.md).
            link_error: signatures sent once this task ended FAILED, CANCELLED or INTERRUPTED, its task
                id first in their arguments (unless `.si()`).
        """
        from .app import current_app
        from .call_options import CallOptions

        links = _links(link, link_error)
        options = CallOptions(
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=priority,
            queue=queue,
            idempotency_key=idempotency_key,
            tags=tags,
            confirm=confirm,
            link=links[0],
            link_error=links[1],
        )
        return self.enqueue(app or current_app(), tuple(args or ()), dict(kwargs or {}), options)

    def enqueue(
        self, app: Decortask, args: tuple[Any, ...], kwargs: dict[str, Any], options: CallOptions
    ) -> TaskHandle[R]:
        """Validate, record and publish one call through `app`: what `apply_async` and `app.send_task` do.

        Under `decortask.testing.eager()` the task also runs to its final state before this returns.
        """
        from .producer import send_task

        handle: TaskHandle[R] = send_task(app, self, args, kwargs, options)
        if app.eager_runner is not None:
            app.eager_runner(handle)
        return handle

    def s(self, *args: Any, **kwargs: Any) -> Signature[R]:
        """A signature of this call for a workflow (`decortask.canvas`); a chain puts the previous
        step's result before `args`, so they may be partial."""
        from .canvas import Signature

        return Signature(self.name, args, kwargs)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """An immutable signature: in a chain it ignores the previous step's result."""
        from .canvas import Signature

        return Signature(self.name, args, kwargs, immutable=True)

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        """One call for `apply_many`, its arguments type-checked like `.delay()`'s."""
        from .producer import Call

        return Call(args=args, kwargs=kwargs)

    def map(
        self,
        arguments: Iterable[Any],
        *,
        queue: str | None = None,
        app: Decortask | None = None,
        confirm: bool = False,
    ) -> list[TaskHandle[R]]:
        """Enqueue one call per item, each item the call's positional arguments (a tuple) or its only one.

        `send_email.map(addresses)` enqueues `send_email(a)` for each address; `add.map([(1, 2), (3, 4)])`
        enqueues `add(1, 2)` and `add(3, 4)`. Same as `apply_many`: one store write and one publish.
        """
        from .producer import Call

        calls = [Call(args=item if isinstance(item, tuple) else (item,)) for item in arguments]
        return self.apply_many(calls, queue=queue, app=app, confirm=confirm)

    def apply_many(
        self,
        calls: Iterable[Call],
        *,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        expires: datetime | float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        tags: Mapping[str, str] | None = None,
        app: Decortask | None = None,
        confirm: bool = False,
        link: Signature[Any] | Sequence[Signature[Any]] | None = None,
        link_error: Signature[Any] | Sequence[Signature[Any]] | None = None,
    ) -> list[TaskHandle[R]]:
        """Enqueue many calls with far fewer round trips than one `.delay()` each; handles in call order.

        Each call is validated like `.delay()` before anything is written; records are written in one
        step, then the messages published together (confirmed by the broker on AMQP). Options apply to
        every call; `task.call(...).keyed(key)` gives one call an idempotency key. `confirm=True` waits
        for the broker's confirms as `apply_async` does. See docs/performance.md for what a
        `BrokerUnavailable` leaves behind. `link=` / `link_error=` apply to each call.
        """
        from .app import current_app
        from .call_options import CallOptions
        from .producer import send_many

        links = _links(link, link_error)
        options = CallOptions(
            countdown=countdown,
            eta=eta,
            expires=expires,
            priority=priority,
            queue=queue,
            tags=tags,
            confirm=confirm,
            link=links[0],
            link_error=links[1],
        )
        return send_many(app or current_app(), self, calls, options)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Enqueue once the current database transaction commits (nothing is sent if it rolls back).

        Uses the app's `commit_hook` (the Django integration sets it to `transaction.on_commit`). Returns
        nothing: the task does not exist until the commit.

        Raises:
            ConfigurationError: no commit hook is set on the app.
            TypeError: the arguments do not fit the task's signature.
            ArgumentEncodingError: an argument is not JSON.
        """
        from .app import current_app
        from .errors import ArgumentEncodingError
        from .message import find_unencodable

        # Checked now, inside the caller's transaction: at commit time the data is already saved and a
        # bad call could only fail after the fact.
        self.bind_arguments(args, kwargs)
        where = find_unencodable(args, "args") or find_unencodable(kwargs, "kwargs")
        if where is not None:
            raise ArgumentEncodingError(
                f"task {self.name}: {where} cannot be sent as JSON; pass JSON types only "
                "(str, int, float, bool, None, list, dict with str keys)"
            )
        app = current_app()
        hook = app.commit_hook
        if hook is None:
            from .errors import ConfigurationError

            raise ConfigurationError(
                f"{self.name}.delay_on_commit() needs a commit hook: add 'decortask.contrib.django' to "
                "INSTALLED_APPS, or set app.commit_hook to a function that runs a callback after the commit"
            )

        def send() -> None:
            self.apply_async(args=args, kwargs=kwargs, app=app)

        hook(send)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """`delay()` for asyncio code: records and publishes in a thread, never blocking the event loop."""
        return await self.aapply_async(args=args, kwargs=kwargs)

    @_same_parameters_as(apply_async)
    async def aapply_async(self, *args: Any, **kwargs: Any) -> TaskHandle[R]:
        """`apply_async()` for asyncio code, with the same parameters.

        The store write and the publish run in the loop's default executor (`asyncio.to_thread`, which
        copies context variables, so middleware sees the caller's request context); each of its threads
        publishes over its own broker connection, as kombu channels are not thread-safe.
        """
        return await asyncio.to_thread(self.apply_async, *args, **kwargs)


class AsyncTask(Task[P, R]):
    """A task defined with `async def`: calling it directly returns a coroutine; workers await it."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:  # type: ignore[override]
        result: Coroutine[Any, Any, R] = super().__call__(*args, **kwargs)  # type: ignore[assignment]
        return result


class TaskDecorator(Protocol):
    """What `@task(...)` with options returns."""

    @overload
    def __call__(
        self, fn: Callable[Concatenate[TaskContext, P], Coroutine[Any, Any, R]]
    ) -> AsyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> AsyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[TaskContext, P], R]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(fn: Callable[Concatenate[TaskContext, P], Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...
@overload
def task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...
@overload
def task(fn: Callable[Concatenate[TaskContext, P], R], /) -> Task[P, R]: ...
@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    retries: int = ...,
    delay: float = ...,
    backoff: float = ...,
    max_delay: float | None = ...,
    jitter: float = ...,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
    dont_retry_on: type[BaseException] | tuple[type[BaseException], ...] = ...,
    persist: bool = ...,
    requeue_on_interrupt: bool = ...,
    must_complete: bool = ...,
    max_deliveries: int | None = ...,
    name: str | None = ...,
    queue: str | None = ...,
    priority: int = ...,
    timeout: float | None = ...,
    expires: float | None = ...,
    schedule: Schedule | None = ...,
) -> TaskDecorator: ...
def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Register a function as a task, bare (`@task`) or with options (`@task(retries=3)`).

    A parameter annotated `TaskContext` receives the running task's context and is not passed by callers.
    """

    def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
        if not callable(func):
            raise TaskDefinitionError(f"@task decorates functions, got {func!r}")
        kind = AsyncTask if inspect.iscoroutinefunction(func) else Task
        made: Task[Any, Any] = kind(func, build_options(func, options))
        if made.options.schedule is not None:
            try:
                made.bind_arguments((), {})
            except TypeError:
                raise TaskDefinitionError(
                    f"@task(schedule=...) on {made.name}: a scheduled task is called with no arguments, but it "
                    "needs some; give them defaults, or declare the schedule in the schedules setting with "
                    "args/kwargs (docs/periodic.md)"
                ) from None
        registry.register(made)
        return made

    if fn is not None:
        return decorate(fn)
    return decorate
