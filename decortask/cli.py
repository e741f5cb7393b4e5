"""The `decortask` command: thin click wrappers over the app, worker and store."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import click

from .app import Decortask, current_app
from .cli_options import BROKER_URL, STORE_URL
from .config import sqlite_path
from .errors import DecortaskError, missing_extra
from .events_cli import install_events
from .logsetup import LOG_FORMATS, configure_logging, set_worker_id
from .periodic_cli import install_schedules
from .pools import POOL_KINDS
from .security import mask_text
from .states import TaskStatus
from .store.base import TaskQuery, TaskStore
from .store_cli import install_store
from .workflow_cli import install_show_and_cancel


def load_app(target: str | None) -> Decortask:
    """Import the user's module and return the app to use.

    `-A pkg.tasks` (the app the module made current, else one from the environment), `-A pkg.tasks:app`
    where `app` is a Decortask app or a framework app carrying one in `app.extensions["decortask"]` (the
    Flask extension), or a function making one (an app factory such as Flask's `create_app`, called with no
    arguments). A Django project runs with `python manage.py decortask_worker`. The module name comes
    from the command line, never from a message or the store.
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
        if inspect.isfunction(found):
            found = found()  # an app factory (-A flaskr:create_app), as `flask --app` calls it
        extensions = getattr(found, "extensions", None)
        if not isinstance(found, Decortask) and isinstance(extensions, Mapping):
            found = extensions.get("decortask")
        if not isinstance(found, Decortask):
            raise click.ClickException(
                f"-A {target!r}: {attr!r} in {module_name} is neither a Decortask app nor a Flask app "
                "carrying one (decortask.contrib.flask.Decortask(app)), nor a factory returning one"
            )
        return found.set_default()
    if hasattr(module, "INSTALLED_APPS") and hasattr(module, "DATABASES"):
        raise click.ClickException(
            f"-A {module_name!r} is a Django settings module: run `python manage.py decortask_worker`, or "
            f"DJANGO_SETTINGS_MODULE={module_name} decortask worker -A decortask.contrib.django.project"
        )
    return current_app()


def _configure_logging(level: str, logfile: str | None = None, log_format: str = "text") -> None:
    """The process's log handler, through `logsetup` (the one place that configures logging)."""
    try:
        configure_logging(level, logfile=logfile, log_format=log_format)
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None


def _override(app: Decortask, broker: str | None, store: str | None) -> Decortask:
    if broker is None and store is None:
        return app
    # reconfigured(), not a fresh Decortask: the -A app's middleware and commit hook come along.
    return app.reconfigured(
        broker_url=broker or app.settings.broker_url, store_url=store or app.settings.store_url
    ).set_default()


@click.group()
@click.version_option(package_name="decortask")
def main() -> None:
    """decortask: run workers and inspect tasks."""


@main.command()
@click.option("-A", "--app", "app_target", help="Module defining your tasks (pkg.tasks or pkg.tasks:app).")
@click.option(
    "-c",
    "--concurrency",
    default=4,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="How many tasks run at once: threads, or child processes with --pool processes.",
)
@click.option("-Q", "--queues", default=None, help="Comma-separated queues (default: the default queue).")
@click.option(
    "--pool",
    default="threads",
    show_default=True,
    type=click.Choice(list(POOL_KINDS)),
    help="threads: tasks run in this process; processes: in -c spawned child processes.",
)
@click.option("--burst", is_flag=True, help="Exit once the queues and the schedule are empty.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds running tasks may take to finish after SIGTERM/SIGINT (default: shutdown_grace, 30).",
)
@click.option(
    "--periodic/--no-periodic",
    default=None,
    help="Take part in periodic schedules, or not (default: the periodic setting, DECORTASK_PERIODIC, on).",
)
@click.option(
    "--events/--no-events",
    default=None,
    help="Append task events to the store's feed, or not (default: the events setting, off); docs/events.md.",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option(
    "--logfile",
    default=None,
    type=click.Path(dir_okay=False),
    help="Append the log to this file instead of stderr (reopened if logrotate moves it).",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(list(LOG_FORMATS)),
    help="text, or json: one JSON object per line (ts, level, logger, message, worker_id, task_name, task_id).",
)
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Serve /metrics here (docs/metrics.md).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="No auth: keep it private.")
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
    grace: float | None,
    periodic: bool | None,
    events: bool | None,
    loglevel: str,
    logfile: str | None,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    broker_url: str | None,
    store_url: str | None,
) -> None:
    """Consume and run tasks."""
    from .worker import Worker

    _configure_logging(loglevel, logfile, log_format)
    try:
        loaded = load_app(app_target)
        _refuse_an_unbound_flask_extension(loaded, app_target)
        app = _override(loaded, broker_url, store_url)
        if events is not None and events != app.settings.events:  # the store opens with or without a feed
            app = app.reconfigured(events=events).set_default()
        if not len(app.registry):
            raise click.ClickException(
                "no tasks are registered, so this worker could run nothing; pass -A naming the module "
                "that defines your tasks (e.g. decortask worker -A myproject.tasks)"
            )
        app.transport.check()
        app.store.count_schedule()  # opens the store now, so a bad URL or file fails before consuming
        names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
        modules = [_child_target(app_target)] if app_target else []  # a pool child imports the same
        runner = Worker(
            app,
            names,
            concurrency=concurrency,
            pool=pool,
            burst=burst,
            grace=grace,
            app_modules=modules,
            periodic=periodic,
        )
        set_worker_id(runner.id)
        if metrics_port is not None:  # the 'metrics' extra's module, imported only when asked for
            try:
                from .contrib.prometheus import serve_worker_metrics
            except ImportError as exc:
                raise click.ClickException(str(missing_extra("--metrics-port", "metrics", exc))) from None
            runner.observers.append(serve_worker_metrics(app, runner.queues, metrics_port, metrics_host))
        runner.install_signal_handlers()
        code = runner.run()
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    sys.exit(code)


def _refuse_an_unbound_flask_extension(app: Decortask, target: str | None) -> None:
    """Refuse to run tasks whose Flask extension never met its Flask app (`-A flaskr.tasks`)."""
    if "decortask.contrib.flask" not in sys.modules:
        return  # no Flask extension exists in this process (and Flask is not imported to find out)
    from .contrib.flask import unbound_extension_problem

    problem = unbound_extension_problem(app, target)
    if problem is not None:
        raise click.ClickException(problem)


def _child_target(target: str) -> str:
    """What a process-pool child loads: the -A module, and the factory too when -A names one."""
    module_name, _, attr = target.partition(":")
    factory = attr and inspect.isfunction(getattr(sys.modules.get(module_name), attr, None))
    return target if factory else module_name


#: How to point a command at the right store, for the error that says it found none.
_POINT_AT_A_STORE = (
    "point the command at your app's store: -A naming the module that configures your app (as for the "
    "worker), --store-url sqlite:////absolute/path/decortask.db, or DECORTASK_STORE_URL"
)


@main.command("tasks")
@click.option("-A", "--app", "app_target", help="Module defining your tasks.")
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value.lower() for s in TaskStatus]))
@click.option("--name", default=None, help="Only this task name.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--offset", default=0, type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@BROKER_URL
@STORE_URL
def list_tasks(
    app_target: str | None,
    statuses: tuple[str, ...],
    name: str | None,
    limit: int,
    offset: int,
    as_json: bool,
    broker_url: str | None,
    store_url: str | None,
) -> None:
    """List task records, newest first (reads the store; never creates one)."""
    query = TaskQuery(
        statuses=frozenset(TaskStatus(s.upper()) for s in statuses) or None,
        name=name,
        limit=limit,
        offset=offset,
    )
    with _reading(app_target, broker_url, store_url) as (_, store):
        try:
            records = store.list_tasks(query)
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


@contextmanager
def _reading(
    app_target: str | None, broker_url: str | None, store_url: str | None
) -> Iterator[tuple[Decortask, TaskStore]]:
    """The app of a read-only command and its store, opened for reading: never created, never written.

    Says on stderr which store it reads (masked), so stdout stays the command's output.
    """
    try:
        app = _override(load_app(app_target), broker_url, store_url)
        store = _open_for_reading(app)
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    try:
        click.echo(f"decortask: reading the store {_describe_store(app)}", err=True)
        yield app, store
    finally:
        store.close()


def _refuse_a_store_with_nothing_to_show(app: Decortask, *, may_create: bool = False) -> None:
    """A memory store, or a SQLite file that does not exist: a command inspecting it would show nothing (and
    opening the file would create an empty one), as when run from another directory than the app's.

    `may_create` (the dashboard, which may start before the first worker made the file): say so on stderr
    and go on.
    """
    url = app.settings.store_url
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        raise click.ClickException(
            f"the store is {url}, which lives inside one process: there is nothing to read from here; "
            + _POINT_AT_A_STORE
        )
    if scheme != "sqlite" or sqlite_path(url).is_file():
        return
    where = f"no SQLite store at {sqlite_path(url).resolve()} (store URL {app.store_url_masked})"
    if not may_create:
        raise click.ClickException(
            f"{where}, so there is nothing to read, and none was created; {_POINT_AT_A_STORE}"
        )
    click.echo(
        f"decortask: {where} yet: starting on an empty one, which stays empty unless your workers use this "
        f"file; if they do not, {_POINT_AT_A_STORE}",
        err=True,
    )


def _open_for_reading(app: Decortask) -> TaskStore:
    _refuse_a_store_with_nothing_to_show(app)
    url = app.settings.store_url
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        try:
            from .store.postgres import PostgresStore
        except ImportError as exc:
            raise missing_extra("the PostgreSQL store (postgresql://)", "postgres", exc) from None
        return PostgresStore(url, create=False)  # refuses a schema without a store, creating nothing
    if scheme != "sqlite":
        return app.store  # a server store: reading it creates nothing
    from .store.sqlite import SQLiteStore

    return SQLiteStore(url, read_only=True)


def _describe_store(app: Decortask) -> str:
    url = app.settings.store_url
    if url.lower().startswith("sqlite://") and not url.lower().startswith("sqlite:////"):
        return f"{app.store_url_masked} ({sqlite_path(url).resolve()})"  # relative: say relative to what
    return app.store_url_masked


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "name", "queue", "status", "reason", "attempt", "created_at", "finished_at")
    return {k: data[k] for k in keep}


@main.command()
@click.argument("task_id")
@click.option("-A", "--app", "app_target", help="Module defining your tasks.")
def retry(task_id: str, app_target: str | None) -> None:
    """Run a task that has ended (SUCCESS, FAILED, CANCELLED, INTERRUPTED) again, as a new attempt."""
    from .admin import rerun_task

    app = load_app(app_target)
    try:
        record = rerun_task(app, task_id)
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    click.echo(f"task {record.id} ({record.name}): attempt {record.attempt + 1} queued on {record.queue}")


@main.group()
def dlq() -> None:
    """Inspect and replay dead letters (messages the workers refused, kept in QUEUE.dlq)."""


@dlq.command("list")
@click.option("-A", "--app", "app_target", help="Module defining your tasks.")
@click.option(
    "-Q", "--queue", default=None, help="The queue whose dead letters to show (default: the default queue)."
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(app_target: str | None, queue: str | None, limit: int, as_json: bool) -> None:
    """List dead letters without removing them."""
    from .deadletters import dead_letter_queue, list_dead_letters

    app = load_app(app_target)
    try:
        letters = list_dead_letters(app, queue, limit)
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    if not letters and not as_json:
        click.echo(f"no dead letters in {dead_letter_queue(queue or app.settings.default_queue)}")
    for letter in letters:
        if as_json:
            click.echo(json.dumps(letter.to_dict()))
            continue
        when = _format_time(letter.dead_lettered_at)
        what = letter.task or f"({letter.size} bytes, {letter.content_type or 'no content type'})"
        replay_note = "" if letter.replayable else "  [not replayable]"
        click.echo(f"{letter.id}  {when}  {letter.reason:<24} {what}{replay_note}")
        if letter.detail:
            click.echo(f"    {letter.detail}")


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("-A", "--app", "app_target", help="Module defining your tasks.")
@click.option(
    "-Q", "--queue", default=None, help="The queue whose dead letters to replay (default: the default queue)."
)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of the queue.")
def dlq_replay(ids: tuple[str, ...], app_target: str | None, queue: str | None, replay_all: bool) -> None:
    """Publish dead letters again as fresh attempts of their tasks (IDs as `dlq list` shows them)."""
    from .deadletters import replay

    if bool(ids) == replay_all:
        raise click.UsageError(
            "give the IDs of the dead letters to replay (see `decortask dlq list`), or --all"
        )
    app = load_app(app_target)
    try:
        report = replay(app, queue, None if replay_all else ids)
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    for outcome in report.outcomes:
        click.echo(f"{outcome.id}  {outcome.action}: {outcome.detail}")
    for missing in report.missing:
        click.echo(f"{missing}  not found in the dead-letter queue (see `decortask dlq list`)")
    if not report.outcomes and not report.missing:
        click.echo("no dead letters to replay")
    if not report.ok:
        raise click.ClickException("some dead letters were not replayed; each line above says why")


@main.command()
@click.argument("queue")
@click.option("-A", "--app", "app_target", help="Module defining your tasks.")
@click.option(
    "--dlq", "dead_letters", is_flag=True, help="Purge QUEUE's dead-letter queue (QUEUE.dlq) instead."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge(queue: str, app_target: str | None, dead_letters: bool, yes: bool) -> None:
    """Delete the ready messages of QUEUE (their tasks end CANCELLED, purged), or with --dlq its dead letters."""
    from .admin import purge_queue
    from .deadletters import dead_letter_queue

    app = load_app(app_target)
    # `purge Q.dlq` means the dead letters too: their records have ended, so none may be cancelled.
    dead_letters = dead_letters or dead_letter_queue(queue) == queue
    target = dead_letter_queue(queue) if dead_letters else queue
    try:
        waiting = app.transport.queue_size(target)
        if not waiting:
            click.echo(f"no ready messages in {target}; nothing to purge")
            return
        if not yes:
            consequence = (
                "They cannot be replayed afterwards"
                if dead_letters
                else "Their tasks will be marked CANCELLED (purged) and never run"
            )
            click.confirm(f"Delete the {waiting} ready messages of {target}? {consequence}.", abort=True)
        if dead_letters:
            deleted = app.transport.purge(target)
            click.echo(f"deleted {deleted} dead letters from {target}")
        else:
            report = purge_queue(app, target)
            click.echo(f"deleted {report.deleted} messages from {target}; {report.cancelled} tasks CANCELLED")
            if report.unreadable:
                raise click.ClickException(
                    f"{report.unreadable} messages could not be read by the broker client (e.g. a "
                    f"'compression' header over a body that is not compressed) and were left in {target}; "
                    f"delete them all with your broker's own tools"
                )
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None


def _format_time(when: float | None) -> str:
    if when is None:
        return "-" * 19
    return datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@main.command()
@click.option("-A", "--app", "app_target", help="Module defining your tasks (pkg.tasks or pkg.tasks:app).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--token",
    envvar="DECORTASK_DASHBOARD_TOKEN",
    default=None,
    help="Access token (Bearer header or login form); required unless --host is loopback. Prefer the "
    "DECORTASK_DASHBOARD_TOKEN environment variable: command lines are visible to other users.",
)
@click.option(
    "-Q", "--queues", default=None, help="Comma-separated queues to show even before any task used them."
)
@click.option(
    "--allowed-origin",
    "allowed_origins",
    multiple=True,
    help="Public origin POSTs may come from when a proxy rewrites the Host header (https://ops.example.com).",
)
@click.option("--broker-url", default=None, help="Overrides the app's broker.")
@click.option("--store-url", default=None, help="Overrides the app's store.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def dashboard(
    app_target: str | None,
    host: str,
    port: int,
    token: str | None,
    queues: str | None,
    allowed_origins: tuple[str, ...],
    broker_url: str | None,
    store_url: str | None,
    loglevel: str,
) -> None:
    """Serve the web dashboard: tasks, workers, queues and dead letters, live."""
    try:
        from .dashboard.auth import check_exposure
        from .dashboard.serve import serve
    except ImportError as exc:
        raise click.ClickException(str(missing_extra("the dashboard", "dashboard", exc))) from None
    _configure_logging(loglevel)
    try:
        check_exposure(host, token or None)
        app = _override(load_app(app_target), broker_url, store_url)
        _refuse_a_store_with_nothing_to_show(app, may_create=True)
        names = tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else ()
        where = f"[{host}]" if ":" in host else host
        auth = "token required" if token else "no token (loopback only)"
        click.echo(
            f"decortask dashboard on http://{where}:{port}  broker {app.broker_url_masked}  "
            f"store {app.store_url_masked}  auth: {auth}"
        )
        serve(
            app,
            host=host,
            port=port,
            token=token or None,
            queues=names,
            allowed_origins=allowed_origins,
            log_level=loglevel,
        )
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None


# decortask schedules [list|pause|resume]: periodic_cli.py, handed these helpers so it never imports cli.py
install_schedules(
    main, reading=_reading, loading=lambda target, store_url: _override(load_app(target), None, store_url)
)
install_events(main, reading=_reading)  # decortask events: events_cli.py
install_show_and_cancel(main, reading=_reading, loading=load_app)  # a task or a workflow: workflow_cli.py
# decortask store vacuum: store_cli.py
install_store(main, loading=lambda target, store_url: _override(load_app(target), None, store_url))
