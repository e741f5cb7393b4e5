"""`liveness.LivenessProbe` on RabbitMQ: an exclusive queue per worker, on a connection it keeps open.

A worker declares `decortask.alive.<id>` exclusive on its own connection: RabbitMQ deletes it the moment
that connection closes, which a SIGKILL does at once (the kernel closes the socket). A passive declare
from another connection then answers 404 NOT_FOUND, where it answered 405 RESOURCE_LOCKED while the
worker lived. Beside it the worker declares `decortask.held.<id>`, not exclusive, which outlives the
worker (it expires a day after, `x-expires`) and says the id was held at all: NOT_FOUND for both is an id
never held (a worker of an older decortask), so UNKNOWN, never DEAD. Both are transient: a RabbitMQ
restart removes the markers with every connection, so nobody reads the restart as deaths.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import kombu
from amqp import exceptions as amqp_errors

from ..liveness import Verdict

if TYPE_CHECKING:
    from .session import Broker

#: A held marker expires this long after its worker last declared it (a worker re-declares it when its
#: connection comes back).
HELD_EXPIRES_MS = 24 * 3600 * 1000


def _names(worker_id: str) -> tuple[str, str]:
    name = worker_id if len(worker_id) <= 200 else hashlib.sha256(worker_id.encode()).hexdigest()
    return f"decortask.alive.{name}", f"decortask.held.{name}"


class AmqpProbe:
    """Holds identities on one connection; looks on another (each guarded by its own lock)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._held: set[str] = set()
        self._holder: kombu.Connection | None = None
        self._looker: kombu.Connection | None = None
        self._hold_lock = threading.Lock()
        self._look_lock = threading.Lock()

    # -- holding -------------------------------------------------------------------------------------------

    def hold(self, worker_id: str) -> None:
        with self._hold_lock:
            self._held.add(worker_id)
            self._declare(self._holding(), worker_id)

    def _holding(self) -> kombu.Connection:
        if self._holder is None:
            conn = self.broker.connection()
            self.broker.connect(conn, retries=0)
            self._holder = conn
            for worker_id in self._held:
                self._declare(conn, worker_id)
        return self._holder

    def _declare(self, conn: kombu.Connection, worker_id: str) -> None:
        alive, held = _names(worker_id)
        channel = conn.default_channel
        # The exclusive queue first: a marker without it would read as a death.
        channel.queue_declare(queue=alive, durable=False, exclusive=True, auto_delete=True)
        channel.queue_declare(
            queue=held, durable=False, auto_delete=False, arguments={"x-expires": HELD_EXPIRES_MS}
        )

    def keep(self) -> None:
        with self._hold_lock:
            if not self._held:
                return
            try:
                conn = self._holding()
                # A passive declare of an own queue: one round trip that fails if the connection is gone.
                conn.default_channel.queue_declare(queue=_names(next(iter(self._held)))[0], passive=True)
            except Exception:
                self._drop_holder()
                self._holding()  # raises if the broker is still away: the next keep tries again

    def release(self, worker_id: str) -> None:
        with self._hold_lock:
            self._held.discard(worker_id)
            if self._holder is None:
                return
            alive, held = _names(worker_id)
            channel = self._holder.default_channel
            channel.queue_delete(queue=held)  # the marker first: an id without it is never read as dead
            channel.queue_delete(queue=alive)

    def _drop_holder(self) -> None:
        conn, self._holder = self._holder, None
        if conn is not None:
            self.broker.abort(conn)

    # -- looking -------------------------------------------------------------------------------------------

    def look(self, worker_ids: Iterable[str]) -> dict[str, Verdict]:
        with self._look_lock:
            verdicts: dict[str, Verdict] = {}
            try:
                for worker_id in worker_ids:
                    verdicts[worker_id] = self._look_one(worker_id)
            except Exception:
                # The broker is away (or the connection broke): what was not answered stays UNKNOWN.
                conn, self._looker = self._looker, None
                if conn is not None:
                    self.broker.abort(conn)
            return verdicts

    def _look_one(self, worker_id: str) -> Verdict:
        alive, held = _names(worker_id)
        if self._exists(alive):
            return Verdict.ALIVE  # declared passively from here: only if it is not exclusive to another
        return Verdict.DEAD if self._exists(held) else Verdict.UNKNOWN

    def _exists(self, queue: str) -> bool:
        """Whether `queue` exists (a queue exclusive to another connection exists: RESOURCE_LOCKED)."""
        if self._looker is None:
            conn = self.broker.connection()
            self.broker.connect(conn, retries=0)
            self._looker = conn
        channel: Any = self._looker.channel()
        try:
            channel.queue_declare(queue=queue, passive=True)
        except amqp_errors.NotFound:
            return False  # the broker closed the channel with the error
        except amqp_errors.ResourceLocked:
            return True
        channel.close()
        return True

    def close(self) -> None:
        with self._hold_lock:
            self._drop_holder()
        with self._look_lock:
            conn, self._looker = self._looker, None
            if conn is not None:
                self.broker.abort(conn)
