"""`python manage.py decortask_worker [options]`: `decortask worker` for this Django project.

Every option of `decortask worker` works except `-A`/`--app`: the project is the app. `-A` is set to
`decortask.contrib.django.project`, so process-pool children set up the same project.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError, CommandParser

from decortask.cli import worker

PROJECT_MODULE = "decortask.contrib.django.project"
# Options manage.py itself handles (before this command runs) and `decortask worker` does not know.
_MANAGE_OPTIONS = ("--settings", "--pythonpath")


def worker_arguments(argv: list[str]) -> list[str]:
    """`decortask worker` arguments from this command's arguments.

    Raises:
        CommandError: `-A`/`--app` was given (the Django project is the app).
    """
    arguments: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        if arg in _MANAGE_OPTIONS:
            skip_value = True
            continue
        if arg.startswith(tuple(f"{option}=" for option in _MANAGE_OPTIONS)):
            continue
        if arg in ("-A", "--app") or arg.startswith(("-A", "--app=")):
            raise CommandError(
                "decortask_worker runs this Django project's tasks (each installed app's tasks.py); "
                "drop -A/--app"
            )
        arguments.append(arg)
    return ["-A", PROJECT_MODULE, *arguments]


def project_worker_command() -> click.Command:
    """`decortask worker` as this command presents it: the same options and parsing, with `-A`/`--app` left
    out of the help (this command passes it itself and refuses it from the user)."""
    command = copy.copy(worker)
    command.help = "Consume and run this Django project's tasks (each installed app's tasks.py)."
    command.params = []
    for param in worker.params:
        if isinstance(param, click.Option) and param.name == "app_target":
            param = copy.copy(param)  # the shared `decortask worker` keeps advertising its -A
            param.hidden = True
        command.params.append(param)
    return command


class Command(BaseCommand):  # type: ignore[misc]  # django ships no type hints
    help = "Run a decortask worker for this project's tasks (options as for `decortask worker --help`)."

    def add_arguments(self, parser: CommandParser) -> None:
        # Only for call_command and --help; run_from_argv hands the command line to click untouched.
        parser.add_argument("worker_args", nargs="*", help="decortask worker options, after `--`")

    def run_from_argv(self, argv: list[str]) -> None:
        # click parses the options, so `--help` and errors read exactly as `decortask worker`'s.
        prog = f"{os.path.basename(argv[0])} {argv[1]}"
        try:
            arguments = worker_arguments(argv[2:])
        except CommandError as exc:
            self.stderr.write(f"CommandError: {exc}")
            sys.exit(2)
        project_worker_command().main(args=arguments, prog_name=prog)

    def handle(self, *args: Any, **options: Any) -> None:
        # call_command("decortask_worker", "--", "--burst", "-c", "2"): the same, from code, which gets a
        # normal return or a CommandError rather than the command line's SystemExit.
        arguments = worker_arguments([*args, *options.get("worker_args", [])])
        # The worker takes SIGINT/SIGTERM over; the calling process gets its own handlers back afterwards.
        saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            project_worker_command().main(args=arguments, prog_name="decortask_worker", standalone_mode=False)
        except click.ClickException as exc:
            raise CommandError(exc.format_message()) from None
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise CommandError(f"the worker exited with status {exc.code}") from None
        finally:
            for signum, handler in saved.items():
                if signal.getsignal(signum) is not handler:
                    signal.signal(signum, handler)
