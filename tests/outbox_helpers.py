"""Servers and apps for the outbox and relay tests: a Redis of the test's own, and a freezable RabbitMQ link.

`OwnRedis` runs `redis-server` on a free loopback port without persistence, so a test may restart it and
lose every message without touching the shared server. `FreezableLink` is a TCP relay in front of the
shared RabbitMQ: frozen, it stops passing bytes both ways, so a publish is neither delivered nor
confirmed (what a broker that blocks publishers does), again without touching the shared server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import behaviour_tasks as bt
from workers import REPO, WorkerProcess, poll_until

from decortask import Decortask, TaskStatus
from decortask.store import TaskRecord


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class OwnRedis:
    """`redis-server --save "" --appendonly no` on 127.0.0.1:`port`, started and stopped by pid."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        command = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            "--appendonly", "no", "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll_until(lambda: _answers(self.port), 10, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        """SIGKILL (nothing is saved either way) and wait until the port is closed."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        poll_until(lambda: not _answers(self.port), 10, f"port {self.port} to close")

    def restart(self) -> None:
        self.stop()
        self.start()


class FreezableLink:
    """A loopback TCP relay to `target_port`; `freeze()` stops it passing bytes in either direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._flowing.clear()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while not self._flowing.is_set():  # frozen: hold the bytes, pass nothing on
                    if self._closed.is_set():
                        return
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def task_of_killed_producer(*args: str) -> str:
    """Run `python -c args...` in tests/, read the task id it prints once its `.delay()` returned, SIGKILL it.

    The producer's publisher waits an hour before its first batch, so the message never leaves it.
    """
    producer = subprocess.Popen([sys.executable, "-c", *args], cwd=REPO / "tests", stdout=subprocess.PIPE)
    try:
        assert producer.stdout is not None
        return producer.stdout.readline().decode().strip()
    finally:
        producer.kill()  # SIGKILL: no atexit, no publish
        producer.wait(10)


def assert_relayed_exactly_once(
    app: Decortask, broker_url: str, store_url: str, queue: str, task_id: str, tmp_path: Path
) -> None:
    """`task_id` is PENDING and its message never reached `queue`: a worker's outbox relay publishes it,
    and it runs exactly once."""
    record = app.store.get(task_id)
    assert record is not None and record.status is TaskStatus.PENDING
    assert app.transport.queue_size(queue) == 0  # the message never left the producer
    effects = tmp_path / "effects.jsonl"
    relay_soon = {"DECORTASK_RELAY_INTERVAL": "0.3", "DECORTASK_RELAY_AFTER": "1"}
    worker = WorkerProcess(
        broker_url, store_url, queue, tmp_path / "worker.log", concurrency=2,
        env={"DECORTASK_TEST_EFFECTS": str(effects), **relay_soon},
    )  # fmt: skip
    with worker:
        done = poll_until(lambda: _finished(app, task_id), 60, "the relayed task to finish")
        assert done.status is TaskStatus.SUCCESS and done.result == "slept"
    runs = [row["event"] for row in bt.read_effects(str(effects)) if row["id"] == task_id]
    assert runs == ["started", "finished"]  # exactly once
    assert "relay: published 1 messages of queue" in worker.log_tail(200)


def _finished(app: Decortask, task_id: str) -> TaskRecord | None:
    record = app.store.get(task_id)
    return record if record is not None and record.status.terminal else None
