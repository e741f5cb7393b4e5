"""`decortask store vacuum`: rewrite a SQLite store once so that purges return freed space to the disk.

A file created before stores set incremental auto-vacuum keeps its size after records expire (its free
pages are reused for new rows); one `VACUUM` switches it over and drops the free pages. cli.py registers
the group with `install_store`, handing over its app loader (so this module never imports cli.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from .config import sqlite_path
from .errors import DecortaskError
from .security import mask_text, mask_url

if TYPE_CHECKING:
    from .app import Decortask

#: Loads the -A app with an overridden store: (app_target, store_url) -> app. cli.py's loader.
Loading = Callable[[str | None, str | None], "Decortask"]
_loading: list[Loading] = []


def install_store(group: click.Group, *, loading: Loading) -> None:
    """Add `store` to the `decortask` group, with the CLI's way to load the -A app."""
    _loading[:] = [loading]
    group.add_command(store)


@click.group()
def store() -> None:
    """Maintain the state store."""


@store.command("vacuum")
@click.option("-A", "--app", "app_target", help="Module defining your tasks (for its store settings).")
@click.option("--store-url", default=None, help="The SQLite store to rewrite (else the -A app's).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def vacuum(app_target: str | None, store_url: str | None, yes: bool) -> None:
    """Rewrite a SQLite store with incremental auto-vacuum and without its free pages (one VACUUM)."""
    from .store.sqlite import SQLiteStore
    from .store.sqlite_expiry import compact

    try:
        url = _loading[0](app_target, store_url).settings.store_url
        if not url.lower().startswith("sqlite:"):
            raise click.ClickException(
                f"the store is {mask_url(url)}: only a SQLite store has a file to vacuum (Redis frees "
                "memory as records are deleted)"
            )
        path = sqlite_path(url)
        reader = SQLiteStore(url, read_only=True)  # refuses a missing file...
        try:
            reader.get("")  # ...and one that holds no decortask store
        finally:
            reader.close()
        size = path.stat().st_size
        if not yes:
            click.confirm(
                f"Rewrite {path.resolve()} ({size / 1e6:.1f} MB)? Writers wait until it is done "
                "(seconds for a large file): better while workers are stopped or quiet.",
                abort=True,
            )
        before, after = compact(path, reader.busy_timeout)
    except DecortaskError as exc:
        raise click.ClickException(mask_text(str(exc))) from None
    except sqlite3.Error as exc:
        raise click.ClickException(
            f"vacuuming {path} failed: {exc}; if another process held the file for too long, run it again "
            "while workers are stopped"
        ) from None
    click.echo(
        f"{path}: {before.bytes / 1e6:.1f} MB ({before.free_pages} free pages) -> {after.bytes / 1e6:.1f} MB "
        f"({after.free_pages} free); auto_vacuum {_MODES.get(before.auto_vacuum, before.auto_vacuum)} -> "
        f"{_MODES.get(after.auto_vacuum, after.auto_vacuum)}: purges now return freed pages to the disk"
    )


_MODES = {0: "none", 1: "full", 2: "incremental"}
