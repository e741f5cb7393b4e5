"""The process pool (`decortask worker --pool processes`): long-lived spawned children run the deliveries.

The parent keeps the broker: its consumer thread hands each delivery to a free child and settles the
Outcome the child sends back. A child decodes, applies the receipt rules and runs the task itself, writing
the store directly, exactly as a pool thread does (`delivery.process_delivery`). It implements the same
`pools.Pool` interface as the thread pool, so the worker never asks which one it has.

Parent and child talk over one `multiprocessing` pipe per child, in JSON frames (`procchild.frame`) that
carry a delivery's body as raw bytes: nothing that came from the broker is ever pickled. Children start
with the *spawn* method, so none inherits the parent's kombu or store connections, threads or locks.

Owners. A child claims attempts under its own owner id, `<worker id>/<child pid>`, and the parent writes
that id's heartbeat for as long as the child lives. While the child runs, other workers see a live owner
(a second delivery is parked, never run twice); once it dies the heartbeat stops, so even if the parent
could not settle the attempt itself (say the store was down at that moment) the receipt rules and the
reaper of any worker see a dead owner within `lease_timeout` and settle it. Normally the parent settles
it at once: it notices the death (process sentinel or EOF), then applies `recovery.interrupt(...,
"worker_lost")` (or the outcome of the forced stop it caused), acks, and starts a replacement child.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING, Any

from . import clock, recovery
from .errors import ConfigurationError
from .logsetup import child_options
from .message import Message, decode
from .outcomes import Outcome, Settle
from .procchild import child_main, frame, unframe
from .security import mask_text
from .states import TaskStatus
from .supervision import Supervised

if TYPE_CHECKING:
    from .app import Decortask
    from .executor import Executor
    from .transport import Delivery

logger = logging.getLogger("decortask.worker")

#: How long the worker waits for its children to import the task modules at start.
STARTUP_TIMEOUT = 60.0
#: How long children get to exit after the parent said so, before they are killed.
EXIT_TIMEOUT = 5.0
#: How often the parent looks at its children when nothing else wakes it.
WATCH_INTERVAL = 0.5


@dataclass(eq=False)
class _Job:
    delivery: Delivery
    future: Future[Outcome]
    attempt: RemoteAttempt | None = None


@dataclass(eq=False)
class _Slot:
    process: SpawnProcess
    conn: Connection
    owner: str
    ready: bool = False
    dead: bool = False
    job: _Job | None = None
    #: Why the parent killed this child ("forced" or "shutdown"); None while it lives or if it died alone.
    killed_for: str | None = None
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def usable(self) -> bool:
        """Whether it may take a job (not dead, not being killed even if it reports an outcome first)."""
        return not self.dead and self.killed_for is None


@dataclass(eq=False)
class RemoteAttempt:
    """An attempt running in a child, as the parent's `Supervisor` and shutdown see it (a `Supervised`)."""

    task_id: str
    attempt: int
    must_complete: bool
    #: `time.monotonic()` (parent's) at which the attempt exceeds its `timeout`, if it has one.
    deadline: float | None
    pool: ProcessPool = field(repr=False)
    slot: _Slot = field(repr=False)
    stop_reason: str | None = None
    stop_requested_at: float = 0.0
    forced: bool = False

    def ask_to_stop(self, reason: str) -> None:
        """Make `should_stop()` true in the child, remembering why (the first reason wins)."""
        if self.stop_reason is not None:
            return  # the supervisor asks on every tick; the child needs to hear it once
        self.stop_reason = reason
        self.stop_requested_at = time.monotonic()
        header = {"op": "stop", "id": self.task_id, "attempt": self.attempt, "reason": reason}
        self.pool.send(self.slot, header)


class ProcessPool:
    """`size` spawned children, each running one delivery at a time.

    Args:
        app: the worker's app; its settings (not the app object) are sent to each child.
        executor: the worker's executor, used to write the outcome of attempts the parent stopped by force.
        worker_id: the worker's id; each child's owner id is `<worker_id>/<pid>`.
        modules: the modules a child imports to register the tasks (the worker's `-A`); default: the
            modules that define the registered tasks when the pool starts.
        size: how many children.
    """

    def __init__(
        self, app: Decortask, executor: Executor, worker_id: str, modules: Sequence[str], size: int
    ) -> None:
        check_store(app)
        if size < 1:
            raise ValueError("pool size must be >= 1")
        self.app = app
        self.executor = executor
        self.worker_id = worker_id
        self.size = size
        self.modules = list(modules)
        self._config: dict[str, Any] = {}
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._pending: deque[_Job] = deque()
        self._closing = False
        #: Shutting down: children that die now are not replaced (no new work will come).
        self._draining = False
        #: Children that die while starting (a broken import) are restarted with a growing pause.
        self._respawn_pause = 0.0
        self._next_spawn = 0.0
        self._monitor = threading.Thread(target=self._watch, name="decortask-procpool", daemon=True)

    # -- the worker thread's calls ---------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the children and wait until each has imported the tasks (a failure stops the worker)."""
        self.modules = self.modules or task_modules(self.app)
        self._config = {
            "settings": asdict(self.app.settings),
            "modules": self.modules,
            "worker_id": self.worker_id,
            "loglevel": logging.getLogger("decortask").getEffectiveLevel(),
            "logging": child_options(),  # --logfile and --log-format, as the parent logs
        }
        self._slots = [self._spawn() for _ in range(self.size)]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(slot.ready for slot in self._slots):
            for slot in self._slots:
                self._read(slot)
                if slot.dead or not slot.process.is_alive():
                    self.shutdown()
                    raise ConfigurationError(
                        f"a --pool processes child exited with code {slot.process.exitcode} while starting "
                        f"(importing {', '.join(self.modules) or 'no module'}); its error is above"
                    )
            if time.monotonic() >= deadline:
                self.shutdown()
                raise ConfigurationError(
                    f"--pool processes children did not start in {STARTUP_TIMEOUT:.0f} s"
                )
            wait_ready([slot.conn for slot in self._slots if not slot.ready], timeout=WATCH_INTERVAL)
        self._monitor.start()

    def submit(self, delivery: Delivery) -> Future[Outcome]:
        """Run `delivery` in a free child; the future holds its Outcome."""
        job = _Job(delivery, Future())
        with self._lock:
            self._pending.append(job)
        self._dispatch()
        return job.future

    def running(self) -> list[RemoteAttempt]:
        """Attempts running in children now (for the supervisor and shutdown)."""
        with self._lock:
            return [s.job.attempt for s in self._slots if s.job is not None and s.job.attempt is not None]

    def stop_by_force(self, run: Supervised) -> bool:
        """Terminate the child running `run`; the monitor then writes the attempt's outcome (`_settle_lost`)."""
        return isinstance(run, RemoteAttempt) and self.kill(run.slot, run, "forced")

    def owners(self) -> list[str]:
        """Owner ids of the live children, whose heartbeats the worker writes."""
        with self._lock:
            return [slot.owner for slot in self._slots if slot.ready and not slot.dead]

    def request_stop_all(self) -> None:
        """Shutdown: jobs no child has taken go back (REQUEUE); running ones see `should_stop()` true."""
        self.executor.request_stop_all()  # the parent's own writes (`settle_stopped`) stop being patient
        with self._lock:
            self._draining = True
            unstarted = list(self._pending)
            self._pending.clear()
            slots = [slot for slot in self._slots if slot.ready]
        for job in unstarted:
            job.future.set_result(Outcome(Settle.REQUEUE))
        for slot in slots:
            self.send(slot, {"op": "stop_all"})

    def interrupt_running(self) -> None:
        """Shutdown past the grace: terminate the children running attempts (but `must_complete` ones)."""
        for run in self.running():
            if not run.must_complete:
                self.kill(run.slot, run, "shutdown")

    def shutdown(self, wait: bool = True) -> None:
        """Tell every child to exit, kill any that does not within `EXIT_TIMEOUT`, and reap them all."""
        with self._lock:
            self._closing = True
            slots = list(self._slots)
        for slot in slots:
            self.send(slot, {"op": "exit"})
        if self._monitor.is_alive():
            self._monitor.join(WATCH_INTERVAL * 4)  # before closing pipes it may be waiting on
        deadline = time.monotonic() + (EXIT_TIMEOUT if wait else 0.0)
        for slot in slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.exitcode is None:
                logger.warning("pool child %s did not exit; killing it", slot.process.pid)
                slot.process.kill()
                slot.process.join(5.0)
            slot.conn.close()

    # -- shared by both threads --------------------------------------------------------------------------

    def send(self, slot: _Slot, header: dict[str, Any], body: bytes = b"") -> bool:
        """Send one frame to a child; False if it is gone (the monitor settles what it was running)."""
        try:
            with slot.send_lock:
                slot.conn.send_bytes(frame(header, body))
            return True
        except (OSError, ValueError):
            return False

    def kill(self, slot: _Slot, run: RemoteAttempt, why: str) -> bool:
        """Terminate the child running `run`, once; the monitor settles the attempt when it has died."""
        with self._lock:
            if slot.job is None or slot.job.attempt is not run or slot.killed_for is not None:
                return False
            slot.killed_for = why
            run.forced = True
        if why == "forced":
            logger.warning(
                "task %s did not stop within its grace period; terminating its process", run.task_id
            )
        # SIGKILL: a child ignores SIGTERM (an orchestrator signals the whole process group at shutdown).
        slot.process.kill()
        return True

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if self._closing or not self._pending:
                    return
                slot = next((s for s in self._slots if s.ready and s.job is None and s.usable), None)
                if slot is None:
                    return  # a replacement child is still starting: it takes the job when ready
                job = slot.job = self._pending.popleft()
            delivery = job.delivery
            header = {
                "op": "run",
                "content_type": delivery.content_type,
                "queue": delivery.queue,
                "redelivered": delivery.redelivered,
                "headers": _plain(delivery.headers),
                "refused": delivery.refused,
                "refused_detail": delivery.refused_detail,
            }
            # A failed send means the child just died: the monitor finds the job unstarted and requeues it.
            self.send(slot, header, delivery.body)

    # -- the monitor thread ------------------------------------------------------------------------------

    def _spawn(self) -> _Slot:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=child_main, args=(theirs,), name="decortask-child")
        process.start()
        theirs.close()  # only the child holds its end now, so its death is EOF here
        slot = _Slot(process, ours, f"{self.worker_id}/{process.pid}")
        self.send(slot, self._config)
        return slot

    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                slots = list(self._slots)
            try:
                waitables = [s.conn for s in slots] + [s.process.sentinel for s in slots]
                ready = wait_ready(waitables, WATCH_INTERVAL)
                if self._closing:
                    return  # children exiting now were told to: nothing to settle or replace
                for slot in slots:
                    if slot.conn in ready:
                        self._read(slot)
                    # is_alive() also reaps: it catches a death whose sentinel a forked grandchild holds open.
                    if slot.dead or slot.process.sentinel in ready or not slot.process.is_alive():
                        self._bury(slot)
                self._replace()
            except Exception:
                # This thread settles every child's outcome: it must outlive any bug in one pass.
                logger.exception("watching the pool's children failed; carrying on")
                time.sleep(WATCH_INTERVAL)

    def _read(self, slot: _Slot) -> None:
        """Handle every frame the child has written so far; EOF marks it dead."""
        try:
            while slot.conn.poll(0):
                header, _ = unframe(slot.conn.recv_bytes())
                self._handle(slot, header)
        except (EOFError, OSError):
            slot.dead = True

    def _handle(self, slot: _Slot, header: dict[str, Any]) -> None:
        op = header.get("op")
        if op == "ready":
            try:
                # Before its first claim: a claim by an owner with no heartbeat would look dead to others.
                self.app.store.heartbeat(slot.owner, clock.now())
            except Exception as exc:
                logger.warning("heartbeat write for %s failed (%s)", slot.owner, mask_text(str(exc)))
            slot.ready = True
            self._respawn_pause = 0.0
            self._dispatch()
            return
        job = slot.job
        if job is None:
            return
        if op == "started":
            timeout = header.get("timeout")
            job.attempt = RemoteAttempt(
                task_id=str(header["id"]),
                attempt=int(header["attempt"]),
                must_complete=bool(header["must_complete"]),
                deadline=None if timeout is None else time.monotonic() + float(timeout),
                pool=self,
                slot=slot,
            )
            return
        if op in ("outcome", "failed"):
            with self._lock:
                slot.job = None
            if op == "outcome":
                status = header.get("status")
                job.future.set_result(
                    Outcome(
                        Settle(header["settle"]),
                        TaskStatus(status) if status else None,
                        header.get("reason"),
                        str(header.get("detail", "")),
                        bool(header.get("ran")),
                        header.get("task_id"),
                        header.get("task_name"),
                    )
                )
            else:
                job.future.set_exception(RuntimeError(f"a pool child failed: {header.get('error')}"))
            self._dispatch()

    def _bury(self, slot: _Slot) -> None:
        """A child died: settle what it was running, forget it; `_replace` starts another."""
        slot.dead = True  # first, so no new job is dispatched to it
        slot.process.join(1.0)
        if slot.process.exitcode is None:  # its pipe broke but it lives on: of no use without one
            slot.process.kill()
            slot.process.join(5.0)
        self._read(slot)  # what it wrote before dying (an outcome there settles its job as usual)
        with self._lock:
            if slot in self._slots:
                self._slots.remove(slot)
            job, slot.job = slot.job, None
        slot.conn.close()
        code = slot.process.exitcode
        if not slot.ready:
            self._respawn_pause = min(max(self._respawn_pause * 2, 0.5), 30.0)
            self._next_spawn = time.monotonic() + self._respawn_pause
            logger.error(
                "pool child %s exited (code %s) while starting; the next one starts in %.1f s",
                slot.process.pid,
                code,
                self._respawn_pause,
            )
        if job is None:
            if slot.killed_for is None and slot.ready:
                logger.warning(
                    "idle pool child %s exited (code %s); starting another", slot.process.pid, code
                )
            return
        run = job.attempt
        if run is None:
            logger.error(
                "pool child %s exited (code %s) before starting a task; its message goes back to the broker",
                slot.process.pid,
                code,
            )
            job.future.set_result(Outcome(Settle.REQUEUE))
            return
        if slot.killed_for is None:
            logger.error(
                "pool child %s died (exit code %s) running task %s attempt %d",
                slot.process.pid,
                code,
                run.task_id,
                run.attempt,
            )
        try:
            outcome = self._settle_lost(job, run, slot)
        except Exception as exc:
            # The store is down: the message goes back, and the child's stale heartbeat settles it later.
            job.future.set_exception(exc)
        else:
            job.future.set_result(outcome)

    def _settle_lost(self, job: _Job, run: RemoteAttempt, slot: _Slot) -> Outcome:
        record = self.app.store.get(run.task_id)
        if (
            record is None
            or record.status is not TaskStatus.RUNNING
            or (record.attempt, record.owner) != (run.attempt, slot.owner)
        ):
            # The child wrote the attempt's outcome, then died before reporting it: nothing is left to do.
            return Outcome(Settle.ACK, record.status if record else None, "settled", ran=True)
        message = self._message(job.delivery)
        if slot.killed_for == "forced" and run.stop_reason is not None and message is not None:
            outcome = self.executor.settle_stopped(record, message, run.stop_reason)
            if message.workflow:  # what follows a workflow's task, as `delivery.process_delivery` does
                from .workflow import continue_workflow

                continue_workflow(self.app, record.id, message.workflow, self.executor.write)
            return outcome
        reason = "shutdown" if slot.killed_for == "shutdown" else "worker_lost"
        status = recovery.interrupt(self.app, record, message, reason)
        return Outcome(Settle.ACK, status, reason, ran=True)

    def _message(self, delivery: Delivery) -> Message | None:
        # The child decoded this body already; decoding it here gives the next attempt the same message.
        try:
            settings = self.app.settings
            return decode(delivery.body, delivery.content_type, settings.max_payload_bytes, self.app.cipher)
        except Exception:
            return None

    def _replace(self) -> None:
        if time.monotonic() < self._next_spawn:
            return
        with self._lock:  # under the lock, so `shutdown` either sees a new child or none is started
            while not (self._closing or self._draining) and len(self._slots) < self.size:
                try:
                    self._slots.append(self._spawn())
                except Exception as exc:
                    logger.error("could not start a pool child (%s); will retry", mask_text(str(exc)))
                    self._next_spawn = time.monotonic() + 1.0
                    return


def _plain(headers: dict[str, Any]) -> dict[str, Any]:
    """Broker headers as JSON-safe data (a child never needs more; odd values become strings)."""
    try:
        plain = json.loads(json.dumps(headers, default=str))
    except (TypeError, ValueError):
        return {}
    return plain if isinstance(plain, dict) else {}


def task_modules(app: Decortask) -> list[str]:
    """The modules defining the registered tasks: what a child imports when the worker was given no -A."""
    modules: set[str] = set()
    for name in app.registry.names():
        task = app.registry.find(name)
        module = getattr(task.fn, "__module__", None) if task is not None else None
        if module and module != "__main__":  # a script's own tasks cannot be imported by name
            modules.add(module)
    return sorted(modules)


def check_store(app: Decortask) -> None:
    """Refuse a store the children cannot share (`memory://` lives inside one process)."""
    if app.settings.store_url.lower().startswith("memory:"):
        raise ConfigurationError(
            "--pool processes needs a store its child processes can share (sqlite://, redis:// or postgresql://); "
            "a memory:// store lives inside one process. Use --pool threads, or another store URL"
        )
