"""Three hosts, one RabbitMQ and one PostgreSQL store: a worker per host, then one host fails (issue 16).

Each "host" is a network namespace with a veth link to the root namespace (tests/multihost_net.py); its worker
reaches RabbitMQ and PostgreSQL over that link, through a forwarder to the servers on 127.0.0.1. Each host's
clock is skewed by a few seconds (`DECORTASK_CLOCK_SKEW_SECONDS`, read by `decortask.clock`). Tasks record every
run (host, attempt, start, end) in a file on the machine's own disk, which a partitioned host can still write.

- F-05/F-06 across hosts: one host's worker is SIGKILLed while it runs two tasks.
- F-27: one host's link is cut (`ip link set ... down`) while it runs two tasks, and restored once the others have
  settled them; its worker then finishes its stale attempts and must not write over the new owners' outcomes.

Hosts 1 and 2 also run tasks that fail once and retry 2 s later: the retry's due time is written by one
host's clock and claimed by whichever host's clock finds it due first; each runs twice, never three times.

After either fault: every task ends in one terminal state; a task runs a second time only if its first run was
on the failed host and the second started after the fault (never while its first host was alive and reachable);
no task is lost. Needs root (ip netns): skipped elsewhere, failing under CI=true.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import multihost_tasks as mt
import pytest
from conftest import AMQP_URL, IN_CI, drop_postgres_schema, postgres_store_url, require_amqp
from multihost_net import Forwarder, NetnsUnavailable, Network, check_netns_usable
from workers import REPO, WorkerProcess, poll_until

from decortask import Decortask, TaskHandle, TaskStatus
from decortask.app import reset_default_app

pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("multihost")]

#: A worker silent this long counts as dead (short, so a partitioned host's tasks come back within seconds).
LEASE_TIMEOUT = 5.0
#: Each host's clock, off the machine's by this many seconds. Host 0, the one that fails, keeps the machine's
#: clock; hosts 1 and 2, which keep working, are 6 s apart: more than the lease, so that a worker judging the
#: other's heartbeat by comparing clocks would take it for dead while it runs.
SKEWS = (0.0, 3.0, -3.0)
CONCURRENCY = 2
#: The failed host's two tasks (one opted in to requeue, one not) run this long (long enough to be running
#: still when the other hosts are up and busy, on a loaded CI machine); the ten others, TASK_SECONDS.
VICTIM_TASK_SECONDS = 15.0
TASK_SECONDS = 3.0
TASKS = 12
#: Tasks that fail once and retry 2 s later, run by hosts 1 and 2 (clocks 6 s apart) besides the TASKS.
RETRYING = 2
AMQP_PORT = 5672
POSTGRES_PORT = 5432


def _via(url: str, address: str) -> str:
    """`url` with its host replaced by `address` (the forwarder's listener on a host's link)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    at = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{at}{address}:{parts.port}"))


@dataclass
class Cluster:
    app: Decortask
    network: Network
    workers: list[WorkerProcess]
    runs_path: Path
    handles: list[TaskHandle[Any]] = field(default_factory=list)
    #: The task name of each enqueued id.
    kinds: dict[str, str] = field(default_factory=dict)

    def start(self, *indexes: int) -> None:
        """Start the workers of these hosts and wait until they consume."""
        for index in indexes:
            self.workers[index].start()
        for index in indexes:
            worker, name = self.workers[index], self.network.hosts[index].name
            poll_until(lambda w=worker: " ready: " in w.log_tail(200), 60, f"the worker in {name} ready")

    def runs(self) -> list[dict[str, Any]]:
        return mt.read_runs(str(self.runs_path))

    def running_on(self) -> dict[str, list[str]]:
        """Task ids whose latest run started and has not ended, by host."""
        open_runs: dict[tuple[str, int], dict[str, Any]] = {}
        for run in self.runs():
            key = (run["id"], run["attempt"])
            if run["event"] == "start":
                open_runs[key] = run
            else:
                open_runs.pop(key, None)
        found: dict[str, list[str]] = defaultdict(list)
        for run in open_runs.values():
            found[run["host"]].append(run["id"])
        return found

    def wait_running(self, index: int, count: int) -> list[str]:
        name = self.network.hosts[index].name

        def running() -> list[str] | None:
            ids = self.running_on().get(name, [])
            return ids if len(ids) >= count else None

        found: list[str] = poll_until(running, 60, f"{count} tasks running on {name}")
        return found

    def records(self) -> dict[str, Any]:
        return {h.id: self.app.store.get(h.id) for h in self.handles}

    def enqueue(self, count: int, seconds: float) -> list[str]:
        """`count` tasks, alternately opted in to requeue and not; returns their ids."""
        ids = []
        for n in range(count):
            chosen = mt.work if n % 2 == 0 else mt.work_not_opted_in
            handle = chosen.apply_async(args=(seconds,), queue=self.app.settings.default_queue)
            self.handles.append(handle)
            self.kinds[handle.id] = chosen.name
            ids.append(handle.id)
        return ids

    def enqueue_retrying(self, count: int) -> None:
        for _ in range(count):
            handle = mt.fails_once.apply_async(queue=self.app.settings.default_queue)
            self.handles.append(handle)
            self.kinds[handle.id] = mt.fails_once.name

    def all_terminal(self) -> bool:
        return all(r is not None and r.status.terminal for r in self.records().values())


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three hosts, each with a worker ready to start (`Cluster.start`); all removed at the end."""
    require_amqp()
    try:
        check_netns_usable()
    except NetnsUnavailable as exc:
        if IN_CI:
            pytest.fail(f"{exc} (CI=true runs the multi-host harness)")
        pytest.skip(str(exc))
    token = uuid.uuid4().hex[:10]
    store_url = postgres_store_url(token)
    request.addfinalizer(lambda: drop_postgres_schema(token))
    queue = f"mh-{token}"
    app = Decortask(AMQP_URL, store_url, default_queue=queue, lease_timeout=LEASE_TIMEOUT)

    def close_app() -> None:
        app.transport.delete_queue(queue)
        app.transport.delete_queue(queue + ".dlq")
        app.close()
        reset_default_app()

    request.addfinalizer(close_app)
    network = Network.create(len(SKEWS))
    request.addfinalizer(network.close)
    forwarder = Forwarder()
    request.addfinalizer(forwarder.close)
    runs_path = tmp_path / "runs.jsonl"
    workers = []
    for host, skew in zip(network.hosts, SKEWS, strict=True):
        forwarder.listen(host.root_address, AMQP_PORT)
        forwarder.listen(host.root_address, POSTGRES_PORT)
        env = {
            "PYTHONPATH": str(REPO),
            "DECORTASK_LEASE_TIMEOUT": str(LEASE_TIMEOUT),
            "DECORTASK_CLOCK_SKEW_SECONDS": str(skew),
            "DECORTASK_TEST_HOST": host.name,
            "DECORTASK_TEST_RUNS": str(runs_path),
        }
        broker_url, host_store_url = _via(AMQP_URL, host.root_address), _via(store_url, host.root_address)
        worker = WorkerProcess(
            broker_url, host_store_url, queue, tmp_path / f"{host.name}.log", concurrency=CONCURRENCY, env=env
        )
        worker.command = host.command(
            [w if w != "tests.behaviour_tasks" else "tests.multihost_tasks" for w in worker.command]
        )
        workers.append(worker)
        # These run first: no worker outlives its namespace.
        request.addfinalizer(lambda w=worker: w.kill() if w.process is not None else None)
    yield Cluster(app, network, workers, runs_path)


def _busy_cluster(cluster: Cluster) -> list[str]:
    """Host 0 runs one task of each kind, hosts 1 and 2 two each with more queued; returns host 0's tasks."""
    victim_tasks = cluster.enqueue(2, VICTIM_TASK_SECONDS)
    cluster.start(0)
    assert sorted(cluster.wait_running(0, 2)) == sorted(victim_tasks)
    cluster.start(1, 2)
    cluster.enqueue_retrying(RETRYING)
    cluster.enqueue(TASKS - 2, TASK_SECONDS)
    cluster.wait_running(1, 2)
    cluster.wait_running(2, 2)
    still = cluster.running_on().get(cluster.network.hosts[0].name, [])
    assert sorted(still) == sorted(victim_tasks), "host 0's tasks ended before the fault: lengthen them"
    return victim_tasks


def _check_invariants(
    cluster: Cluster, victim: str, victim_tasks: list[str], fault_at: float
) -> dict[str, Any]:
    """The Done-when of issue 16 on the runs file and the store; returns the records for more checks."""
    records = cluster.records()
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in cluster.runs():
        if run["event"] == "start":
            runs[run["id"]].append(run)
    assert len(records) == TASKS + RETRYING
    for handle in cluster.handles:
        record = records[handle.id]
        assert record is not None and record.status.terminal, f"{handle.id} lost: {record}"
        started = runs[handle.id]
        if cluster.kinds[handle.id] == mt.fails_once.name:
            # Its retry's due time came from one host's clock and was claimed by another's: once, all the same.
            assert [r["attempt"] for r in started] == [1, 2], started
            assert record.status is TaskStatus.SUCCESS and record.attempt == 2, record
            continue
        if handle.id not in victim_tasks:
            # Not on the failed host: one run, one SUCCESS, whatever the others' clocks said.
            assert len(started) == 1, f"{handle.id} ran {len(started)} times: {started}"
            assert record.status is TaskStatus.SUCCESS and record.output == record.result, record
            continue
        assert started[0]["host"] == victim
        if cluster.kinds[handle.id] == mt.work.name:  # opted in: run again elsewhere, only after the fault
            assert [r["attempt"] for r in started] == [1, 2], started
            assert started[1]["host"] != victim and started[1]["ts"] > fault_at, started
            assert record.status is TaskStatus.SUCCESS and record.attempt == 2, record
            assert record.result == record.output == {"host": started[1]["host"], "attempt": 2}, record
        else:  # not opted in: never run again
            assert len(started) == 1, started
            assert record.status is TaskStatus.INTERRUPTED and record.reason == "worker_lost", record
            assert record.output is None, record  # its host's late set_output() changed nothing
    return records


def _wait_taken_over(cluster: Cluster, victim_tasks: list[str]) -> dict[str, float]:
    """When each of the failed host's attempts was seen settled by the others (its next attempt queued, or
    INTERRUPTED), by the machine's clock; its re-run may then wait its turn behind the queued tasks."""
    settled_at: dict[str, float] = {}

    def all_settled() -> bool:
        for task_id in victim_tasks:
            record = cluster.app.store.get(task_id)
            # Not RUNNING attempt 1 any more: requeued (PENDING, or already claimed as attempt 2) or INTERRUPTED.
            if (
                task_id not in settled_at
                and record is not None
                and (record.status is not TaskStatus.RUNNING or record.attempt >= 2)
            ):
                settled_at[task_id] = time.time()
        return len(settled_at) == len(victim_tasks)

    poll_until(all_settled, 60, "the failed host's attempts settled by the others", interval=0.1)
    return settled_at


def _times(settled_at: dict[str, float], since: float) -> str:
    return ", ".join(f"{at - since:.1f}" for at in sorted(settled_at.values()))


def test_f05_f06_sigkill_one_of_three_hosts_workers_each_task_ends_once(cluster: Cluster) -> None:
    victim_tasks = _busy_cluster(cluster)
    victim, victim_host = cluster.workers[0], cluster.network.hosts[0].name
    killed_at = time.time()
    victim.kill()
    settled_at = _wait_taken_over(cluster, victim_tasks)
    poll_until(cluster.all_terminal, 120, "every task terminal after the SIGKILL")
    _check_invariants(cluster, victim_host, victim_tasks, killed_at)
    print(
        f"\nSIGKILL of {victim_host}'s worker: its 2 tasks (one opted in) settled by "
        f"the others {_times(settled_at, killed_at)} s after the kill; all {TASKS + RETRYING} terminal "
        f"{time.time() - killed_at:.1f} s after it"
    )


def test_f27_cut_one_of_three_hosts_links_recovered_and_not_overwritten(cluster: Cluster) -> None:
    victim_tasks = _busy_cluster(cluster)
    victim, host = cluster.workers[0], cluster.network.hosts[0]
    cut_at = time.time()
    host.cut()
    settled_at = _wait_taken_over(cluster, victim_tasks)
    poll_until(cluster.all_terminal, 120, "every task terminal while the host is cut off")
    outcomes = {i: cluster.app.store.get(i) for i in victim_tasks}
    restored_at = time.time()
    host.restore()
    # Its worker finishes the stale attempts it ran while cut off, and its writes of their outcomes are refused.
    poll_until(
        lambda: all(
            re.search(f"task {i} changed while attempt 1 ran", victim.log_tail(400)) for i in victim_tasks
        ),
        90,
        "the returning host's refused outcome writes",
    )
    records = _check_invariants(cluster, host.name, victim_tasks, cut_at)
    for task_id, before in outcomes.items():
        after = records[task_id]
        assert before is not None and after is not None
        fields = ("status", "attempt", "result", "output", "owner", "reason", "finished_at", "error_message")
        assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields], (
            f"the returning host overwrote {task_id}"
        )
    print(
        f"\nlink of {host.name} cut: its 2 tasks (one opted in) settled by the others "
        f"{_times(settled_at, cut_at)} s after the cut; link restored after "
        f"{restored_at - cut_at:.1f} s; its refused writes logged {time.time() - restored_at:.1f} s later"
    )
