"""Options several `decortask` commands share (`cli.py` and the modules that add commands to it)."""

from __future__ import annotations

import click

#: `--broker-url`, for a command that reads the store of an app whose broker should not be reached.
BROKER_URL = click.option("--broker-url", default=None, help="Overrides the app's broker (as for `worker`).")
#: `--store-url`, for a command that reads a store.
STORE_URL = click.option(
    "--store-url", default=None, help="The store to read (else the -A app's, else DECORTASK_STORE_URL)."
)
