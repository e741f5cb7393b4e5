"""`decortask show` and `decortask cancel`, of one task or of a whole workflow (`workflow_tree.py`).

`show <id>` prints a task's record as JSON; for a task of a workflow (a chain, group, chord or linked task)
the workflow comes first, one line per task in its structure, and for a workflow's id only the workflow.
`cancel <id>` cancels a task, or every task of the workflow of that id that has not ended, and says how
many. cli.py registers both with `install_show_and_cancel`, handing over its store opener and app loader
(so this module never imports cli.py, which imports it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import click

from .canvas_handles import SHOW_LIMIT, cancel_workflow, workflow_records
from .cli_options import BROKER_URL, STORE_URL
from .errors import DecortaskError
from .security import mask_text, masked_args, scrub
from .store.base import TaskQuery, TaskRecord, TaskStore
from .workflow_tree import render

if TYPE_CHECKING:
    from .app import Decortask

#: Opens the -A app's store for reading: (app_target, broker_url, store_url) -> (app, store). cli._reading.
Reading = Callable[
    [str | None, str | None, str | None], AbstractContextManager[tuple["Decortask", TaskStore]]
]
#: Loads the -A app (cli.load_app).
Loading = Callable[[str | None], "Decortask"]
_reading: list[Reading] = []
_loading: list[Loading] = []


def install_show_and_cancel(group: click.Group, *, reading: Reading, loading: Loading) -> None:
    """Add `show` and `cancel` to the `decortask` group, with the CLI's store opener and app loader."""
    _reading[:] = [reading]
    _loading[:] = [loading]
    group.add_command(show)
    group.add_command(cancel)


@click.command("cancel")
@click.argument("task_id")
@click.option("-A", "--app", "app_target", help="Module defining your tasks.")
def cancel(task_id: str, app_target: str | None) -> None:
    """Cancel a task: a waiting one never starts, a running one is asked to stop (then stopped by force).
    Given a workflow's id, cancel every task of it that has not ended."""
    from .control import request_cancel

    app = _loading[0](app_target)
    try:
        record = app.store.get(task_id)
        if record is None:
            _cancel_workflow(app, task_id)
            return
        cancelled = request_cancel(app, task_id)
        record = app.store.get(task_id)
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    if not cancelled:
        status = record.status.value if record is not None else "gone"
        raise click.ClickException(f"task {task_id} has already ended ({status}); nothing to cancel")
    if record is not None and record.status.terminal:
        click.echo(f"task {task_id}: {record.status.value}")
    else:
        click.echo(f"task {task_id}: cancellation requested; it stops at its next should_stop() check")
    if record is not None and record.root_id:
        click.echo(
            f"it is a task of workflow {record.root_id}: `decortask cancel {record.root_id}` cancels all"
        )


def _cancel_workflow(app: Decortask, root_id: str) -> None:
    cancelled, total = cancel_workflow(app, root_id)
    if total == 0:
        raise click.ClickException(
            f"no task {root_id} in the store {app.store_url_masked}, and no workflow of that id"
        )
    click.echo(
        f"workflow {root_id}: cancelled {cancelled} of its {total} tasks (the others had ended); "
        "its steps and callbacks not created yet never will be"
    )


@click.command("show")
@click.argument("task_id")
@click.option("-A", "--app", "app_target", help="Module defining your tasks.")
@click.option(
    "--args",
    "include_args",
    is_flag=True,
    help="Include the arguments, masked like the dashboard's: secret-looking names (password=, api_key=), "
    "and positional ones by parameter name when -A names the module defining the task.",
)
@click.option("--json", "only_json", is_flag=True, help="Only the task's record as JSON, even in a workflow.")
@BROKER_URL
@STORE_URL
def show(
    task_id: str,
    app_target: str | None,
    include_args: bool,
    only_json: bool,
    broker_url: str | None,
    store_url: str | None,
) -> None:
    """Show one task's record, logs included, as JSON; arguments only with --args (reads; never creates).
    For a task of a workflow, or a workflow's id, show the workflow first: each of its tasks and its state."""
    with _reading[0](app_target, broker_url, store_url) as (app, store):
        try:
            record = store.get(task_id)
            root_id = task_id if record is None else record.root_id
            lines = None if only_json or root_id is None else _workflow_lines(store, root_id)
        except DecortaskError as exc:
            raise click.ClickException(mask_text(str(exc))) from None
        if record is None and not lines:
            raise click.ClickException(
                f"no task {task_id} in the store {app.store_url_masked}, and no workflow of that id"
            )
        for line in lines or ():
            click.echo(mask_text(line))
        if record is not None:
            if lines:
                click.echo(f"\ntask {task_id}:")
            click.echo(json.dumps(_detail(record, app, include_args), indent=2, default=str))


def _workflow_lines(store: TaskStore, root_id: str) -> list[str] | None:
    """The lines of workflow `root_id`, or None when it has no tasks."""
    records = workflow_records(store, root_id)
    if not records:
        return None
    total = store.count_tasks(TaskQuery(root_id=root_id)) if len(records) >= SHOW_LIMIT else None
    return render(records, root_id, total)


def _detail(record: TaskRecord, app: Decortask, include_args: bool) -> dict[str, Any]:
    """The record as `show` prints it: scrubbed like the dashboard's page, arguments only when asked."""
    fields = {key: value for key, value in record.to_dict().items() if key not in ("args", "kwargs")}
    detail: dict[str, Any] = scrub(fields)
    detail["args_included"] = include_args
    if include_args:
        detail["args"] = masked_args(record, app.registry)
        detail["kwargs"] = scrub(record.kwargs)
    return detail
