"""Outcome notices over Redis pub/sub: the transition script PUBLISHes a task id when it writes a terminal status.

The channel is `NAMESPACE:outcomes` (one per store namespace). A process holds one subscriber connection per
server and namespace, opened by its first wait and closed by its listener thread after `LINGER` seconds
without waiters, so a process that waited once does not receive every outcome forever. A wait is race-free:
the caller registers, the subscription is confirmed (`ready`), then the record is read, then the caller
blocks. A lost connection wakes every waiter to read its record again, as does each resubscription.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import RedisError

from .base import TaskRecord
from .outcome_waiters import OutcomeNotices

#: Seconds a listener keeps its subscription with nobody waiting, before it unsubscribes and exits.
LINGER = 30.0
#: Longest a wait's `ready` blocks for the subscription; past it the waiter relies on its rechecks.
SUBSCRIBE_TIMEOUT = 5.0
_RETRY_FIRST, _RETRY_MAX = 0.1, 2.0

logger = logging.getLogger(__name__)


def channel(namespace: str) -> str:
    """The channel the transition script publishes a task's id on when it ends."""
    return f"{namespace}:outcomes"


def prelude(namespace: str) -> str:
    """The Lua put before the transition script: the channel it publishes ended tasks' ids on."""
    # Every byte as a decimal escape: no namespace can break out of the literal.
    literal = "".join(f"\\{byte}" for byte in channel(namespace).encode())
    return f'local OUTCOME_CHANNEL = "{literal}"\n'


class OutcomeListener:
    """One subscriber connection and its thread, for one Redis server and store namespace in one process."""

    def __init__(self, client_url: str, namespace: str) -> None:
        self.client_url = client_url
        self.channel = channel(namespace)
        self.notices = OutcomeNotices()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()

    def ready(self, left: float | None) -> None:
        """Start the listener if it is not running, and wait until its subscription holds.

        Waits at most `left` seconds (the caller's) and `SUBSCRIBE_TIMEOUT`; past that the caller's wait
        goes on reading its record every `recheck` seconds.
        """
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._subscribed.clear()
                self._thread = threading.Thread(
                    target=self._listen, name=f"decortask-outcomes-{self.channel}", daemon=True
                )
                self._thread.start()
        self._subscribed.wait(SUBSCRIBE_TIMEOUT if left is None else min(left, SUBSCRIBE_TIMEOUT))

    def _listen(self) -> None:
        pause = _RETRY_FIRST
        client: Any = redis.Redis.from_url(self.client_url, decode_responses=True, socket_connect_timeout=5)
        try:
            while True:
                try:
                    if self._serve(client):
                        return
                    pause = _RETRY_FIRST
                except RedisError as exc:
                    logger.debug("outcome subscription on %s lost (%s); resubscribing", self.channel, exc)
                    self._subscribed.clear()
                    self.notices.notify_all()  # notices may be lost until the next subscription
                    time.sleep(pause)
                    pause = min(pause * 2, _RETRY_MAX)
        finally:
            client.close()

    def _serve(self, client: Any) -> bool:
        """Subscribe and hand notices to waiters; True once it may exit (nobody waited for `LINGER` s)."""
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            next_look = time.monotonic() + 1.0
            while True:
                message = pubsub.get_message(timeout=1.0)
                if time.monotonic() >= next_look:  # also while other processes' outcomes keep arriving
                    if self._may_exit():
                        return True
                    next_look = time.monotonic() + 1.0
                if message is None:
                    continue
                if message["type"] == "message":
                    self.notices.notify(message["data"])
                elif message["type"] == "subscribe":
                    self._subscribed.set()
                    self.notices.notify_all()  # outcomes written while unsubscribed: waiters read again
        finally:
            pubsub.close()

    def _may_exit(self) -> bool:
        with self._lock:
            if self.notices.idle_for() < LINGER:
                return False
            self._thread = None  # the next `ready` starts another listener
            self._subscribed.clear()
            return True


class OutcomeWaits:
    """`RedisStore.wait_for_outcome` and `await_outcome`, woken by this module's listener."""

    _client_url: str
    namespace: str
    get: Callable[[str], TaskRecord | None]

    @property
    def outcome_notices(self) -> OutcomeNotices:
        """This process's waiters for the store's namespace (shared by its stores on the same server)."""
        return listener(self._client_url, self.namespace).notices

    def wait_for_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        found = listener(self._client_url, self.namespace)
        return found.notices.wait(task_id, timeout, self.get, found.ready)

    async def await_outcome(self, task_id: str, timeout: float | None = None) -> TaskRecord | None:
        found = listener(self._client_url, self.namespace)
        return await found.notices.await_outcome(task_id, timeout, self.get, found.ready)


_listeners: dict[tuple[int, str, str], OutcomeListener] = {}
_listeners_lock = threading.Lock()


def listener(client_url: str, namespace: str) -> OutcomeListener:
    """This process's listener for `namespace` on the server at `client_url` (made on first use)."""
    key = (os.getpid(), client_url, namespace)  # after a fork, the child makes its own
    with _listeners_lock:
        found = _listeners.get(key)
        if found is None:
            found = _listeners[key] = OutcomeListener(client_url, namespace)
        return found
