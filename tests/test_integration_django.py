"""Django integration, proven by the notes example (`examples/django_project`).

The web side runs in this process with Django's test `Client`; the worker is a real
`python manage.py decortask_worker` subprocess on the embedded broker, Redis and RabbitMQ. Both share the
example's SQLite database, which lives in a temporary directory (`NOTES_DATA_DIR`).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("django")

from conftest import BROKERS, broker_urls
from workers import REPO, WorkerProcess, poll_until

from decortask import BrokerUnavailable, ConfigurationError, Decortask, Middleware, TaskStatus
from decortask.app import reset_default_app
from decortask.store.base import TaskQuery
from decortask.testing import eager, run_pending

PROJECT = REPO / "examples" / "django_project"
TASK_NAME = "notes.tasks.publish_note"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Set up the example project in this process once: settings, `INSTALLED_APPS`, a migrated database."""
    import django
    from django.conf import settings

    if settings.configured and os.environ.get("DJANGO_SETTINGS_MODULE") != "mysite.settings":
        pytest.skip("another Django project is already configured in this test process")
    data = tmp_path_factory.mktemp("notes-data")
    os.environ["NOTES_DATA_DIR"] = str(data)
    os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    if str(PROJECT) not in sys.path:
        sys.path.insert(0, str(PROJECT))
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    yield data
    from decortask.contrib.django.configure import project_app

    project_app().close()  # its connections to the SQLite files in `data`
    reset_default_app()
    del os.environ["NOTES_DATA_DIR"]


@pytest.fixture
def project(data_dir: Path, request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Any]:
    """The project switched to one broker (by `override_settings`, as a user's test would) and a fresh queue."""
    from django.test import override_settings

    from decortask.contrib.django.configure import project_app

    kind = getattr(request, "param", "sqlite")
    broker_url, store_url = broker_urls(kind, tmp_path, unique)
    queue = f"django-{unique}"
    config = {"broker_url": broker_url, "store_url": store_url, "default_queue": queue}
    with override_settings(DECORTASK=config):
        app = project_app()
        assert app.settings.default_queue == queue  # the receiver of setting_changed rebuilt the app
        env = {
            "NOTES_DATA_DIR": str(data_dir),
            "DECORTASK_BROKER_URL": broker_url,
            "DECORTASK_STORE_URL": store_url,
            "DECORTASK_DEFAULT_QUEUE": queue,
        }
        try:
            yield SimpleNamespace(app=app, queue=queue, env=env, tmp=tmp_path, db=data_dir / "notes.sqlite3")
        finally:
            app.transport.delete_queue(queue)
            app.transport.delete_queue(queue + ".dlq")


def manage_worker(project: Any, *args: str) -> WorkerProcess:
    """`python examples/django_project/manage.py decortask_worker`, logging to the test's directory."""
    worker = WorkerProcess("", "", project.queue, project.tmp / "worker.log", env=project.env)
    worker.command = [sys.executable, str(PROJECT / "manage.py"), "decortask_worker", "-c", "2", "-l", "INFO", *args]  # fmt: skip
    return worker


def wait_for(worker: WorkerProcess, condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """`poll_until`, with the worker's log (read at the failure) in the message."""
    try:
        return poll_until(condition, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; worker log:\n{worker.log_tail()}") from None


def client() -> Any:
    from django.test import Client

    return Client()


def records(app: Decortask) -> list[Any]:
    return app.store.list_tasks(TaskQuery(name=TASK_NAME, limit=100))


@pytest.mark.parametrize("project", BROKERS, indirect=True)
def test_a_view_enqueues_on_commit_and_the_worker_writes_through_the_orm(project: Any) -> None:
    from notes.models import Note

    web = client()
    notes_before = Note.objects.count()
    rolled_back = web.post("/", {"text": "never saved", "dry_run": "on"})
    assert rolled_back.status_code == 200
    assert b"nothing was saved and nothing was queued" in rolled_back.content
    assert Note.objects.count() == notes_before
    assert project.app.transport.queue_size(project.queue) == 0  # no worker yet: a message would wait here
    assert records(project.app) == []

    with manage_worker(project) as worker:
        response = web.post("/", {"text": "four words in here"})
        assert response.status_code == 302, response.content
        detail = response["Location"]

        def published() -> bytes | None:
            page: bytes = web.get(detail).content
            return page if b'data-status="published"' in page else None

        page = wait_for(worker, published, 30, "the note to be published")
    assert b'<span id="word-count">4</span>' in page
    note = Note.objects.get(pk=int(detail.strip("/").rsplit("/", 1)[-1]))
    assert note.word_count == 4 and note.published_at is not None
    (record,) = records(project.app)  # one task: the committed view's, none from the rolled-back one
    assert record.status is TaskStatus.SUCCESS and record.args == [note.pk]
    assert [line.message for line in record.logs] == ["counted words"]


def test_delay_on_commit_publishes_only_when_the_transaction_commits(project: Any) -> None:
    from django.db import transaction
    from notes.models import Note
    from notes.tasks import publish_note

    with transaction.atomic():
        note = Note.objects.create(text="one two three")
        publish_note.delay_on_commit(note.pk)
        assert project.app.transport.queue_size(project.queue) == 0  # not before the commit
    assert project.app.transport.queue_size(project.queue) == 1

    with pytest.raises(RuntimeError), transaction.atomic():
        doomed = Note.objects.create(text="rolled back")
        publish_note.delay_on_commit(doomed.pk)
        raise RuntimeError("the view failed")
    assert project.app.transport.queue_size(project.queue) == 1
    assert len(records(project.app)) == 1

    assert run_pending(project.app) == 1  # the real worker path, in this process
    note.refresh_from_db()
    assert (note.status, note.word_count) == ("published", 3)


def test_a_rolled_back_savepoint_drops_only_the_tasks_sent_inside_it(project: Any) -> None:
    from django.db import transaction
    from notes.models import Note
    from notes.tasks import publish_note

    with transaction.atomic():
        kept = Note.objects.create(text="kept by the outer block")
        publish_note.delay_on_commit(kept.pk)
        with pytest.raises(RuntimeError), transaction.atomic():  # a savepoint
            dropped = Note.objects.create(text="rolled back with its savepoint")
            publish_note.delay_on_commit(dropped.pk)
            raise RuntimeError("the inner step failed")
        with transaction.atomic():  # a savepoint that is released: its task goes with the outer commit
            inner = Note.objects.create(text="kept with the released savepoint")
            publish_note.delay_on_commit(inner.pk)
        assert project.app.transport.queue_size(project.queue) == 0  # the outer block has not committed
    assert project.app.transport.queue_size(project.queue) == 2

    assert run_pending(project.app) == 2
    assert sorted(record.args[0] for record in records(project.app)) == [kept.pk, inner.pk]
    assert not Note.objects.filter(text=dropped.text).exists()  # (SQLite may reuse its pk for `inner`)


def test_a_publish_that_fails_at_the_commit_raises_after_the_data_is_committed(
    data_dir: Path, tmp_path: Path
) -> None:
    from django.db import transaction
    from django.test import override_settings
    from notes.models import Note
    from notes.tasks import publish_note

    unreachable = f"sqlite:///{tmp_path}/missing-dir/broker.db"
    later: list[str] = []
    config = {"broker_url": unreachable, "store_url": "memory://", "publish_retries": 0}
    with override_settings(DECORTASK=config), pytest.raises(BrokerUnavailable), transaction.atomic():
        note = Note.objects.create(text="committed, then the publish fails")
        publish_note.delay_on_commit(note.pk)
        transaction.on_commit(lambda: later.append("ran"))
    # transaction.on_commit semantics (robust=False): the error reaches the code that committed, the
    # row stays committed, and callbacks registered after the failed one in that transaction do not run.
    assert Note.objects.filter(pk=note.pk).exists()
    assert later == []


def test_the_example_form_refuses_a_post_without_its_csrf_token(data_dir: Path) -> None:
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    assert strict.post("/", {"text": "forged"}).status_code == 403
    page = strict.get("/")
    token = page.cookies["csrftoken"].value
    accepted = strict.post("/", {"text": "real", "dry_run": "on", "csrfmiddlewaretoken": token})
    assert accepted.status_code == 200 and b"nothing was saved" in accepted.content


def test_a_task_run_inside_the_callers_transaction_leaves_that_transaction_alone(project: Any) -> None:
    # Django's TestCase wraps each test in a transaction, and eager mode (or run_pending) runs the task in
    # the test's thread, on the test's connection: closing it "around the task" would break the test.
    from django.db import transaction
    from notes.models import Note
    from notes.tasks import publish_note

    with transaction.atomic():
        note = Note.objects.create(text="inside the test's transaction")
        with eager(project.app):
            handle = publish_note.delay(note.pk)
        assert handle.get(timeout=5) == 4
        note.refresh_from_db()  # the connection and its transaction are still there
        assert note.status == "published"
        transaction.set_rollback(True)
    assert not Note.objects.filter(pk=note.pk).exists()  # the task wrote inside that transaction


def test_the_plugins_app_keeps_the_projects_commit_hook(data_dir: Path, decortask_app: Decortask) -> None:
    from django.db import transaction
    from notes.models import Note
    from notes.tasks import publish_note

    queue = decortask_app.settings.default_queue
    with transaction.atomic():
        note = Note.objects.create(text="sent through the test's own app")
        publish_note.delay_on_commit(note.pk)
        assert decortask_app.transport.queue_size(queue) == 0
    assert run_pending() == 1
    note.refresh_from_db()
    assert (note.status, note.word_count) == ("published", 6)


def test_process_pool_children_set_up_the_django_project_too(project: Any) -> None:
    from django.db import transaction
    from notes.models import Note
    from notes.tasks import publish_note

    with manage_worker(project, "--pool", "processes") as worker:
        with transaction.atomic():
            note = Note.objects.create(text="run in a child process")
            publish_note.delay_on_commit(note.pk)
        published = Note.objects.filter(pk=note.pk, status="published")
        wait_for(worker, published.exists, 30, "the note to be published by a pool child")
    (record,) = records(project.app)
    assert record.status is TaskStatus.SUCCESS and record.result == 5


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see a process's open files")
def test_the_worker_holds_no_database_connection_between_tasks(project: Any) -> None:
    from django.db import transaction
    from notes.models import Note
    from notes.tasks import publish_note

    def worker_db_files(pid: int) -> list[str]:
        found = []
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed while listing
                continue
            if target.startswith(str(project.db)):
                found.append(target)
        return found

    with manage_worker(project) as worker:
        with transaction.atomic():
            notes = [Note.objects.create(text=f"note {n} " * n) for n in range(1, 5)]
            for note in notes:
                publish_note.delay_on_commit(note.pk)
        published = Note.objects.filter(pk__in=[n.pk for n in notes], status="published")
        wait_for(worker, lambda: published.count() == 4, 30, "4 notes published")
        # Each task opened a connection in a pool thread (CONN_MAX_AGE = 0): the middleware closed it after
        # the task, as Django's request cycle does after a request. Without it they stay open for good.
        wait_for(
            worker, lambda: not worker_db_files(worker.pid), 10, "the worker to close its database files"
        )
    assert all(record.status is TaskStatus.SUCCESS for record in records(project.app))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see a process's open files")
def test_an_async_task_on_the_async_orm_leaves_no_connection_open(project: Any) -> None:
    from django.db import connections
    from notes.models import Note
    from notes.tasks import count_published

    Note.objects.create(text="published already", status="published")
    connections.close_all()  # this thread's own connection: what is open after the task is the task's

    def open_db_files() -> list[str]:
        fds = Path("/proc/self/fd")
        found = []
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(str(project.db)):
                found.append(target)
        return found

    handle = count_published.delay()
    assert run_pending(project.app) == 1
    assert handle.get(timeout=5) >= 1
    # The ORM ran in asgiref's sync_to_async thread; the middleware closed that thread's connection.
    poll_until(lambda: not open_db_files(), 10, "the async task's database connection to be closed")


def test_settings_map_to_decortask_settings_and_unknown_names_are_refused() -> None:
    from decortask.contrib.django.configure import settings_from_django

    settings = SimpleNamespace(
        DECORTASK={"broker_url": "redis://localhost/1", "RESULT_TTL": "60"}, DECORTASK_DEFAULT_QUEUE="web"
    )
    assert settings_from_django(settings) == {
        "broker_url": "redis://localhost/1",
        "result_ttl": 60.0,
        "default_queue": "web",
    }
    with pytest.raises(ConfigurationError, match=r"DECORTASK_BROKER_ULR.*known settings: .*broker_url"):
        settings_from_django(SimpleNamespace(DECORTASK_BROKER_ULR="redis://localhost/1"))
    with pytest.raises(ConfigurationError, match="both set broker_url to different values"):
        settings_from_django(
            SimpleNamespace(DECORTASK={"broker_url": "redis://a/1"}, DECORTASK_BROKER_URL="redis://b/1")
        )
    with pytest.raises(ConfigurationError, match=r"DECORTASK_LEASE_TIMEOUT.*not a valid float"):
        settings_from_django(SimpleNamespace(DECORTASK_LEASE_TIMEOUT="soon"))


class CountingMiddleware(Middleware):
    """Named by DECORTASK_MIDDLEWARE in a test."""


def test_decortask_middleware_names_classes_added_after_the_connection_handling(data_dir: Path) -> None:
    from django.test import override_settings

    from decortask.contrib.django.configure import project_app
    from decortask.contrib.django.db import DatabaseConnectionsMiddleware

    with override_settings(DECORTASK_MIDDLEWARE=[f"{__name__}.CountingMiddleware"]):
        kinds = [type(mw) for mw in project_app().middleware]
    assert kinds == [DatabaseConnectionsMiddleware, CountingMiddleware]
    with (
        pytest.raises(ConfigurationError, match=r"not a decortask\.Middleware subclass"),
        override_settings(DECORTASK_MIDDLEWARE=["collections.OrderedDict"]),
    ):
        pass


def test_override_settings_with_an_unknown_name_fails_loudly(data_dir: Path) -> None:
    from django.test import override_settings

    with pytest.raises(ConfigurationError, match="DECORTASK_STORE"), override_settings(DECORTASK_STORE="x"):
        pass


def test_call_command_runs_a_burst_worker_and_reports_bad_options_as_command_errors(project: Any) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError
    from django.db import transaction
    from notes.models import Note
    from notes.tasks import publish_note

    with transaction.atomic():
        note = Note.objects.create(text="published by call_command")
        publish_note.delay_on_commit(note.pk)
    handler = signal.getsignal(signal.SIGINT)
    call_command("decortask_worker", "--", "--burst", "-c", "1", "-Q", project.queue)  # returns when empty
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C works in this process again
    note.refresh_from_db()
    assert (note.status, note.word_count) == ("published", 3)
    with pytest.raises(CommandError, match=r"No such option.*--threads"):
        call_command("decortask_worker", "--", "--threads", "4")


def test_the_worker_command_runs_the_project_and_refuses_another_app() -> None:
    from django.core.management.base import CommandError

    from decortask.contrib.django.management.commands.decortask_worker import worker_arguments

    assert worker_arguments(["-c", "2", "--settings", "mysite.settings", "--pythonpath=.", "--burst"]) == [
        "-A",
        "decortask.contrib.django.project",
        "-c",
        "2",
        "--burst",
    ]
    with pytest.raises(CommandError, match="drop -A"):
        worker_arguments(["-A", "other.tasks"])


def test_manage_py_decortask_worker_help_offers_only_options_the_command_accepts(tmp_path: Path) -> None:
    """The help of the real `manage.py decortask_worker` names no -A/--app, since the command refuses it."""
    import subprocess

    env = {**os.environ, "NOTES_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", "decortask_worker", "--help"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage: manage.py decortask_worker [OPTIONS]" in result.stdout
    assert "--concurrency" in result.stdout and "--queues" in result.stdout  # the worker's own options
    assert not re.search(r"(^|[\s,])(-A|--app)\b", result.stdout), result.stdout
    assert "Django project" in result.stdout  # says whose tasks it runs instead


def test_decortask_worker_pointed_at_a_settings_module_says_how_to_run_a_django_project(
    data_dir: Path,
) -> None:
    import click

    from decortask.cli import load_app

    with pytest.raises(click.ClickException, match=re.escape("python manage.py decortask_worker")):
        load_app("mysite.settings")
