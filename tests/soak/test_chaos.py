"""F-22: thousands of tasks on three workers while workers are killed and the broker restarts.

The checker proves the invariant of SCENARIOS.md: every task reaches exactly one terminal state, nothing is
lost, nothing stays RUNNING or PENDING once the chaos stops, a task not opted in to requeue never starts
twice, and the surviving workers' memory and open files stay flat. By default (and in CI) 2,000 mixed tasks
and about 40 s of chaos on RabbitMQ with a SQLite store; `--long` runs 10,000 tasks for 30 minutes.

To soak a RabbitMQ node of its own (so other suites on the machine's node are not disturbed by its
restarts), set `DECORTASK_TEST_AMQP_URL` to that node's URL and `DECORTASK_TEST_RABBITMQ_NODE` to its name.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import behaviour_tasks as bt
import pytest
from conftest import AMQP_URL, require_server
from workers import WorkerProcess, poll_until

from decortask import BrokerUnavailable, Decortask, TaskHandle, TaskStatus
from decortask.app import reset_default_app
from decortask.states import TERMINAL
from decortask.store import TaskQuery

# slow: it restarts the RabbitMQ node, so it runs in CI's serial pass, apart from every other broker test.
pytestmark = [pytest.mark.broker, pytest.mark.slow]


WORKERS = 3
#: The RabbitMQ node behind AMQP_URL, for rabbitmqctl (default: the machine's own node).
RABBITMQ_NODE = os.environ.get("DECORTASK_TEST_RABBITMQ_NODE", "")


def restart_rabbitmq() -> None:
    """Stop and start the RabbitMQ application; returns once it accepts connections again."""
    node = ["-n", RABBITMQ_NODE] if RABBITMQ_NODE else []
    for command, timeout in (("stop_app", 60), ("start_app", 120), ("await_startup", 120)):
        subprocess.run(["rabbitmqctl", *node, command], check=True, capture_output=True, timeout=timeout)


def _rss_and_fds(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss_kb, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_f22_chaos_soak(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    amqp = urlsplit(AMQP_URL)
    require_server("RabbitMQ", amqp.hostname or "127.0.0.1", amqp.port or 5672)
    long_mode = bool(request.config.getoption("--long"))
    total = 10_000 if long_mode else 2_000
    chaos_seconds = 30 * 60 if long_mode else 40
    rng = random.Random(22)
    token = uuid.uuid4().hex[:8]
    queue = f"soak-{token}"
    store = f"sqlite:///{tmp_path}/decortask.db"
    effects = tmp_path / "effects.jsonl"
    app = Decortask(AMQP_URL, store, default_queue=queue, lease_timeout=1.5)
    env = {
        "DECORTASK_LEASE_TIMEOUT": "1.5",
        "DECORTASK_TEST_EFFECTS": str(effects),
    }
    workers: list[WorkerProcess] = []
    started = 0

    def new_worker() -> WorkerProcess:
        nonlocal started
        started += 1
        return WorkerProcess(
            AMQP_URL,
            store,
            queue,
            tmp_path / f"w{started}.log",
            concurrency=4,
            env=env,
            extra_args=("--grace", "1"),
        ).start()

    handles: list[tuple[str, TaskHandle[int], int]] = []
    refused: list[int] = []

    def produce() -> None:
        # Spread over most of the chaos window, so kills and the broker restart meet work in flight.
        pace = (chaos_seconds * 0.75) / total
        for n in range(total):
            kind = ("idempotent", "opted_in", "not_opted_in")[n % 3]
            try:
                if kind == "idempotent":
                    handle = bt.soak_idempotent.apply_async(
                        args=(n, n), idempotency_key=f"{token}-{n}", app=app
                    )
                    handles.append((kind, handle, 2 * n))
                elif kind == "opted_in":
                    handles.append((kind, bt.soak_opted_in.apply_async(args=(n,), app=app), n))
                else:
                    handles.append((kind, bt.soak_not_opted_in.apply_async(args=(n,), app=app), n))
            except BrokerUnavailable:
                refused.append(n)  # the caller was told; the store must hold no record for it (checked below)
            time.sleep(pace)

    producer = threading.Thread(target=produce, name="soak-producer")
    try:
        workers = [new_worker() for _ in range(WORKERS)]
        producer.start()

        actions: Counter[str] = Counter()
        deadline = time.monotonic() + chaos_seconds
        next_broker_restart = time.monotonic() + chaos_seconds * 0.4
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(1.0, 2.5))
            if time.monotonic() >= next_broker_restart:
                restart_rabbitmq()
                actions["broker_restart"] += 1
                next_broker_restart = time.monotonic() + (600 if long_mode else 10_000)
                continue
            victim = rng.randrange(len(workers))
            if rng.random() < 0.5:
                workers[victim].kill()
                actions["sigkill"] += 1
            else:
                workers[victim].signal(signal.SIGTERM)
                assert workers[victim].wait(60) == 0, workers[victim].log_tail()
                actions["sigterm"] += 1
            workers[victim] = new_worker()
        # One restart in the default run, one every 10 minutes with --long.
        assert actions["broker_restart"] >= 1 and actions["sigkill"] and actions["sigterm"], actions
        producer.join(timeout=120)
        assert not producer.is_alive()

        # The chaos has stopped: the survivors must finish everything.
        time.sleep(2)
        baseline = {w.pid: _rss_and_fds(w.pid) for w in workers}

        def unfinished() -> int:
            return app.store.count_tasks(TaskQuery(statuses=frozenset(set(TaskStatus) - TERMINAL)))

        poll_until(lambda: unfinished() == 0, 300, "every task to reach a terminal state", interval=1.0)
        final = {w.pid: _rss_and_fds(w.pid) for w in workers}

        statuses: Counter[str] = Counter()
        starts: Counter[str] = Counter(
            str(row["id"]) for row in bt.read_effects(str(effects)) if row["event"] == "started"
        )
        for kind, handle, expected in handles:
            record = app.store.get(handle.id)
            assert record is not None, f"lost: {handle.id}"  # nothing lost
            assert record.status in TERMINAL, f"stuck: {record.id} {record.status}"
            statuses[f"{kind}:{record.status.value}"] += 1
            if record.status is TaskStatus.SUCCESS:
                assert record.result == expected
            if kind == "not_opted_in":
                assert starts[handle.id] <= 1, f"{handle.id} started {starts[handle.id]} times"
            if kind != "not_opted_in":
                assert record.status is TaskStatus.SUCCESS, (kind, record.status, record.reason)
        # One record per accepted call: nothing duplicated, and no phantom record for a refused call.
        assert app.store.count_tasks(TaskQuery()) == len(handles) == total - len(refused)
        assert app.transport.queue_size(queue) == 0
        for pid, (rss_before, fds_before) in baseline.items():
            rss_after, fds_after = final[pid]
            assert rss_after - rss_before < 60_000, (pid, rss_before, rss_after)  # KiB
            assert fds_after - fds_before < 20, (pid, fds_before, fds_after)
        print(
            f"\nsoak: {total} calls, {len(refused)} refused while the broker restarted, chaos {dict(actions)}, "
            f"outcomes {dict(statuses)}"
        )
    finally:
        if producer.is_alive():
            producer.join(timeout=120)
        for worker in workers:
            worker.stop()
        app.transport.delete_queue(queue)
        app.transport.delete_queue(queue + ".dlq")
        app.close()
        reset_default_app()
