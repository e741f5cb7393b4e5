"""Celery's request-style errbacks, `def on_error(request, exc, traceback)`, behind `link_error=`.

decortask sends a `link_error` signature with the failed task's id as its first argument: Celery's older
errback form, `def on_error(uuid)`. Celery calls an errback whose function takes more than one positional
argument (and is not `bind=True`) with the failed task's request, exception and traceback instead. Such a
signature is sent as a call of `ERRBACK_TASK`, which reads the failed task's record and calls the function
with them. The function is looked up among the Celery-style tasks this process defined, by registered name:
nothing named in a message is ever imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..canvas import Signature
from ..errors import UnknownTaskError
from ..task import task as native_task
from .celery_request import Request
from .celery_result import AsyncResult

#: The decortask task that calls a request-style errback.
ERRBACK_TASK = "decortask.compat.celery.errback"

#: Request-style errbacks by registered name: (function, the task's own queue).
_ERRBACKS: dict[str, tuple[Callable[..., Any], str | None]] = {}


def takes_request(fn: Callable[..., Any], bind: bool) -> bool:
    """Celery's rule for an errback: one taking more than one positional argument gets (request, exc,
    traceback); a `bind=True` task, or one taking a single argument, gets the failed task's id."""
    if bind:
        return False
    parameters = inspect.signature(fn).parameters.values()
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > 1 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def remember_errback(name: str, fn: Callable[..., Any], bind: bool, queue: str | None) -> None:
    """Note the Celery-style task `name` as a request-style errback if Celery would call it as one."""
    if takes_request(fn, bind):
        _ERRBACKS[name] = (fn, queue)
    else:
        _ERRBACKS.pop(name, None)


def errback_signatures(sigs: tuple[Signature[Any], ...] | None) -> tuple[Signature[Any], ...] | None:
    """`link_error=` signatures with each request-style errback's sent through `ERRBACK_TASK`, on the
    errback's queue (its signature's, else its task's); an `.si()` errback is sent as it is."""
    if not sigs:
        return sigs
    return tuple(
        _through_errback_task(sig) if sig.name in _ERRBACKS and not sig.immutable else sig for sig in sigs
    )


def _through_errback_task(sig: Signature[Any]) -> Signature[Any]:
    queue = sig.options.get("queue") or _ERRBACKS[sig.name][1]
    options = {**sig.options, "queue": queue} if queue else dict(sig.options)
    return Signature(ERRBACK_TASK, (sig.name, list(sig.args), dict(sig.kwargs)), options=options)


@native_task(name=ERRBACK_TASK)
def call_errback(failed_id: str, errback: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call the request-style errback `errback` with the failed task's request, its error (the
    `TaskFailed` or `TaskCancelled` that `AsyncResult(failed_id).result` is) and its traceback as text."""
    found = _ERRBACKS.get(errback)
    if found is None:
        raise UnknownTaskError(
            f"errback {errback!r} is not a Celery-style task of this worker taking (request, exc, traceback): "
            "start the worker with -A naming the module that defines it"
        )
    result = AsyncResult(failed_id)
    record = result.handle.record()
    request = Request(
        id=failed_id,
        retries=max(0, record.attempt - 1),
        args=tuple(record.args),
        kwargs=dict(record.kwargs),
        task=record.name,
        hostname=record.owner,
        delivery_info={"routing_key": record.queue, "queue": record.queue},
        called_directly=False,
    )
    return found[0](request, result.result, result.traceback, *args, **kwargs)


__all__ = ["ERRBACK_TASK", "errback_signatures", "remember_errback", "takes_request"]
