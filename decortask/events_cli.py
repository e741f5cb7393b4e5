"""`decortask events`: print the event feed as it is written, one readable line per event (or JSON).

cli.py registers it with `install_events`, handing over its read-only store opener (so this module never
imports cli.py, which imports it). Events come from `events.EventSubscriber`; text in them is masked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import click

from .errors import DecortaskError
from .events import KINDS, EventSubscriber
from .security import mask_text
from .states import TaskStatus
from .store.base import TaskStore

if TYPE_CHECKING:
    from .app import Decortask

#: Opens the -A app's store for reading: (app_target, broker_url, store_url) -> (app, store). cli._reading.
Reading = Callable[
    [str | None, str | None, str | None], AbstractContextManager[tuple["Decortask", TaskStore]]
]
_reading: list[Reading] = []


def install_events(group: click.Group, *, reading: Reading) -> None:
    """Add `events` to the `decortask` group, with the CLI's way to open a store for reading."""
    _reading[:] = [reading]
    group.add_command(events)


@click.command("events")
@click.option("-A", "--app", "app_target", help="Module defining your tasks (for its store settings).")
@click.option(
    "--store-url", default=None, help="The store to read (else the -A app's, else the environment's)."
)
@click.option(
    "--since",
    default="now",
    show_default=True,
    help="now (what comes next), oldest (all the feed keeps), or a cursor printed before (resume after it).",
)
@click.option("--name", "names", multiple=True, help="Only tasks of this name (repeatable).")
@click.option("--queue", "queues", multiple=True, help="Only tasks of this queue (repeatable).")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in TaskStatus], case_sensitive=False),
    help="Only events whose task is in this state (repeatable).",
)
@click.option(
    "--kind", "kinds", multiple=True, type=click.Choice(sorted(KINDS)), help="Only these kinds (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with its cursor.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Exit after this many seconds without an event (default: run until Ctrl-C).",
)
def events(
    app_target: str | None,
    store_url: str | None,
    since: str,
    names: tuple[str, ...],
    queues: tuple[str, ...],
    states: tuple[str, ...],
    kinds: tuple[str, ...],
    as_json: bool,
    timeout: float | None,
) -> None:
    """Print task events (state changes, progress, log lines) as workers write them.

    Needs the events setting on where tasks are sent and run (DECORTASK_EVENTS=1, decortask worker
    --events); see docs/events.md.
    """
    with _reading[0](app_target, None, store_url) as (_, store):
        try:
            subscriber = EventSubscriber(
                store=store,
                since=since,
                names=names or None,
                queues=queues or None,
                states=[s.upper() for s in states] or None,
                kinds=kinds or None,
            )
            if subscriber.feed.bounds()[1] == 0:  # else a first user waits on a silent terminal, unsure why
                click.echo(
                    "decortask: no events were ever written to this store: events are off by default; turn "
                    "them on where tasks are sent and run (DECORTASK_EVENTS=1, decortask worker --events). "
                    "Waiting for some.",
                    err=True,
                )
            for event in subscriber.events(timeout):
                click.echo(json.dumps(event.to_dict()) if as_json else f"{event.cursor} {event.line()}")
        except DecortaskError as exc:
            raise click.ClickException(mask_text(str(exc))) from None
        except KeyboardInterrupt:
            return
