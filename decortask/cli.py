"""The `decortask` command: thin click wrappers over the app, worker and store."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Any

import click

from .app import Decortask, current_app
from .errors import DecortaskError
from .security import mask_text
from .states import TaskStatus
from .store.base import TaskQuery


def load_app(target: str | None) -> Decortask:
    """Import the user's module (`-A pkg.tasks` or `-A pkg.tasks:app`) and return the app to use.

    The module name comes from the command line, never from a message or the store.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if not target:
        return current_app()
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import -A {module_name!r}: {exc}") from None
    if attr:
        found = getattr(module, attr, None)
        if not isinstance(found, Decortask):
            raise click.ClickException(f"-A {target!r}: {attr!r} is not a Decortask app in {module_name}")
        return found.set_default()
    return current_app()


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _override(app: Decortask, broker: str | None, store: str | None) -> Decortask:
    if broker is None and store is None:
        return app
    return Decortask(
        broker_url=broker or app.settings.broker_url,
        store_url=store or app.settings.store_url,
        **{k: v for k, v in app.settings.__dict__.items() if k not in ("broker_url", "store_url")},
    )


@click.group()
@click.version_option(package_name="decortask")
def main() -> None:
    """decortask: run workers and inspect tasks."""


@main.command()
@click.option("-A", "--app", "app_target", help="Module defining your tasks (pkg.tasks or pkg.tasks:app).")
@click.option("-c", "--concurrency", default=4, show_default=True, type=click.IntRange(1, 1024))
@click.option("-Q", "--queues", default=None, help="Comma-separated queues (default: the default queue).")
@click.option("--pool", default="threads", show_default=True, type=click.Choice(["threads"]))
@click.option("--burst", is_flag=True, help="Exit once the queues and the schedule are empty.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option(
    "--broker-url", default=None, help="Overrides the app's broker (else the app's, else the environment's)."
)
@click.option(
    "--store-url", default=None, help="Overrides the app's store (else the app's, else the environment's)."
)
def worker(
    app_target: str | None,
    concurrency: int,
    queues: str | None,
    pool: str,
    burst: bool,
    loglevel: str,
    broker_url: str | None,
    store_url: str | None,
) -> None:
    """Consume and run tasks."""
    from .worker import Worker

    _configure_logging(loglevel)
    try:
        app = _override(load_app(app_target), broker_url, store_url)
        if not len(app.registry):
            raise click.ClickException(
                "no tasks are registered, so this worker could run nothing; pass -A naming the module "
                "that defines your tasks (e.g. decortask worker -A myproject.tasks)"
            )
        app.transport.check()
        app.store.count_schedule()  # opens the store now, so a bad URL or file fails before consuming
        names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
        runner = Worker(app, names, concurrency=concurrency, pool=pool, burst=burst)
        runner.install_signal_handlers()
        code = runner.run()
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    sys.exit(code)


@main.command("tasks")
@click.option("-A", "--app", "app_target", help="Module defining your tasks.")
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value.lower() for s in TaskStatus]))
@click.option("--name", default=None, help="Only this task name.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_tasks(
    app_target: str | None,
    statuses: tuple[str, ...],
    name: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List task records, newest first."""
    app = load_app(app_target)
    query = TaskQuery(
        statuses=frozenset(TaskStatus(s.upper()) for s in statuses) or None,
        name=name,
        limit=limit,
        offset=offset,
    )
    try:
        records = app.store.list_tasks(query)
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    for record in records:
        if as_json:
            click.echo(json.dumps(_summary(record.to_dict())))
        else:
            reason = f" ({record.reason})" if record.reason else ""
            click.echo(
                f"{record.id}  {record.status.value:<11} {record.name}  attempt {record.attempt}{reason}"
            )


@main.command()
@click.argument("task_id")
@click.option("-A", "--app", "app_target", help="Module defining your tasks.")
def show(task_id: str, app_target: str | None) -> None:
    """Show one task's record, logs included, as JSON."""
    app = load_app(app_target)
    record = app.store.get(task_id)
    if record is None:
        raise click.ClickException(f"no task {task_id} in the store {app.store_url_masked}")
    click.echo(json.dumps(record.to_dict(), indent=2, default=str))


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "name", "queue", "status", "reason", "attempt", "created_at", "finished_at")
    return {k: data[k] for k in keep}
