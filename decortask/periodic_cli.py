"""`decortask schedules`: list periodic schedules with their next and last runs; pause and resume them.

cli.py registers it with `install_schedules`, handing over its app and store helpers (so this module
never imports cli.py, which imports it). The rows and the pause/resume steps come from periodic_status.py,
shared with the dashboard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import click

from .errors import DecortaskError
from .periodic_config import declared_entries
from .periodic_status import pause_schedule, resume_schedule, schedule_rows, unknown_schedule
from .security import mask_text
from .store.base import TaskStore

if TYPE_CHECKING:
    from .app import Decortask

#: Opens the -A app's store for reading: (app_target, broker_url, store_url) -> (app, store). cli._reading.
Reading = Callable[
    [str | None, str | None, str | None], AbstractContextManager[tuple["Decortask", TaskStore]]
]
#: Loads the -A app with an overridden store: (app_target, store_url) -> app.
Loading = Callable[[str | None, str | None], "Decortask"]


class _Helpers:
    """What cli.py hands over in `install_schedules`."""

    reading: Reading
    loading: Loading


_helpers = _Helpers()

_APP = click.option("-A", "--app", "app_target", help="Module defining your tasks (and their schedules).")
_STORE = click.option(
    "--store-url", default=None, help="The store to use (else the -A app's, else the environment's)."
)


def install_schedules(group: click.Group, *, reading: Reading, loading: Loading) -> None:
    """Add `schedules` to the `decortask` group, with the CLI's way to load the app and read its store."""
    _helpers.reading, _helpers.loading = reading, loading
    group.add_command(schedules)


@click.group("schedules", invoke_without_command=True)
@_APP
@_STORE
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def schedules(ctx: click.Context, app_target: str | None, store_url: str | None, as_json: bool) -> None:
    """List periodic schedules with their next and last runs (the default), or pause/resume one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_schedules, app_target=app_target, store_url=store_url, as_json=as_json)


@schedules.command("list")
@_APP
@_STORE
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_schedules(app_target: str | None, store_url: str | None, as_json: bool) -> None:
    """Every schedule the -A app declares or the store knows: next run, last run and its outcome, leader."""
    with _helpers.reading(app_target, None, store_url) as (app, store):
        try:
            rows = schedule_rows(declared_entries(app), store, time.time())
        except DecortaskError as exc:
            raise click.ClickException(mask_text(str(exc))) from None
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("no schedules: declare one with @task(schedule=...) or the schedules setting, and pass -A")
        return
    click.echo(
        f"{'NAME':<24} {'SCHEDULE':<34} {'NEXT RUN (UTC)':<20} {'LAST RUN (UTC)':<20} {'OUTCOME':<10} LEADER"
    )
    for row in rows:
        click.echo(
            f"{row['name']:<24} {row['schedule']:<34} {row['next_run'] or '-':<20} {row['last_run'] or '-':<20} "
            f"{row['last_outcome'] or '-':<10} {row['leader'] or '-'}"
        )


def _one_schedule(verb: str) -> Callable[[Callable[..., None]], click.Command]:
    """Declare `decortask schedules <verb> NAME [-A ...] [--store-url ...]`."""

    def declare(command: Callable[..., None]) -> click.Command:
        return schedules.command(verb)(click.argument("name")(_APP(_STORE(command))))

    return declare


@_one_schedule("pause")
def pause(name: str, app_target: str | None, store_url: str | None) -> None:
    """Pause a schedule: its slots are skipped (never run later) until it is resumed. Kept in the store."""
    pause_schedule(_known(name, app_target, store_url), name)
    click.echo(f"schedule {name}: paused; its slots are skipped until `decortask schedules resume {name}`")


@_one_schedule("resume")
def resume(name: str, app_target: str | None, store_url: str | None) -> None:
    """Resume a paused schedule from its next slot; slots that fell while it was paused are not run."""
    resume_schedule(_known(name, app_target, store_url), name)
    click.echo(f"schedule {name}: resumed; it runs from its next slot")


def _known(name: str, app_target: str | None, store_url: str | None) -> TaskStore:
    """The app's store, once `name` is a schedule the -A app declares or the store knows."""
    try:
        app = _helpers.loading(app_target, store_url)
        store = app.store
        problem = unknown_schedule(name, declared_entries(app), store)
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    if problem is not None:
        raise click.ClickException(problem)
    return store
