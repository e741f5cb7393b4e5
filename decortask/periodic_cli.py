"""`decortask schedules`: list periodic schedules with their next and last runs; pause and resume them.

Registered on the `decortask` command group by cli.py; the app and store helpers come from there.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import click

from .errors import DecortaskError
from .periodic import lease_name, slot_task_id
from .periodic_config import PeriodicEntry, declared_entries
from .schedules import next_slot
from .security import mask_text
from .store.base import TaskStore
from .store.periodic_state import ScheduleState, periodic_state

_APP = click.option("-A", "--app", "app_target", help="Module defining your tasks (and their schedules).")
_STORE = click.option(
    "--store-url", default=None, help="The store to use (else the -A app's, else the environment's)."
)


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
    from .cli import _reading

    with _reading(app_target, None, store_url) as (app, store):
        try:
            rows = _rows(declared_entries(app), store, time.time())
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


@schedules.command("pause")
@click.argument("name")
@_APP
@_STORE
def pause(name: str, app_target: str | None, store_url: str | None) -> None:
    """Pause a schedule: its slots are skipped (never run later) until it is resumed. Kept in the store."""
    store = _known(name, app_target, store_url)
    periodic_state(store).set_schedule_paused(name, True)
    click.echo(f"schedule {name}: paused; its slots are skipped until `decortask schedules resume {name}`")


@schedules.command("resume")
@click.argument("name")
@_APP
@_STORE
def resume(name: str, app_target: str | None, store_url: str | None) -> None:
    """Resume a paused schedule from its next slot; slots that fell while it was paused are not run."""
    state = periodic_state(_known(name, app_target, store_url))
    state.set_schedule_paused(name, False)
    state.advance_schedule(name, time.time())  # paused slots are skipped, not caught up as missed ones
    click.echo(f"schedule {name}: resumed; it runs from its next slot")


def _known(name: str, app_target: str | None, store_url: str | None) -> TaskStore:
    """The app's store, once `name` is a schedule the -A app declares or the store knows."""
    from .cli import _override, load_app

    try:
        app = _override(load_app(app_target), None, store_url)
        declared = {entry.name for entry in declared_entries(app)}
        store = app.store
        stored = {state.name for state in periodic_state(store).schedule_states()}
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    if name not in declared | stored:
        known = ", ".join(sorted(declared | stored)) or "none"
        raise click.ClickException(
            f"no schedule named {name!r} in the -A app or the store (known: {known}); pass -A naming the module "
            "that declares it, and the store its workers use"
        )
    return store


def _rows(entries: list[PeriodicEntry], store: TaskStore, now: float) -> list[dict[str, Any]]:
    state_store = periodic_state(store)
    states = {state.name: state for state in state_store.schedule_states()}
    by_name = {entry.name: entry for entry in entries}
    rows = []
    for name in sorted(set(by_name) | set(states)):
        entry, state = by_name.get(name), states.get(name, ScheduleState(name))
        last = state.last_slot
        record = store.get(slot_task_id(name, last)) if last is not None else None
        if entry is None:
            described, upcoming = "(not declared by the -A app)", None
        else:
            described = entry.schedule.describe()
            upcoming = None if state.paused else next_slot(entry.schedule, max(last or now, now))
        rows.append(
            {
                "name": name,
                "task": entry.task if entry is not None else None,
                "schedule": described,
                "paused": state.paused,
                "next_run": "paused" if state.paused else _utc(upcoming),
                "last_run": _utc(last) if record is not None else None,
                "last_outcome": record.status.value if record is not None else None,
                "leader": state_store.lease_owner(lease_name(name), now),
            }
        )
    return rows


def _utc(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
