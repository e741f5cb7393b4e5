"""pytest plugin for projects that use decortask (registered through the `pytest11` entry point).

Fixtures: `decortask_app` (an isolated app, current for the test), `decortask_eager` (the same app in eager
mode) and `decortask_worker` (a real worker in a background thread). Markers: `decortask(**settings)`
configures the app, `decortask_worker(...)` the worker. See docs/testing.md.

The helpers (and with them the worker and kombu) are imported only when a fixture runs, so the plugin
adds little to the start of test runs that do not use it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from decortask.app import Decortask
    from decortask.testing import WorkerThread

APP_MARKER = "decortask"
WORKER_MARKER = "decortask_worker"
WORKER_OPTIONS = ("queues", "concurrency", "pool", "grace")
#: Placeholders a marker's string settings may use; each is replaced per test.
TMP_PATH = "{tmp_path}"
TOKEN = "{token}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "decortask_broker_url",
        "broker URL of the decortask_app fixture (default memory://; {tmp_path} and {token} are replaced)",
        default="memory://",
    )
    parser.addini(
        "decortask_store_url",
        "store URL of the decortask_app fixture (default memory://; {tmp_path} and {token} are replaced)",
        default="memory://",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "decortask(**settings): settings of the decortask_app fixture, e.g. "
        "broker_url='sqlite:///{tmp_path}/decortask.db' ({tmp_path} and {token} are replaced per test)",
    )
    config.addinivalue_line(
        "markers",
        "decortask_worker(queues=None, concurrency=2, pool='threads', grace=5.0): "
        "options of the decortask_worker fixture",
    )


def _merged_kwargs(request: pytest.FixtureRequest, marker: str) -> dict[str, Any]:
    """Keyword arguments of every `marker` on the test, the closest (function over class over module) winning."""
    merged: dict[str, Any] = {}
    for mark in reversed(list(request.node.iter_markers(marker))):
        if mark.args:
            raise pytest.UsageError(
                f"@pytest.mark.{marker} takes keyword arguments only, got positional {mark.args!r}"
            )
        merged.update(mark.kwargs)
    return merged


def _app_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "broker_url": request.config.getini("decortask_broker_url"),
        "store_url": request.config.getini("decortask_store_url"),
        **_merged_kwargs(request, APP_MARKER),
    }
    token = uuid.uuid4().hex[:10]
    for name, value in settings.items():
        if not isinstance(value, str):
            continue
        if TMP_PATH in value:
            value = value.replace(TMP_PATH, str(request.getfixturevalue("tmp_path")))
        settings[name] = value.replace(TOKEN, token)
    return settings


@pytest.fixture
def decortask_app(request: pytest.FixtureRequest) -> Iterator[Decortask]:
    """An app of the test's own, made the current app (`.delay()` uses it) and restored afterwards.

    On the `memory://` broker and store unless the `decortask_broker_url` / `decortask_store_url` ini
    options or `@pytest.mark.decortask(...)` say otherwise; its default queue is unique to the test.
    """
    from decortask.testing import isolated_app

    with isolated_app(**_app_settings(request)) as app:
        yield app


@pytest.fixture
def decortask_eager(decortask_app: Decortask) -> Iterator[Decortask]:
    """`decortask_app` in eager mode: `.delay()` runs the task through the real path before it returns."""
    from decortask.testing import eager

    with eager(decortask_app):
        yield decortask_app


@pytest.fixture
def decortask_worker(request: pytest.FixtureRequest, decortask_app: Decortask) -> Iterator[WorkerThread]:
    """A real worker on `decortask_app`'s broker, in a background thread, stopped after the test.

    `wait(*handles)` blocks until those tasks are done. Options come from
    `@pytest.mark.decortask_worker(queues=[...], concurrency=2, pool="threads", grace=5.0)`.
    """
    from decortask.testing import WorkerThread

    options = _merged_kwargs(request, WORKER_MARKER)
    unknown = sorted(set(options) - set(WORKER_OPTIONS))
    if unknown:
        raise pytest.UsageError(
            f"@pytest.mark.{WORKER_MARKER} got unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(WORKER_OPTIONS)}"
        )
    with WorkerThread(decortask_app, **options) as worker:
        yield worker
