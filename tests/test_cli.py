"""The `decortask` command: clear one-line errors with masked secrets, and record inspection."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from secret_tasks import login

from decortask import Decortask, TaskStatus, task
from decortask.app import reset_default_app
from decortask.testing import run_pending

REPO = Path(__file__).resolve().parent.parent
TASKS = ("-A", "tests.behaviour_tasks")


def _cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decortask", *args],
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:sentinel-pw@127.0.0.1:1//",
        "redis://:sentinel-pw@127.0.0.1:1/0",
        "kafka://user:sentinel-pw@127.0.0.1:9092",
        "sqlite://",
    ],
)
def test_b11_worker_with_a_bad_broker_url_exits_non_zero_with_one_clear_line(
    url: str, tmp_path: Path
) -> None:
    result = _cli(
        "worker", *TASKS, "--broker-url", url, "--store-url", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "sentinel-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_f24_worker_with_a_corrupt_store_file_exits_non_zero_and_leaves_it(tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    store.write_bytes(b"this is not a database" * 100)
    before = store.read_bytes()
    result = _cli(
        "worker", *TASKS, "--broker-url", "memory://", "--store-url", f"sqlite:///{store}", cwd=tmp_path
    )
    assert result.returncode != 0
    assert str(store) in result.stderr
    assert store.read_bytes() == before


def test_worker_without_tasks_refuses_to_start(tmp_path: Path) -> None:
    result = _cli("worker", "--broker-url", "memory://", "--store-url", "memory://", cwd=tmp_path)
    assert result.returncode != 0
    assert "no tasks are registered" in result.stderr and "-A" in result.stderr


@task(name="cli.echo")
def echo(text: str) -> str:
    return text


def test_tasks_and_show_read_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    app = Decortask(url, url)
    try:
        handle = echo.delay("hi")
        run_pending(app)
    finally:
        app.close()
        reset_default_app()
    env = {"DECORTASK_BROKER_URL": url, "DECORTASK_STORE_URL": url}
    listing = _cli("tasks", "--status", "success", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [(r["id"], r["name"], r["status"]) for r in rows] == [(handle.id, "cli.echo", "SUCCESS")]
    shown = _cli("show", handle.id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["result"] == "hi"
    missing = _cli("show", "nope", env=env)
    assert missing.returncode != 0 and "no task nope" in missing.stderr


# -- issue 10 items 2 and 13: show/tasks read an existing store, name it, and hide arguments by default -------

SECRET = "s3cret-" + uuid.uuid4().hex[:12]
PLAIN = "alice-" + uuid.uuid4().hex[:12]


def _cli_outside_any_app(
    cwd: Path, *args: str, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command run in `cwd` with no DECORTASK_* setting in the environment but `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DECORTASK_") or k.startswith("DECORTASK_TEST")
    }
    return subprocess.run(
        [sys.executable, "-m", "decortask", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO), **(settings or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def failed_login(tmp_path: Path) -> tuple[str, str]:
    """(store URL, task id) of a `secret_tasks.login` called with a secret by position and as password=."""
    url = f"sqlite:///{tmp_path}/app/decortask.db"
    app = Decortask(url, url)
    try:
        handle = login.delay(PLAIN, SECRET, password=SECRET)
        run_pending(app, now=time.time() + 60)  # both attempts: the retry delay is due at once
        assert handle.status is TaskStatus.FAILED
    finally:
        app.close()
        reset_default_app()
    return url, handle.id


def test_issue10_item13_show_and_tasks_never_create_a_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    nested = tmp_path / "no" / "such" / "dir" / "d.db"
    for args in (
        ("tasks",),
        ("tasks", "--json"),
        ("show", "0123abcd"),
        ("show", "0123abcd", "--store-url", f"sqlite:///{nested}"),
    ):
        result = _cli_outside_any_app(empty, *args)
        assert result.returncode != 0, args
        looked_for = nested if "--store-url" in args else empty / "decortask.db"
        assert f"no SQLite store at {looked_for}" in result.stderr, (args, result.stderr)
        assert "--store-url" in result.stderr and "-A" in result.stderr and "Traceback" not in result.stderr
    assert list(empty.iterdir()) == [] and not (tmp_path / "no").exists()


def test_issue10_item13_show_and_tasks_read_the_store_they_are_pointed_at_and_name_it(
    tmp_path: Path, failed_login: tuple[str, str]
) -> None:
    url, task_id = failed_login
    store_file = tmp_path / "app" / "decortask.db"
    before = store_file.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    listing = _cli_outside_any_app(empty, "tasks", "--json", "--store-url", url, "--broker-url", "memory://")
    assert listing.returncode == 0, listing.stderr
    assert [json.loads(line)["id"] for line in listing.stdout.splitlines()] == [task_id]
    assert f"store {url}" in listing.stderr  # which store was read, on stderr: stdout stays JSON
    shown = _cli_outside_any_app(empty, "show", task_id, "--store-url", url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "FAILED" and f"store {url}" in shown.stderr
    # Read only: the file is byte for byte the same, and nothing was created where the commands ran.
    assert store_file.read_bytes() == before
    assert list(empty.iterdir()) == []


def test_issue10_item13_a_sqlite_file_that_is_not_a_store_is_refused_untouched(tmp_path: Path) -> None:
    other = tmp_path / "notes.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    before = other.read_bytes()
    result = _cli_outside_any_app(tmp_path, "tasks", "--store-url", f"sqlite:///{other}")
    assert result.returncode != 0
    assert "not a decortask store" in result.stderr and str(other) in result.stderr
    assert other.read_bytes() == before


def test_issue10_item2_show_hides_arguments_unless_asked_and_masks_them_then(
    tmp_path: Path, failed_login: tuple[str, str]
) -> None:
    url, task_id = failed_login
    store = {"DECORTASK_STORE_URL": url}
    shown = _cli_outside_any_app(tmp_path, "show", task_id, settings=store)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert "args" not in record and "kwargs" not in record and record["args_included"] is False
    assert SECRET not in shown.stdout + shown.stderr and PLAIN not in shown.stdout
    # --args: keyword secrets are masked by name, like the dashboard's "Show arguments"...
    with_args = json.loads(_cli_outside_any_app(tmp_path, "show", task_id, "--args", settings=store).stdout)
    assert with_args["kwargs"] == {"password": "****"} and with_args["args"][0] == PLAIN
    # ...and positional ones too when -A names the module defining the task (the parameter's name is known).
    by_name = _cli_outside_any_app(
        tmp_path, "show", task_id, "--args", "-A", "tests.secret_tasks", settings=store
    )
    assert json.loads(by_name.stdout)["args"] == [PLAIN, "****"]
    assert SECRET not in by_name.stdout + by_name.stderr
