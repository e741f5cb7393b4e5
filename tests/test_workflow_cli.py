"""Workflows from a shell (issue 13): `decortask show` of a workflow or of one of its tasks lays the workflow
out in its structure, one line per task with its state; `decortask cancel <workflow id>` cancels every task
of it that has not ended and says how many. Both read the tasks by their `root_id` (`TaskQuery.root_id`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import workflow_tasks as wt
from click.testing import CliRunner, Result

from decortask import Decortask, TaskFailed, TaskStatus, chain, chord, group
from decortask.app import reset_default_app
from decortask.canvas import derived_id
from decortask.cli import main as cli_main
from decortask.store import TaskQuery, TaskRecord
from decortask.store.sqlite import SQLiteStore
from decortask.testing import run_pending


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Decortask]:
    """An app on one SQLite file (broker and store): the newest app, so the CLI run in-process uses it."""
    url = f"sqlite:///{tmp_path}/workflows.db"
    test_app = Decortask(url, url)
    try:
        yield test_app
    finally:
        test_app.close()
        reset_default_app()


def decortask(*args: str) -> Result:
    return CliRunner().invoke(cli_main, list(args))


def _nested(app: Decortask) -> str:
    """`add | group(mul, add | fail) | collect`, run: its id."""
    handle = chain(wt.add.s(1, 1), group(wt.mul.s(10), chain(wt.add.s(5), wt.fail.s())), wt.collect.s())
    started = handle.apply_async()
    run_pending(app)
    with pytest.raises(TaskFailed):
        started.get(timeout=5)
    return started.workflow_id


def test_show_of_a_workflow_lays_out_its_tasks_in_its_structure_with_their_states(app: Decortask) -> None:
    root = _nested(app)
    group_id, inner = derived_id(root, "step:1"), derived_id(derived_id(root, "step:1"), "member:1")
    shown = decortask("show", root)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == f"workflow {root}: ENDED (not every task succeeded); 5 tasks: 2 FAILED, 3 SUCCESS"
    assert lines[1:7] == [
        f"  chain of 3 steps  {root}",
        f"    step 1/3  wf.add  {derived_id(root, 'step:0')}  SUCCESS",
        f"    step 2/3  group of 2 members  {group_id}",
        f"      member 1/2  wf.mul  {derived_id(group_id, 'member:0')}  SUCCESS",
        f"      member 2/2  chain of 2 steps  {inner}",
        f"        step 1/2  wf.add  {derived_id(inner, 'step:0')}  SUCCESS",
    ]
    assert (
        lines[7]
        == f"        step 2/2  wf.fail  {derived_id(inner, 'step:1')}  FAILED  builtins.ValueError: wf.fail got 7"
    )
    last = f"    step 3/3  wf.collect  {derived_id(root, 'step:2')}  FAILED (workflow_failed)  builtins.ValueError: "
    assert lines[8].startswith(last + f"chain {root}: step 2 of 3, group {group_id[:8]}")
    assert lines[8].endswith("…")  # a long error is cut: `show <its id>` prints it whole
    assert len(lines) == 9


def test_show_of_a_workflow_still_running_names_the_tasks_it_has_not_created_yet(app: Decortask) -> None:
    started = chain(wt.add.s(1, 1), chord([wt.add.s(1), wt.mul.s(2)], wt.tsum.s())).apply_async()
    chord_id = derived_id(started.workflow_id, "step:1")
    lines = decortask("show", started.workflow_id).stdout.splitlines()
    assert lines[0] == f"workflow {started.workflow_id}: RUNNING; 1 tasks: 1 PENDING"
    assert lines[3:] == [
        f"    step 2/2  chord of 2 members and a callback  {chord_id}",
        f"      member 1/2  wf.add  {derived_id(chord_id, 'member:0')}  not created yet",
        f"      member 2/2  wf.mul  {derived_id(chord_id, 'member:1')}  not created yet",
        f"      callback  wf.tsum  {derived_id(chord_id, 'callback')}  not created yet",
    ]


def test_show_of_a_task_of_a_workflow_shows_the_workflow_then_the_task(app: Decortask) -> None:
    root = _nested(app)
    member = derived_id(derived_id(root, "step:1"), "member:0")
    shown = decortask("show", member)
    assert shown.exit_code == 0, shown.output
    view, _, record = shown.stdout.partition(f"\ntask {member}:\n")
    assert view.startswith(f"workflow {root}: ENDED") and f"member 1/2  wf.mul  {member}  SUCCESS" in view
    assert json.loads(record)["result"] == 20
    only = decortask("show", member, "--json")
    assert json.loads(only.stdout)["root_id"] == root


def test_show_of_a_plain_task_is_its_record_only_and_of_an_unknown_id_an_error(app: Decortask) -> None:
    handle = wt.add.delay(1, 2)
    run_pending(app)
    assert json.loads(decortask("show", handle.id).stdout)["result"] == 3
    missing = decortask("show", "nope")
    assert missing.exit_code != 0
    assert "no task nope in the store" in missing.output and "no workflow of that id" in missing.output


def test_show_of_a_linked_task_shows_the_task_that_linked_it_and_every_link(app: Decortask) -> None:
    handle = wt.add.apply_async((1, 1), link=[wt.mul.s(10), wt.mul.s(100)])
    run_pending(app)
    links = [derived_id(handle.id, f"link:{index}") for index in range(2)]
    lines = decortask("show", links[1]).stdout.splitlines()
    assert lines[:4] == [
        f"workflow {handle.id}: SUCCESS; 3 tasks: 3 SUCCESS",
        f"  root task  wf.add  {handle.id}  SUCCESS",
        f"  linked  wf.mul  {links[0]}  SUCCESS",
        f"  linked  wf.mul  {links[1]}  SUCCESS",
    ]


def test_cancel_of_a_workflow_cancels_its_pending_tasks_at_every_level_and_says_how_many(
    app: Decortask,
) -> None:
    started = group(chain(wt.add.s(1, 1), wt.mul.s(10)), chord([wt.add.s(1, 1), wt.add.s(2, 2)], wt.tsum.s()))
    handle = started.apply_async()
    cancelled = decortask("cancel", handle.id)
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.startswith(f"workflow {handle.id}: cancelled 3 of its 3 tasks")
    run_pending(app)
    tasks = app.store.list_tasks(TaskQuery(root_id=handle.id))
    assert sorted(r.status.value for r in tasks) == ["CANCELLED"] * 3 + ["FAILED"] * 2  # + the unrun ends
    assert (
        app.store.get(derived_id(derived_id(handle.id, "member:1"), "callback")).status is TaskStatus.FAILED
    )  # type: ignore[union-attr]
    again = decortask("cancel", handle.id)
    assert again.stdout.startswith(f"workflow {handle.id}: cancelled 0 of its 5 tasks")


def test_cancel_of_one_task_of_a_workflow_names_the_workflow(app: Decortask) -> None:
    handle = chain(wt.add.s(1, 1), wt.mul.s(10)).apply_async()
    first = derived_id(handle.workflow_id, "step:0")
    result = decortask("cancel", first)
    assert result.exit_code == 0, result.output
    assert f"`decortask cancel {handle.workflow_id}` cancels all" in result.stdout
    assert decortask("cancel", "nope").exit_code != 0


def test_an_sqlite_store_from_before_the_root_id_column_gets_it_filled_in(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    store = SQLiteStore(url)
    store.create(
        TaskRecord(
            id="t1",
            name="n",
            queue="q",
            status=TaskStatus.PENDING,
            created_at=1.0,
            updated_at=1.0,
            root_id="wf",
        )
    )
    store.close()
    with sqlite3.connect(tmp_path / "old.db") as conn:  # as a store file was before the column existed
        conn.execute("DROP INDEX decortask_tasks_root")
        conn.execute("ALTER TABLE decortask_tasks DROP COLUMN root_id")
    reopened = SQLiteStore(url)
    try:
        assert [r.id for r in reopened.list_tasks(TaskQuery(root_id="wf"))] == ["t1"]
    finally:
        reopened.close()
