"""The child side of the process pool: what runs inside each spawned worker child (see `procpool.py`).

A child is configured by its parent's first frame (settings as JSON, module names, the worker id), imports
those modules (never a name from a message), and then runs one delivery at a time on its main thread
through `delivery.process_delivery`, writing the store itself. A reader thread takes the parent's frames:
deliveries, stop requests (`should_stop()` turns true), and `exit`. It exits as soon as its parent is gone.

IPC frames: 4 bytes of header length, a JSON header, then (for a delivery only) the raw message body.
Nothing that came from the broker is ever pickled.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import capture
from .delivery import process_delivery
from .logsetup import configure_logging, set_worker_id

if TYPE_CHECKING:
    from .app import Decortask
    from .attempts import RunningTask
    from .executor import Executor
    from .transport import Delivery

logger = logging.getLogger("decortask.worker")

#: How often a child checks that its parent still exists (the pipe's EOF usually tells it first).
PARENT_CHECK = 1.0


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    """One IPC frame: header length (4 bytes), JSON header, raw body."""
    head = json.dumps(header, separators=(",", ":"), default=str).encode()
    return len(head).to_bytes(4, "big") + head + body


def unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and body of a frame built by `frame`."""
    size = int.from_bytes(data[:4], "big")
    header = json.loads(data[4 : 4 + size])
    if not isinstance(header, dict):
        raise ValueError("an IPC frame header must be a JSON object")
    return header, data[4 + size :]


class _Child:
    """One child: a reader thread takes frames from the parent; the main thread runs deliveries."""

    def __init__(self, conn: Connection, app: Decortask, executor: Executor) -> None:
        self.conn = conn
        self.app = app
        self.executor = executor
        self.parent = os.getppid()
        self.jobs: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._send_lock = threading.Lock()
        executor.on_start = self._announce

    def send(self, header: dict[str, Any]) -> None:
        try:
            with self._send_lock:
                self.conn.send_bytes(frame(header))
        except (OSError, ValueError):
            os._exit(1)  # the parent is gone; a child never outlives it

    def listen(self) -> None:
        from .transport import Delivery

        while True:
            try:
                if not self.conn.poll(PARENT_CHECK):
                    if os.getppid() != self.parent:
                        os._exit(1)
                    continue
                header, body = unframe(self.conn.recv_bytes())
            except (EOFError, OSError):
                os._exit(1)  # the parent died (even mid-task: its heartbeats stop, the rules settle it)
            op = header.get("op")
            if op == "run":
                self.jobs.put(
                    Delivery(
                        body=body,
                        content_type=header.get("content_type"),
                        headers=dict(header.get("headers") or {}),
                        queue=str(header["queue"]),
                        redelivered=bool(header.get("redelivered")),
                        raw=None,
                        refused=header.get("refused"),
                        refused_detail=str(header.get("refused_detail") or ""),
                    )
                )
            elif op == "stop":
                run = self.executor.running.get(str(header["id"]))
                if run is not None and run.record.attempt == header.get("attempt"):
                    run.ask_to_stop(str(header["reason"]))
            elif op == "stop_all":
                self.executor.request_stop_all()
            elif op == "exit":
                self.jobs.put(None)
                return

    def serve(self) -> None:
        while True:
            delivery = self.jobs.get()
            if delivery is None:
                return
            try:
                outcome = process_delivery(self.app, self.executor, delivery)
            except Exception as exc:
                logger.exception("executing a message failed")
                self.send({"op": "failed", "error": type(exc).__name__})
                continue
            self.send(
                {
                    "op": "outcome",
                    "settle": outcome.settle.value,
                    "status": outcome.status.value if outcome.status else None,
                    "reason": outcome.reason,
                    "detail": outcome.detail,
                    "ran": outcome.ran,
                    "task_id": outcome.task_id,
                    "task_name": outcome.task_name,
                }
            )

    def _announce(self, run: RunningTask) -> None:
        # Sent before the task's code runs, so a crash after this point is known to the parent.
        remaining = None if run.deadline is None else max(0.0, run.deadline - time.monotonic())
        self.send(
            {
                "op": "started",
                "id": run.record.id,
                "attempt": run.record.attempt,
                "must_complete": run.must_complete,
                "timeout": remaining,
            }
        )


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT reach the whole process group; only the parent decides what shutdown does."""


def child_main(conn: Connection) -> None:
    """A child's entry point (spawned): configure from the parent's first frame, then serve deliveries."""
    # A handler, not SIG_IGN: an ignored disposition would be inherited by programs the task executes.
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)
    try:
        config, _ = unframe(conn.recv_bytes())
    except (EOFError, OSError):
        return
    # Logs like its parent (stderr or --logfile, text or JSON, task fields), each text line with its pid.
    options = {"level": int(config["loglevel"]), **dict(config.get("logging") or {})}
    configure_logging(
        options["level"],
        logfile=options.get("logfile"),
        log_format=options.get("log_format", "text"),
        child=True,
    )
    set_worker_id(str(config["worker_id"]))
    for name in config["modules"]:  # the worker's -A modules: never a name from a message
        module_name, _, factory = name.partition(":")
        module = importlib.import_module(module_name)
        if factory:  # -A pkg:create_app: the factory binds the framework's extension, as in the parent
            getattr(module, factory)()
    from .app import Decortask, current_app
    from .executor import Executor

    # The execute hooks run here, beside the task's code: those of the app the -A modules created.
    declared = current_app().middleware
    app = Decortask(set_default=True, middleware=declared, **config["settings"])
    owner = f"{config['worker_id']}/{os.getpid()}"

    from .liveness import Liveness

    # The same decision as the parent's: the broker's probe first, heartbeats second.
    liveness = Liveness(app, lambda other: other == owner, app.transport.liveness_probe())
    executor = Executor(app, owner, owner_alive=liveness.alive)
    if app.settings.capture_output:  # the child runs the tasks, so it captures their output
        capture.enable_for(owner, app.store)
    child = _Child(conn, app, executor)
    threading.Thread(target=child.listen, name="decortask-child-pipe", daemon=True).start()
    child.send({"op": "ready", "pid": os.getpid()})
    try:
        child.serve()
    finally:
        executor.event_loop.close()
        app.close()
