"""An embedded kombu transport over stdlib sqlite3: leases, delete on ack, safe across processes on one host.

A fetch leases the next visible rows (`leased_until`, `owner`) in one `UPDATE ... RETURNING`; ack deletes
a row, reject/requeue or a normal close clears its lease, and a killed consumer's leases simply run out. A
live consumer renews its leases from its polling path, so a long task is never handed to a second consumer.

Fewer write transactions on a file the state store shares: a consuming channel leases as many rows as its
prefetch window has room for in one statement, hands them out one per kombu `_get`, and defers the deletes
of acked rows to its next poll, where they commit in the same transaction as the next lease. An ack is only
ever deferred, never advanced: the row stays leased by this consumer until the delete commits, and if the
process dies first the lease runs out and the message is redelivered (the worker's receipt rules then see
its finished record). An idle consumer probes for visible rows with a read before it takes the write lock.

Durability: WAL with `synchronous=NORMAL`. A committed publish or ack is in the WAL (the OS page cache)
before the statement returns, so it survives the crash of any process; only an OS crash or power loss can roll
back the last transactions: a publish that returned may then be lost, and a lease or a deferred ack undone
(the message is delivered again, never lost). `FULL` would fsync every commit (milliseconds each) for
power-loss durability: opt in through the `synchronous` transport option.

The channel overrides kombu's virtual-transport hooks (`_get`, `_put`, `QoS.restore_unacked`, ...); those it
relies on are checked in tests/test_kombu_contract.py, which names any that a kombu release changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu.transport import virtual
from kombu.utils import json as kombu_json

from .. import sqlitelocks
from ..sqlitewatch import CommitWatch
from .sqlite_owners import ConsumerLock, sweep

# kombu ships py.typed but leaves most functions unannotated; typing its bases and helpers as Any keeps strict
# mypy quiet about every super() call without an ignore on each.
_VirtualQoS: Any = virtual.QoS
_VirtualChannel: Any = virtual.Channel
_VirtualTransport: Any = virtual.Transport
# kombu's json, not the stdlib's: datetimes, UUIDs, ... in headers round-trip as on other transports.
_dumps: Callable[[Any], str] = kombu_json.dumps
_loads: Callable[[str], Any] = kombu_json.loads

SCHEMA = """
CREATE TABLE IF NOT EXISTS decortask_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    leased_until REAL NOT NULL DEFAULT 0,
    owner TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decortask_messages_next ON decortask_messages (queue, priority DESC, id);
CREATE TABLE IF NOT EXISTS decortask_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
"""
# AUTOINCREMENT: a rowid is never reused, so a stale ack can never hit a newer message that took its id.

_PUT = "INSERT INTO decortask_messages (queue, priority, payload) VALUES (?, ?, ?)"
_NEXT = (
    "SELECT id FROM decortask_messages WHERE queue = ? AND leased_until <= ?"
    " ORDER BY priority DESC, id LIMIT 1"
)
# One statement: the write lock is taken before the subquery runs, so two consumers never lease the same row.
_LEASE = (
    "UPDATE decortask_messages SET leased_until = ?, owner = ?, deliveries = deliveries + 1"
    f" WHERE id = ({_NEXT}) RETURNING id, payload, deliveries"
)
# Up to `LIMIT` rows at once; RETURNING gives no order, so the caller sorts them by (priority DESC, id).
_LEASE_MANY = (
    "UPDATE decortask_messages SET leased_until = ?, owner = ?, deliveries = deliveries + 1"
    " WHERE id IN (SELECT id FROM decortask_messages WHERE queue = ? AND leased_until <= ?"
    " ORDER BY priority DESC, id LIMIT ?) RETURNING id, priority, payload, deliveries"
)
_VISIBLE = "SELECT EXISTS (SELECT 1 FROM decortask_messages WHERE queue = ? AND leased_until <= ?)"
_ACK_MANY = "DELETE FROM decortask_messages WHERE owner = ? AND id IN "
_TAKE = f"DELETE FROM decortask_messages WHERE id = ({_NEXT}) RETURNING id, payload, deliveries + 1"
_ACK = "DELETE FROM decortask_messages WHERE id = ? AND owner = ?"
_RELEASE = "UPDATE decortask_messages SET leased_until = 0, owner = NULL WHERE id = ? AND owner = ?"
_RENEW_MANY = "UPDATE decortask_messages SET leased_until = ? WHERE owner = ? AND id IN "
_RELEASE_MANY = "UPDATE decortask_messages SET leased_until = 0, owner = NULL WHERE owner = ? AND id IN "
_RELEASE_OWNER = "UPDATE decortask_messages SET leased_until = 0, owner = NULL WHERE owner = ?"
_SIZE = "SELECT count(*) FROM decortask_messages WHERE queue = ? AND leased_until <= ?"
_PURGE = "DELETE FROM decortask_messages WHERE queue = ? AND leased_until <= ?"
_HAS_QUEUE = (
    "SELECT EXISTS (SELECT 1 FROM decortask_queues WHERE name = ?)"
    " OR EXISTS (SELECT 1 FROM decortask_messages WHERE queue = ?)"
)
_CHUNK = 500  # ids per IN (...) list, far below SQLite's bound-parameter limit
#: Deferred acks a consuming channel holds before it deletes them without waiting for its next poll.
MAX_DEFERRED_ACKS = 256

logger = logging.getLogger(__name__)


def _delivered(payload: str, deliveries: int) -> dict[str, Any]:
    # kombu's loads builds a decoder per call to revive {"__type__": ..., "__value__": ...} envelopes; a
    # payload without that key (its dumps never escapes an ASCII name) parses the same with the stdlib's.
    message: dict[str, Any] = _loads(payload) if '"__type__"' in payload else json.loads(payload)
    # kombu's virtual transports never set these; the worker's poison-message cap reads delivery_count.
    info = message["properties"].setdefault("delivery_info", {})
    info["redelivered"] = deliveries > 1
    info["delivery_count"] = deliveries
    return message


def connect(path: str, busy_timeout: float = 30.0, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open `path` in autocommit mode with WAL and the transport's schema."""
    if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
    # isolation_level=None: every statement is its own transaction, so no read snapshot is ever held open
    # and a lock conflict can be retried statement by statement (a deferred transaction could fail with
    # BUSY_SNAPSHOT); sqlitelocks waits for the lock in finer steps than SQLite's own busy handler.
    db = sqlitelocks.connect(path, busy_timeout)
    try:
        db.execute(sqlitelocks.AUTO_VACUUM)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.executescript(SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


class QoS(_VirtualQoS):  # type: ignore[misc]
    """Unacked bookkeeping in the database: ack deletes the row, reject and restore clear its lease."""

    channel: Channel

    def ack(self, delivery_tag: str) -> None:
        self.channel._settle(delivery_tag, requeue=False)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        # Clearing the lease keeps the row's id and priority: the message is visible again at its old place.
        self.channel._settle(delivery_tag, requeue=requeue)
        super().ack(delivery_tag)

    def restore_unacked(self) -> list[tuple[BaseException, Any]]:
        self._flush()
        self.channel._release_all()
        self._delivered.clear()
        # Never any errors: a lease that could not be cleared still runs out, so there is no dump to make.
        return []


class Channel(_VirtualChannel):  # type: ignore[misc]
    """A channel with its own SQLite connection; used by one thread (`renew_leases` may come from any)."""

    QoS = QoS
    from_transport_options = (
        *_VirtualChannel.from_transport_options,
        "path",
        "lease_seconds",
        "busy_timeout",
        "synchronous",
    )
    path: str | None = None
    lease_seconds: float = 30.0
    busy_timeout: float = 30.0
    synchronous: str = "NORMAL"

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        if not self.path:
            raise ValueError("the SQLite transport needs transport_options={'path': '/path/to/file.db'}")
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, not {self.lease_seconds!r}")
        self._owner = uuid.uuid4().hex
        self._leases: dict[str, int] = {}  # delivery tag -> row id, for every message this channel holds
        self._buffered: dict[str, deque[dict[str, Any]]] = {}  # leased in a batch, not yet handed to kombu
        self._acked: list[int] = []  # acked row ids whose delete waits for the next poll (still leased)
        self._idle: set[str] = set()  # queues whose last lease found nothing: probe with a read first
        self._no_ack_queues: set[str] = set()
        self._declared: set[str] = set()
        # Only renew_leases() may come from another thread; uncontended, this costs ~0.1 us per statement.
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = connect(self.path, self.busy_timeout, self.synchronous)
        self._renew_at = time.monotonic() + self.lease_seconds / 3
        # A lock file held while this channel may hold leases: a dead channel's leases end at once.
        self._alive = ConsumerLock(self.path, self._owner)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the SQLite channel is closed")
        return self._db

    # -- messages ------------------------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        row = (queue, self._get_message_priority(message), _dumps(message))
        with self._lock:
            self._conn().execute(_PUT, row)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        if queue in self._no_ack_queues:
            return self._fetch(queue, take=True)
        buffered = self._buffered.get(queue)
        if buffered:
            return buffered.popleft()
        return self._lease_batch(queue)

    def _fetch(self, queue: str, take: bool) -> dict[str, Any]:
        """One row, leased or (`take`) deleted at once: `basic_get` and no-ack consumers."""
        now = time.time()
        with self._lock:
            if take:
                rows = self._conn().execute(_TAKE, (queue, now)).fetchall()
            else:
                self._alive.hold()
                lease = (now + self.lease_seconds, self._owner, queue, now)
                rows = self._conn().execute(_LEASE, lease).fetchall()
            if not rows:
                raise Empty()
            rowid, payload, deliveries = rows[0]
            message = _delivered(payload, deliveries)
            if not take:
                self._leases[message["properties"]["delivery_tag"]] = rowid
        return message

    def _lease_room(self) -> int:
        """How many rows one lease may take: the prefetch window's free room, less what is buffered."""
        if not self.qos.prefetch_count:
            return 1  # no window: one row at a time, so one consumer never hoards a queue
        buffered = sum(len(messages) for messages in self._buffered.values())
        room: int = self.qos.can_consume_max_estimate() - buffered
        return room

    def _lease_batch(self, queue: str) -> dict[str, Any]:
        """Lease up to the prefetch window's room of rows in one transaction, together with deferred acks."""
        limit = self._lease_room()
        if limit <= 0:
            raise Empty()  # the window is full of rows buffered for other queues
        self._alive.hold()
        now = time.time()
        with self._lock:
            db = self._conn()
            if (
                not self._acked
                and queue in self._idle
                and not db.execute(_VISIBLE, (queue, now)).fetchone()[0]
            ):
                raise Empty()  # a read: an idle consumer never takes the write lock just to find nothing
            lease = (now + self.lease_seconds, self._owner, queue, now, limit)
            if self._acked:
                db.execute("BEGIN IMMEDIATE")
                try:
                    self._update_many(_ACK_MANY, (self._owner,), self._acked)
                    rows = db.execute(_LEASE_MANY, lease).fetchall()
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
                self._acked = []
            else:
                rows = db.execute(_LEASE_MANY, lease).fetchall()
            if not rows:
                self._idle.add(queue)
                raise Empty()
            self._idle.discard(queue)
            rows.sort(key=lambda row: (-row[1], row[0]))
            messages: deque[dict[str, Any]] = deque()
            for rowid, _priority, payload, deliveries in rows:
                message = _delivered(payload, deliveries)
                self._leases[message["properties"]["delivery_tag"]] = rowid
                messages.append(message)
        first = messages.popleft()
        if messages:
            self._buffered.setdefault(queue, deque()).extend(messages)
        return first

    def _flush_acks(self) -> None:
        """Delete the rows of deferred acks now (they stay leased by this channel until this commits)."""
        with self._lock:
            if self._acked and self._db is not None:
                self._update_many(_ACK_MANY, (self._owner,), self._acked)
                self._acked = []

    def flush_acks(self) -> None:
        """Commit the deferred acks now (the worker calls it while shutting down, when no poll follows)."""
        self._flush_acks()

    def _settle(self, delivery_tag: str, requeue: bool, siblings: bool = True) -> None:
        with self._lock:
            rowid = self._leases.pop(delivery_tag, None)
            if rowid is not None and self._db is not None:
                if not requeue and self._consumers and len(self._acked) < MAX_DEFERRED_ACKS:
                    # A consuming channel polls again within milliseconds: the delete goes with that lease.
                    self._acked.append(rowid)
                else:
                    # owner = ? : if our lease had run out and another consumer took the row, it is theirs.
                    self._db.execute(_RELEASE if requeue else _ACK, (rowid, self._owner))
        if rowid is None and siblings and self.connection is not None:
            # kombu rejects a message that found no callback through the connection's first channel, which
            # need not be the channel holding its lease.
            for sibling in self.connection.channels:
                if sibling is not self and delivery_tag in sibling._leases:
                    sibling._settle(delivery_tag, requeue, siblings=False)

    def _update_many(self, sql: str, params: tuple[Any, ...], ids: list[int]) -> int:
        count = 0
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            count += self._conn().execute(f"{sql}({marks})", (*params, *chunk)).rowcount
        return count

    def renew_leases(self) -> int:
        """Extend the lease of every message this channel holds unacked; return how many are still ours.

        Called from `drain_events` every `lease_seconds / 3`; call it yourself when the consuming thread may
        stay away from `drain_events` longer than that.
        """
        with self._lock:
            self._renew_at = time.monotonic() + self.lease_seconds / 3
            ids = [*self._leases.values(), *self._acked]
            if not ids or self._db is None:
                return 0
            return self._update_many(_RENEW_MANY, (time.time() + self.lease_seconds, self._owner), ids)

    def _release_all(self) -> None:
        try:
            self._flush_acks()
        except sqlite3.Error as exc:
            # Their records are settled: if the rows come back once the leases run out, they are skipped.
            logger.warning(
                "could not delete %d acked messages (%s); their leases run out", len(self._acked), exc
            )
        with self._lock:
            ids = list(self._leases.values())
            self._leases.clear()
            self._buffered.clear()
            if ids and self._db is not None:
                try:
                    self._update_many(_RELEASE_MANY, (self._owner,), ids)
                except sqlite3.Error as exc:  # e.g. locked past the busy timeout while shutting down
                    logger.warning(
                        "could not give back %d messages at once (%s); their leases run out", len(ids), exc
                    )

    def release_dead_consumers(self) -> None:
        """Make the messages leased by consumers whose process died visible again (`sqlite_owners`)."""

        def release(owner: str) -> None:
            with self._lock:
                count = self._conn().execute(_RELEASE_OWNER, (owner,)).rowcount
            if count:
                logger.warning("gave back %d messages leased by a consumer that died", count)

        sweep(self._alive, release)

    def drain_events(self, timeout: float | None = None, callback: Any = None) -> Any:
        # The transport calls this on every poll, even when prefetch is full, so renewal keeps running.
        if time.monotonic() >= self._renew_at:
            self.renew_leases()
        if self._consumers and self._alive.sweep_due():
            self.release_dead_consumers()
        if self._acked and not (self._consumers and self.qos.can_consume() and not self._has_buffered()):
            self._flush_acks()  # this poll leases nothing, so the deletes cannot ride along with a lease
        return super().drain_events(timeout=timeout, callback=callback)

    def _has_buffered(self) -> bool:
        return any(self._buffered.values())

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        self._no_ack_queues.discard(queue)
        result = super().basic_cancel(consumer_tag)
        try:
            self._release_buffered(queue)
            if not self._consumers:
                self._flush_acks()  # no poll may follow
        except sqlite3.Error as exc:  # e.g. locked past the busy timeout: the leases run out instead
            logger.warning(
                "could not settle messages of a cancelled consumer (%s); their leases run out", exc
            )
        return result

    def _release_buffered(self, queue: str | None) -> None:
        """Give back the rows leased for `queue` but never handed to kombu."""
        with self._lock:
            messages = self._buffered.pop(queue, None) if queue is not None else None
            if not messages:
                return
            ids = [self._leases.pop(message["properties"]["delivery_tag"]) for message in messages]
            if self._db is not None:
                self._update_many(_RELEASE_MANY, (self._owner,), ids)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        # Without an ack to come, the row is deleted as it is fetched rather than leased.
        try:
            message = self.Message(self._fetch(queue, take=no_ack), channel=self)
        except Empty:
            return None
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    # -- queues --------------------------------------------------------------------------------------------

    def _size(self, queue: str) -> int:
        with self._lock:
            count: int = self._conn().execute(_SIZE, (queue, time.time())).fetchone()[0]
        return count

    def _purge(self, queue: str) -> int:
        with self._lock:
            count: int = self._conn().execute(_PURGE, (queue, time.time())).rowcount
        return count

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        if queue in self._declared:
            return
        with self._lock:
            self._conn().execute("INSERT OR IGNORE INTO decortask_queues (name) VALUES (?)", (queue,))
        self._declared.add(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        with self._lock:
            return bool(self._conn().execute(_HAS_QUEUE, (queue, queue)).fetchone()[0])

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> int:
        with self._lock:
            db = self._conn()
            db.execute("DELETE FROM decortask_queues WHERE name = ?", (queue,))
            count: int = db.execute("DELETE FROM decortask_messages WHERE queue = ?", (queue,)).rowcount
        self._declared.discard(queue)
        return count

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any) -> Any:
        # kombu's virtual version calls _delete once per binding, and default-exchange queues have none.
        if if_empty and self._size(queue):
            return None
        self.state.queue_bindings_delete(queue)
        return self._delete(queue)

    def close(self) -> None:
        super().close()  # cancels consumers and gives unacked messages back through QoS.restore_unacked
        if self.do_restore:
            self._release_all()  # fetched but never handed to the QoS (e.g. no callback for the queue)
        else:
            with contextlib.suppress(sqlite3.Error):  # if not, the leases run out; the records are settled
                self._flush_acks()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._alive.release()


class SQLiteTransport(_VirtualTransport):  # type: ignore[misc]
    """kombu transport storing messages in a SQLite file (`decortask_messages`), one host, many processes.

    Transport options: `path` (required), `lease_seconds` (30.0), `polling_interval` (0.05 s: the longest
    an idle poll waits before it looks again anyway), `busy_timeout` (30.0 s), `synchronous` ("NORMAL", or
    "FULL" for power-loss durability).

    An idle consumer does not sleep through its polling interval: it waits for a commit to the file
    (`sqlitewatch.CommitWatch`: woken by the kernel at the first write to the `-wal` on Linux, else looking
    at `PRAGMA data_version` every millisecond) and polls again as soon as another connection committed, so
    a message published while it idles is taken within about a millisecond, at no cost while nothing is.
    The polling interval still bounds each wait: leases that run out commit nothing.
    """

    Channel = Channel
    polling_interval = 0.05
    driver_type = "sqlite"
    driver_name = "sqlite3"
    # "database is locked" past the busy timeout and disk I/O errors are worth a reconnect and retry.
    connection_errors = (*_VirtualTransport.connection_errors, sqlite3.OperationalError)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self._watch: sqlite3.Connection | None = None  # the consuming thread's; only data_version is read
        self._commits: CommitWatch | None = None
        #: Idle waits begun, ended by a commit, and run to their whole span (tests check the mechanism).
        self.waits_started = 0
        self.woken_by_commit = 0
        self.waits_timed_out = 0

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """kombu's virtual `drain_events`, with `_wait_for_commit` where it sleeps `polling_interval`."""
        start = time.monotonic()
        while True:
            # Read before the poll: a commit between an empty poll and the wait still ends the wait. A
            # zero timeout (the worker taking what is buffered) never waits.
            version = self._data_version() if timeout != 0 else None
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                elapsed = time.monotonic() - start
                if timeout is not None and elapsed >= timeout:
                    raise TimeoutError() from None
                span = (
                    self.polling_interval
                    if timeout is None
                    else min(self.polling_interval, timeout - elapsed)
                )
                self._wait_for_commit(version, span)

    def _data_version(self) -> int | None:
        """The file's `PRAGMA data_version` as this transport's watch connection sees it; None if unreadable."""
        try:
            if self._watch is None:
                self._watch = sqlite3.connect(
                    self.client.transport_options["path"], isolation_level=None, check_same_thread=False
                )
            version: int = self._watch.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self._close_watch()  # opened again on the next look
            return None
        return version

    def _wait_for_commit(self, version: int | None, span: float) -> None:
        """Return once another connection commits to the file after `version` was read, or after `span` s."""
        self.waits_started += 1
        if version is None:  # the file is unreadable now: wait as kombu does
            time.sleep(span)
            woken = False
        else:
            if self._commits is None:
                self._commits = CommitWatch(self.client.transport_options["path"])
            woken = self._commits.wait(lambda: self._data_version() != version, span)
        if woken:
            self.woken_by_commit += 1
        else:
            self.waits_timed_out += 1

    def _close_watch(self) -> None:
        if self._commits is not None:
            self._commits.close()
            self._commits = None
        if self._watch is not None:
            with contextlib.suppress(sqlite3.Error):
                self._watch.close()
            self._watch = None

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)
        self._close_watch()
