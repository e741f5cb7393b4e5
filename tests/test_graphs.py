"""Graphs (issue 13): named nodes with required and optional dependencies, results passed by name, and
finally nodes that run whatever happened.

The rules: a node starts once every node it waits for has ended (the store's join says so) and gets their
results as keyword arguments named after them; a required dependency that did not succeed skips the node
(CANCELLED, reason `skipped`) and those after it, an optional one never does; a finally node runs once the
nodes it follows ended, even after a failure or a cancel; the graph's status is read from its nodes'
records. Deterministic cases run on the in-process driver (`run_pending`); then real workers on every
broker, and workers SIGKILLed or stopped past their grace while nodes run.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import graph_tasks as gt
import pytest
import workflow_tasks as wt
from behaviour_tasks import read_effects
from conftest import BROKERS
from store_helpers import fresh_store_url
from workers import Rig, poll_until, short_lease_rig

from decortask import (
    Decortask,
    Graph,
    GraphError,
    GraphFailed,
    GraphHandle,
    GraphStatus,
    TaskNotFound,
    TaskStatus,
    UnknownTaskError,
    WaitTimeout,
    signature,
)
from decortask.graph_spec import GraphSpec, join_id, node_id, ordered
from decortask.records import message_from_record
from decortask.store import TaskStore, open_store
from decortask.store.base import TaskRecord
from decortask.store.workflow_state import WorkflowStore
from decortask.testing import eager, isolated_app, run_pending
from decortask.workflow import continue_workflow


@pytest.fixture
def app() -> Iterator[Decortask]:
    with isolated_app() as test_app:
        yield test_app


def _pipeline() -> Graph:
    """source -> double, source -> total(double, source), and a finally report after all of them."""
    g = Graph()
    g.add("source", gt.number.s(5))
    g.add("double", gt.double.s(), requires=["source"])
    g.add("total", gt.total.s(), requires=["double", "source"])
    g.add_finally("report", gt.report.s())
    return g


# -- building: mistakes are refused before anything is sent ------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda g: g.add("a", gt.number.s(1)).add("b", gt.double.s(), requires=["nope"]), "waits for 'nope'"),
        (
            lambda g: g.add("a", gt.double.s(), requires=["b"]).add("b", gt.double.s(), requires=["a"]),
            r"cycle: (a -> b -> a|b -> a -> b)",
        ),
        (lambda g: g.add("a", gt.double.s(), requires=["a"]), "waits for itself"),
        (lambda g: g.add("a", gt.number.s(1)).add("a", gt.number.s(2)), "named 'a' already"),
        (lambda g: g.add("not-a-name", gt.number.s(1)), "not a Python identifier"),
        (
            lambda g: g.add("a", gt.number.s(1)).add("b", gt.total.s(), requires=["a"], optional=["a"]),
            "twice",
        ),
        (lambda g: g.add("a", gt.number.s(1)).add("b", gt.total.s(a=3), requires=["a"]), "also dependencies"),
        (lambda g: g.add("a", gt.number.s(1)).add("b", gt.number.s(), requires=["a"]), "'g.number'|g.number"),
        (lambda g: g.add("a", gt.number.s(1, 2)), "too many positional"),
        (lambda g: g.add("a", "gt.number"), "give it a signature"),
        (lambda g: g, "has no nodes"),
    ],
    ids=[
        "unknown-dependency",
        "cycle",
        "self",
        "duplicate",
        "bad-name",
        "listed-twice",
        "kwarg-clash",
        "result-not-taken",
        "bad-arguments",
        "not-a-signature",
        "empty",
    ],
)
def test_a_graph_that_cannot_run_is_refused_when_started_and_nothing_is_sent(
    app: Decortask, build: object, error: str
) -> None:
    with pytest.raises(GraphError, match=error):
        build(Graph()).apply_async()  # type: ignore[operator]
    assert run_pending(app) == 0


def test_a_node_of_an_unregistered_task_is_refused_when_started(app: Decortask) -> None:
    with pytest.raises(UnknownTaskError):
        Graph().add("a", signature("g.no_such_task")).apply_async()


# -- running: results by name, skips, optional dependencies, finally nodes ---------------------------------


def test_each_node_gets_its_dependencies_results_by_name_and_the_graph_succeeds(app: Decortask) -> None:
    handle = _pipeline().apply_async()
    assert handle.status() is GraphStatus.RUNNING
    run_pending(app)
    assert handle.get(timeout=5) == {
        "source": 5,
        "double": 10,
        "total": 15,
        "report": {"source": 5, "double": 10, "total": 15},
    }
    assert handle.status() is GraphStatus.SUCCESS
    total = handle["total"].record()
    assert total.kwargs == {"double": 10, "source": 5} and total.root_id == handle.id


def test_a_nodes_handle_waits_for_the_node_to_be_created_instead_of_saying_it_does_not_exist(
    app: Decortask,
) -> None:
    """docs/workflows.md calls `handle["summary"].get(timeout=10)` right after apply_async(), while the node
    is not created yet (its dependencies still run): get() waits for it, as a chain's handle does."""
    handle = _pipeline().apply_async()
    total = handle["total"]
    assert total.status is TaskStatus.PENDING
    with pytest.raises(WaitTimeout, match="node 'total'"):
        total.get(timeout=0.05)
    run_pending(app)
    assert total.get(timeout=5) == 15


def test_a_failed_node_skips_what_requires_it_and_the_finally_node_still_runs(app: Decortask) -> None:
    g = Graph()
    g.add("source", gt.number.s(5))
    g.add("broken", gt.boom.s(), requires=["source"])
    g.add("after_broken", gt.total.s(), requires=["broken"])
    g.add("further", gt.total.s(), requires=["after_broken", "source"])
    g.add_finally("report", gt.report.s())
    handle = g.apply_async()
    run_pending(app)
    assert handle.wait(timeout=5) is GraphStatus.FAILED
    assert handle.states() == {
        "source": TaskStatus.SUCCESS,
        "broken": TaskStatus.FAILED,
        "after_broken": TaskStatus.CANCELLED,
        "further": TaskStatus.CANCELLED,
        "report": TaskStatus.SUCCESS,
    }
    skipped = handle["further"].record()
    assert skipped.reason == "skipped" and "the node after_broken it requires" in (
        skipped.error_message or ""
    )
    assert handle["report"].get(timeout=1) == {
        "source": 5,
        "broken": None,
        "after_broken": None,
        "further": None,
    }
    with pytest.raises(GraphFailed, match=r"ended FAILED: node broken \(g\.boom, task \w+\) ended FAILED"):
        handle.get(timeout=1)


def test_an_optional_dependency_that_fails_does_not_skip_its_dependent_which_gets_none(
    app: Decortask,
) -> None:
    g = Graph()
    g.add("source", gt.number.s(5))
    g.add("extra", gt.boom.s())
    g.add("total", gt.total.s(), requires=["source"], optional=["extra"])
    handle = g.apply_async()
    run_pending(app)
    assert handle.wait(timeout=5) is GraphStatus.FAILED  # a node failed: the graph says so
    assert handle["total"].get(timeout=1) == 5
    assert handle["total"].record().kwargs == {"source": 5, "extra": None}


def test_a_node_that_retries_reports_its_end_once_its_last_attempt_ends(
    app: Decortask, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.jsonl"
    g = Graph()
    g.add("source", wt.flaky.s(7))  # fails its first attempt, then returns 7
    g.add("double", gt.double.s(), requires=["source"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECORTASK_TEST_EFFECTS", str(effects))
        handle = g.apply_async()
        run_pending(app)
        assert handle.states() == {"source": TaskStatus.RETRYING, "double": None}
        run_pending(app, now=time.time() + 5)  # the retry is due
        assert handle.get(timeout=5) == {"source": 7, "double": 14}
    assert sorted(row["event"] for row in read_effects(str(effects))) == ["double", "flaky", "flaky"]


def test_a_finally_node_given_si_takes_no_results_and_may_follow_only_some_nodes(app: Decortask) -> None:
    g = Graph()
    g.add("a", gt.number.s(1))
    g.add("b", gt.boom.s(), requires=["a"])
    g.add_finally("cleanup", gt.cleanup.si(), after=["a"])
    handle = g.apply_async()
    run_pending(app)
    assert handle.wait(timeout=5) is GraphStatus.FAILED
    assert handle["cleanup"].get(timeout=1) == "clean"


def test_cancel_skips_the_nodes_not_started_and_the_finally_node_still_runs(app: Decortask) -> None:
    handle = _pipeline().apply_async()
    assert handle.cancel() == 3  # source waited in the queue; double and total were not created yet
    assert handle.status() is GraphStatus.RUNNING  # report waits for the queue to be drained
    run_pending(app)
    assert handle.wait(timeout=5) is GraphStatus.CANCELLED
    assert handle.states() == {
        "source": TaskStatus.CANCELLED,
        "double": TaskStatus.CANCELLED,
        "total": TaskStatus.CANCELLED,
        "report": TaskStatus.SUCCESS,
    }
    assert handle["report"].get(timeout=1) == {"source": None, "double": None, "total": None}
    with pytest.raises(GraphFailed, match="ended CANCELLED"):
        handle.get(timeout=1)
    assert handle.cancel() == 0


def test_cancel_stops_a_node_a_worker_creates_while_cancel_looks_at_it(
    app: Decortask, tmp_path: Path
) -> None:
    """cancel() finds a node not created yet, and a worker creates it before cancel writes it skipped: the
    store refuses cancel's record, and cancel cancels the node as it is now (waiting), so it never runs."""
    import decortask.graph as graph_module
    import decortask.workflow as workflow_module

    effects = tmp_path / "effects.jsonl"
    real_skip, real_continue = graph_module.write_skipped, workflow_module.continue_workflow
    source_ended: list[tuple[Any, ...]] = []

    def a_worker_gets_there_first(*args: Any, **kwargs: Any) -> None:
        if source_ended:  # the worker reports source's end as cancel looks at double: double is created
            real_continue(*source_ended.pop())
        real_skip(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECORTASK_TEST_EFFECTS", str(effects))
        handle = _pipeline().apply_async()
        patch.setattr(workflow_module, "continue_workflow", lambda *args: source_ended.append(args))
        run_pending(app)  # source runs; its worker has not reported its end yet
        patch.setattr(workflow_module, "continue_workflow", real_continue)
        patch.setattr(graph_module, "write_skipped", a_worker_gets_there_first)
        handle.cancel()
        patch.setattr(graph_module, "write_skipped", real_skip)
        run_pending(app)
        assert handle.wait(timeout=5) is GraphStatus.CANCELLED
    assert handle.states()["double"] is TaskStatus.CANCELLED
    assert sorted(row["event"] for row in read_effects(str(effects))) == ["number", "report"]


def test_eager_mode_runs_a_whole_graph_before_apply_async_returns() -> None:
    with isolated_app() as app, eager(app):
        handle = _pipeline().apply_async()
        assert handle.done() and handle.get(timeout=0)["total"] == 15


def test_wait_times_out_naming_the_nodes_still_waited_for(app: Decortask) -> None:
    handle = _pipeline().apply_async()
    with pytest.raises(WaitTimeout, match="still waiting for source, double, total, report"):
        handle.wait(timeout=0.05)


def test_reporting_a_nodes_end_again_runs_nothing_twice(app: Decortask, tmp_path: Path) -> None:
    """A redelivered message (its worker killed before the ack) reports the node's end again: the joins
    count it once, the nodes after it exist already, and nothing runs again."""
    effects = tmp_path / "effects.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECORTASK_TEST_EFFECTS", str(effects))
        handle = _pipeline().apply_async()
        run_pending(app)
        assert handle.wait(timeout=5) is GraphStatus.SUCCESS
        for name in handle:
            record = handle[name].record()
            assert record.workflow is not None
            continue_workflow(app, record.id, record.workflow, lambda step: step())
        assert run_pending(app) == 0
    assert sorted(row["event"] for row in read_effects(str(effects))) == [
        "double",
        "number",
        "report",
        "total",
    ]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def purging_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    store = open_store(fresh_store_url(request, tmp_path, "dt-graph-purge"))
    yield store
    store.close()


def test_the_expiry_purge_deletes_a_graph_nodes_join_with_the_nodes_record(purging_store: TaskStore) -> None:
    """Every node that waits for others gets a record (run or skipped), and its join goes with it when
    the expiry purges it. (Redis expires joins by itself: test_workflows.)"""
    store = purging_store
    assert isinstance(store, WorkflowStore)
    now = time.time()
    spec = GraphSpec("g1", ordered(_pipeline().nodes))
    join = join_id("g1", "total")
    for member in (0, 1):
        store.join_member(join, member)
    record = TaskRecord(
        id=node_id("g1", "total"),
        name="g.total",
        queue="default",
        status=TaskStatus.SUCCESS,
        created_at=now - 100,
        updated_at=now - 100,
        expires_at=now - 10,
        workflow=spec.workflow("total"),
    )
    store.create(record)
    assert store.join_member(join_id("g1", "report"), 0) == 1
    assert store.purge_expired(now) == 1
    assert store.join_member(join, 0) == 1  # its rows went with the record
    assert store.join_member(join_id("g1", "report"), 1) == 2  # another node's join is untouched


def test_a_graph_handle_is_found_again_from_any_of_its_nodes(app: Decortask) -> None:
    handle = _pipeline().apply_async()
    run_pending(app)
    again = GraphHandle.of_task(app, handle.node_ids["total"])
    assert again.id == handle.id and again.node_ids == handle.node_ids
    assert again.get(timeout=1)["total"] == 15
    lone = gt.number.delay(1)
    with pytest.raises(GraphError, match="is not a node of a graph"):
        GraphHandle.of_task(app, lone.id)
    with pytest.raises(TaskNotFound):
        GraphHandle.of_task(app, "no-such-task")


def test_a_worker_killed_before_reporting_a_nodes_end_is_repaired_by_the_redelivery(
    app: Decortask, tmp_path: Path
) -> None:
    """A node's end is reported after its outcome is written and before its message is acked. A worker
    killed between the two leaves the message unacked: its redelivery finds the record terminal (a
    duplicate, not run again) and makes the reports the dead worker did not."""
    import decortask.workflow as workflow_module

    effects = tmp_path / "effects.jsonl"
    real = workflow_module.continue_workflow
    killed: list[str] = []

    def dies_after_the_outcome_of_double(
        app_: Decortask, task_id: str, spec: dict[str, Any], write: Any
    ) -> None:
        if spec.get("graph", {}).get("node") == "double" and not killed:
            killed.append(task_id)  # the worker died here: no report, no ack
            return
        real(app_, task_id, spec, write)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECORTASK_TEST_EFFECTS", str(effects))
        patch.setattr(workflow_module, "continue_workflow", dies_after_the_outcome_of_double)
        handle = _pipeline().apply_async()
        run_pending(app)
        assert handle.states()["total"] is None and handle.status() is GraphStatus.RUNNING
        record = app.store.get(killed[0])
        assert record is not None and record.status is TaskStatus.SUCCESS
        message = dataclasses.replace(message_from_record(record), attempt=record.attempt)
        app.transport.publish(message.encode(), app.settings.default_queue)  # the broker redelivers it
        run_pending(app)
    assert handle.get(timeout=5)["report"] == {"source": 5, "double": 10, "total": 15}
    assert sorted(row["event"] for row in read_effects(str(effects))) == [
        "double",
        "number",
        "report",
        "total",
    ]


def test_each_node_carries_the_nodes_after_it_and_the_anchor_the_whole_graph(app: Decortask) -> None:
    """A node's message and record hold the part of the graph it leads to, so a graph of n nodes does not
    cost n copies of itself; the first node (the anchor) holds all of it, for handles and the dashboard."""
    g = Graph()
    g.add("a", gt.number.s(1)).add("b", gt.number.s(2)).add("c", gt.number.s(3))
    g.add("total", gt.total.s(), requires=["a", "b", "c"])
    g.add("lone", gt.number.s(4))  # a second, unconnected part
    g.add_finally("report", gt.report.s(), after=["total"])
    handle = g.apply_async()
    run_pending(app)
    carried = {}
    for name in handle:
        workflow = handle[name].record().workflow
        assert workflow is not None
        carried[name] = [node["name"] for node in workflow["graph"]["nodes"]]
    assert carried == {
        "a": ["a", "b", "c", "total", "lone", "report"],
        "b": ["b", "total", "report"],
        "c": ["c", "total", "report"],
        "total": ["total", "report"],
        "lone": ["lone"],
        "report": ["report"],
    }
    lone = handle["lone"].record().workflow
    assert lone is not None
    whole = GraphSpec.whole(lone["graph"], app.store.get)
    assert whole.id == handle.id and [node.name for node in whole.nodes] == carried["a"]
    assert GraphHandle.of_task(app, handle.node_ids["lone"]).node_ids == handle.node_ids
    spec, name = GraphSpec.from_workflow(lone["graph"])
    assert (name, spec.anchor, [node.name for node in spec.nodes]) == ("lone", "a", ["lone"])
    assert node_id(handle.id, "total") == handle.node_ids["total"]


def test_a_wide_graph_costs_each_node_only_what_follows_it(app: Decortask) -> None:
    """300 nodes into one: each carries three nodes, not 302, and the graph completes with one total."""
    g = Graph()
    for i in range(300):
        g.add(f"n{i}", gt.number.s(i))
    g.add("total", gt.total.s(), requires=[f"n{i}" for i in range(300)])
    g.add_finally("report", gt.cleanup.si())
    handle = g.apply_async()
    run_pending(app)
    assert handle.get(timeout=5)["total"] == sum(range(300))
    workflow = handle["n7"].record().workflow
    assert workflow is not None and len(workflow["graph"]["nodes"]) == 3


# -- real workers on every broker ---------------------------------------------------------------------------


@pytest.fixture(params=BROKERS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with short_lease_rig(request.param, tmp_path, "graphs", ("-A", "tests.graph_tasks")) as test_rig:
        yield test_rig


def _runs(rig: Rig, event: str) -> list[str]:
    """The ids of the tasks that ran `event`, one per run (attempt)."""
    return [str(row["id"]) for row in read_effects(str(rig.effects)) if row["event"] == event]


@pytest.mark.broker
def test_a_graph_with_a_finally_node_that_runs_after_a_failure_on_real_workers(rig: Rig) -> None:
    g = Graph()
    g.add("source", gt.number.s(5))
    g.add("double", gt.double.s(), requires=["source"])
    g.add("broken", gt.boom.s(), requires=["source"])
    g.add("total", gt.total.s(), requires=["double", "broken"])
    g.add_finally("report", gt.report.s())
    with rig.worker("w1") as first, rig.worker("w2"):
        handle = g.apply_async(app=rig.app)
        assert handle.wait(timeout=60) is GraphStatus.FAILED, first.log_tail()
        good = _pipeline().apply_async(app=rig.app)
        assert good.get(timeout=60)["report"] == {"source": 5, "double": 10, "total": 15}
    assert handle.states() == {
        "source": TaskStatus.SUCCESS,
        "double": TaskStatus.SUCCESS,
        "broken": TaskStatus.FAILED,
        "total": TaskStatus.CANCELLED,
        "report": TaskStatus.SUCCESS,
    }
    assert handle["report"].get(timeout=1) == {"source": 5, "double": 10, "broken": None, "total": None}
    assert _runs(rig, "report").count(handle.node_ids["report"]) == 1


@pytest.mark.broker
def test_cancel_on_real_workers_stops_the_running_node_skips_the_rest_and_runs_the_finally_node(
    rig: Rig,
) -> None:
    g = Graph()
    g.add("first", gt.waits.si(60))
    g.add("second", gt.total.s(), requires=["first"])
    g.add_finally("report", gt.report.s())
    with rig.worker("w1") as worker:
        handle = g.apply_async(app=rig.app)
        poll_until(lambda: _runs(rig, "waits"), 30, "the first node to start")
        assert handle.cancel() == 2  # first asked to stop, second written skipped
        assert handle.wait(timeout=30) is GraphStatus.CANCELLED, worker.log_tail()
    assert handle.states() == {
        "first": TaskStatus.CANCELLED,
        "second": TaskStatus.CANCELLED,
        "report": TaskStatus.SUCCESS,
    }
    assert handle["report"].get(timeout=1) == {"first": None, "second": None}
    assert _runs(rig, "total") == []


def _sigkill_a_worker_once_started(rig: Rig, event: str, started: int) -> None:
    """Start worker w1 and SIGKILL it once `started` runs of `event` have begun."""
    first = rig.worker("w1", concurrency=4).start()
    try:
        poll_until(lambda: len(_runs(rig, event)) >= started, 30, f"{started} runs of {event} to start")
    finally:
        first.signal(signal.SIGKILL)
        first.wait(10)


def _slow_graph(task: str, seconds: float) -> Graph:
    """Two slow nodes side by side, a node requiring both, and a finally node after all of them."""
    slow = gt.slow if task == "slow" else gt.slow_once
    g = Graph()
    g.add("left", slow.s(seconds))
    g.add("right", slow.s(seconds))
    g.add("joined", gt.total.s(), requires=["left", "right"])
    g.add_finally("report", gt.report.s())
    return g


@pytest.mark.broker
def test_f_workflow_sigkill_while_graph_nodes_run_opted_in_nodes_run_again_and_the_graph_succeeds(
    rig: Rig,
) -> None:
    """A worker SIGKILLed while opted-in nodes (`requeue_on_interrupt`) run: they run again on another
    worker, the node after them and the finally node run once, and the graph succeeds."""
    handle = _slow_graph("slow", 1.5).apply_async(app=rig.app)
    _sigkill_a_worker_once_started(rig, "slow", 2)
    with rig.worker("w2", concurrency=4) as second:
        assert handle.wait(timeout=60) is GraphStatus.SUCCESS, second.log_tail()
    assert handle.get(timeout=1)["joined"] == 3
    assert _runs(rig, "total") == [handle.node_ids["joined"]]
    assert _runs(rig, "report") == [handle.node_ids["report"]]
    assert sorted(_runs(rig, "slow")).count(handle.node_ids["left"]) == 2  # killed once, ran again once


@pytest.mark.broker
def test_f_workflow_sigkill_while_graph_nodes_not_opted_in_run_fails_the_graph_and_runs_the_finally_node(
    rig: Rig,
) -> None:
    """Nodes not opted in end INTERRUPTED when their worker dies (the redelivery or the reaper settles
    them, within the recovery time): the node requiring them is skipped, the finally node runs once, and
    the graph ends FAILED with nothing left waiting."""
    handle = _slow_graph("slow_once", 3.0).apply_async(app=rig.app)
    _sigkill_a_worker_once_started(rig, "slow_once", 2)
    with rig.worker("w2", concurrency=4) as second:
        assert handle.wait(timeout=60) is GraphStatus.FAILED, second.log_tail()
    assert handle.states() == {
        "left": TaskStatus.INTERRUPTED,
        "right": TaskStatus.INTERRUPTED,
        "joined": TaskStatus.CANCELLED,
        "report": TaskStatus.SUCCESS,
    }
    assert handle["joined"].record().reason == "skipped"
    assert _runs(rig, "total") == []
    assert _runs(rig, "report") == [handle.node_ids["report"]]
    assert len(_runs(rig, "slow_once")) == 2  # none ran again
    with pytest.raises(GraphFailed, match=r"node (left|right) \(g\.slow_once, task \w+\) ended INTERRUPTED"):
        handle.get(timeout=1)


@pytest.mark.broker
def test_f_workflow_sigterm_past_the_grace_while_graph_nodes_run(rig: Rig) -> None:
    """A worker stopped past its grace while the nodes of two graphs run: the opted-in nodes run again on
    another worker and their graph succeeds; the others end INTERRUPTED (shutdown), skip the node after
    them, and their graph fails; both finally nodes run once."""
    requeued = _slow_graph("slow", 4.0).apply_async(app=rig.app)
    interrupted = _slow_graph("slow_once", 4.0).apply_async(app=rig.app)
    first = rig.worker("w1", "--grace", "1", concurrency=4).start()
    try:
        poll_until(
            lambda: len(_runs(rig, "slow")) >= 2 and len(_runs(rig, "slow_once")) >= 2,
            30,
            "the slow nodes of both graphs to start",
        )
    finally:
        first.signal(signal.SIGTERM)
    assert first.wait(30) == 0, first.log_tail()
    with rig.worker("w2", concurrency=4) as second:
        assert requeued.wait(timeout=60) is GraphStatus.SUCCESS, second.log_tail()
        assert interrupted.wait(timeout=60) is GraphStatus.FAILED, second.log_tail()
    assert interrupted["left"].record().reason == "shutdown"
    assert interrupted.states()["joined"] is TaskStatus.CANCELLED
    assert _runs(rig, "total") == [requeued.node_ids["joined"]]
    assert sorted(_runs(rig, "report")) == sorted(
        [requeued.node_ids["report"], interrupted.node_ids["report"]]
    )
    assert len(_runs(rig, "slow_once")) == 2  # not run again
