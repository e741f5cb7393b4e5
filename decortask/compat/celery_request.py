"""`Request`: what a running Celery-style task knows of its call (Celery's `self.request`)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    """What a running task knows of its call: Celery's `self.request`.

    Attributes:
        id: the task id; None in a direct call (`task(...)` run here), as in Celery.
        retries: how many times this task has been retried so far (0 on the first attempt).
        args: the positional arguments of this run (after a defaulted parameter, arguments come by keyword).
        kwargs: the keyword arguments of this run.
        task: the registered task name.
        hostname: the worker running it (decortask's worker id, `host:pid:random`), None when called directly.
        delivery_info: `{"routing_key": queue, "queue": queue}`; empty when called directly.
        called_directly: True when the function runs in a plain call, not on a worker.
    """

    id: str | None = None
    retries: int = 0
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    called_directly: bool = True

    @property
    def is_eager(self) -> bool:
        return False


current_request: ContextVar[Request | None] = ContextVar("decortask_celery_request", default=None)


__all__ = ["Request", "current_request"]
