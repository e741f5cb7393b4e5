"""The worker: consumes, hands messages to a pool, and settles outcomes on the consumer thread.

kombu channels are not thread-safe, so acks, requeues, dead letters and scheduler publishes all happen on
the thread that owns the consumer connection; the pool (`pools.Pool`: threads, or process-pool children)
only runs each delivery (`delivery.process_delivery`) and hands back an Outcome. The worker talks to the
pool through that one interface and never asks which pool it has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import capture, clock, recovery, sweeps
from .deadletters import log_dead_letter
from .delivery import process_delivery
from .errors import BrokerUnavailable
from .executor import Executor
from .handoff import OutcomeInbox
from .liveness import Holder, Liveness
from .middleware import call_hooks
from .outcomes import Outcome, Settle
from .periodic import PeriodicScheduler
from .pools import OutcomeFuture, make_pool
from .relay import run_relay
from .scheduler import Scheduler
from .security import mask_text
from .supervision import Supervisor

if TYPE_CHECKING:
    from .app import Decortask
    from .transport import ConsumerSession, Delivery

logger = logging.getLogger("decortask.worker")

BURST_IDLE = 0.3
#: Sees each settled delivery once: (delivery, outcome, started_at, ended_at); times in UNIX seconds, None
#: when unknown (the synchronous test driver). `decortask.contrib.prometheus.WorkerMetrics.settled` is one.
OutcomeObserver = Callable[["Delivery", Outcome, "float | None", "float | None"], None]
#: Longest wait for an outcome while every prefetched message is running or waiting for a pool slot; the
#: loop then polls the broker anyway (control messages, reconnects) and supervises.
FULL_WINDOW_WAIT = 0.005
#: How often a worker with a liveness probe looks for RUNNING records of dead workers (without one: every
#: `lease_timeout / 2`, the heartbeat being all it can go by).
REAP_INTERVAL = 1.0
#: How often a worker deletes records past their TTL (any worker may; the store makes it idempotent).
PURGE_INTERVAL = 60.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerStats:
    """What one worker saw: deliveries taken, dead letters sent, and outcomes by the state they left."""

    received: int = 0
    dead_lettered: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class Worker:
    """Consumes `queues` with `concurrency` pool slots until stopped (or, with `burst`, until idle).

    Args:
        app: the app (settings, broker, store) to work for.
        queues: queues to consume (default: the `default_queue` setting).
        concurrency: pool size.
        pool: `threads` (default) or `processes` (`pools.POOL_KINDS`; see `pools.py`).
        burst: exit once the queues and the schedule are empty.
        worker_id: this worker's id (default: `hostname:pid:random`).
        grace: shutdown grace in seconds (default: the `shutdown_grace` setting).
        app_modules: modules a process-pool child imports to register the tasks (the `-A` modules);
            default: the modules that define the registered tasks.
        periodic: whether this worker takes part in periodic schedules (default: the `periodic` setting;
            `--periodic/--no-periodic`).
    """

    def __init__(
        self,
        app: Decortask,
        queues: Iterable[str] | None = None,
        *,
        concurrency: int = 4,
        pool: str = "threads",
        burst: bool = False,
        worker_id: str | None = None,
        grace: float | None = None,
        app_modules: Sequence[str] = (),
        periodic: bool | None = None,
    ) -> None:
        self.app = app
        self.queues = list(queues or [app.settings.default_queue])
        self.concurrency = concurrency
        self.pool_kind = pool
        self.burst = burst
        self.id = worker_id or new_worker_id()
        # Who is alive: the probe of the broker connection first, heartbeats second (liveness.py).
        self.liveness = Liveness(app, self._is_own, app.transport.liveness_probe())
        self._holder = Holder(self.liveness.probe, self.id)
        self.executor = Executor(app, self.id, owner_alive=self.owner_alive)
        if app.settings.capture_output:  # tasks' print() and logging, stored with them (capture.py)
            capture.enable_for(self.id, app.store)
        # Built now, started by `run()`: a pool the app cannot use (a memory:// store for the process
        # pool's children) is refused before anything is consumed.
        self.pool = make_pool(pool, app, self.executor, self.id, concurrency, app_modules)
        self.scheduler = Scheduler(app, self.id)
        self.periodic = PeriodicScheduler(app, self.id)  # periodic tasks: docs/periodic.md
        if periodic is not None:
            self.periodic.enabled = periodic
        self.supervisor = Supervisor(app, self.pool)
        self.stats = WorkerStats()
        #: Called after each delivery is settled (metrics); one that raises is logged and never stops the loop.
        self.observers: list[OutcomeObserver] = []
        self.grace = app.settings.shutdown_grace if grace is None else grace
        self._stop = threading.Event()
        self._interrupt_now = threading.Event()
        self._backlog: deque[Delivery] = deque()
        # Not a SimpleQueue, whose timed get mishandles signals on CPython 3.10-3.12 (see OutcomeInbox).
        # Each entry carries when its attempt was handed to a slot and when its outcome came back (observers).
        self._outcomes: OutcomeInbox[tuple[Delivery, OutcomeFuture, float, float]] = OutcomeInbox()
        self._in_flight = 0
        self._previous_handlers: dict[int, Any] = {}

    def owner_alive(self, owner: str) -> bool:
        """Whether the worker `owner` is alive (`Liveness.alive`: not known dead, and heartbeating)."""
        return self.liveness.alive(owner)

    def _is_own(self, owner: str) -> bool:
        return owner == self.id or owner in self.pool.owners()

    def _heartbeat_loop(self, done: threading.Event) -> None:
        # Its own thread, so a busy consumer loop or a slow store call never makes a live worker look dead.
        interval = max(0.2, min(5.0, self.app.settings.lease_timeout / 4))
        while not done.is_set():
            # Process-pool children own their attempts under their own ids; they live while they beat.
            owners = [self.id, *self.pool.owners()]
            try:
                for owner in owners:
                    self.app.store.heartbeat(owner, clock.now())
            except Exception as exc:
                logger.warning("heartbeat write failed (%s)", mask_text(str(exc)))
            done.wait(interval)

    # -- one message, shared with the synchronous test driver ----------------------------------------------

    def process(self, delivery: Delivery) -> Outcome:
        """Decode, validate and execute one delivery (any thread); bad input becomes a dead-letter outcome."""
        return process_delivery(self.app, self.executor, delivery)

    def settle(
        self,
        session: ConsumerSession,
        delivery: Delivery,
        outcome: Outcome,
        started_at: float | None = None,
        ended_at: float | None = None,
    ) -> None:
        """Ack, requeue or dead-letter on the consumer thread, after the store was written; then tell the
        observers (metrics), once per delivery: every outcome passes here, dead letters and interruptions too.

        Args:
            started_at: when the delivery was handed to a pool slot (UNIX seconds), for the observers.
            ended_at: when its outcome came back.
        """
        # What the observers are told: the store was written whatever the ack does, but a dead letter
        # whose publish failed was not sent (the redelivery's refusal sends, and reports, it).
        observed = (
            dataclasses.replace(outcome, settle=Settle.ACK)
            if outcome.settle is Settle.DEAD_LETTER
            else outcome
        )
        try:
            if outcome.settle is Settle.DEAD_LETTER:
                self.app.transport.dead_letter(delivery, outcome.reason or "unknown", outcome.detail)
                observed = outcome
                log_dead_letter(delivery, outcome)  # the one line per dead letter
                self.stats.dead_lettered += 1
                session.ack(delivery)
            elif outcome.settle is Settle.REQUEUE:
                session.requeue(delivery)
            else:
                session.ack(delivery)
            if outcome.status is not None:
                key = outcome.status.value
                self.stats.by_status[key] = self.stats.by_status.get(key, 0) + 1
        finally:
            self._observe(delivery, observed, started_at, ended_at)

    def _observe(
        self, delivery: Delivery, outcome: Outcome, started_at: float | None, ended_at: float | None
    ) -> None:
        for observe in self.observers:
            try:
                observe(delivery, outcome, started_at, ended_at)
            except Exception as exc:  # an observer never costs a settlement
                logger.warning("outcome observer failed (%s)", mask_text(str(exc)) or type(exc).__name__)

    # -- the loop ------------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Handle SIGTERM/SIGINT as DESIGN §2 says until `run()` returns; the previous handlers come back then."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        # A worker run inside another program (a Django management command, a test) leaves it as it was.
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self._stop.is_set():
            logger.warning(
                "%s: no longer consuming; running tasks have %.0f s to finish (%s interrupts them now)",
                name,
                self.grace,
                "Ctrl-C again" if signum == signal.SIGINT else "SIGINT (Ctrl-C)",  # SIGTERM never does
            )
            self._stop.set()
        elif signum == signal.SIGINT:
            logger.warning("SIGINT again: interrupting running tasks now")
            self._interrupt_now.set()
        else:
            # Orchestrators resend SIGTERM; only a person's second Ctrl-C cuts the grace period short.
            logger.info("%s again: already shutting down", name)

    def stop(self, interrupt: bool = False) -> None:
        """Stop consuming; running tasks get the grace period, or are interrupted now with `interrupt`."""
        self._stop.set()
        if interrupt:
            self._interrupt_now.set()

    def run(self) -> int:
        """Consume until stopped, then shut down as DESIGN §2 says; returns the process exit code."""
        self.app.store.heartbeat(self.id, clock.now())
        self._holder.start()  # before the first claim: a record owned by an id never held reads UNKNOWN
        beating = threading.Event()
        threading.Thread(
            target=self._heartbeat_loop, args=(beating,), name="decortask-heartbeat", daemon=True
        ).start()
        # The outbox relay (relay.py) lives as long as the heartbeat: both stop when `beating` is set.
        threading.Thread(
            target=run_relay, args=(self.app, self.id, beating), name="decortask-relay", daemon=True
        ).start()
        # So does the purge: a long one (issue 12: seconds for 100,000 records) never stalls the consumer loop.
        threading.Thread(
            target=self._purge_loop, args=(beating,), name="decortask-purge", daemon=True
        ).start()
        try:
            self.pool.start()
            prefetch = self.concurrency * self.app.settings.prefetch_multiplier
            try:
                session = self.app.transport.open_consumer(
                    self.queues, prefetch, on_cancel=self.supervisor.hint_cancel, consumer_id=self.id
                )
            except BaseException:
                self.pool.shutdown(wait=False)
                raise
        except BaseException:
            beating.set()
            self._holder.stop(clean=True)
            raise
        logger.info(
            "worker %s ready: broker %s, store %s, queues %s, %d %s, %d tasks registered, events %s",
            self.id,
            self.app.broker_url_masked,
            self.app.store_url_masked,
            ",".join(self.queues),
            self.concurrency,
            self.pool_kind,
            len(self.app.registry),
            "on" if self.app.settings.events else "off (decortask events shows nothing from this worker)",
        )
        if not self.periodic.enabled:
            logger.info("periodic schedules: off for this worker (--no-periodic or DECORTASK_PERIODIC=0)")
        call_hooks(self.app.middleware, "worker_start", self.app, self)
        clean = False
        try:
            self._consume(session)
            self._shut_down(session)
            clean = True
        finally:
            call_hooks(self.app.middleware, "worker_stop", self.app, self, reverse=True)
            self._hand_over_schedules()  # again, for a run that ended by an error (a no-op otherwise)
            owners = [self.id, *self.pool.owners()]
            self.pool.shutdown()
            session.close()
            beating.set()
            if clean:
                self._say_stopped(owners)
            self._holder.stop(clean)
            self.executor.event_loop.close()
            self._restore_signal_handlers()
            capture.disable_for(self.id)
            logger.info("worker %s stopped: %s", self.id, self._summary())
        return 0

    def _say_stopped(self, owners: list[str]) -> None:
        # So the dashboard shows a clean stop, not a lost worker, once the heartbeats age out.
        try:
            for owner in owners:
                self.app.store.worker_stopped(owner, clock.now())
        except Exception as exc:
            logger.warning("could not record the clean stop (%s)", mask_text(str(exc)))

    def _summary(self) -> str:
        """`12 received, 10 SUCCESS, 2 FAILED, 1 dead-lettered`: what an operator checks after a stop."""
        parts = [f"{self.stats.received} received"]
        parts += [f"{count} {status}" for status, count in sorted(self.stats.by_status.items())]
        if self.stats.dead_lettered:
            parts.append(f"{self.stats.dead_lettered} dead-lettered")
        return ", ".join(parts)

    def _consume(self, session: ConsumerSession) -> None:
        settings = self.app.settings
        prefetch = self.concurrency * settings.prefetch_multiplier
        next_tick = next_reap = 0.0
        idle_since: float | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self._tick_scheduler()
                next_tick = now + settings.scheduler_interval
            if now >= next_reap:
                self._reap()
                lease_paced = max(1.0, settings.lease_timeout / 2)
                next_reap = now + (REAP_INTERVAL if self.liveness.probe else lease_paced)
            self._supervise()
            if self._in_flight + len(self._backlog) >= prefetch:
                # The broker sends nothing more until a message is acked, so wait for an outcome instead:
                # settle it the moment it is ready, then poll without waiting (the ack frees the window).
                self._settle_ready(session, block=True, timeout=FULL_WINDOW_WAIT)
                deliveries = self._drain(session, timeout=0)
            else:
                deliveries = self._drain(session, timeout=0.005 if self._in_flight else 0.05)
            self._backlog.extend(deliveries)
            self._fill()
            self._settle_ready(session)
            if self.burst:
                if deliveries or self._in_flight or self._backlog:
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= BURST_IDLE and self._nothing_left():
                    logger.info("burst: queues and schedule are empty; exiting")
                    return

    def _shut_down(self, session: ConsumerSession) -> None:
        session.cancel()
        self._hand_over_schedules()  # first: another worker leads them while this one drains
        for delivery in self._backlog:  # received but never started: back to the broker, still PENDING
            # If the connection is gone, the broker took the message back with it.
            with contextlib.suppress(*session.connection_errors):
                session.requeue(delivery)
        if self._backlog:
            logger.info("returned %d unstarted messages to the broker", len(self._backlog))
        self._backlog.clear()
        self.pool.request_stop_all()
        deadline = time.monotonic() + self.grace
        while self._in_flight:
            if self._interrupt_now.is_set() or time.monotonic() >= deadline:
                # Each interrupted attempt's future now holds its Outcome (ACK), settled just below.
                self.pool.interrupt_running()
            self._supervise()
            self._settle_ready(session, block=True)
            try:
                session.flush_acks()  # no poll follows to carry the acks a transport deferred
            except Exception as exc:  # the broker redelivers them; the receipt rules skip finished tasks
                logger.warning("could not send deferred acks (%s)", mask_text(str(exc)) or type(exc).__name__)
        self._tick_scheduler()  # publish the next attempts of requeued tasks before exiting

    def _drain(self, session: ConsumerSession, timeout: float) -> list[Delivery]:
        if not session.connected and not self._reconnect(session):
            self._stop.wait(timeout)  # nothing can arrive; the loop goes on settling and supervising
            return []
        try:
            return session.drain(timeout)
        except session.connection_errors as exc:
            logger.warning(
                "lost the broker %s (%s); running tasks go on, reconnecting with backoff",
                self.app.broker_url_masked,
                mask_text(str(exc)) or type(exc).__name__,
            )
            session.lost()
            self._reconnect(session)
            return []

    def _reconnect(self, session: ConsumerSession) -> bool:
        """One reconnect attempt when the backoff allows it (0.5 s, doubling to 10 s); True once connected.

        The loop keeps turning between attempts: outcomes are settled, time limits and cancellations
        supervised, dead workers reaped. Running tasks go on and write their outcomes to the store; their
        messages went back to the broker with the lost connection, and the receipt rules settle those
        redeliveries (a copy of a finished task is skipped, a copy of a running one is parked).
        """
        if not session.reconnect_due():
            return False
        retryable: tuple[type[BaseException], ...] = (BrokerUnavailable, *session.connection_errors)
        try:
            down = session.reconnect()
        except retryable as exc:
            # A broker that is still starting may accept the connection and then fail the declares.
            logger.warning(
                "broker %s still unavailable (attempt %d: %s); next attempt in %.1f s",
                self.app.broker_url_masked,
                session.reconnect_attempts,
                mask_text(str(exc)) or type(exc).__name__,
                session.pause,
            )
            return False
        logger.info(
            "reconnected to %s after %.1f s (%d attempts)",
            self.app.broker_url_masked,
            down,
            session.reconnect_attempts,
        )
        return True

    def _fill(self) -> None:
        """Start backlog messages while pool slots are free; the rest stay unstarted (and returnable).

        Nothing starts once shutdown began: a SIGTERM handled during this loop iteration (e.g. while the
        drain waited on the broker) leaves the backlog for `_shut_down` to return, still PENDING.
        """
        while self._backlog and self._in_flight < self.concurrency and not self._stop.is_set():
            delivery = self._backlog.popleft()
            self.stats.received += 1
            self._in_flight += 1
            started_at = time.time()
            future = self.pool.submit(delivery)
            future.add_done_callback(self._outcome_callback(delivery, started_at))

    def _outcome_callback(self, delivery: Delivery, started_at: float) -> Callable[[OutcomeFuture], None]:
        return lambda done: self._outcomes.put((delivery, done, started_at, time.time()))

    def _settle_ready(self, session: ConsumerSession, block: bool = False, timeout: float = 0.2) -> None:
        while self._in_flight:
            try:
                delivery, future, started_at, ended_at = self._outcomes.get(
                    block=block, timeout=timeout if block else None
                )
            except queue.Empty:
                break
            self._in_flight -= 1
            try:
                outcome = future.result()
            except Exception:
                # A bug or a store that stayed down: leave the message to the broker for another try.
                logger.exception("executing a message failed; requeueing it")
                outcome = Outcome(Settle.REQUEUE)
            try:
                self.settle(session, delivery, outcome, started_at, ended_at)
            except session.connection_errors as exc:
                # The channel is gone; the broker redelivers the message and the receipt rules decide.
                logger.warning(
                    "could not settle a delivery (%s); the broker will redeliver it", type(exc).__name__
                )
            except Exception:
                # Never let one settlement stop the loop every other running task depends on; the
                # outcome is in the store and a redelivery meets the receipt rules.
                logger.exception("settling a delivery failed unexpectedly; the broker will redeliver it")
            block = False
        try:
            session.send_acks()  # this round's acks, in as few frames as their order allows
        except session.connection_errors as exc:
            # The next poll finds the connection gone; the broker redelivers, the receipt rules decide.
            logger.warning("could not send acks (%s); the broker will redeliver them", type(exc).__name__)

    def _supervise(self) -> None:
        try:
            self.supervisor.tick()
        except Exception as exc:  # supervision must never stop the loop that settles messages
            logger.warning("supervising running tasks failed (%s)", mask_text(str(exc)))

    def _reap(self) -> None:
        try:
            settled = recovery.reap(self.app, self.owner_alive, self.executor.is_orphan)
            # What a worker that died right after an outcome left undone: late results, workflows.
            sweeps.maybe_sweep(self.app, self.owner_alive)
        except Exception as exc:
            logger.warning("reaper pass failed (%s); will retry", mask_text(str(exc)))
            return
        if settled:
            logger.warning("reaper settled %d tasks whose worker died", settled)

    def _hand_over_schedules(self) -> None:
        try:
            self.periodic.close()
        except Exception as exc:  # the leases then lapse on their own within LEASE_TTL
            logger.warning("could not hand periodic schedules over (%s)", mask_text(str(exc)))

    def _tick_scheduler(self) -> None:
        try:
            self.scheduler.tick()
        except Exception as exc:
            logger.warning("scheduler tick failed (%s); will retry", mask_text(str(exc)))
        try:
            self.periodic.tick()
        except Exception as exc:
            logger.warning("periodic scheduler tick failed (%s); will retry", mask_text(str(exc)))

    def _purge_loop(self, done: threading.Event) -> None:
        while not done.wait(PURGE_INTERVAL):
            self._purge_expired()

    def _purge_expired(self) -> None:
        try:
            gone = self.app.store.purge_expired(clock.now())
        except Exception as exc:
            logger.warning("purging expired records failed (%s); will retry", mask_text(str(exc)))
            return
        if gone:
            logger.info("purged %d records past their result_ttl/history_ttl", gone)

    def _nothing_left(self) -> bool:
        if any(self.app.transport.queue_size(name) for name in self.queues):
            return False
        return self.app.store.count_schedule(self.queues) == 0
