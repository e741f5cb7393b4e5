"""Limits across the cluster (issue 17's "Done when"), with real worker processes: two workers of two
threads each, on Redis (broker and store) and on RabbitMQ (a SQLite store). Start and end times are
written by the tasks themselves (tests/limit_tasks.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import limit_tasks as lt
import pytest
from workers import LEASE_TIMEOUT, Rig, WorkerProcess, poll_until, short_lease_rig

from decortask import TaskHandle, TaskStatus

WORKER_ARGS = ("-A", "tests.limit_tasks")


@pytest.fixture(params=["redis", "amqp"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with short_lease_rig(request.param, tmp_path, "limits", worker_args=WORKER_ARGS) as rig:
        yield rig


def two_workers(rig: Rig) -> list[WorkerProcess]:
    workers = [rig.worker(name, concurrency=2).start() for name in ("w1", "w2")]
    warm = [lt.free.delay(-1, 0.0) for _ in range(4)]  # both workers up and their imports done
    for handle in warm:
        handle.wait(timeout=60)
    return workers


def stop(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.stop()


def finish(handles: list[TaskHandle[Any]], timeout: float, rig: Rig) -> float:
    """Wait for every handle; returns when the last one ended (its record's finished_at)."""
    deadline = time.monotonic() + timeout
    ended = []
    for handle in handles:
        handle.wait(timeout=max(0.1, deadline - time.monotonic()))
        record = rig.app.store.get(handle.id)
        assert record is not None and record.status is TaskStatus.SUCCESS, (
            record,
            rig.worker("w1").log_tail(),
        )
        assert record.finished_at is not None
        ended.append(record.finished_at)
    return max(ended)


def most_in_a_window(times: list[float], window: float = 1.0) -> int:
    """The most of `times` in any half-open window [t, t + window)."""
    times = sorted(times)
    return max((sum(1 for s in times if t <= s < t + window) for t in times), default=0)


def starts(rig: Rig, task_name: str, key: str | None = None) -> list[float]:
    notes = lt.read_notes(str(rig.effects), task_name, "start")
    return [float(str(n["ts"])) for n in notes if key is None or n.get("key") == key]


def free_batch(rig: Rig, count: int = 48, seconds: float = 0.1) -> float:
    """Run `count` unlimited tasks at once; their rate (tasks per second from sending to the last end)."""
    sent = time.time()
    ended = finish([lt.free.delay(n, seconds) for n in range(count)], 60, rig)
    return count / (ended - sent)


def test_rate_limit_5_per_second_holds_across_two_workers_and_other_tasks_keep_flowing(rig: Rig) -> None:
    workers = two_workers(rig)
    try:
        alone = free_batch(rig)
        sent = time.time()
        paced = [lt.paced.delay(n) for n in range(100)]
        poll_until(lambda: len(starts(rig, "lt.paced")) >= 10, 30, "the paced tasks to get going")
        alongside = free_batch(rig)
        ended = finish(paced, 60, rig)
    finally:
        stop(workers)
    paced_starts = starts(rig, "lt.paced")
    print(  # the numbers behind the verdict, shown with -s
        f"[{rig.kind}] most starts in a 1 s window {most_in_a_window(paced_starts)}, 100 calls in "
        f"{ended - sent:.1f} s, unlimited {alongside:.1f}/s alongside vs {alone:.1f}/s alone"
    )
    assert len(paced_starts) == 100  # each ran once: waiting used no attempt
    assert most_in_a_window(paced_starts) <= 5
    took = ended - sent
    assert 17.0 <= took <= 23.0, (
        f"100 calls at 5/s took {took:.1f} s from sending to the last end (20 +- 3 s)"
    )
    assert alongside >= 0.8 * alone, (
        f"unlimited tasks ran at {alongside:.1f}/s beside the limited ones, {alone:.1f}/s alone (>= 80% expected)"
    )
    assert all(h.status is TaskStatus.SUCCESS for h in paced)


def test_concurrency_limit_2_holds_across_workers_and_a_killed_holder_frees_its_place(rig: Rig) -> None:
    workers = two_workers(rig)
    try:
        holders = [lt.pair.delay(n, 4.0) for n in range(2)]
        poll_until(lambda: len(lt.read_notes(str(rig.effects), "lt.pair", "start")) >= 2, 30, "two holders")
        victim_pid = int(str(lt.read_notes(str(rig.effects), "lt.pair", "start")[0]["pid"]))
        victim = next(w for w in workers if w.pid == victim_pid)
        short = [lt.pair.delay(n, 0.3) for n in range(10, 16)]
        time.sleep(0.5)  # the short ones find both places taken
        killed_at = time.time()
        victim.kill()
        survivors = [w for w in workers if w is not victim]
        finish(short, 60, rig)
        for handle in holders:  # the killed holder's task ends INTERRUPTED (worker_lost), the other SUCCESS
            handle.wait(timeout=30)
    finally:
        stop(workers)
    notes = lt.read_notes(str(rig.effects), "lt.pair")
    ends = {n["id"]: float(str(n["ts"])) for n in notes if n["event"] == "end"}
    intervals = [(float(str(n["ts"])), ends.get(n["id"], killed_at)) for n in notes if n["event"] == "start"]
    assert max_overlap(intervals) <= 2, intervals
    first_short = min(float(str(n["ts"])) for n in notes if n["event"] == "start" and int(str(n["n"])) >= 10)
    print(
        f"[{rig.kind}] at most {max_overlap(intervals)} running; place taken {first_short - killed_at:.2f} s after the kill"
    )
    recovery = LEASE_TIMEOUT + 3.0  # the lease, a heartbeat's age, the parked call's next try, the scheduler
    assert first_short < killed_at + recovery, (
        f"the killed holder's place was taken {first_short - killed_at:.1f} s after the kill (<= {recovery} s)"
    )
    assert survivors and {h.status for h in holders} <= {TaskStatus.SUCCESS, TaskStatus.INTERRUPTED}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in events:  # an end sorts before a start at the same instant
        running += step
        most = max(most, running)
    return most


def test_each_key_gets_its_own_rate(rig: Rig) -> None:
    workers = two_workers(rig)
    try:
        handles = [lt.per_tenant.delay(tenant, n) for n in range(8) for tenant in ("acme", "globex")]
        finish(handles, 60, rig)
    finally:
        stop(workers)
    for tenant in ("acme", "globex"):
        assert most_in_a_window(starts(rig, "lt.tenant", tenant)) <= 2
    assert most_in_a_window(starts(rig, "lt.tenant")) >= 4  # two keys: two limits, not one shared


def test_each_key_gets_its_own_concurrency_limit(rig: Rig) -> None:
    workers = two_workers(rig)
    try:
        handles = [
            lt.solo_per_tenant.delay(tenant, n, 0.3) for n in range(5) for tenant in ("acme", "globex")
        ]
        finish(handles, 60, rig)
    finally:
        stop(workers)
    notes = lt.read_notes(str(rig.effects), "lt.solo_per_tenant")
    ends = {n["id"]: float(str(n["ts"])) for n in notes if n["event"] == "end"}

    def intervals(key: str | None) -> list[tuple[float, float]]:
        starts = [n for n in notes if n["event"] == "start" and (key is None or n["key"] == key)]
        return [(float(str(n["ts"])), ends[n["id"]]) for n in starts]

    for tenant in ("acme", "globex"):
        assert max_overlap(intervals(tenant)) == 1, intervals(tenant)
    both = max_overlap(intervals(None))
    print(f"[{rig.kind}] one at a time per key; {both} at once across the two keys")
    assert both == 2  # two keys: two places, not one shared
