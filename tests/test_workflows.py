"""Workflows (issue 13, first slice): signatures, chain, group, chord.

The rules: a chain feeds each result to the next step and fails naming the step that failed; a group's
results come back in order; a chord's callback gets the members' results once all ended, runs exactly once,
and never runs when a member failed (unless the chord passes failures to it). Deterministic cases run on
the in-process driver (`run_pending`); the same behaviours then run on real worker subprocesses on every
broker, and a worker is SIGKILLed while chord members run.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workflow_tasks as wt
from behaviour_tasks import read_effects
from conftest import (
    BROKERS,
)
from store_helpers import BACKENDS, fresh_store_url
from workers import Rig, poll_until, short_lease_rig

from decortask import (
    ConfigurationError,
    Decortask,
    Signature,
    TaskFailed,
    TaskHandle,
    TaskNotFound,
    TaskStatus,
    WaitTimeout,
    chain,
    chord,
    continuations,
    group,
    signature,
)
from decortask import workflow as workflow_module
from decortask.canvas import derived_id
from decortask.message import Message
from decortask.records import message_from_record
from decortask.store import TaskRecord, TaskStore, open_store
from decortask.store.redis import RedisStore
from decortask.store.workflow_state import JOIN_TTL, WorkflowStore
from decortask.testing import eager, isolated_app, run_pending

# -- signatures ----------------------------------------------------------------------------------------------


def test_a_signature_is_json_and_comes_back_the_same() -> None:
    sig = wt.add.s(2).set(queue="maths", countdown=5, priority=3, tags={"k": "v"})
    data = json.loads(json.dumps(sig.to_dict()))
    assert Signature.from_dict(data) == sig
    assert data == {
        "task": "wf.add",
        "args": [2],
        "kwargs": {},
        "options": {"queue": "maths", "countdown": 5, "priority": 3, "tags": {"k": "v"}},
    }


def test_s_takes_the_previous_result_first_and_si_ignores_it() -> None:
    assert wt.add.s(2).with_parent_result(40).args == (40, 2)
    assert wt.add.si(1, 2).with_parent_result(40).args == (1, 2)
    assert Signature.from_dict(wt.add.si(1, 2).to_dict()).immutable


def test_a_signature_refuses_an_unknown_option_and_a_malformed_dict() -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        wt.add.s(1, 2).set(retries=3)
    with pytest.raises(ConfigurationError):
        Signature.from_dict({"task": "wf.add", "args": "not a list"})
    with pytest.raises(ConfigurationError):
        Signature.from_dict(["wf.add"])


def test_a_signature_is_sent_with_delay_and_by_name() -> None:
    with isolated_app() as app:
        first = wt.add.s(2).delay(40)
        second = signature("wf.mul", (6, 7)).apply_async()
        run_pending(app)
        assert (first.get(timeout=5), second.get(timeout=5)) == (42, 42)


# -- the chord join in every store -------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def join_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkflowStore]:
    store = open_store(fresh_store_url(request, tmp_path, "dt-join"))
    assert isinstance(store, WorkflowStore)
    yield store
    store.close()


def test_a_join_counts_each_member_once_and_exactly_one_report_sees_it_complete(
    join_store: WorkflowStore,
) -> None:
    size = 16
    firsts: list[int] = []
    agains: list[int] = []
    lock = threading.Lock()

    def report(member: int) -> None:
        first = join_store.join_member("chord-1", member)
        again = join_store.join_member("chord-1", member)  # a redelivered report counts nothing
        with lock:
            firsts.append(first)
            agains.append(again)

    threads = [threading.Thread(target=report, args=(member,)) for member in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(firsts) == list(range(1, size + 1))  # atomic: each report saw its own count
    assert max(agains) == size and all(again >= first for first, again in zip(firsts, agains, strict=True))
    assert join_store.join_member("chord-1", 0) == size
    assert join_store.join_member("chord-2", 0) == 1  # joins are separate


def test_the_expiry_purge_deletes_the_joins_named_by_the_records_it_deletes(
    join_store: WorkflowStore,
) -> None:
    """A join's rows go with its members' records: once they expire and are purged, reporting a member
    of that join again starts from nothing. A join whose records are still kept is untouched."""
    store = join_store
    assert isinstance(store, TaskStore)
    if isinstance(store, RedisStore):  # Redis expires a join's set by itself, JOIN_TTL after its last report
        store.join_member("chord-old", 0)
        assert 0 < store._client.ttl(f"{store.namespace}:join:chord-old") <= JOIN_TTL
        return
    now = time.time()

    def member(task_id: str, join_id: str, index: int, expires_at: float) -> TaskRecord:
        spec = {"chord": {"id": join_id, "member": index, "size": 3, "callback": wt.tsum.s().to_dict()}}
        return TaskRecord(
            id=task_id,
            name="wf.add",
            queue="default",
            status=TaskStatus.SUCCESS,
            created_at=now - 100,
            updated_at=now - 100,
            expires_at=expires_at,
            workflow=spec,
        )

    nested = {"chain": {"id": "c", "step": 0, "size": 2, "rest": [], "then": {"chord": {"id": "outer"}}}}
    store.create_many(
        [
            member("old-0", "chord-old", 0, now - 10),
            member("old-1", "chord-old", 1, now - 10),
            member("kept-0", "chord-kept", 0, now + 3600),
            dataclasses.replace(member("inner-0", "inner", 0, now - 10), workflow=nested),
        ]
    )
    for join_id in ("chord-old", "chord-kept", "outer"):
        assert [store.join_member(join_id, index) for index in (0, 1)] == [1, 2]
    assert store.purge_expired(now) == 3
    assert store.join_member("chord-old", 2) == 1  # its rows went with its records
    assert store.join_member("outer", 2) == 1  # a join the record is nested in (`then`) too
    assert store.join_member("chord-kept", 2) == 3


# -- chain, group, chord on the in-process driver -------------------------------------------------------------


@pytest.fixture
def app() -> Iterator[Decortask]:
    with isolated_app() as test_app:
        yield test_app


def test_a_chain_feeds_each_result_to_the_next_step(app: Decortask) -> None:
    handle = (wt.add.s(2, 2) | wt.mul.s(10) | wt.add.si(1, 1) | wt.add.s(5)).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == 7
    last = handle.record()
    assert last.root_id == handle.workflow_id and last.parent_id == derived_id(handle.workflow_id, "step:2")


def test_a_chain_handle_is_pending_until_its_last_step_exists(app: Decortask) -> None:
    handle = chain(wt.add.s(1, 1), wt.mul.s(10)).apply_async()
    assert (handle.status, handle.done()) == (TaskStatus.PENDING, False)
    with pytest.raises(TaskNotFound, match="is not created yet"):
        handle.record()
    with pytest.raises(WaitTimeout, match=r"was not created within 0\.1 s"):
        handle.get(timeout=0.1)
    run_pending(app)
    assert (handle.status, handle.get(timeout=5)) == (TaskStatus.SUCCESS, 20)


def test_a_steps_options_apply_when_the_step_is_created(app: Decortask) -> None:
    handle = chain(wt.add.s(1, 1), wt.add.s(5).set(countdown=30, priority=7)).apply_async()
    run_pending(app)
    record = handle.record()
    assert (record.status, record.priority) == (TaskStatus.SCHEDULED, 7)
    assert record.scheduled_for is not None and record.scheduled_for > record.created_at + 29
    run_pending(app, now=record.scheduled_for)
    assert handle.get(timeout=5) == 7


def test_a_failing_middle_step_stops_the_chain_and_fails_it_naming_the_step(app: Decortask) -> None:
    handle = chain(wt.add.s(1, 1), wt.fail.s(), wt.add.s(5), wt.mul.s(2)).apply_async()
    run_pending(app)
    with pytest.raises(TaskFailed, match=r"step 2 of 4, wf\.fail \(task \w+\) ended FAILED.*wf\.fail got 2"):
        handle.get(timeout=5)
    assert handle.record().reason == "workflow_failed"
    assert app.store.get(derived_id(handle.workflow_id, "step:2")) is None  # the step between never ran


def test_a_group_returns_its_results_in_order_and_an_empty_one_nothing(app: Decortask) -> None:
    handle = group(wt.add.s(i, i) for i in range(6)).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == [0, 2, 4, 6, 8, 10]
    assert group().apply_async().get(timeout=1) == []


def test_cancelling_a_group_cancels_its_pending_members(app: Decortask) -> None:
    handle = group(wt.add.s(i, i) for i in range(3)).apply_async()
    assert handle.cancel() == 3
    run_pending(app)
    assert [member.status for member in handle] == [TaskStatus.CANCELLED] * 3


def test_cancelling_a_chain_cancels_its_current_step_and_fails_the_chain(app: Decortask) -> None:
    handle = chain(wt.add.s(1, 1), wt.mul.s(10)).apply_async()
    assert handle.cancel()
    run_pending(app)
    with pytest.raises(TaskFailed, match=r"step 1 of 2, wf\.add \(task \w+\) ended CANCELLED"):
        handle.get(timeout=5)


def test_cancelling_a_chord_cancels_its_members_and_its_callback_never_runs(app: Decortask) -> None:
    handle = chord([wt.add.s(i, i) for i in range(3)], wt.tsum.s()).apply_async()
    assert handle.cancel()
    run_pending(app)
    with pytest.raises(TaskFailed, match=r"member \d of 3, wf\.add \(task \w+\) ended CANCELLED"):
        handle.get(timeout=5)
    assert not handle.cancel()  # nothing left to cancel


def test_a_chord_passes_the_results_in_order_to_its_callback_once(app: Decortask, tmp_path: Path) -> None:
    effects = tmp_path / "effects.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECORTASK_TEST_EFFECTS", str(effects))
        handle = chord([wt.mul.s(i, 10) for i in range(5)], wt.collect.s()).apply_async()
        run_pending(app)
    assert handle.get(timeout=5) == [0, 10, 20, 30, 40]
    assert [row["event"] for row in read_effects(str(effects))] == ["collect"]


def test_an_empty_chord_calls_its_callback_with_no_results(app: Decortask) -> None:
    handle = chord([], wt.tsum.s()).apply_async()
    run_pending(app)
    assert handle.get(timeout=5) == 0


def test_a_member_that_retries_joins_once_with_its_final_result(app: Decortask, tmp_path: Path) -> None:
    effects = tmp_path / "effects.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECORTASK_TEST_EFFECTS", str(effects))
        handle = chord([wt.flaky.s(5), wt.add.s(1, 1)], wt.collect.s()).apply_async()
        run_pending(app)
        assert handle.status is TaskStatus.PENDING  # the flaky member waits for its second attempt
        run_pending(app, now=time.time() + 5)
    assert handle.get(timeout=5) == [5, 2]
    events = [row["event"] for row in read_effects(str(effects))]
    assert (events.count("flaky"), events.count("collect")) == (2, 1)


def test_a_failed_member_fails_the_chord_naming_it_and_the_callback_never_runs(
    app: Decortask, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECORTASK_TEST_EFFECTS", str(effects))
        handle = chord([wt.add.s(1, 1), wt.fail.s(7), wt.add.s(2, 2)], wt.tsum.s()).apply_async()
        run_pending(app)
    with pytest.raises(TaskFailed, match=r"member 2 of 3, wf\.fail \(task \w+\) ended FAILED"):
        handle.get(timeout=5)
    assert read_effects(str(effects)) == []


def test_a_chord_asked_to_pass_failures_gives_them_to_its_callback(app: Decortask) -> None:
    handle = chord([wt.add.s(1, 1), wt.fail.s(7)], wt.collect.s(), pass_failures=True).apply_async()
    run_pending(app)
    first, second = handle.get(timeout=5)
    assert first == 2
    assert second["status"] == "FAILED" and second["error_message"] == "wf.fail got 7"


def test_a_step_whose_arguments_do_not_fit_fails_the_chain_instead_of_hanging(app: Decortask) -> None:
    handle = chain(wt.add.s(1, 1), wt.add.s(1, 2)).apply_async()  # add(2, 1, 2): one argument too many
    run_pending(app)
    with pytest.raises(TaskFailed, match=r"wf\.add could not be enqueued after task \w+: .*too many"):
        handle.get(timeout=5)


def test_a_continuation_created_by_another_worker_first_is_a_no_op_not_a_retried_failure(
    app: Decortask,
) -> None:
    """Two workers may both create a continuation (a redelivery beside the original): the store refuses
    the second, which then finds the task there and stops at once instead of retrying a store failure."""
    first = wt.add.s(1, 1).send(app)
    calls: list[str] = []

    def write(step: Any) -> Any:
        calls.append("write")
        return step()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(continuations, "exists", lambda *args: False)  # both looked before either wrote
        created = continuations.once(app, first.id, lambda: app.store.create(first.record()), write)
    assert created is False and calls == ["write"]


def test_a_worker_killed_between_a_members_outcome_and_the_join_is_repaired_by_the_redelivery(
    app: Decortask, tmp_path: Path
) -> None:
    """The continuation is written after the member's outcome, before its message is acked. A worker
    killed between the two leaves the message unacked: its redelivery finds the record terminal (a
    duplicate, not run again) and makes the join and the callback the dead worker did not."""
    effects = tmp_path / "effects.jsonl"
    real = workflow_module.continue_workflow
    killed: list[str] = []

    def dies_after_the_outcome_of_the_last_member(
        app_: Decortask, task_id: str, spec: dict[str, Any], write: Any
    ) -> None:
        if spec["chord"]["member"] == 1:
            killed.append(task_id)  # the worker died here: no join, no ack
            return
        real(app_, task_id, spec, write)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECORTASK_TEST_EFFECTS", str(effects))
        patch.setattr(workflow_module, "continue_workflow", dies_after_the_outcome_of_the_last_member)
        handle = chord([wt.slow_add.s(1, 1, 0), wt.slow_add.s(2, 2, 0)], wt.tsum.s()).apply_async()
        run_pending(app)
        with pytest.raises(WaitTimeout):
            handle.wait(timeout=0.3)
    assert killed
    record = app.store.get(killed[0])
    assert record is not None
    message = dataclasses.replace(message_from_record(record), attempt=record.attempt)
    app.transport.publish(message.encode(), app.settings.default_queue)  # the broker redelivers it
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECORTASK_TEST_EFFECTS", str(effects))
        run_pending(app)
    assert handle.get(timeout=5) == 6
    events = [row["event"] for row in read_effects(str(effects))]
    assert sorted(events) == ["slow_add", "slow_add", "tsum"]  # the member did not run again


def test_link_sends_its_signature_with_the_result_and_link_error_with_the_failed_id(app: Decortask) -> None:
    good = wt.add.apply_async((2, 2), link=[wt.mul.s(10), wt.add.si(1, 1)], link_error=wt.on_error.s())
    bad = wt.fail.apply_async((7,), link=wt.mul.s(10), link_error=wt.on_error.s())
    run_pending(app)
    assert TaskHandle(app, derived_id(good.id, "link:0"), "wf.mul").get(timeout=5) == 40
    assert TaskHandle(app, derived_id(good.id, "link:1"), "wf.add").get(timeout=5) == 2
    assert (
        TaskHandle(app, derived_id(bad.id, "link_error:0"), "wf.on_error").get(timeout=5)
        == f"handled {bad.id}"
    )
    assert app.store.get(derived_id(good.id, "link_error:0")) is None
    assert app.store.get(derived_id(bad.id, "link:0")) is None


def test_link_refuses_what_is_not_a_signature(app: Decortask) -> None:
    with pytest.raises(ConfigurationError, match="link= takes signatures"):
        wt.add.apply_async((1, 1), link=[wt.mul])  # type: ignore[list-item]


def test_calling_a_chain_a_group_or_a_chord_sends_it_as_celery_does() -> None:
    with isolated_app() as app, eager(app):
        assert (wt.add.s(2, 2) | wt.add.s(4) | wt.add.s(8))().get(timeout=0) == 16
        assert group(wt.add.s(i, i) for i in range(3))().get(timeout=0) == [0, 2, 4]
        assert chord([wt.add.s(i, i) for i in range(3)], wt.tsum.s())().get(timeout=0) == 6


def test_eager_mode_runs_a_whole_workflow_before_apply_async_returns() -> None:
    with isolated_app() as app, eager(app):
        steps = chain(wt.add.s(1, 1), wt.mul.s(10), wt.add.s(1)).apply_async()
        assert steps.done() and steps.get(timeout=0) == 21
        joined = chord([wt.add.s(i, i) for i in range(3)], wt.tsum.s()).apply_async()
        assert joined.done() and joined.get(timeout=0) == 6


def test_with_encryption_the_later_steps_arguments_travel_encrypted_too() -> None:
    """The `workflow` field holds the arguments of the steps to come: with encryption keys it is sealed in
    `enc` with the task's own arguments, and the broker sees neither."""
    fernet = pytest.importorskip("cryptography.fernet")
    secret = "sekrit-step-argument-42"
    with isolated_app(encryption_keys=fernet.Fernet.generate_key().decode()) as app:
        handle = chain(wt.add.si(1, 1), wt.collect.si([secret])).apply_async()
        queue = app.settings.default_queue
        session = app.transport.open_consumer([queue], prefetch=1, consume=False)
        try:
            raw = session.get(queue)
            assert raw is not None
            assert secret.encode() not in raw.body
            assert json.loads(raw.body)["workflow"] is None
            session.requeue(raw)
        finally:
            session.close()
        run_pending(app)
        assert handle.get(timeout=5) == [secret]


def test_a_plaintext_workflow_beside_encrypted_arguments_is_refused() -> None:
    from decortask.errors import MessageError
    from decortask.message import decode
    from decortask.security import MessageCipher

    fernet = pytest.importorskip("cryptography.fernet")
    cipher = MessageCipher(fernet.Fernet.generate_key().decode())
    body = json.loads(Message(id="m-1", task="wf.add", args=[1, 1], workflow={"x": 1}).encode(cipher=cipher))
    assert body["workflow"] is None
    assert decode(json.dumps(body), "application/json", cipher=cipher).workflow == {"x": 1}
    body["workflow"] = {"chain": {"forged": True}}
    with pytest.raises(MessageError, match="must not also carry 'args', 'kwargs' or 'workflow'"):
        decode(json.dumps(body), "application/json", cipher=cipher)


# -- real workers on every broker ---------------------------------------------------------------------------


@pytest.fixture(params=BROKERS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with short_lease_rig(request.param, tmp_path, "workflows", ("-A", "tests.workflow_tasks")) as test_rig:
        yield test_rig


def _effects(rig: Rig, event: str) -> list[dict[str, object]]:
    return [row for row in read_effects(str(rig.effects)) if row["event"] == event]


@pytest.mark.broker
def test_chains_on_real_workers(rig: Rig) -> None:
    with rig.worker("w1") as worker:
        good = (wt.add.s(2, 2) | wt.mul.s(10) | wt.add.s(1)).apply_async(app=rig.app)
        bad = (wt.add.s(1, 1) | wt.fail.s() | wt.add.s(5)).apply_async(app=rig.app)
        assert good.get(timeout=30) == 41, worker.log_tail()
        with pytest.raises(TaskFailed, match=r"step 2 of 3, wf\.fail"):
            bad.get(timeout=30)


@pytest.mark.broker
def test_links_on_real_workers(rig: Rig) -> None:
    with rig.worker("w1") as worker:
        good = wt.add.apply_async((2, 2), link=wt.mul.s(10), app=rig.app)
        bad = wt.fail.apply_async((7,), link_error=wt.on_error.s(), app=rig.app)
        linked = TaskHandle(rig.app, derived_id(good.id, "link:0"), "wf.mul")
        errback = TaskHandle(rig.app, derived_id(bad.id, "link_error:0"), "wf.on_error")
        poll_until(lambda: rig.app.store.get(linked.id), 30, "the link to be sent")
        poll_until(lambda: rig.app.store.get(errback.id), 30, "the errback to be sent")
        assert linked.get(timeout=30) == 40, worker.log_tail()
        assert errback.get(timeout=30) == f"handled {bad.id}"


@pytest.mark.broker
def test_groups_on_real_workers(rig: Rig) -> None:
    with rig.worker("w1") as worker:
        handle = group(wt.mul.s(i, 3) for i in range(8)).apply_async(app=rig.app)
        assert handle.get(timeout=30) == [i * 3 for i in range(8)], worker.log_tail()
        assert group().apply_async(app=rig.app).get(timeout=1) == []


@pytest.mark.broker
def test_chords_on_real_workers_run_their_callback_exactly_once(rig: Rig) -> None:
    with rig.worker("w1") as first, rig.worker("w2"):
        good = chord([wt.add.s(i, i) for i in range(20)], wt.tsum.s()).apply_async(app=rig.app)
        bad = chord([wt.add.s(1, 1), wt.fail.s(7)], wt.tsum.s()).apply_async(app=rig.app)
        assert good.get(timeout=60) == sum(2 * i for i in range(20)), first.log_tail()
        with pytest.raises(TaskFailed, match=r"member 2 of 2, wf\.fail"):
            bad.get(timeout=30)
    assert [row["id"] for row in _effects(rig, "tsum")] == [good.id]


def _sigkill_a_worker_once_members_started(rig: Rig, member: str, started: int) -> None:
    """Start worker w1 and SIGKILL it once `started` runs of the task `member` have begun."""
    first = rig.worker("w1", concurrency=4).start()
    try:
        poll_until(lambda: len(_effects(rig, member)) >= started, 30, "members to start")
    finally:
        first.signal(signal.SIGKILL)
        first.wait(10)


@pytest.mark.broker
def test_f_workflow_sigkill_while_chord_members_run_the_callback_runs_exactly_once(rig: Rig) -> None:
    """A worker SIGKILLed while opted-in members (`requeue_on_interrupt`) run: they run again on another
    worker, the chord completes, and its callback runs once."""
    handle = chord([wt.slow_add.s(i, 1, 1.5) for i in range(4)], wt.tsum.s()).apply_async(app=rig.app)
    _sigkill_a_worker_once_members_started(rig, "slow_add", 2)
    with rig.worker("w2", concurrency=4) as second:
        assert handle.get(timeout=60) == sum(i + 1 for i in range(4)), second.log_tail()
    assert len(_effects(rig, "tsum")) == 1


@pytest.mark.broker
def test_f_workflow_sigkill_while_members_not_opted_in_run_fails_the_chord_naming_one(rig: Rig) -> None:
    """Members not opted in end INTERRUPTED when their worker dies: the chord fails naming one, within the
    recovery time (the redelivery or the reaper settles it), and its callback never runs."""
    handle = chord([wt.slow_add_once.s(i, 1, 3.0) for i in range(3)], wt.tsum.s()).apply_async(app=rig.app)
    _sigkill_a_worker_once_members_started(rig, "slow_add_once", 3)
    with rig.worker("w2", concurrency=4) as second:
        with pytest.raises(TaskFailed, match=r"member \d of 3, wf\.slow_add_once .* ended INTERRUPTED"):
            handle.get(timeout=60)
        assert handle.record().reason == "workflow_failed", second.log_tail()
    assert _effects(rig, "tsum") == []
    assert len(_effects(rig, "slow_add_once")) == 3  # none ran again


@pytest.mark.broker
def test_a_step_stopped_by_force_in_a_process_pool_fails_the_chain(tmp_path: Path) -> None:
    """The process pool's parent writes the outcome of a child it stopped (a time limit): the chain
    continues from there too, so it fails naming the step instead of waiting for ever."""
    with short_lease_rig("sqlite", tmp_path, "workflows", ("-A", "tests.workflow_tasks")) as sqlite_rig:
        handle = chain(wt.add.s(1, 1), wt.overrun.s(), wt.add.s(1)).apply_async(app=sqlite_rig.app)
        with sqlite_rig.worker("w1", "--pool", "processes", concurrency=1) as worker:
            with pytest.raises(
                TaskFailed, match=r"step 2 of 3, wf\.overrun \(task \w+\) ended FAILED \(timeout\)"
            ):
                handle.get(timeout=60)
            assert worker.log_tail()


@pytest.mark.broker
def test_f_workflow_sigterm_past_the_grace_while_chord_members_run(rig: Rig) -> None:
    """A worker stopped past its grace while members of two chords run: the opted-in members run again on
    another worker and their chord's callback runs once; the others end INTERRUPTED (shutdown) and fail
    their chord, whose callback never runs."""
    requeued = chord([wt.slow_add.s(i, 1, 4.0) for i in range(2)], wt.tsum.s()).apply_async(app=rig.app)
    interrupted = chord([wt.slow_add_once.s(i, 1, 4.0) for i in range(2)], wt.tsum.s()).apply_async(
        app=rig.app
    )
    first = rig.worker("w1", "--grace", "1", concurrency=4).start()
    try:
        poll_until(
            lambda: len(_effects(rig, "slow_add")) >= 2 and len(_effects(rig, "slow_add_once")) >= 2,
            30,
            "the members of both chords to start",
        )
    finally:
        first.signal(signal.SIGTERM)
    assert first.wait(30) == 0, first.log_tail()
    with rig.worker("w2", concurrency=4) as second:
        assert requeued.get(timeout=60) == 3, second.log_tail()
        with pytest.raises(TaskFailed, match=r"wf\.slow_add_once .* ended INTERRUPTED \(shutdown\)"):
            interrupted.get(timeout=60)
    assert [row["id"] for row in _effects(rig, "tsum")] == [requeued.id]
    assert len(_effects(rig, "slow_add_once")) == 2  # not run again


@pytest.mark.broker
@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_a_chord_of_a_thousand_members_runs_its_callback_once(kind: str, tmp_path: Path) -> None:
    with short_lease_rig(kind, tmp_path, "workflows", ("-A", "tests.workflow_tasks")) as big:
        handle = chord([wt.add.s(i, 1) for i in range(1000)], wt.tsum.s()).apply_async(app=big.app)
        with big.worker("w1", concurrency=4) as worker, big.worker("w2", concurrency=4):
            assert handle.get(timeout=300) == sum(range(1, 1001)), worker.log_tail()
        assert len(_effects(big, "tsum")) == 1
