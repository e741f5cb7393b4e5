"""A sentinel password pushed through every path never shows up: logs, banners, errors, records, CLI output."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import behaviour_tasks as bt
import pytest
import secret_tasks
from conftest import REDIS_URL, broker_urls, require_redis
from workers import WorkerProcess, poll_until

from decortask import BrokerUnavailable, Decortask, TaskStatus
from decortask.app import reset_default_app
from decortask.security import mask_text

SENTINEL = "s3ntinel-" + uuid.uuid4().hex[:8]
REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "decortask"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decortask", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_sentinel_password_never_appears_anywhere(tmp_path: Path) -> None:
    require_redis()
    # The suite's Redis, with the sentinel as password: Redis's default user accepts any password in the
    # two-argument AUTH form, so the URL works and carries a secret.
    where = REDIS_URL.split("://", 1)[1].rpartition("@")[2]
    broker = f"redis://default:{SENTINEL}@{where}"
    masked = f"redis://default:****@{where}"
    store = f"sqlite:///{tmp_path}/decortask.db"
    queue = f"secrets-{uuid.uuid4().hex[:8]}"
    app = Decortask(broker, store, default_queue=queue)
    try:
        assert SENTINEL not in repr(app) and SENTINEL not in repr(app.settings)
        handle = bt.leaks_a_secret.delay(broker)
        worker = WorkerProcess(broker, store, queue, tmp_path / "worker.log", concurrency=1)
        with worker:
            poll_until(lambda: handle.done(), 30, "the leaking task to fail")
        record = handle.record()
        assert record.status is TaskStatus.FAILED
        stored = json.dumps(record.to_dict(), default=str)
        assert record.args == [broker]  # arguments are the caller's data and are kept as given
        without_args = stored.replace(json.dumps(broker)[1:-1], "")
        assert SENTINEL not in without_args
        assert "hunter2)" not in (record.error_message or "") and "password=****" in (
            record.error_message or ""
        )
        assert SENTINEL not in (record.traceback or "")
        assert [line.extra for line in record.logs][1] == {"password": "****", "note": f"via {masked}"}
        log_text = worker.log_path.read_text()
        assert "worker" in log_text and "ready" in log_text  # the banner was written, with the URL masked
        assert masked in log_text
        assert SENTINEL not in log_text
        env = {"DECORTASK_BROKER_URL": broker, "DECORTASK_STORE_URL": store}
        for args in (("tasks", "--json"), ("tasks",), ("show", handle.id)):
            shown = _cli(env, *args)
            assert shown.returncode == 0, shown.stderr
            visible = shown.stdout.replace(json.dumps(broker)[1:-1], "").replace(broker, "")
            assert SENTINEL not in visible + shown.stderr, args
    finally:
        app.transport.delete_queue(queue)
        app.transport.delete_queue(queue + ".dlq")
        app.close()
        reset_default_app()


@pytest.mark.parametrize(
    "url",
    [f"amqp://guest:{SENTINEL}@127.0.0.1:1//", f"redis://default:{SENTINEL}@127.0.0.1:1/0"],
    ids=["amqp", "redis"],  # not the URLs: SENTINEL differs per process, and xdist workers must agree on ids
)
def test_errors_for_an_unreachable_broker_mask_the_password(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = Decortask(url, f"sqlite:///{tmp_path}/d.db", publish_retries=0, set_default=False)
    try:
        with pytest.raises(BrokerUnavailable) as caught:
            bt.add.apply_async(args=(1, 2), app=app, confirm=True)
        assert SENTINEL not in str(caught.value) and "****" in str(caught.value)
        # Without confirm the call returns (the outbox has it): the background publisher's warning is masked.
        with caplog.at_level(logging.WARNING):
            bt.add.apply_async(args=(1, 2), app=app)
            assert not app.flush_published(2)
        assert "could not publish" in caplog.text and "****" in caplog.text
        assert SENTINEL not in caplog.text
    finally:
        app.close()


def test_a_store_error_masks_the_password(tmp_path: Path) -> None:
    from decortask import StoreError
    from decortask.store import open_store

    store = open_store(f"redis://default:{SENTINEL}@127.0.0.1:1/0")
    with pytest.raises(StoreError) as caught:
        store.get("anything")
    assert SENTINEL not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql://app@db:5432/app?password=PW&schema=x",
            "postgresql://app@db:5432/app?password=****&schema=x",
        ),
        ("postgresql:///app?host=/run/pg&password=PW", "postgresql:///app?host=/run/pg&password=****"),
        ("redis://127.0.0.1:6379/1?password=PW", "redis://127.0.0.1:6379/1?password=****"),
        ("postgresql://app:PW@db/app?sslpassword=PW", "postgresql://app:****@db/app?sslpassword=****"),
        ("redis://127.0.0.1:6379/1?namespace=n", "redis://127.0.0.1:6379/1?namespace=n"),
    ],
)
def test_a_password_given_as_a_url_query_parameter_is_masked_too(url: str, masked: str) -> None:
    """libpq and redis-py take `?password=`; `decortask tasks` printed it in its 'reading the store' line."""
    from decortask.security import mask_url

    assert mask_url(url) == masked


def test_decortask_tasks_masks_a_query_parameter_password_in_what_it_says_it_reads(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:1/0?password={SENTINEL}"
    shown = subprocess.run(
        [sys.executable, "-m", "decortask", "tasks", "--store-url", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert SENTINEL not in shown.stdout + shown.stderr
    assert "password=****" in shown.stdout + shown.stderr


# -- issue 10 item 3: the sanitizer masks values, never the words of decortask's own advice -------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("password=hunter2", "password=****"),
        ("login failed (password=hunter2)", "login failed (password=****"),
        ("password = hunter2, user=bob", "password = ****, user=bob"),
        ("password: hunter2", "password: ****"),
        ("password: hunter2 was rejected", "password: **** was rejected"),
        # a weak, all-lowercase password looks like prose: after a password-like name it is masked anyway
        ("password: letmein is wrong", "password: **** is wrong"),
        ("client secret: opensesame was revoked", "client secret: **** was revoked"),
        ("token: abcdef", "token: ****"),
        ("invalid token: Zm9vYmFy\nnext line", "invalid token: ****\nnext line"),
        ("?api_key=k3y&user=bob", "?api_key=****&user=bob"),
        ("API-KEY: Zx9", "API-KEY: ****"),
        (
            "access_key=AKIA1 secret=s3 pwd=p4 passwd=p5 auth=a6",
            "access_key=**** secret=**** pwd=**** passwd=**** auth=****",
        ),
        ("amqp://guest:hunter2@127.0.0.1//", "amqp://guest:****@127.0.0.1//"),
        # Forms the pattern missed before: names ending in a secret word, quoted values, an HTTP header.
        ("DB_PASSWORD=hunter2", "DB_PASSWORD=****"),
        ("csrf_token=abc secret_key=def", "csrf_token=**** secret_key=****"),
        ("{'user': 'bob', 'password': 'two words'}", "{'user': 'bob', 'password': '****'}"),
        ('{"token": "abc", "n": 1}', '{"token": "****", "n": 1}'),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ****"),
        ("Authorization: Bearer <token>, token=...", "Authorization: Bearer <token>, token=..."),
    ],
)
def test_issue10_item3_secret_values_are_still_masked_in_every_form(text: str, masked: str) -> None:
    assert mask_text(text) == masked
    assert mask_text(masked) == masked  # masking twice changes nothing


@pytest.mark.parametrize(
    "text",
    [
        "refusing to serve the dashboard on 0.0.0.0 without a token: anyone who can reach that address",
        "this POST has no CSRF token: send the X-CSRF-Token header with the csrf_token from GET /api/session",
        "auth: token required",
        "the token is missing",
        "author: someone",
    ],
)
def test_issue10_item3_english_after_a_secret_word_is_not_masked(text: str) -> None:
    assert mask_text(text) == text


@pytest.mark.timeout(30)  # linear: a few hundredths of a second; the quadratic pattern took about a minute
@pytest.mark.parametrize("blob", ["a" * 200_000, "token_" * 40_000, "password-" * 25_000])
def test_masking_a_long_run_of_letters_takes_linear_time(blob: str) -> None:
    # An exception message carrying a base64 blob goes through mask_text in the worker.
    assert mask_text(blob) == blob


def _message_literals() -> list[tuple[str, int, str]]:
    """Every string literal in decortask's code but docstrings and the page's script, with file and line."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "assets.py":  # the dashboard's JavaScript: code, never passed through the sanitizer
            continue
        tree = ast.parse(path.read_text())
        docstrings = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                docstrings.add(id(body[0].value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found.append((str(path.relative_to(PACKAGE)), node.lineno, node.value))
    return found


def test_issue10_item3_no_message_of_decortask_is_changed_by_its_own_sanitizer() -> None:
    literals = _message_literals()
    assert any("without a token: anyone" in text for _, _, text in literals)  # the scan sees our messages
    # Example URLs (`amqp://user:pass@host`) keep their placeholder password masked: that is a value.
    eaten = [(f, line, text) for f, line, text in literals if "://" not in text and mask_text(text) != text]
    assert eaten == []


def test_issue10_item3_the_dashboard_refusal_reaches_the_terminal_intact(tmp_path: Path) -> None:
    result = _cli(
        {}, "dashboard", "--host", "0.0.0.0", "--broker-url", "memory://", "--store-url", "memory://"
    )
    assert result.returncode != 0
    assert "without a token: anyone who can reach that address" in result.stderr


# -- B-20: a secret passed to a failing task appears nowhere ---------------------------------------------------

B20_SECRET = "b20-s3cret-" + uuid.uuid4().hex[:12]
B20_USER = "b20-alice-" + uuid.uuid4().hex[:8]


@pytest.mark.parametrize(
    ("kind", "pool"),
    [("sqlite", "threads"), ("sqlite", "processes"), ("redis", "threads"), ("amqp", "threads")],
)
def test_b20_secret_appears_nowhere(kind: str, pool: str, tmp_path: Path, unique: str) -> None:
    """A real `decortask worker -l DEBUG` with Sentry (sentry-sdk defaults) runs a task that fails on both of
    its attempts, called with the secret by position and as password=. Then nothing shows the secret: the
    worker's output, the Sentry envelopes, `decortask tasks`, `decortask show` (with --args: masked), the
    dashboard."""
    broker, store = broker_urls(kind, tmp_path, unique)
    queue = f"b20-{unique}"
    envelopes = tmp_path / "sentry-envelopes"
    app = Decortask(broker, store, default_queue=queue)
    try:
        handle = secret_tasks.login.delay(B20_USER, B20_SECRET, password=B20_SECRET)
        worker = WorkerProcess(
            broker,
            store,
            queue,
            tmp_path / "worker.log",
            concurrency=2,
            env={"DECORTASK_TEST_SENTRY_EVENTS": str(envelopes)},
            extra_args=("-A", "tests.secret_tasks", "-l", "DEBUG", "--pool", pool),  # the last -A/-l win
        )
        with worker:
            poll_until(lambda: handle.done(), 60, f"the login task to fail; worker log:\n{worker.log_tail()}")
        assert handle.status is TaskStatus.FAILED and handle.attempts == 2
        _assert_the_dashboard_hides(app, handle.id)
    finally:
        app.transport.delete_queue(queue)
        app.transport.delete_queue(queue + ".dlq")
        app.close()
        reset_default_app()

    log = worker.log_path.read_text()
    # The worker's output was at DEBUG while the task ran (in a pool child the logger name carries its pid).
    assert re.search(
        r" DEBUG tests\.secret_tasks(\[\d+\])?: \[secret_tasks\.login [0-9a-f]{32}\] login attempt started",
        log,
    ), log
    assert log.count(B20_SECRET) == 0

    sentry = envelopes.read_text()
    assert '"type":"PermissionError"' in sentry  # the failure was reported, with sentry-sdk's defaults
    assert sentry.count(B20_SECRET) == 0

    env = {"DECORTASK_BROKER_URL": broker, "DECORTASK_STORE_URL": store}
    for args in (("tasks",), ("tasks", "--json"), ("show", handle.id), ("show", handle.id, "--args", *TASKS)):
        shown = _cli(env, *args)
        assert shown.returncode == 0, shown.stderr
        assert (shown.stdout + shown.stderr).count(B20_SECRET) == 0, args
    # Without -A the positional secret's parameter name is unknown: --args shows it, but password= is masked.
    unnamed = _cli(env, "show", handle.id, "--args")
    record = json.loads(unnamed.stdout)
    assert record["kwargs"] == {"password": "****"} and record["args"] == [B20_USER, B20_SECRET]


TASKS = ("-A", "tests.secret_tasks")


def _assert_the_dashboard_hides(app: Decortask, task_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette's TestClient prefers httpx2
        from starlette.testclient import TestClient

    from decortask.dashboard import create_dashboard

    with TestClient(create_dashboard(app), base_url="http://127.0.0.1:8000") as client:
        pages = [
            client.get("/").text,
            client.get("/api/tasks").text,
            client.get(f"/api/tasks/{task_id}").text,
            client.get(f"/api/tasks/{task_id}", params={"args": "1"}).text,
        ]
    assert all(page.count(B20_SECRET) == 0 for page in pages)
    assert B20_USER in pages[-1]  # the arguments were shown, masked
