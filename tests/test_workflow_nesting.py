"""Nested workflows (issue 13): a group or a chord as a chain's step, a chain as a group's member or a
chord's header member or callback, groups in groups, and `group | task` as a chord.

The rules: a group in a chain gets the previous result (each member) and gives the next step the list of
its members' results, in order; a nested member's failure fails every enclosing workflow, the message
naming each level down to the failing task; cancelling a workflow reaches its nested pending tasks; and,
on real workers on every broker, a worker SIGKILLed while nested members run neither hangs the workflow nor
runs its callback twice. Deterministic cases run on the in-process driver (`run_pending`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import workflow_tasks as wt
from behaviour_tasks import read_effects
from conftest import BROKERS
from workers import Rig, poll_until, short_lease_rig

from decortask import Chord, Decortask, GroupHandle, TaskFailed, TaskStatus, chain, chord, group
from decortask import workflow as workflow_module
from decortask.canvas import derived_id
from decortask.store import TaskQuery
from decortask.testing import isolated_app, run_pending


@pytest.fixture
def app() -> Iterator[Decortask]:
    with isolated_app() as test_app:
        yield test_app


@pytest.fixture
def effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.jsonl"
    monkeypatch.setenv("DECORTASK_TEST_EFFECTS", str(path))
    return path


def _events(path: Path, event: str) -> list[dict[str, object]]:
    return [row for row in read_effects(str(path)) if row["event"] == event]


# -- results flow through the nesting ------------------------------------------------------------------------


def test_a_group_inside_a_chain_gets_the_previous_result_and_gives_the_next_step_the_list(
    app: Decortask,
) -> None:
    handle = chain(wt.add.s(1, 1), group(wt.mul.s(10), wt.mul.s(100)), wt.collect.s()).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == [20, 200]


def test_a_chain_inside_a_group_gives_its_last_result_in_its_place(app: Decortask) -> None:
    handle = group(chain(wt.add.s(1, 1), wt.mul.s(10)), wt.add.s(2, 2)).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == [20, 4]


def test_a_group_inside_a_group_gives_a_nested_list(app: Decortask) -> None:
    handle = group(group(wt.add.s(1, 1), wt.add.s(2, 2)), wt.add.s(3, 3)).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == [[2, 4], 6]


def test_a_chain_as_a_chords_header_member_and_as_its_callback(app: Decortask, effects: Path) -> None:
    header = [wt.add.s(1, 1) | wt.mul.s(10), wt.add.s(2, 2)]
    handle = chord(header, wt.tsum.s() | wt.mul.s(10)).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == 240  # (20 + 4) * 10
    assert len(_events(effects, "tsum")) == 1


def test_a_chord_inside_a_chain_passes_its_callbacks_result_on(app: Decortask, effects: Path) -> None:
    handle = (wt.add.s(1, 1) | chord([wt.mul.s(10), wt.mul.s(100)], wt.tsum.s()) | wt.add.s(5)).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == 225  # 2 -> [20, 200] -> 220 -> 225
    assert len(_events(effects, "tsum")) == 1


def test_group_piped_into_a_task_is_a_chord_as_in_celery(app: Decortask) -> None:
    upgraded = group(wt.add.s(i, i) for i in range(4)) | wt.tsum.s()
    assert isinstance(upgraded, Chord)
    handle = upgraded.apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == 12


def test_a_chain_that_ends_in_a_group_returns_the_groups_handle(app: Decortask) -> None:
    handle = (wt.add.s(1, 1) | group(wt.mul.s(10), wt.mul.s(100))).apply_async()
    assert isinstance(handle, GroupHandle)
    run_pending(app)
    assert handle.get(timeout=5) == [20, 200]


def test_an_empty_group_inside_a_chain_gives_the_next_step_an_empty_list(app: Decortask) -> None:
    handle = chain(wt.add.s(1, 1), group(), wt.collect.s()).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == []


def test_every_task_of_a_nested_workflow_has_the_workflows_root_and_a_derived_id(app: Decortask) -> None:
    handle = (wt.add.s(1, 1) | group(wt.mul.s(10), wt.add.s(5) | wt.mul.s(2)) | wt.collect.s()).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == [20, 14]
    root = handle.workflow_id
    group_id = derived_id(root, "step:1")
    inner = derived_id(group_id, "member:1")
    ids = [
        derived_id(root, "step:0"),
        derived_id(group_id, "member:0"),
        derived_id(inner, "step:0"),
        derived_id(inner, "step:1"),
        derived_id(root, "step:2"),
    ]
    records = [app.store.get(task_id) for task_id in ids]
    assert [r.status if r else None for r in records] == [TaskStatus.SUCCESS] * 5
    assert {r.root_id for r in records if r} == {root}


def test_every_continuation_of_a_nested_workflow_seen_again_creates_nothing_twice(
    app: Decortask, effects: Path
) -> None:
    """A redelivered message of any task of a nested workflow (a worker killed before its ack) settles its
    frames again: every task it would create exists under its derived id, so nothing is created or run
    twice, and the callback runs once."""
    header = [chain(wt.add.si(i, 1), wt.mul.s(10)) for i in range(3)]
    handle = (wt.add.si(0, 0) | chord(header, wt.tsum.s()) | group(wt.mul.s(2), wt.add.s(1))).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == [120, 61]
    tasks = app.store.list_tasks(TaskQuery(root_id=handle.id, limit=100))
    assert len(tasks) == 10
    for record in tasks:  # every delivery seen again, as a redelivery would make the worker do
        if record.workflow:
            workflow_module.continue_workflow(app, record.id, record.workflow, lambda step: step())
    run_pending(app)
    assert app.store.count_tasks(TaskQuery(root_id=handle.id)) == 10
    assert len(_events(effects, "tsum")) == 1


# -- failures name every level -------------------------------------------------------------------------------


def test_a_failed_member_of_a_group_inside_a_chain_fails_the_chain_naming_both(
    app: Decortask, effects: Path
) -> None:
    handle = chain(wt.add.s(1, 1), group(wt.mul.s(10), wt.fail.s()), wt.collect.s()).apply_async()
    run_pending(app)
    with pytest.raises(
        TaskFailed,
        match=r"chain \w+: step 2 of 3, group \w+: member 2 of 2, wf\.fail \(task \w+\) ended FAILED",
    ):
        handle.get(timeout=5)
    assert handle.record().reason == "workflow_failed"
    assert _events(effects, "collect") == []


def test_a_failed_step_of_a_chain_in_a_chords_header_fails_the_chord_and_its_callback_never_runs(
    app: Decortask, effects: Path
) -> None:
    header = [chain(wt.add.s(1, 1), wt.fail.s(), wt.add.s(1)), wt.add.s(2, 2)]
    handle = chord(header, wt.tsum.s()).apply_async()
    run_pending(app)
    with pytest.raises(
        TaskFailed, match=r"chord \w+: member 1 of 2, chain \w+: step 2 of 3, wf\.fail"
    ) as caught:
        handle.get(timeout=5)
    assert "the callback did not run" in str(caught.value)
    assert _events(effects, "tsum") == []


def test_a_failure_before_a_final_group_fails_each_of_its_members(app: Decortask) -> None:
    handle = (wt.fail.s(1) | group(wt.mul.s(10), wt.mul.s(100))).apply_async()
    run_pending(app)
    assert isinstance(handle, GroupHandle)
    assert [member.status for member in handle] == [TaskStatus.FAILED] * 2  # type: ignore[union-attr]
    with pytest.raises(TaskFailed, match=r"step 1 of 2, wf\.fail"):
        handle.get(timeout=5)


def test_a_chord_passing_failures_gets_a_nested_members_failure_in_its_place(app: Decortask) -> None:
    header = [chain(wt.add.s(1, 1), wt.fail.s()), wt.add.s(2, 2)]
    handle = chord(header, wt.collect.s(), pass_failures=True).apply_async()
    run_pending(app)
    first, second = handle.get(timeout=5)
    assert (first["status"], first["error_message"], second) == ("FAILED", "wf.fail got 2", 4)


def test_a_step_after_a_group_whose_arguments_do_not_fit_fails_the_chain(app: Decortask) -> None:
    handle = chain(group(wt.add.s(1, 1)), wt.add.s(1, 2), wt.mul.s(2)).apply_async()  # add([2], 1, 2)
    run_pending(app)
    with pytest.raises(TaskFailed, match=r"step 2 of 3, wf\.add could not be enqueued after task \w+"):
        handle.get(timeout=5)


# -- cancel ------------------------------------------------------------------------------------------------------


def test_cancelling_a_nested_workflow_cancels_its_pending_tasks_at_every_level(app: Decortask) -> None:
    handle = group(chain(wt.add.s(1, 1), wt.mul.s(10)), chord([wt.add.s(1, 1), wt.add.s(2, 2)], wt.tsum.s()))
    started = handle.apply_async()
    assert started.cancel() == 3  # the chain's first step and the chord's two members
    run_pending(app)
    with pytest.raises(TaskFailed, match=r"step 1 of 2, wf\.add \(task \w+\) ended CANCELLED"):
        started.get(timeout=5)
    with pytest.raises(TaskFailed, match=r"ended CANCELLED"):
        started[1].get(timeout=5)


# -- real workers on every broker ---------------------------------------------------------------------------


@pytest.fixture(params=BROKERS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with short_lease_rig(request.param, tmp_path, "nesting", ("-A", "tests.workflow_tasks")) as test_rig:
        yield test_rig


@pytest.mark.broker
def test_nested_workflows_on_real_workers(rig: Rig) -> None:
    with rig.worker("w1", concurrency=4) as worker, rig.worker("w2", concurrency=4):
        in_chain = (wt.add.s(1, 1) | group(wt.mul.s(i) for i in range(5)) | wt.tsum.s()).apply_async(
            app=rig.app
        )
        in_chord = chord(
            [wt.add.s(i, 1) | wt.mul.s(10) for i in range(6)], wt.tsum.s() | wt.add.s(1)
        ).apply_async(app=rig.app)
        chord_in_chain = (
            wt.add.s(1, 1) | chord([wt.mul.s(10), wt.mul.s(100)], wt.tsum.s()) | wt.add.s(5)
        ).apply_async(app=rig.app)
        failing = chain(wt.add.s(1, 1), group(wt.mul.s(10), wt.fail.s()), wt.tsum.s()).apply_async(
            app=rig.app
        )
        assert in_chain.get(timeout=60) == 2 * sum(range(5)), worker.log_tail()
        assert in_chord.get(timeout=60) == 10 * sum(i + 1 for i in range(6)) + 1
        assert chord_in_chain.get(timeout=60) == 225
        with pytest.raises(TaskFailed, match=r"step 2 of 3, group \w+: member 2 of 2, wf\.fail"):
            failing.get(timeout=60)
    runs = [row["id"] for row in _events(rig.effects, "tsum")]
    assert sorted(runs) == sorted({*runs}) and len(runs) == 3  # each callback ran once; the failed one never


def _nested_chord_in_a_chain(rig: Rig, member: str) -> object:
    """`add | chord([slow member | add(10)] x 4, tsum) | mul(2)`: chains inside a chord inside a chain."""
    slow = getattr(wt, member)
    header = [chain(slow.si(i, 1, 2.0), wt.add.s(10)) for i in range(4)]
    return (wt.add.si(0, 0) | chord(header, wt.tsum.s()) | wt.mul.s(2)).apply_async(app=rig.app)


def _sigkill_w1_once_started(rig: Rig, member: str, started: int) -> None:
    first = rig.worker("w1", concurrency=4).start()
    try:
        poll_until(lambda: len(_events(rig.effects, member)) >= started, 30, "nested members to start")
    finally:
        first.signal(signal.SIGKILL)
        first.wait(10)


@pytest.mark.broker
def test_f_workflow_sigkill_while_a_nested_workflows_members_run_its_callback_runs_once(rig: Rig) -> None:
    """Opted-in members (`requeue_on_interrupt`) of chains nested in a chord nested in a chain: a worker
    SIGKILLed while they run; they run again elsewhere and the whole workflow completes, callback once."""
    handle = _nested_chord_in_a_chain(rig, "slow_add")
    _sigkill_w1_once_started(rig, "slow_add", 2)
    with rig.worker("w2", concurrency=4) as second:
        assert handle.get(timeout=90) == 2 * sum(i + 1 + 10 for i in range(4)), second.log_tail()  # type: ignore[attr-defined]
    assert len(_events(rig.effects, "tsum")) == 1


@pytest.mark.broker
def test_f_workflow_sigkill_while_nested_members_not_opted_in_run_fails_every_level(rig: Rig) -> None:
    """Members not opted in end INTERRUPTED with their worker: the chain in the chord, the chord and the
    outer chain all fail, within the recovery time, naming the member; the callback never runs."""
    handle = _nested_chord_in_a_chain(rig, "slow_add_once")
    _sigkill_w1_once_started(rig, "slow_add_once", 4)
    with rig.worker("w2", concurrency=4) as second:
        with pytest.raises(
            TaskFailed,
            match=r"step 2 of 3, chord \w+: member \d of 4, chain \w+: step 1 of 2, wf\.slow_add_once .* ended INTERRUPTED",
        ):
            handle.get(timeout=90)  # type: ignore[attr-defined]
        assert second.log_tail() is not None
    assert _events(rig.effects, "tsum") == []
    assert len(_events(rig.effects, "slow_add_once")) == 4  # none ran again
