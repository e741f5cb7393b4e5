"""Database connections around tasks, the way Django's request cycle handles them around a request."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.db import connections, reset_queries

from ...app import Decortask
from ...context import TaskContext
from ...message import Message
from ...middleware import ExecutionOutcome, Middleware

# Cleanups scheduled after `async def` tasks, referenced until done (the loop keeps only weak references).
_async_cleanups: set[asyncio.Task[None]] = set()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def close_old_connections() -> None:
    """Django's `close_old_connections`, sparing connections inside a transaction.

    Such a connection belongs to code that runs the task in its own thread and transaction: `run_pending()`
    or eager mode in a test (Django's `TestCase` wraps every test in a transaction). Closing it would end
    that transaction; Django's test client spares it around requests the same way.
    """
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


class DatabaseConnectionsMiddleware(Middleware):
    """Before each task: drop connections that broke or outlived `CONN_MAX_AGE`, reset the query log.
    After it: close them the same way, so a worker thread never holds a connection between tasks
    (with the default `CONN_MAX_AGE = 0`) or keeps a broken one.

    `async def` tasks reach the ORM through `sync_to_async` (Django's async ORM methods such as `acount()`
    use it too), which runs in one thread shared by the event loop's tasks. After such a task the same
    check runs in that thread, as Django's ASGI handler does after a request; it is scheduled on the loop,
    not awaited, since a hook must not block the loop.
    """

    def before_execute(self, app: Decortask, message: Message, ctx: TaskContext) -> None:
        if _running_loop() is not None:
            # Django forbids these calls in an event loop; the connection the task will use lives in the
            # sync_to_async thread and was checked after the previous async task.
            return
        reset_queries()
        close_old_connections()

    def after_execute(
        self, app: Decortask, message: Message, ctx: TaskContext, outcome: ExecutionOutcome
    ) -> None:
        loop = _running_loop()
        if loop is None:
            close_old_connections()
            return
        cleanup = loop.create_task(sync_to_async(close_old_connections)())
        _async_cleanups.add(cleanup)
        cleanup.add_done_callback(_async_cleanups.discard)
