"""F-26 (issue 14): three real `decortask worker` processes share an `every(seconds=1)` schedule on Redis
and on RabbitMQ; the leader is SIGKILLed mid-way. No slot runs twice, and none is lost: the handover
takes a few seconds, well within the schedule's grace (60 s), so under the default policy every slot runs.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from workers import WorkerProcess, poll_until, short_lease_rig

from decortask.periodic import lease_name
from decortask.states import TaskStatus
from decortask.store.base import TaskQuery
from decortask.store.periodic_state import periodic_state

RUN_BEFORE_KILL = 8.0
RUN_AFTER_KILL = 12.0


def _runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.broker
@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_f26_three_workers_run_each_slot_once_and_a_killed_leader_loses_no_slot(
    kind: str, tmp_path: Path
) -> None:
    with short_lease_rig(kind, tmp_path, "f26") as rig:
        name = f"f26-{rig.queue}"
        env = {"DECORTASK_SCHEDULES": json.dumps({name: {"task": "pt.beat", "every": 1, "queue": rig.queue}})}
        workers = []
        for n in range(3):
            worker = rig.worker(f"w{n}", env=env)
            worker.command[worker.command.index("tests.behaviour_tasks")] = "tests.periodic_tasks"
            workers.append(worker.start())
        state = periodic_state(rig.app.store)
        try:
            poll_until(lambda: _runs(rig.effects), 30, "the first slot's run")
            time.sleep(RUN_BEFORE_KILL)
            owner = poll_until(lambda: state.lease_owner(lease_name(name), time.time()), 10, "a leader")
            leader = next(w for w in workers if f":{w.pid}:" in owner)
            leader.signal(signal.SIGKILL)
            leader.wait(10)
            killed_at = time.time()
            time.sleep(RUN_AFTER_KILL)
            survivors = [w for w in workers if w is not leader]
            new_owner = poll_until(
                lambda: state.lease_owner(lease_name(name), time.time()), 10, "a new leader"
            )
            assert new_owner != owner
            records = _settled_records(rig, name)
        finally:
            for worker in workers:
                worker.stop()
        _report(workers)
        runs = Counter(run["slot"] for run in _runs(rig.effects))
        slots = sorted(records)
        assert slots, "no slot was published"
        # No slot run twice, and no slot lost: every second from the first slot to the last is there.
        assert [s for s, count in runs.items() if count > 1] == []
        expected = [_iso(_ts(slots[0]) + k) for k in range(int(_ts(slots[-1]) - _ts(slots[0])) + 1)]
        assert slots == expected, f"slots missing: {sorted(set(expected) - set(slots))}"
        for slot, status in records.items():
            # A run killed with its worker ends INTERRUPTED and may have written its line or not.
            assert runs[slot] == 1 or status is TaskStatus.INTERRUPTED, (slot, status, runs[slot])
        assert any(_ts(s) > killed_at + 1 for s in slots), "nothing was published after the leader died"
        assert len(survivors) == 2


def _settled_records(rig: Any, name: str) -> dict[str, TaskStatus]:
    """Slot -> final status of every slot task, once all of them have ended (the survivors run them)."""

    def settled() -> dict[str, TaskStatus] | None:
        found = rig.app.store.list_tasks(TaskQuery(name="pt.beat", limit=10_000))
        mine = [r for r in found if r.tags.get("periodic") == name]
        if not mine or any(not r.status.terminal for r in mine):
            return None
        return {r.tags["slot"]: r.status for r in mine}

    result: dict[str, TaskStatus] = poll_until(settled, 30, "every published slot to end")
    return result


def _ts(slot: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(slot).timestamp()


def _iso(ts: float) -> str:
    from decortask.schedules import slot_time

    return slot_time(ts)


def _report(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        print(f"--- {worker.log_path.name}\n{worker.log_tail(15)}")
