"""Decortask: settings plus the lazily opened transport and store; and the current (default) app.

The bottom of the package's layers: everything else takes an app, and app.py imports none of it. It holds
the settings, the registry, the transport (`transport.py`), the store (`store/`) and the middleware list;
sending is the task's job (`Task.enqueue` through `producer.py`), so `send_task` only hands the call to the
task it is given. `handle()` builds the documented `TaskHandle` (`handle.py`, which needs only the store).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .call_options import NO_OPTIONS, CallOptions
from .config import Settings
from .registry import Registry, registry
from .security import MessageCipher, mask_url
from .store import TaskStore, open_store

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .handle import TaskHandle
    from .middleware import Middleware
    from .outbox import Publisher
    from .transport import BrokerTransport

Sent_co = TypeVar("Sent_co", covariant=True)


class Enqueueable(Protocol[Sent_co]):
    """What `Decortask.send_task` sends: a task (`decortask.task.Task`), which knows how to enqueue itself."""

    def enqueue(
        self, app: Decortask, args: tuple[Any, ...], kwargs: dict[str, Any], options: CallOptions
    ) -> Sent_co: ...


_default_lock = threading.Lock()
_default_app: Decortask | None = None


class Decortask:
    """A configured decortask: broker, store and settings. Connections open on first use, never at import.

    Args:
        broker_url: overrides `DECORTASK_BROKER_URL` (default `sqlite:///decortask.db`).
        store_url: overrides `DECORTASK_STORE_URL` (default: the same SQLite file).
        set_default: make this the app `.delay()` uses when none is given (the newest one wins).
        middleware: `Middleware` instances, in order (see `add_middleware` and docs/middleware.md).
        **settings: any other `Settings` field, e.g. `default_queue="billing"`.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        store_url: str | None = None,
        *,
        set_default: bool = True,
        middleware: Iterable[Middleware] = (),
        **settings: Any,
    ) -> None:
        self.settings = Settings.load({"broker_url": broker_url, "store_url": store_url, **settings})
        self.registry: Registry = registry
        self._lock = threading.RLock()
        self._transport: BrokerTransport | None = None
        self._store: TaskStore | None = None
        self._cipher: MessageCipher | None = None
        self._publisher: Publisher | None = None
        self._publisher_checked = False
        #: Registered middleware in order: "before" hooks run in this order, "after" hooks in reverse.
        self.middleware: list[Middleware] = []
        #: Runs a callback once the current database transaction commits (`Task.delay_on_commit`); the
        #: Django integration sets it to `django.db.transaction.on_commit`.
        self.commit_hook: Callable[[Callable[[], None]], None] | None = None
        #: Set by `decortask.testing.eager()`: runs each task sent through this app before the send returns.
        self.eager_runner: Callable[[TaskHandle[Any]], None] | None = None
        for mw in middleware:
            self.add_middleware(mw)
        if set_default:
            self.set_default()

    def __repr__(self) -> str:
        return f"<Decortask broker={self.broker_url_masked} store={self.store_url_masked}>"

    @property
    def broker_url_masked(self) -> str:
        return mask_url(self.settings.broker_url)

    @property
    def store_url_masked(self) -> str:
        return mask_url(self.settings.store_url)

    def set_default(self) -> Decortask:
        """Make this the current app for `.delay()`, handles and the worker."""
        global _default_app
        with _default_lock:
            _default_app = self
        return self

    def reconfigured(self, **settings: Any) -> Decortask:
        """A new app with these settings changed and everything else kept: middleware and `commit_hook` too.

        What `decortask worker --broker-url/--store-url` needs: an app like the `-A` one on other servers.
        Not made the default app; call `set_default()` on it for that.
        """
        merged = {**dataclasses.asdict(self.settings), **settings}
        app = Decortask(set_default=False, middleware=self.middleware, **merged)
        app.commit_hook = self.commit_hook
        return app

    def add_middleware(self, middleware: Middleware) -> Middleware:
        """Register `middleware` after those already registered; returns it.

        Raises:
            ConfigurationError: `middleware` is not a `decortask.Middleware` instance.
        """
        from .middleware import Middleware

        if not isinstance(middleware, Middleware):
            from .errors import ConfigurationError

            raise ConfigurationError(
                f"middleware must be an instance of a decortask.Middleware subclass, got {middleware!r}"
            )
        # A new list, not an append: a worker thread iterating the old one is never disturbed.
        self.middleware = [*self.middleware, middleware]
        return middleware

    @property
    def transport(self) -> BrokerTransport:
        if self._transport is None:
            with self._lock:
                if self._transport is None:
                    from .transport import BrokerTransport

                    transport = BrokerTransport(self.settings.broker_url, self.settings)
                    # What this process handed its publisher is on the broker before it looks at a queue.
                    transport.before_inspect = self._settle_published
                    self._transport = transport
        return self._transport

    @property
    def store(self) -> TaskStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    settings = self.settings
                    feed = settings.events_max if settings.events else 0
                    self._store = open_store(settings.store_url, events=feed)
        return self._store

    @property
    def cipher(self) -> MessageCipher | None:
        """Encrypts and decrypts task arguments; None when `encryption_keys` is empty (encryption off)."""
        if self._cipher is None and self.settings.encryption_keys:
            with self._lock:
                if self._cipher is None:
                    self._cipher = MessageCipher(
                        self.settings.encryption_keys, accept_plaintext=self.settings.accept_plaintext
                    )
        return self._cipher

    @property
    def publisher(self) -> Publisher | None:
        """This process's background publisher of the outbox (`outbox.py`), or None where `.delay()`
        publishes inline (the embedded brokers, or a store without an outbox)."""
        if not self._publisher_checked:
            with self._lock:
                if not self._publisher_checked:
                    from .outbox import Publisher, uses_background_publisher

                    self._publisher = Publisher(self) if uses_background_publisher(self) else None
                    self._publisher_checked = True
        return self._publisher

    def flush_published(self, timeout: float | None = None) -> bool:
        """Wait until every message this process's `.delay()` calls handed over is confirmed by the broker.

        `.delay()` returns once the task's record is durable and publishes in the background (the outbox,
        docs/reliability.md); scripts and tests that need the messages on the broker now call this. Returns
        False if that did not happen within `timeout` (default: `confirm_timeout`); nothing is lost then, the
        relay publishes the rest.
        """
        publisher = self._publisher
        if publisher is None:
            return True
        return publisher.flush(self.settings.confirm_timeout if timeout is None else timeout)

    def transaction(self, connection: Any) -> AbstractContextManager[None]:
        """A block in which `.delay()` writes its task in `connection`'s transaction (a psycopg connection to
        the PostgreSQL store's database); the messages are sent after the block commits, and a rollback
        sends nothing. See `decortask/transactions.py` and docs/deployment.md.
        """
        from .transactions import transaction

        return transaction(self, connection)

    def _settle_published(self) -> None:
        publisher = self._publisher
        if publisher is not None:
            publisher.flush(self.settings.confirm_timeout, unless_failing=True)

    def close(self) -> None:
        """Flush the background publisher (within `confirm_timeout`), close broker connections and the store;
        the app reopens them if used again."""
        publisher = self._publisher
        if publisher is not None:
            publisher.close(self.settings.confirm_timeout)
        with self._lock:
            transport, store = self._transport, self._store
            self._transport = self._store = None
        if transport is not None:
            transport.close()
        if store is not None:
            store.close()

    def handle(self, task_id: str, name: str | None = None) -> TaskHandle[Any]:
        """A handle for an existing task id."""
        from .handle import TaskHandle

        if name is None:
            record = self.store.get(task_id)
            if record is None:
                from .errors import TaskNotFound

                raise TaskNotFound(f"no task {task_id} in the store {self.store_url_masked}")
            name = record.name
        return TaskHandle(self, task_id, name)

    def send_task(
        self,
        task: Enqueueable[Sent_co],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: CallOptions = NO_OPTIONS,
    ) -> Sent_co:
        """Validate, record and publish one call of `task` through this app; returns its handle.

        The same as `task.apply_async(args, kwargs, app=app, ...)` with the options in one `CallOptions`.
        """
        return task.enqueue(self, args, kwargs, options)


def current_app() -> Decortask:
    """The app `.delay()` uses: the newest `Decortask(...)`, else one built from the environment."""
    global _default_app
    app = _default_app
    if app is None:
        with _default_lock:
            if _default_app is None:
                _default_app = Decortask(set_default=False)
            app = _default_app
    return app


def reset_default_app() -> None:
    """Forget the current app (tests use this between cases)."""
    global _default_app
    with _default_lock:
        _default_app = None
