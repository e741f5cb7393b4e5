"""Transactional enqueue: `.delay()` inside the application's own PostgreSQL transaction (issue 16).

    with app.transaction(conn):          # conn: the application's psycopg connection
        conn.execute("INSERT INTO orders ...")
        send_receipt.delay(order_id)

    with django.db.transaction.atomic():  # or Django's connection, inside atomic()
        with app.transaction(django.db.connection):
            Order.objects.create(...)
            send_receipt.delay(order.id)

When the store is the application's own PostgreSQL database, every `.delay()` (and `.apply_async()`,
`.map()`, `.apply_many()`) of `app` inside the block writes its task's record and outbox entry through
`conn`, in the block's transaction. Their messages are kept aside and handed to the background publisher
only after the block committed (with Django: by an `on_commit` hook of the outermost `atomic()`). So a
rollback (an exception out of the block) leaves no record and sends nothing; a commit sends each message
once; and a process killed between the commit and the publish loses nothing, because the committed
outbox entry is published by a worker's relay after `relay_after`.

A block inside a transaction the connection already had open is a savepoint: its commit is the outer
one's, which decortask cannot see, so its messages are left to the relay (published `relay_after` after
the outer commit). `confirm=True` cannot be honoured inside a block (the message may only leave after
the commit) and is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .app import Decortask
    from .outbox import Outgoing, Publisher
    from .store.base import TaskStore


class _Block:
    """One `app.transaction()` block: its app, the store view in the caller's transaction, and the messages
    waiting for the commit."""

    def __init__(self, app: Decortask, store: TaskStore) -> None:
        self.app = app
        self.store = store
        self.outgoing: list[Outgoing] = []

    # What `.delay()` sees as the publisher inside the block: it keeps the messages for after the commit.

    def submit(self, items: Sequence[Outgoing]) -> None:
        self.outgoing.extend(items)

    def confirmed(self, task_ids: Sequence[str]) -> None:  # pragma: no cover - confirm=True is refused
        raise AssertionError("confirm=True inside app.transaction() is refused before publishing")


_block: ContextVar[_Block | None] = ContextVar("decortask_transaction", default=None)


@contextlib.contextmanager
def transaction(app: Decortask, connection: Any) -> Iterator[None]:
    """`app.transaction(connection)`; see the module docstring."""
    store = app.store
    join = getattr(store, "joined", None)
    if join is None:
        raise ConfigurationError(
            f"app.transaction() needs a PostgreSQL store (postgresql://), whose tables the connection can "
            f"write in its own transaction; this app's store is {type(store).__name__}"
        )
    publisher = app.publisher
    if publisher is None:
        raise ConfigurationError(
            "app.transaction() needs a network broker (amqp:// or redis://) whose messages an outbox "
            "relays; the embedded brokers publish as .delay() is called, before any commit"
        )
    if _block.get() is not None:
        raise ConfigurationError("app.transaction() blocks do not nest: enqueue in the outer block")
    django = _django_connection(connection)
    with join(django.connection if django else connection, owner_commits=bool(django)) as joined:
        block = _Block(app, joined.store)
        token = _block.set(block)
        try:
            yield
        finally:
            _block.reset(token)
    if not block.outgoing:
        return
    if django:  # Django commits (or rolls back) the outermost atomic() later: its hook runs at the commit
        django.on_commit(lambda: publisher.submit(block.outgoing))
    elif joined.committed:
        publisher.submit(block.outgoing)


def _django_connection(connection: Any) -> Any:
    """Django's connection wrapper, when `connection` is one (opened, inside `atomic()`); else None."""
    if not (hasattr(connection, "in_atomic_block") and hasattr(connection, "on_commit")):
        return None
    if not connection.in_atomic_block:
        raise ConfigurationError(
            "app.transaction(django.db.connection) must run inside transaction.atomic(): outside it every "
            "Django query commits at once, so there is no transaction to enqueue in"
        )
    connection.ensure_connection()
    if connection.vendor != "postgresql" or not hasattr(connection.connection, "transaction"):
        raise ConfigurationError(
            "app.transaction() with Django needs its PostgreSQL backend on psycopg 3 (psycopg2 is not "
            f"supported); this connection is {connection.vendor}"
        )
    return connection


def enqueue_store(app: Decortask) -> TaskStore:
    """The store `.delay()` of `app` writes to: the open block's view, else the app's store."""
    block = _block.get()
    return block.store if block is not None and block.app is app else app.store


def enqueue_publisher(app: Decortask, confirm: bool) -> Publisher | _Block | None:
    """The publisher `.delay()` of `app` hands its message to: the open block (until its commit), else the
    app's background publisher (None: the embedded brokers publish inline)."""
    block = _block.get()
    if block is None or block.app is not app:
        return app.publisher
    if confirm:
        raise ConfigurationError(
            "confirm=True cannot wait for the broker inside app.transaction(): the message may only be "
            "sent after the commit. Leave confirm off there (the outbox relays what was committed)"
        )
    return block
