"""Late results (issue 13): children a task spawns, merged while it runs or delivered after it ended.

The rules: `ctx.spawn(sig, on_late=followup.s())` starts a child carrying the parent's id; while the parent
runs, `ctx.results()` yields each child's result once (hot merge); a result the parent did not take before
it ended (or, if it did not succeed, any result) goes to the `on_late` follow-up exactly once (wake-up
merge), never dropped, even when a worker is SIGKILLed between the child's outcome and the follow-up.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import late_tasks as lt
import pytest
from behaviour_tasks import read_effects
from conftest import (
    BROKERS,
)
from store_helpers import BACKENDS, fresh_store_url
from workers import Rig, poll_until, short_lease_rig

from decortask import ChildResult, Decortask, DecortaskError, TaskContext, TaskHandle, TaskStatus
from decortask import late_results as late_results_module
from decortask.canvas import derived_id
from decortask.store import open_store
from decortask.store.base import TaskQuery
from decortask.store.spawn_state import SpawnStore
from decortask.testing import eager, isolated_app, run_pending

# -- the mailbox in every store ------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def mailbox_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SpawnStore]:
    store = open_store(fresh_store_url(request, tmp_path, "dt-spawn"))
    assert isinstance(store, SpawnStore)
    yield store
    store.close()  # type: ignore[attr-defined]


def test_a_mailbox_holds_children_in_order_once_and_makes_the_untaken_late_at_its_close(
    mailbox_store: SpawnStore,
) -> None:
    store = mailbox_store
    store.spawn_open("p")
    assert store.spawn_unsettled(10) == ["p"]
    assert store.spawn_post("p", "c1") and store.spawn_post("p", "c2")
    assert store.spawn_post("p", "c1")  # a redelivered child changes nothing
    assert store.spawn_take("p", 0, 1) == ["c1"]
    assert store.spawn_take("p", 1, 5) == ["c2"] and store.spawn_take("p", 2, 5) == []
    assert store.spawn_post("p", "c3")
    assert store.spawn_close("p", keep_taken=True) == ["c3"]  # not taken: late
    assert store.spawn_close("p", keep_taken=False) == ["c3"]  # idempotent: the first close decided
    assert not store.spawn_post("p", "c4")  # closed: late, its own worker delivers it
    assert not store.spawn_post("p", "c4")  # ... until it says it did
    assert store.spawn_unsettled(10) == ["p"]
    store.spawn_delivered("p", "c3")
    store.spawn_delivered("p", "c4")
    assert store.spawn_post("p", "c4") and store.spawn_post("p", "c1")
    assert store.spawn_close("p", keep_taken=True) == []
    assert store.spawn_unsettled(10) == []


def test_a_parent_that_did_not_succeed_makes_every_child_late(mailbox_store: SpawnStore) -> None:
    mailbox_store.spawn_open("p")
    assert mailbox_store.spawn_post("p", "c1") and mailbox_store.spawn_take("p", 0, 5) == ["c1"]
    assert mailbox_store.spawn_close("p", keep_taken=False) == ["c1"]


def test_a_child_of_a_mailbox_gone_is_late() -> None:
    store = open_store("memory://")
    assert isinstance(store, SpawnStore)
    assert not store.spawn_post("never-opened", "c")


def test_a_child_racing_the_close_is_made_late_by_exactly_one_side(mailbox_store: SpawnStore) -> None:
    """Children end while the parent's mailbox closes: each is either made late by the close or by its
    own post to the closed mailbox, never both and never neither."""
    store = mailbox_store
    store.spawn_open("racing")
    children = [f"c{i}" for i in range(40)]
    posted: dict[str, bool] = {}
    closed: list[list[str]] = []
    gate = threading.Barrier(len(children) + 1)

    def post(child: str) -> None:
        gate.wait()
        posted[child] = store.spawn_post("racing", child)

    def close() -> None:
        gate.wait()
        closed.append(store.spawn_close("racing", keep_taken=True))

    threads = [threading.Thread(target=post, args=(c,)) for c in children]
    threads.append(threading.Thread(target=close))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    by_close = set(closed[0])
    by_post = {child for child, held in posted.items() if not held}
    assert by_close | by_post == set(children) and not by_close & by_post
    assert sorted(store.spawn_close("racing", keep_taken=True)) == sorted(children)  # none delivered yet


# -- in one process ------------------------------------------------------------------------------------------


@pytest.fixture
def app() -> Iterator[Decortask]:
    with isolated_app() as test_app:
        yield test_app


def _followup(parent: TaskHandle[Any], index: int) -> str:
    return derived_id(derived_id(parent.id, f"spawn:{index}"), "late")


def test_eager_mode_merges_every_childs_result_while_the_parent_runs(app: Decortask) -> None:
    with eager():
        handle = lt.hot_sum.delay(4)
    assert handle.get(timeout=0) == 0 + 2 + 4 + 6
    child = app.store.get(derived_id(handle.id, "spawn:0"))
    assert child is not None and (child.parent_id, child.root_id) == (handle.id, handle.id)
    assert app.store.get(_followup(handle, 0)) is None  # merged hot: no follow-up


def test_an_async_task_merges_its_children_with_aresults(app: Decortask) -> None:
    with eager():
        handle = lt.ahot_sum.delay(2)
    assert handle.get(timeout=0) == 21


def test_results_that_arrive_after_the_parent_ended_go_to_its_follow_up_once_each(app: Decortask) -> None:
    handle = lt.spawn_late.delay([5, 7])
    run_pending(app)  # the parent, its children (which end after it) and the follow-ups
    assert handle.get(timeout=0) == "spawned"
    for index, value in enumerate([5, 7]):
        followup = TaskHandle(app, _followup(handle, index), "lt.on_late")
        late = ChildResult.from_dict(followup.get(timeout=0))
        assert (late.parent_id, late.status, late.result, late.ok) == (
            handle.id,
            TaskStatus.SUCCESS,
            value,
            True,
        )
        assert late.task_id == derived_id(handle.id, f"spawn:{index}")
        assert followup.record().parent_id == handle.id


def test_a_failed_late_child_is_delivered_with_its_error(app: Decortask) -> None:
    handle = lt.spawn_failing.delay()
    run_pending(app)
    late = ChildResult.from_dict(TaskHandle(app, _followup(handle, 0), "lt.on_late").get(timeout=0))
    assert late.status is TaskStatus.FAILED and not late.ok
    assert (late.error_type, late.error_message) == (
        "builtins.ValueError",
        "the child failed after its parent ended",
    )


def test_a_child_that_retries_is_delivered_once_with_its_last_attempts_outcome(app: Decortask) -> None:
    handle = lt.spawn_flaky.delay()
    run_pending(app)  # the parent, then the child's first attempt: RETRYING, not a result yet
    child = TaskHandle(app, derived_id(handle.id, "spawn:0"), "lt.flaky_child")
    assert child.status is TaskStatus.RETRYING and app.store.get(_followup(handle, 0)) is None
    run_pending(app, now=time.time() + 120)  # its second attempt, then the follow-up
    late = ChildResult.from_dict(TaskHandle(app, _followup(handle, 0), "lt.on_late").get(timeout=0))
    assert (late.status, late.result) == (TaskStatus.SUCCESS, 42)


def test_a_parent_that_fails_after_merging_hands_the_merged_results_to_its_follow_up(app: Decortask) -> None:
    with eager():
        handle = lt.spawn_then_fail.delay()
    assert handle.status is TaskStatus.FAILED
    late = ChildResult.from_dict(TaskHandle(app, _followup(handle, 0), "lt.on_late").get(timeout=5))
    assert late.result == 5


def test_an_attempt_run_again_finds_its_children_instead_of_spawning_them_twice(app: Decortask) -> None:
    handle = lt.spawn_late.delay([1])
    run_pending(app, max_tasks=1)  # the parent only
    record = app.store.get(handle.id)
    assert record is not None
    ctx = TaskContext(task_id=handle.id, name="lt.spawn_late", attempt=2)
    with late_results_module.attempt(app, handle.id, lambda step: step()):
        again = ctx.spawn(lt.after_parent.s(handle.id, 1), on_late=lt.on_late.s("late"))
    assert again.id == derived_id(handle.id, "spawn:0")
    run_pending(app)
    assert len([r for r in app.store.list_tasks(TaskQuery()) if r.name == "lt.after_parent"]) == 1


def test_spawn_outside_a_worker_says_where_it_works() -> None:
    ctx = TaskContext(task_id="direct", name="lt.spawn_late")
    with pytest.raises(DecortaskError, match=r"no worker runs .* run_pending\(\) or eager\(\)"):
        ctx.spawn(lt.add.s(1, 2))


@pytest.mark.parametrize("died", ["before_the_close", "between_the_close_and_the_delivery"])
def test_the_sweep_delivers_what_a_parents_worker_left_undelivered_when_it_died(
    app: Decortask, died: str
) -> None:
    """The parent's worker closes its mailbox and delivers the late results right after the outcome. Killed
    before the close, it leaves the mailbox open (a child that ends then is held there); killed after it,
    the mailbox is closed but not settled. Any worker's reaper loop sweeps it: the follow-up runs."""
    assert isinstance(app.store, SpawnStore)
    store = app.store

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(late_results_module, "close_if_ended", lambda *args: False)  # died before closing
        handle = lt.spawn_late.delay([3])
        run_pending(app)  # the parent, then its child, held in the open mailbox
    if died == "between_the_close_and_the_delivery":
        store.spawn_close(handle.id, keep_taken=True)
    assert store.spawn_unsettled(10) == [handle.id]
    assert app.store.get(_followup(handle, 0)) is None  # held in the mailbox, not lost
    assert late_results_module.sweep(app) == 1
    run_pending(app)
    assert TaskHandle(app, _followup(handle, 0), "lt.on_late").get(timeout=0)["result"] == 3
    assert store.spawn_unsettled(10) == [] and late_results_module.sweep(app) == 0


def test_the_sweep_moves_past_parents_that_still_run(app: Decortask) -> None:
    """Mailboxes of running parents stay unsettled; a sweep that found only those looks further next time,
    so a crowd of running parents never hides one that ended."""
    store = app.store
    assert isinstance(store, SpawnStore)
    ended = lt.add.delay(3, 4)
    run_pending(app)
    waiting = lt.add.delay(1, 2)  # never run: PENDING
    store.spawn_open(waiting.id)  # listed first
    store.spawn_open(ended.id)  # its worker died before closing it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(late_results_module, "SWEEP_BATCH", 1)
        swept = [late_results_module.sweep(app) for _ in range(2)]
    assert swept == [0, 1] and store.spawn_unsettled(10) == [waiting.id]


# -- real workers on every broker ----------------------------------------------------------------------------


@pytest.fixture(params=BROKERS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with short_lease_rig(request.param, tmp_path, "late", ("-A", "tests.late_tasks")) as test_rig:
        yield test_rig


def _followups(rig: Rig, label: str) -> list[str]:
    """`child:status:result` of every recorded follow-up run with this label."""
    rows = read_effects(str(rig.effects))
    prefix = f"on_late:{label}:"
    return sorted(str(row["event"])[len(prefix) :] for row in rows if str(row["event"]).startswith(prefix))


@pytest.mark.broker
def test_hot_merge_and_wake_up_merge_on_real_workers(rig: Rig) -> None:
    with rig.worker("w1", concurrency=6) as worker:  # three parents wait while their children run
        hot = lt.hot_sum.apply_async((5,), app=rig.app)
        ahot = lt.ahot_sum.apply_async((3,), app=rig.app)
        late = lt.spawn_late.apply_async(([10, 20, 30],), app=rig.app)
        mixed = lt.hot_then_late.apply_async(app=rig.app)
        assert hot.get(timeout=60) == sum(2 * i for i in range(5)), worker.log_tail()
        assert ahot.get(timeout=60) == 33  # (0 + 10) + (1 + 10) + (2 + 10), merged with ctx.aresults()
        assert late.get(timeout=60) == "spawned"
        assert mixed.get(timeout=60) == 21  # the child that ended while it ran
        followups = [_followup(late, i) for i in range(3)] + [_followup(mixed, 1)]
        for followup in followups:
            poll_until(lambda followup=followup: rig.app.store.get(followup), 60, "the follow-up to be sent")
            TaskHandle(rig.app, followup, "lt.on_late").get(timeout=60)
    children = [derived_id(late.id, f"spawn:{i}") for i in range(3)]
    assert _followups(rig, "late") == sorted(
        f"{c}:SUCCESS:{v}" for c, v in zip(children, [10, 20, 30], strict=True)
    )
    assert _followups(rig, "mixed") == [f"{derived_id(mixed.id, 'spawn:1')}:SUCCESS:99"]  # not the hot one
    assert _followups(rig, "hot_sum") == []


@pytest.mark.broker
def test_hot_and_wake_up_merge_in_a_process_pool(tmp_path: Path) -> None:
    """A parent in a process-pool child spawns and merges through the same store as a thread would."""
    with (
        short_lease_rig("sqlite", tmp_path, "late", ("-A", "tests.late_tasks")) as pool_rig,
        pool_rig.worker("w1", "--pool", "processes", concurrency=3) as worker,
    ):
        hot = lt.hot_sum.apply_async((3,), app=pool_rig.app)
        late = lt.spawn_late.apply_async(([8],), app=pool_rig.app)
        assert hot.get(timeout=60) == 0 + 2 + 4, worker.log_tail()
        followup = TaskHandle(pool_rig.app, _followup(late, 0), "lt.on_late")
        poll_until(lambda: pool_rig.app.store.get(followup.id), 60, "the follow-up to be sent")
        assert followup.get(timeout=60)["result"] == 8


@pytest.mark.broker
@pytest.mark.parametrize("point", ["before_followup", "after_followup"])
def test_f_late_sigkill_between_a_childs_outcome_and_its_follow_up_delivers_it_exactly_once(
    rig: Rig, point: str
) -> None:
    """The worker delivering a late result is SIGKILLed (really: the test's task module makes it kill
    itself there) before creating the follow-up, or after creating it but before acking. The message's
    redelivery to another worker delivers it: one follow-up run, with the child's result."""
    marker = rig.tmp / "killed"
    kill = {"LATE_TEST_KILL_AT": point, "LATE_TEST_KILL_MARKER": str(marker)}
    first = rig.worker("w1", env=kill).start()
    parent = lt.spawn_late.apply_async(([42],), app=rig.app)
    try:
        poll_until(marker.exists, 60, "a worker to reach the late delivery")
        assert first.wait(30) == -signal.SIGKILL
    finally:
        first.kill()
    followup = TaskHandle(rig.app, _followup(parent, 0), "lt.on_late")
    with rig.worker("w2") as second:
        poll_until(lambda: rig.app.store.get(followup.id), 60, "the redelivery to send the follow-up")
        assert followup.get(timeout=60)["result"] == 42, second.log_tail()
        child = TaskHandle(rig.app, derived_id(parent.id, "spawn:0"), "lt.after_parent")
        assert child.get(timeout=5) == 42
    assert _followups(rig, "late") == [f"{child.id}:SUCCESS:42"]  # exactly once
    assert followup.record().attempt == 1


@pytest.mark.broker
def test_f_late_sigkill_between_the_parents_outcome_and_its_close_the_sweep_delivers_once(rig: Rig) -> None:
    """The parent's worker dies after writing the parent's outcome, before closing its mailbox: the child
    that ends then is held in the open mailbox, and another worker's sweep closes it and delivers it."""
    marker = rig.tmp / "killed"
    first = rig.worker("w1", env={"LATE_TEST_KILL_AT": "before_close", "LATE_TEST_KILL_MARKER": str(marker)})
    first.start()
    parent = lt.spawn_late.apply_async(([6],), app=rig.app)
    try:
        poll_until(marker.exists, 60, "the parent's worker to reach the close")
        assert first.wait(30) == -signal.SIGKILL
    finally:
        first.kill()
    assert parent.get(timeout=5) == "spawned"
    followup = TaskHandle(rig.app, _followup(parent, 0), "lt.on_late")
    child = derived_id(parent.id, "spawn:0")
    with rig.worker("w2") as second:
        poll_until(lambda: rig.app.store.get(followup.id), 60, "the sweep to send the follow-up")
        # SUCCESS, or INTERRUPTED if the child had started on the killed worker: delivered either way.
        assert followup.get(timeout=60)["task_id"] == child, second.log_tail()
        assert "left behind by a worker that died" in second.log_tail(200)
    (delivered,) = _followups(rig, "late")  # exactly once
    assert delivered.startswith(f"{child}:")


@pytest.mark.broker
def test_f_late_sigkill_while_the_parent_waits_its_next_attempt_merges_the_same_children(rig: Rig) -> None:
    """The parent (opted in to requeue_on_interrupt) is SIGKILLed while it waits for its children; its
    next attempt spawns again, gets the same children back (none is started twice) and merges every one."""
    n = 4
    first = rig.worker("w1", concurrency=4).start()
    parent = lt.gather.apply_async((n, 0.5), app=rig.app)
    try:
        poll_until(lambda: rig.effects_of(parent), 60, "the parent to spawn its children")
    finally:
        first.signal(signal.SIGKILL)
        first.wait(10)
    with rig.worker("w2", concurrency=4) as second:
        assert parent.get(timeout=90) == sum(range(n)), second.log_tail()
    assert [attempt for attempt, _ in rig.effects_of(parent)][-1] >= 2  # it ran again
    children = {str(row["id"]) for row in read_effects(str(rig.effects)) if row["event"] == "slow_child"}
    assert children == {derived_id(parent.id, f"spawn:{i}") for i in range(n)}  # the same ones, once each
    assert _followups(rig, "gather") == []  # all merged by the attempt that succeeded
