"""No workflow waits on a broker's redelivery (issue 13): a worker killed between a workflow task's outcome
and what follows it (the next chain step, a chord's callback, a graph's dependents) is repaired by the
sweep of any other worker within seconds, on every broker, where Redis would give the message back only
after its visibility timeout (an hour) and the embedded SQLite broker after its lease.

The mechanism: the outcome's store write marks the task "continuation pending" (same atomic write,
`store/follow_state.py`), `continue_workflow` clears the mark, and the reaper loop's sweep
(`followups.sweep`) continues tasks still marked whose owner is dead.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import followup_tasks as fu
import pytest
from behaviour_tasks import read_effects
from conftest import (
    BROKERS,
    REDIS_URL,
    broker_urls,
    delete_redis_namespace,
)
from store_helpers import BACKENDS, fresh_store_url
from workers import LEASE_TIMEOUT, Rig, poll_until, short_lease_rig

from decortask import Decortask, Graph, TaskStatus, chain, chord, followups
from decortask import workflow as workflow_module
from decortask.app import reset_default_app
from decortask.store import open_store
from decortask.store.base import TaskQuery, TaskRecord, TransitionStep
from decortask.store.follow_state import FollowStore
from decortask.testing import isolated_app, run_pending

# -- the mark, in every store --------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def follow_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    store = open_store(fresh_store_url(request, tmp_path, "dt-follow"))
    assert isinstance(store, FollowStore)
    yield store
    store.close()


def _running(store: Any, task_id: str, workflow: dict[str, Any] | None) -> None:
    now = time.time()
    store.create(
        TaskRecord(task_id, "t.x", "q", TaskStatus.PENDING, now, now, workflow=workflow, owner="w-dead")
    )
    assert store.transition(task_id, TaskStatus.RUNNING, expect={TaskStatus.PENDING}) is not None


@pytest.mark.parametrize(
    "how",
    ["transition", "outcome-not-read-back", "general-path"],
)
def test_a_workflow_tasks_outcome_marks_its_continuation_pending_and_a_plain_tasks_does_not(
    follow_store: Any, how: str
) -> None:
    store = follow_store
    _running(store, "wf", {"chain": []})
    _running(store, "plain", None)
    for task_id in ("wf", "plain"):
        if how == "transition":
            store.transition(task_id, TaskStatus.SUCCESS, expect={TaskStatus.RUNNING}, result=1)
        elif how == "outcome-not-read-back":  # what a worker's outcome write is (store/writer.py)
            step = TransitionStep(
                task_id, TaskStatus.SUCCESS, frozenset({TaskStatus.RUNNING}), changes={"result": 1},
                logs=False, read_back=False,
            )  # fmt: skip
            store.apply_step(step)
        else:  # no expected status: every SQL store takes its read-modify-write path
            store.transition(task_id, TaskStatus.FAILED, error_message="boom")
    assert store.follow_pending(time.time() + 1, 10) == ["wf"]
    assert store.follow_pending(time.time() - 60, 10) == []  # marked now, not a minute ago
    store.follow_done("wf")
    store.follow_done("never-marked")
    assert store.follow_pending(time.time() + 1, 10) == []


def test_a_running_or_retrying_workflow_task_is_not_marked(follow_store: Any) -> None:
    _running(follow_store, "wf", {"chain": []})
    follow_store.transition("wf", TaskStatus.RETRYING, expect={TaskStatus.RUNNING})
    assert follow_store.follow_pending(time.time() + 1, 10) == []


def test_a_plain_tasks_outcome_writes_nothing_more_than_its_record_on_sqlite(tmp_path: Path) -> None:
    """Only workflow tasks pay: on SQLite a plain task's outcome changes one row, a workflow task's two."""
    store: Any = open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        _running(store, "plain", None)
        _running(store, "wf", {"chain": []})
        conn = store._conn()
        changed = []
        for task_id in ("plain", "wf"):
            before = conn.total_changes
            store.transition(task_id, TaskStatus.SUCCESS, expect={TaskStatus.RUNNING}, result=1)
            changed.append(conn.total_changes - before)
        assert changed == [1, 2]
    finally:
        store.close()


# -- the sweep, in process -----------------------------------------------------------------------------------


@pytest.fixture
def app() -> Iterator[Decortask]:
    with isolated_app() as test_app:
        yield test_app


def _chain_left_behind(app: Decortask, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A chain whose first step ended and whose worker "died" before continuing it (never redelivered)."""
    real = workflow_module.continue_workflow
    skipped: list[str] = []

    def dies_once(app_: Decortask, task_id: str, spec: dict[str, Any], write: Any) -> None:
        if not skipped:
            skipped.append(task_id)
            return
        real(app_, task_id, spec, write)

    with monkeypatch.context() as patch:
        patch.setattr(workflow_module, "continue_workflow", dies_once)
        handle = chain(fu.value.s(3), fu.double.s()).apply_async()
        run_pending(app)
    assert skipped and app.store.get(handle.id) is None  # the second step was never created
    return handle


def test_the_sweep_continues_a_workflow_whose_worker_died_and_clears_the_mark(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = _chain_left_behind(app, monkeypatch)
    monkeypatch.setattr(followups, "GRACE", 0.0)
    store: Any = app.store
    assert followups.sweep(app, lambda owner: True) == 0  # its owner is alive: it is on it
    assert followups.sweep(app, lambda owner: False) == 1
    assert store.follow_pending(time.time() + 1, 10) == []
    run_pending(app)
    assert handle.get(timeout=5) == 6
    assert followups.sweep(app, lambda owner: False) == 0  # every step cleared its own mark


def test_the_sweep_continues_a_task_still_marked_after_stale_seconds_whatever_its_owner(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = _chain_left_behind(app, monkeypatch)
    monkeypatch.setattr(followups, "GRACE", 0.0)
    monkeypatch.setattr(followups, "STALE", 0.0)
    assert followups.sweep(app, lambda owner: True) == 1
    run_pending(app)
    assert handle.get(timeout=5) == 6


def test_the_sweep_sends_the_link_of_a_task_whose_worker_died_before_sending_it(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = workflow_module.continue_workflow
    with monkeypatch.context() as patch:
        patch.setattr(workflow_module, "continue_workflow", lambda *args: None)  # died before it
        handle = fu.value.apply_async((7,), link=fu.double.s())
        run_pending(app)
        patch.setattr(workflow_module, "continue_workflow", real)
    assert handle.get(timeout=5) == 7 and app.store.list_tasks(TaskQuery(name="fu.double")) == []
    monkeypatch.setattr(followups, "GRACE", 0.0)
    assert followups.sweep(app, lambda owner: False) == 1
    run_pending(app)
    (linked,) = app.store.list_tasks(TaskQuery(name="fu.double"))
    assert linked.status is TaskStatus.SUCCESS and linked.result == 14


def test_the_sweep_waits_grace_seconds_before_looking(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    _chain_left_behind(app, monkeypatch)
    monkeypatch.setattr(followups, "GRACE", 60.0)
    assert followups.sweep(app, lambda owner: False) == 0


# -- real workers, SIGKILLed between an outcome and what follows it -----------------------------------------

#: Far below Redis' visibility timeout (3600 s) and the embedded broker's lease (`sqlite_lease`, 40 s).
BOUND = 30.0


@pytest.fixture(params=BROKERS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """A broker with the default redelivery (Redis' visibility timeout, the embedded broker's lease) and a
    short `lease_timeout`, so a killed worker counts as dead within seconds."""
    token = uuid.uuid4().hex[:10]
    broker_url, store_url = broker_urls(request.param, tmp_path, token)
    queue = f"follow-{token}"
    app = Decortask(broker_url, store_url, default_queue=queue, lease_timeout=LEASE_TIMEOUT)
    env = {"DECORTASK_LEASE_TIMEOUT": str(LEASE_TIMEOUT)}
    try:
        yield Rig(
            request.param, app, broker_url, store_url, queue, tmp_path / "effects.jsonl", tmp_path, env,
            ("-A", "tests.followup_tasks"),
        )  # fmt: skip
    finally:
        app.transport.delete_queue(queue)
        app.transport.delete_queue(queue + ".dlq")
        app.close()
        reset_default_app()
        if request.param == "redis":
            delete_redis_namespace(REDIS_URL, f"test-{token}")


def _killed_after(rig: Rig, target: str, start: Any) -> Any:
    """Start a worker that SIGKILLs itself after the outcome of `target`, start the workflow (`start`),
    wait for the kill; the workflow's handle."""
    marker = rig.tmp / "killed"
    env = {"FOLLOW_TEST_KILL_AFTER": target, "FOLLOW_TEST_KILL_MARKER": str(marker)}
    first = rig.worker("w1", env=env, concurrency=1).start()
    try:
        handle = start()
        poll_until(marker.exists, 60, f"the worker to reach the outcome of {target}")
        assert first.wait(30) == -signal.SIGKILL
    finally:
        first.kill()
    return handle


def _runs(rig: Rig) -> list[str]:
    return sorted(str(row["event"]) for row in read_effects(str(rig.effects)))


@pytest.mark.broker
def test_f_follow_sigkill_between_a_chain_steps_outcome_and_the_next_step(rig: Rig) -> None:
    handle = _killed_after(
        rig, "fu.value:3", lambda: chain(fu.value.s(3), fu.double.s()).apply_async(app=rig.app)
    )
    with rig.worker("w2") as second:
        assert handle.get(timeout=BOUND) == 6, second.log_tail()
    assert _runs(rig) == ["double:3", "value:3"]  # the next step ran exactly once


@pytest.mark.broker
def test_f_follow_sigkill_between_a_chord_members_outcome_and_the_join(rig: Rig) -> None:
    """The last member's worker dies before counting it in the chord's join: the callback still runs,
    once."""
    members = [fu.value.s(1), fu.value.s(2), fu.value.s(3)]
    handle = _killed_after(rig, "fu.value:3", lambda: chord(members, fu.total.s()).apply_async(app=rig.app))
    with rig.worker("w2") as second:
        assert handle.get(timeout=BOUND) == 6, second.log_tail()
    assert _runs(rig) == ["total", "value:1", "value:2", "value:3"]


@pytest.mark.broker
def test_f_follow_sigkill_between_a_graph_nodes_outcome_and_its_dependents(rig: Rig) -> None:
    graph = Graph()
    graph.add("x", fu.value.s(4))
    graph.add("doubled", fu.double.s(), requires=["x"])
    handle = _killed_after(rig, "fu.value:4", lambda: graph.apply_async(app=rig.app))
    with rig.worker("w2") as second:
        assert handle.get(timeout=BOUND)["doubled"] == 8, second.log_tail()
    assert _runs(rig) == ["double:4", "value:4"]


@pytest.mark.broker
def test_f_follow_a_process_pool_child_killed_between_a_chain_steps_outcome_and_the_next_step(
    tmp_path: Path,
) -> None:
    """A process-pool child dies after writing a chain step's outcome: its worker finds the record ended
    and acks the message (nothing to settle), so no redelivery ever comes; the same worker's sweep creates
    the next step once the dead child counts as dead."""
    with short_lease_rig("sqlite", tmp_path, "follow", ("-A", "tests.followup_tasks")) as rig:
        marker = rig.tmp / "killed"
        env = {"FOLLOW_TEST_KILL_AFTER": "fu.value:5", "FOLLOW_TEST_KILL_MARKER": str(marker)}
        with rig.worker("w1", "--pool", "processes", env=env, concurrency=1) as worker:
            handle = chain(fu.value.s(5), fu.double.s()).apply_async(app=rig.app)
            poll_until(marker.exists, 60, "the child to reach the outcome of the first step")
            assert handle.get(timeout=BOUND) == 10, worker.log_tail()
        assert _runs(rig) == ["double:5", "value:5"]
