"""Start and stop real `decortask worker` subprocesses for the behaviour and fault suites."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from behaviour_tasks import read_effects
from conftest import broker_urls, delete_redis_namespace, drop_postgres_schema

from decortask import Decortask, TaskHandle
from decortask.app import reset_default_app

REPO = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One `python -m decortask worker` in its own process group, logging to a file."""

    def __init__(
        self,
        broker_url: str,
        store_url: str,
        queue: str,
        log_path: Path,
        *,
        concurrency: int = 8,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.command = [
            sys.executable, "-m", "decortask", "worker", "-A", "tests.behaviour_tasks", "-Q", queue,
            "-c", str(concurrency), "--broker-url", broker_url, "--store-url", store_url, "-l", "INFO",
            *extra_args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed when it exits
        self.process = subprocess.Popen(
            self.command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        """Send `signum` to the worker's whole process group (the worker and any children)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, wait for the exit code; SIGKILL if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextmanager
def sqlite_app_for_workers(tmp_path: Path, queue_prefix: str) -> Iterator[Decortask]:
    """An app on one SQLite file (broker and store) with a queue of its own, for `run_burst_worker` tests."""
    url = f"sqlite:///{tmp_path}/decortask.db"
    app = Decortask(url, url, default_queue=f"{queue_prefix}-{uuid.uuid4().hex[:8]}")
    try:
        yield app
    finally:
        app.close()
        reset_default_app()


def run_burst_worker(
    app: Decortask, tmp_path: Path, module: str, *args: str, env: dict[str, str] | None = None
) -> str:
    """Run `decortask worker -A MODULE --burst ARGS` on the app's broker and store until the work is done, and
    return its stderr (stdout goes to `tmp_path / "worker.stdout"`)."""
    stderr_path = tmp_path / "worker.stderr"
    command = [
        sys.executable, "-m", "decortask", "worker", "-A", module,
        "-Q", app.settings.default_queue, "--burst",
        "--broker-url", app.settings.broker_url, "--store-url", app.settings.store_url, *args,
    ]  # fmt: skip
    with open(stderr_path, "wb") as stderr, open(tmp_path / "worker.stdout", "wb") as stdout:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=stdout, stderr=stderr
        )
        try:
            assert process.wait(timeout=120) == 0, stderr_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    return stderr_path.read_text()


def poll_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Return the first truthy value of `condition()`, failing with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Rig:
    """One broker, store and queue for a fault test, and how to start workers on them."""

    kind: str
    app: Decortask
    broker_url: str
    store_url: str
    queue: str
    effects: Path
    tmp: Path
    #: Environment and arguments every worker of this rig gets (a test may add more per worker).
    worker_env: dict[str, str] = field(default_factory=dict)
    worker_args: tuple[str, ...] = ()
    concurrency: int = 2
    #: The SQLite file behind the store (and, on `sqlite://`, the broker), when a test needs to lock it.
    store_file: Path | None = None

    def worker(
        self, name: str, *extra: str, env: dict[str, str] | None = None, concurrency: int | None = None
    ) -> WorkerProcess:
        settings = {"DECORTASK_TEST_EFFECTS": str(self.effects), **self.worker_env, **(env or {})}
        return WorkerProcess(
            self.broker_url,
            self.store_url,
            self.queue,
            self.tmp / f"{name}.log",
            concurrency=concurrency or self.concurrency,
            env=settings,
            extra_args=(*self.worker_args, *extra),
        )

    def effects_of(self, handle: TaskHandle[Any]) -> list[tuple[int, str]]:
        """(attempt, event) of every recorded execution step of the task, in order."""
        rows = read_effects(str(self.effects))
        return [(int(str(row["attempt"])), str(row["event"])) for row in rows if row["id"] == handle.id]

    def pids_of(self, handle: TaskHandle[Any]) -> set[int]:
        """The processes that ran the task."""
        rows = read_effects(str(self.effects))
        return {int(str(row["pid"])) for row in rows if row["id"] == handle.id}


#: Short leases so that killed workers are noticed within seconds: the embedded broker's message lease,
#: and the heartbeat age past which a worker counts as dead.
LEASE = 3.0


@contextmanager
def app_with_worker(kind: str, tmp_path: Path, tasks_module: str, queue_prefix: str) -> Iterator[Decortask]:
    """A current app on broker `kind` and a `decortask worker -A <tasks_module>` (2 threads) on its own
    queue; on exit the worker stops (and must exit 0), the queue and the Redis namespace are removed."""
    token = uuid.uuid4().hex[:10]
    broker_url, store_url = broker_urls(kind, tmp_path, token)
    queue = f"{queue_prefix}-{token}"
    app = Decortask(broker_url, store_url, default_queue=queue)
    worker = WorkerProcess(broker_url, store_url, queue, tmp_path / "worker.log", concurrency=2)
    worker.command[worker.command.index("tests.behaviour_tasks")] = tasks_module
    worker.start()
    try:
        yield app
    finally:
        code = worker.stop()
        app.transport.delete_queue(queue)
        app.close()
        reset_default_app()
        if kind == "redis":
            delete_redis_namespace(broker_url, f"test-{token}")
        assert code == 0, worker.log_tail()


LEASE_TIMEOUT = 1.5


@contextmanager
def short_lease_rig(kind: str, tmp: Path, prefix: str, worker_args: tuple[str, ...] = ()) -> Iterator[Rig]:
    """A rig on broker `kind` whose app and workers all use the short leases; cleans up after itself.

    `kind` "redis+postgres" (any broker, "+postgres"): that broker with a PostgreSQL store of its own schema.
    """
    token = uuid.uuid4().hex[:10]
    broker_url, store_url = broker_urls(kind, tmp, token)
    kind, _, store_kind = kind.partition("+")
    queue = f"{prefix}-{token}"
    app = Decortask(
        broker_url, store_url, default_queue=queue, sqlite_lease=LEASE, lease_timeout=LEASE_TIMEOUT
    )
    lease_env = {"DECORTASK_SQLITE_LEASE": str(LEASE), "DECORTASK_LEASE_TIMEOUT": str(LEASE_TIMEOUT)}
    try:
        yield Rig(kind, app, broker_url, store_url, queue, tmp / "effects.jsonl", tmp, lease_env, worker_args)
    finally:
        app.transport.delete_queue(queue)
        app.transport.delete_queue(queue + ".dlq")
        app.close()
        reset_default_app()
        if store_kind == "postgres":
            drop_postgres_schema(token)
