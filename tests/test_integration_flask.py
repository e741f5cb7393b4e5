"""Flask integration, proven by the example (`examples/flask_app`).

The web side runs in this process with Flask's `test_client`; the worker is a real
`decortask worker -A examples.flask_app:create_app` subprocess configured through the app's config, on the
embedded broker, Redis and RabbitMQ. A flaskr-like project (the package is the app factory) shows what a
worker pointed at the tasks module instead says.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("flask")

import click
from conftest import BROKERS, broker_urls
from flask import Flask, current_app, has_app_context
from workers import REPO, WorkerProcess, poll_until

import decortask
from decortask import ConfigurationError, task
from decortask.app import reset_default_app
from decortask.cli import load_app
from decortask.contrib.flask import Decortask
from decortask.testing import WorkerThread, eager, run_pending

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the examples package, as the worker imports it (its cwd is REPO)

TEXT = "The cat sat. The cat ran! The dog sat <script>alert('x')</script> and the cat slept."


@pytest.fixture
def site(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Any]:
    """The example app in this process, and the config a worker gets (as `FLASK_*` environment variables)."""
    from examples.flask_app import create_app

    kind = getattr(request, "param", "sqlite")
    broker_url, store_url = broker_urls(kind, tmp_path, unique)
    queue = f"flask-{unique}"
    config = {
        "TESTING": True,
        "DECORTASK_BROKER_URL": broker_url,
        "DECORTASK_STORE_URL": store_url,
        "DECORTASK_DEFAULT_QUEUE": queue,
    }
    app = create_app(config)
    extension = app.extensions["decortask"]
    worker_env = {f"FLASK_{key}": value for key, value in config.items() if key.startswith("DECORTASK_")}
    worker_env["FLASK_SUMMARY_TOP_WORDS"] = "2"  # read by the task through current_app.config
    try:
        yield SimpleNamespace(app=app, tasks=extension, queue=queue, env=worker_env, tmp=tmp_path)
    finally:
        extension.transport.delete_queue(queue)
        extension.transport.delete_queue(queue + ".dlq")
        extension.close()
        reset_default_app()


def flask_worker(site: Any, *args: str) -> WorkerProcess:
    """`decortask worker -A examples.flask_app:create_app`, configured only through the app's config."""
    worker = WorkerProcess("", "", site.queue, site.tmp / "worker.log", env=site.env)
    worker.command = [
        sys.executable, "-m", "decortask", "worker", "-A", "examples.flask_app:create_app", "-c", "2",
        "-l", "INFO", *args,
    ]  # fmt: skip
    return worker


def wait_for(worker: WorkerProcess, condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """`poll_until`, with the worker's log (read at the failure) in the message."""
    try:
        return poll_until(condition, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; worker log:\n{worker.log_tail()}") from None


def csrf_token_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def run_the_form_to_success(site: Any, worker: WorkerProcess) -> str:
    web = site.app.test_client()
    form = web.get("/")
    assert form.status_code == 200 and b'name="text"' in form.data
    token = csrf_token_of(form.get_data(as_text=True))
    assert web.post("/summaries", data={"text": "   ", "csrf_token": token}).status_code == 400
    response = web.post("/summaries", data={"text": TEXT, "csrf_token": token})
    assert response.status_code == 302
    status_url = response.headers["Location"]
    assert site.tasks.handle(status_url.rsplit("/", 1)[-1]).status is not None  # recorded at once

    def finished() -> str | None:
        page = web.get(status_url).get_data(as_text=True)
        return page if re.search(r'id="status">(SUCCESS|FAILED)', page) else None

    return str(wait_for(worker, finished, 30, "the status page to show an end"))


@pytest.mark.parametrize("site", BROKERS, indirect=True)
def test_the_form_enqueues_and_the_status_page_shows_success_progress_and_escaped_logs(site: Any) -> None:
    with flask_worker(site) as worker:
        page = run_the_form_to_success(site, worker)
    assert 'id="status">SUCCESS<' in page, page
    assert 'value="100"' in page and "100%: 14 words" in page
    assert '<span id="words">14</span>' in page
    # The worker's app config said 2 words: the task saw it through current_app, inside the app context.
    assert '<span id="common">the, cat</span>' in page
    assert "attempt 1: summarizing: The cat sat. The cat ran! The dog sat &lt;script&gt;" in page
    assert "<script>" not in page  # the log line carries user input: rendered escaped
    assert "attempt 1: done" in page


def test_the_form_refuses_a_post_without_the_sessions_csrf_token(site: Any) -> None:
    web = site.app.test_client()
    assert web.post("/summaries", data={"text": TEXT}).status_code == 400
    token = csrf_token_of(web.get("/").get_data(as_text=True))
    stranger = site.app.test_client()  # another browser: its session holds no token (or another one)
    assert stranger.post("/summaries", data={"text": TEXT, "csrf_token": token}).status_code == 400
    assert site.tasks.transport.queue_size(site.queue) == 0


def test_tasks_run_in_the_app_context_of_a_process_pool_child_too(site: Any) -> None:
    with flask_worker(site, "--pool", "processes") as worker:
        page = run_the_form_to_success(site, worker)
    assert 'id="status">SUCCESS<' in page, html.unescape(page)
    assert '<span id="common">the, cat</span>' in page


@task
def config_value(key: str) -> str:
    assert has_app_context()
    return str(current_app.config[key])


def test_every_task_runs_inside_the_app_context_and_it_is_popped_afterwards(unique: str) -> None:
    app = Flask("probe")
    app.config.update(DECORTASK_BROKER_URL="memory://", DECORTASK_STORE_URL="memory://", COLOUR="teal")
    app.config["DECORTASK_DEFAULT_QUEUE"] = f"probe-{unique}"
    tasks = Decortask(app)
    try:
        handle = config_value.delay("COLOUR")
        assert run_pending(tasks) == 1
        assert handle.get(timeout=5) == "teal"
        assert not has_app_context()  # after_execute popped what before_execute pushed
    finally:
        tasks.close()
        reset_default_app()


@task
async def async_config_value(key: str) -> str:
    await asyncio.sleep(0)  # another task's coroutine may run here: each keeps its own app context
    assert has_app_context()
    return str(current_app.config[key])


def test_tasks_on_pool_threads_and_the_event_loop_run_inside_the_app_context(unique: str) -> None:
    app = Flask("pooled")
    app.config.update(DECORTASK_BROKER_URL="memory://", DECORTASK_STORE_URL="memory://", COLOUR="plum")
    app.config["DECORTASK_DEFAULT_QUEUE"] = f"pooled-{unique}"
    tasks = Decortask(app)
    try:
        with WorkerThread(tasks, concurrency=3) as worker:
            handles = [config_value.delay("COLOUR") for _ in range(4)]
            handles += [async_config_value.delay("COLOUR") for _ in range(4)]
            results = worker.wait(*handles)
        assert [result.value for result in results] == ["plum"] * 8, [r.error_message for r in results]
        assert not has_app_context()  # nothing leaked into the test's thread
    finally:
        tasks.close()
        reset_default_app()


@task
def config_value_twice(key: str) -> list[str]:
    inner = config_value.delay(key)  # in eager mode, runs here, in this thread, before delay() returns
    return [inner.get(timeout=5), str(current_app.config[key])]  # the outer context is still active


def test_a_task_run_inside_another_in_eager_mode_leaves_the_outer_app_context_intact(
    unique: str,
) -> None:
    app = Flask("nested")
    app.config.update(DECORTASK_BROKER_URL="memory://", DECORTASK_STORE_URL="memory://", COLOUR="sage")
    app.config["DECORTASK_DEFAULT_QUEUE"] = f"nested-{unique}"
    tasks = Decortask(app)
    try:
        with eager(tasks):
            handle = config_value_twice.delay("COLOUR")
        assert handle.get(timeout=5) == ["sage", "sage"]
        assert not has_app_context()  # both contexts were popped, the inner one first
    finally:
        tasks.close()
        reset_default_app()


def test_init_app_reads_app_config_and_refuses_unknown_keys(unique: str) -> None:
    tasks = Decortask(default_queue=f"explicit-{unique}")  # keyword arguments win over app.config
    app = Flask("factory")
    app.config.update(
        DECORTASK={"result_ttl": "120"}, DECORTASK_BROKER_URL="memory://", DECORTASK_STORE_URL="memory://"
    )
    app.config["DECORTASK_DEFAULT_QUEUE"] = "ignored"
    tasks.init_app(app)
    try:
        assert tasks.settings.broker_url == "memory://"
        assert tasks.settings.result_ttl == 120.0
        assert tasks.settings.default_queue == f"explicit-{unique}"
        assert app.extensions["decortask"] is tasks
        bad = Flask("typo")
        bad.config["DECORTASK_BROKR_URL"] = "memory://"
        with pytest.raises(ConfigurationError, match=r"DECORTASK_BROKR_URL.*known settings: .*broker_url"):
            Decortask(bad)
    finally:
        tasks.close()
        reset_default_app()


def test_the_cli_finds_the_extension_on_a_flask_app_or_its_factory_and_explains_a_bare_one() -> None:
    try:
        import examples.flask_app as package
        from examples.flask_app import app as example

        assert load_app("examples.flask_app.app:app") is example.app.extensions["decortask"]
        made = load_app("examples.flask_app:create_app")  # a factory: called, as `flask --app` does
        assert made is package.decortask_ext and made.flask_app is not None
        with pytest.raises(
            click.ClickException, match="neither a Decortask app nor a Flask app carrying one"
        ):
            load_app("examples.flask_app.tasks:summarize")
    finally:
        reset_default_app()


# flaskr, the Flask tutorial's layout: the package is the app factory, `tasks.py` sits beside it, and the
# factory imports its parts. The extension is named so that the `tasks` submodule cannot replace it.
FLASKR = {
    "flaskr/__init__.py": """
from flask import Flask

from decortask.contrib.flask import Decortask

decortask_ext = Decortask()


def create_app(test_config=None):
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(GREETING="hello")
    app.config.from_prefixed_env()
    app.config.update(test_config or {})
    decortask_ext.init_app(app)
    from . import tasks  # noqa: F401 - as flaskr imports its blueprints

    return app
""",
    "flaskr/tasks.py": """
from flask import current_app

from decortask import task


@task(name="flaskr.greet", retries=2, delay=0.1)
def greet(name: str) -> str:
    return f"{current_app.config['GREETING']} {name}"
""",
}
ENQUEUE = """
import sys

from flaskr import create_app

create_app()
app = create_app()  # a second app (as tests make one per case): the extension moves to it
from flaskr.tasks import greet

print(greet.delay(sys.argv[1]).id)
"""


@pytest.fixture
def flaskr(tmp_path: Path, unique: str) -> SimpleNamespace:
    """The flaskr-like project in a fresh directory, configured only through `FLASK_DECORTASK_*`."""
    for name, text in FLASKR.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    url = f"sqlite:///{tmp_path}/queue.db"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FLASK_DECORTASK_BROKER_URL": url,
        "FLASK_DECORTASK_STORE_URL": url,
        "FLASK_DECORTASK_DEFAULT_QUEUE": f"flaskr-{unique}",
        "FLASK_GREETING": '"bonjour"',  # from_prefixed_env reads JSON
    }
    return SimpleNamespace(path=tmp_path, url=url, env=env)


def run_in(project: SimpleNamespace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=project.path,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_worker_pointed_at_the_tasks_module_of_an_app_factory_refuses_naming_the_right_a(
    flaskr: SimpleNamespace,
) -> None:
    result = run_in(flaskr, "-m", "decortask", "worker", "-A", "flaskr.tasks", "--burst")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "never bound" in errors[0] and "-A flaskr:create_app" in errors[0], errors[0]
    assert not (flaskr.path / "decortask.db").exists()  # the default store was never opened


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_a_worker_given_the_app_factory_runs_the_tasks_in_the_apps_context_with_its_config(
    flaskr: SimpleNamespace, pool: str
) -> None:
    sent = run_in(flaskr, "-c", ENQUEUE, "ann")
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip().splitlines()[-1]
    worker = run_in(
        flaskr, "-m", "decortask", "worker", "-A", "flaskr:create_app", "--burst", "--pool", pool, "-c", "1"
    )
    assert worker.returncode == 0, worker.stderr
    store = decortask.Decortask(flaskr.url, flaskr.url, set_default=False)
    try:
        record = store.store.get(task_id)
        assert record is not None, worker.stderr
        assert (record.status.value, record.result, record.attempt) == ("SUCCESS", "bonjour ann", 1), record
    finally:
        store.close()
    assert not (flaskr.path / "decortask.db").exists()


def test_the_flask_docs_and_example_never_name_the_extension_like_the_tasks_module() -> None:
    # `tasks = Decortask()` beside a tasks.py module is replaced by that module at its first import.
    for path in (
        REPO / "docs" / "integrations" / "flask.md",
        *sorted((REPO / "examples" / "flask_app").glob("*.py")),
    ):
        assert not re.search(r"^\s*tasks\s*=\s*Decortask\(", path.read_text(), re.MULTILINE), path
