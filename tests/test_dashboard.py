"""The web dashboard: JSON API, live events, pages, auth, CSRF, and the HTTP half of scenario F-18.

The F-18 set and the end-to-end tests run a real `decortask dashboard` (uvicorn) and a real `decortask
worker` as subprocesses; the rest drive the ASGI app in-process with Starlette's TestClient.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import behaviour_tasks as bt
import httpx
import pytest
from click.testing import CliRunner
from conftest import broker_urls, delete_redis_namespace
from workers import REPO, WorkerProcess, poll_until

from decortask import Decortask, TaskContext, TaskStatus, task, task_log
from decortask.app import reset_default_app
from decortask.cli import main as cli_main
from decortask.dashboard import api as api_module
from decortask.dashboard import create_dashboard, events
from decortask.dashboard.assets import SCRIPT
from decortask.dashboard.events import ChangeFeed, stream
from decortask.errors import ConfigurationError
from decortask.periodic import PeriodicScheduler
from decortask.periodic_config import declared_entries
from decortask.store.periodic_state import periodic_state
from decortask.testing import run_pending

with warnings.catch_warnings():
    # Starlette's TestClient warns that it prefers httpx2; httpx is what the dev extra installs.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


TOKEN = "dashboard-test-token-" + uuid.uuid4().hex
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SENTINEL = "s3ntinel-" + uuid.uuid4().hex[:8]
XSS = "<script>alert('x')</script>"


@task(name="dash.xss")
def xss(ctx: TaskContext) -> None:
    task_log(f"got {XSS}", note=XSS)
    raise ValueError(f"bad input {XSS}")


@task(name="dash.leaky")
def leaky(url: str, password: str) -> None:
    task_log(f"connecting to {url}", password=password)
    raise ConnectionError(f"could not connect to {url} (password={password})")


@task(name="dash.echo")
def echo(text: str) -> str:
    return text


# -- in-process fixtures -------------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path, unique: str) -> Iterator[Decortask]:
    instance = Decortask("memory://", f"sqlite:///{tmp_path}/store.db", default_queue=f"q-{unique}")
    yield instance
    instance.transport.purge(instance.settings.default_queue)
    instance.transport.purge(instance.settings.default_queue + ".dlq")
    instance.close()
    reset_default_app()


@pytest.fixture
def client(app: Decortask) -> Iterator[TestClient]:
    with TestClient(create_dashboard(app, token=TOKEN), base_url="http://127.0.0.1:8000") as c:
        yield c


def csrf_for(c: TestClient | httpx.Client, headers: dict[str, str] | None = None) -> str:
    response = c.get("/api/session", headers=headers or {})
    assert response.status_code == 200, response.text
    token: str = response.json()["csrf_token"]
    return token


def post(c: TestClient, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**BEARER, "X-CSRF-Token": csrf_for(c, BEARER), **kwargs.pop("headers", {})}
    return c.post(path, headers=headers, **kwargs)


# -- live processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DashboardProcess:
    """`python -m decortask dashboard` on a free loopback port, in its own process group."""

    def __init__(self, broker_url: str, store_url: str, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "decortask", "dashboard", "--port", str(self.port),
            "--broker-url", broker_url, "--store-url", store_url, *extra,
        ]  # fmt: skip
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, token: str | None = TOKEN) -> DashboardProcess:
        env = {k: v for k, v in os.environ.items() if k != "DECORTASK_DASHBOARD_TOKEN"}
        if token is not None:
            env["DECORTASK_DASHBOARD_TOKEN"] = token
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"dashboard exited {self.process.returncode}:\n{self.log()}")
            try:
                return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        poll_until(ready, 30, "the dashboard to answer /healthz", interval=0.1)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"


@dataclass
class Live:
    app: Decortask
    dashboard: DashboardProcess
    worker: WorkerProcess
    effects: Path

    def effects_of(self, task_id: str) -> list[tuple[int, str]]:
        return [
            (int(str(row["attempt"])), str(row["event"]))
            for row in bt.read_effects(str(self.effects))
            if row["id"] == task_id
        ]

    def wait_for(self, task_id: str, status: TaskStatus, attempt: int | None = None) -> None:
        def reached() -> bool:
            record = self.app.store.get(task_id)
            return (
                record is not None
                and record.status is status
                and (attempt is None or record.attempt == attempt)
            )

        poll_until(reached, 60, f"task {task_id} to reach {status.value}")


@contextlib.contextmanager
def live_system(kind: str, tmp: Path) -> Iterator[Live]:
    """A worker and a dashboard subprocess on broker `kind`, and an app in this process on the same."""
    token = uuid.uuid4().hex[:10]
    broker_url, store_url = broker_urls(kind, tmp, token)
    queue = f"dash-{token}"
    effects = tmp / "effects.jsonl"
    app = Decortask(broker_url, store_url, default_queue=queue)
    worker = WorkerProcess(
        broker_url,
        store_url,
        queue,
        tmp / "worker.log",
        concurrency=2,
        env={"DECORTASK_TEST_EFFECTS": str(effects)},
    )
    dashboard = DashboardProcess(broker_url, store_url, tmp / "dashboard.log", "-Q", queue)
    try:
        worker.start()
        dashboard.start()
        yield Live(app, dashboard, worker, effects)
    finally:
        dashboard.stop()
        worker.stop()
        with contextlib.suppress(Exception):
            app.transport.delete_queue(queue)
            app.transport.delete_queue(queue + ".dlq")
        if kind == "redis":
            _drop_redis_namespace(store_url)
        app.close()
        reset_default_app()


def _drop_redis_namespace(store_url: str) -> None:
    base, _, query = store_url.partition("?")
    delete_redis_namespace(base, query.split("namespace=", 1)[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One SQLite system (worker plus dashboard) shared by the F-18 tests."""
    with live_system("sqlite", tmp_path_factory.mktemp("f18")) as system:
        yield system


def finished_task(live: Live) -> str:
    # Each run takes a second or two, so a re-run is still queued or running when a test presses again.
    handle = bt.cooperative.apply_async(args=(1.5,), app=live.app)
    live.wait_for(handle.id, TaskStatus.SUCCESS, 1)
    return handle.id


def browser_session(base: str) -> tuple[httpx.Client, str]:
    """An httpx client logged in through the login form as a browser would be, and its CSRF token."""
    c = httpx.Client(base_url=base, timeout=10)
    form = c.get("/login")
    login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert login_csrf is not None, form.text
    done = c.post(
        "/login", data={"csrf_token": login_csrf.group(1), "token": TOKEN}, headers={"Origin": base}
    )
    assert done.status_code == 303, done.text
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    return c, csrf_for(c)


# -- F-18: retry pressed twice, retry of a running task, POST without auth or CSRF ----------------------


def test_f18_dashboard_retry_twice_makes_one_attempt(live: Live) -> None:
    task_id = finished_task(live)
    csrf = csrf_for(httpx.Client(base_url=live.dashboard.url), BEARER)
    url = f"{live.dashboard.url}/api/tasks/{task_id}/retry"
    headers = {**BEARER, "X-CSRF-Token": csrf}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: httpx.post(url, headers=headers, timeout=10), range(2)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202, 409], [a.text for a in answers]
    accepted = next(a for a in answers if a.status_code == 202).json()
    assert accepted["attempt"] == 2
    live.wait_for(task_id, TaskStatus.SUCCESS, 2)
    # The two presses made exactly one new attempt, and it ran once.
    assert live.effects_of(task_id) == [(1, "started"), (1, "finished"), (2, "started"), (2, "finished")]
    record = live.app.store.get(task_id)
    assert record is not None and record.attempt == 2


def test_f18_dashboard_retry_of_running_task_is_409(live: Live, tmp_path: Path) -> None:
    handle = bt.cooperative.apply_async(args=(60.0,), app=live.app)
    live.wait_for(handle.id, TaskStatus.RUNNING)
    with httpx.Client(base_url=live.dashboard.url, timeout=10) as c:
        headers = {**BEARER, "X-CSRF-Token": csrf_for(c, BEARER)}
        answer = c.post(f"/api/tasks/{handle.id}/retry", headers=headers)
        assert answer.status_code == 409
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json()["status"] == "RUNNING" and "RUNNING" in answer.json()["error"]
        # Cancelling from the dashboard writes the same request as `decortask cancel`: the task stops.
        cancelled = c.post(f"/api/tasks/{handle.id}/cancel", headers=headers)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["stop_requested"] is True
    live.wait_for(handle.id, TaskStatus.CANCELLED)
    assert live.effects_of(handle.id) == [(1, "started"), (1, "stopped")]


def test_f18_post_without_auth_is_401(live: Live) -> None:
    task_id = finished_task(live)
    url = f"{live.dashboard.url}/api/tasks/{task_id}/retry"
    with httpx.Client(base_url=live.dashboard.url, timeout=10) as c:
        csrf = csrf_for(c, BEARER)
    attempts = [
        {},
        {"X-CSRF-Token": csrf},
        {"Authorization": "Bearer wrong-token", "X-CSRF-Token": csrf},
        {"Authorization": f"Basic {TOKEN}", "X-CSRF-Token": csrf},
        {"Cookie": "decortask_session=made-up", "X-CSRF-Token": csrf, "Origin": live.dashboard.url},
    ]
    for headers in attempts:
        answer = httpx.post(url, headers=headers, timeout=10)
        assert answer.status_code == 401, (headers, answer.text)
        assert "authentication required" in answer.json()["error"]
    assert httpx.get(f"{live.dashboard.url}/api/tasks", timeout=10).status_code == 401
    record = live.app.store.get(task_id)
    assert record is not None and (record.status, record.attempt) == (TaskStatus.SUCCESS, 1)


def test_f18_post_without_csrf_is_403(live: Live) -> None:
    task_id = finished_task(live)
    path = f"/api/tasks/{task_id}/retry"
    with httpx.Client(base_url=live.dashboard.url, timeout=10) as c:
        assert c.post(path, headers=BEARER).status_code == 403
        assert c.post(path, headers={**BEARER, "X-CSRF-Token": "0" * 64}).status_code == 403
    browser, csrf = browser_session(live.dashboard.url)
    with contextlib.closing(browser):
        origin = {"Origin": live.dashboard.url}
        missing = browser.post(path, headers=origin)
        assert missing.status_code == 403 and "CSRF" in missing.json()["error"]
        wrong = csrf[:-1] + ("1" if csrf.endswith("0") else "0")  # one character off, never the token itself
        assert browser.post(path, headers={**origin, "X-CSRF-Token": wrong}).status_code == 403
    record = live.app.store.get(task_id)
    assert record is not None and (record.status, record.attempt) == (TaskStatus.SUCCESS, 1)


def test_f18_cross_origin_post_is_403(live: Live) -> None:
    task_id = finished_task(live)
    path = f"/api/tasks/{task_id}/retry"
    browser, csrf = browser_session(live.dashboard.url)
    with contextlib.closing(browser):
        token = {"X-CSRF-Token": csrf}
        for headers in (
            {**token, "Origin": "http://evil.example"},
            {**token, "Origin": "null"},
            {**token, "Referer": "http://evil.example/page"},
            token,  # a browser session POST that names no origin at all
        ):
            answer = browser.post(path, headers=headers)
            assert answer.status_code == 403, (headers, answer.text)
        record = live.app.store.get(task_id)
        assert record is not None and (record.status, record.attempt) == (TaskStatus.SUCCESS, 1)
        # The same request from the dashboard's own origin goes through.
        same = browser.post(path, headers={**token, "Origin": live.dashboard.url})
        assert same.status_code == 202, same.text
    live.wait_for(task_id, TaskStatus.SUCCESS, 2)


def test_dashboard_lists_the_live_worker_and_its_queue(live: Live) -> None:
    with httpx.Client(base_url=live.dashboard.url, headers=BEARER, timeout=10) as c:
        workers = poll_until(
            lambda: [w for w in c.get("/api/workers").json()["workers"] if w["alive"]], 30, "a live worker"
        )
        assert workers[0]["pid"] == live.worker.pid
        names = [q["name"] for q in c.get("/api/queues").json()["queues"]]
        assert live.app.settings.default_queue in names


# -- end to end on Redis and RabbitMQ: a task runs and the event stream shows it succeed -------------------


@pytest.mark.broker
@pytest.mark.parametrize("kind", ["redis", "amqp"])
def test_event_stream_shows_a_task_reaching_success(kind: str, tmp_path: Path) -> None:
    with live_system(kind, tmp_path) as system:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        timeout = httpx.Timeout(10, read=20)
        with httpx.stream(
            "GET", system.dashboard.url + "/api/events", headers=BEARER, timeout=timeout
        ) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            handle = None
            event = ""
            for line in events.iter_lines():
                if time.monotonic() > deadline:
                    raise AssertionError(f"no SUCCESS event within 60 s; saw {seen}")
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                elif line.startswith("data: ") and event == "hello":
                    handle = bt.report.apply_async(args=("hello",), app=system.app)
                elif line.startswith("data: ") and event == "task" and handle is not None:
                    change = json.loads(line[len("data: ") :])
                    if change["id"] == handle.id:
                        seen.append(change["status"])
                        if change["status"] == "SUCCESS":
                            break
        assert seen[-1] == "SUCCESS"
        assert handle is not None
        detail = httpx.get(f"{system.dashboard.url}/api/tasks/{handle.id}", headers=BEARER, timeout=10).json()
        assert detail["result"] == "HELLO" and detail["progress"] == 0.75
        assert [line["message"] for line in detail["logs"]] == ["received", "finished"]


# -- the JSON API in-process ---------------------------------------------------------------------------


def test_task_list_filters_pages_and_searches_newest_first(app: Decortask, client: TestClient) -> None:
    first = echo.apply_async(args=("a",), tags={"tenant": "acme"}, app=app)
    second = echo.apply_async(args=("b",), tags={"tenant": "other"}, app=app)
    run_pending(app)
    third = xss.apply_async(app=app)
    listing = client.get("/api/tasks", headers=BEARER).json()
    assert [t["id"] for t in listing["tasks"]] == [third.id, second.id, first.id]
    assert listing["total"] == 3

    def ids(**params: Any) -> list[str]:
        answer = client.get("/api/tasks", headers=BEARER, params=params)
        assert answer.status_code == 200, answer.text
        return [t["id"] for t in answer.json()["tasks"]]

    assert ids(status="success") == [second.id, first.id]
    assert ids(status="PENDING,FAILED") == [third.id]
    assert ids(name="dash.xss") == [third.id]
    assert ids(queue=app.settings.default_queue, limit=1, offset=1) == [second.id]
    assert ids(tag="tenant=acme") == [first.id]
    assert ids(tag="tenant") == [second.id, first.id]
    assert ids(q="XSS") == [third.id]
    assert ids(q=first.id[4:12]) == [first.id]
    assert ids(q=second.id) == [second.id]
    bad = client.get("/api/tasks", headers=BEARER, params={"status": "done"})
    assert bad.status_code == 400 and "unknown status" in bad.json()["error"]


def test_task_detail_shows_error_logs_and_progress_and_arguments_only_when_asked(
    app: Decortask, client: TestClient
) -> None:
    handle = leaky.apply_async(args=(f"amqp://u:{SENTINEL}@h//",), kwargs={"password": SENTINEL}, app=app)
    run_pending(app)
    detail = client.get(f"/api/tasks/{handle.id}", headers=BEARER).json()
    assert detail["status"] == "FAILED" and detail["error_type"] == "builtins.ConnectionError"
    assert "could not connect" in detail["error_message"]
    assert detail["logs"][0]["message"].startswith("connecting to amqp://u:****@h")
    assert "args" not in detail and detail["args_included"] is False
    shown = client.get(f"/api/tasks/{handle.id}", headers=BEARER, params={"args": "1"}).json()
    assert (shown["args"], shown["kwargs"]) == (["amqp://u:****@h//"], {"password": "****"})
    assert SENTINEL not in json.dumps(shown)
    # A secret passed by position is masked by its parameter's name.
    positional = leaky.apply_async(args=("amqp://h//", SENTINEL), app=app)
    by_position = client.get(f"/api/tasks/{positional.id}", headers=BEARER, params={"args": "1"}).json()
    assert by_position["args"] == ["amqp://h//", "****"]
    assert client.get("/api/tasks/nope", headers=BEARER).status_code == 404


def test_counts_by_status(app: Decortask, client: TestClient) -> None:
    echo.apply_async(args=("a",), app=app)
    run_pending(app)
    xss.apply_async(app=app)
    counts = client.get("/api/counts", headers=BEARER).json()
    assert (counts["SUCCESS"], counts["PENDING"], counts["FAILED"], counts["total"]) == (1, 1, 0, 2)


def test_workers_come_from_heartbeats_and_silent_ones_are_marked(app: Decortask, client: TestClient) -> None:
    now = time.time()
    app.store.heartbeat("alpha:101:abc", now)
    app.store.heartbeat("beta:202:def", now - app.settings.lease_timeout - 5)
    workers = client.get("/api/workers", headers=BEARER).json()["workers"]
    assert [(w["host"], w["pid"], w["alive"]) for w in workers] == [
        ("alpha", 101, True),
        ("beta", 202, False),
    ]


def test_queues_show_ready_messages_and_dead_letters(app: Decortask, client: TestClient) -> None:
    app.transport.publish(b"{not json", app.settings.default_queue)
    echo.apply_async(args=("waits",), app=app)
    run_pending(app, max_tasks=1)  # the broken message is first: it is dead-lettered
    queues = {q["name"]: q for q in client.get("/api/queues", headers=BEARER).json()["queues"]}
    mine = queues[app.settings.default_queue]
    assert (mine["ready"], mine["dead_letters"], mine["error"]) == (1, 1, None)
    letters = client.get(
        "/api/deadletters", headers=BEARER, params={"queue": app.settings.default_queue}
    ).json()
    assert [(d["reason"], d["replayable"]) for d in letters["dead_letters"]] == [("decode_error", False)]


def test_dead_letter_replay_runs_the_task_again(app: Decortask, client: TestClient) -> None:
    handle = echo.apply_async(args=("again",), app=app)
    record = app.store.get(handle.id)
    assert record is not None
    app.store.transition(handle.id, TaskStatus.FAILED, reason="unregistered_task", finished_at=time.time())
    # Move the queued message to the dead-letter queue as a worker would have.
    session = app.transport.open_consumer([app.settings.default_queue], prefetch=1, consume=False)
    delivery = session.get(app.settings.default_queue)
    assert delivery is not None
    app.transport.dead_letter(delivery, "unregistered_task", "test")
    session.ack(delivery)
    session.close()
    assert post(client, "/api/deadletters/replay", json={"ids": []}).status_code == 400
    answer = post(
        client, "/api/deadletters/replay", json={"queue": app.settings.default_queue, "ids": [handle.id]}
    )
    assert answer.status_code == 200, answer.text
    assert [(o["id"], o["action"]) for o in answer.json()["outcomes"]] == [(handle.id, "replayed")]
    run_pending(app)
    assert handle.status is TaskStatus.SUCCESS and handle.get() == "again"


def test_cancel_a_pending_task_and_409_once_it_has_ended(app: Decortask, client: TestClient) -> None:
    handle = echo.apply_async(args=("never",), app=app)
    answer = post(client, f"/api/tasks/{handle.id}/cancel")
    assert answer.status_code == 200 and answer.json()["cancelled"] is True
    assert handle.status is TaskStatus.CANCELLED
    again = post(client, f"/api/tasks/{handle.id}/cancel")
    assert again.status_code == 409 and again.json()["status"] == "CANCELLED"
    assert post(client, "/api/tasks/unknown-id/cancel").status_code == 404
    assert post(client, "/api/tasks/unknown-id/retry").status_code == 404


def test_mutating_endpoints_refuse_get(client: TestClient) -> None:
    for path in ("/api/tasks/x/retry", "/api/tasks/x/cancel", "/api/deadletters/replay", "/logout"):
        assert client.get(path, headers=BEARER).status_code == 405


# -- periodic schedules (issue 14) ---------------------------------------------------------------------

MARKUP_SCHEDULE = f"nightly {XSS}"
SCHEDULES = {
    "hourly-echo": {"task": "dash.echo", "every": 3600, "args": ["hi"]},
    MARKUP_SCHEDULE: {"task": "dash.echo", "cron": "0 3 * * *", "tz": "Europe/Paris", "args": ["x"]},
}


@pytest.fixture
def periodic_app(tmp_path: Path, unique: str) -> Iterator[Decortask]:
    """An app declaring two schedules, one led and published for a slot by an in-process scheduler."""
    instance = Decortask(
        "memory://", f"sqlite:///{tmp_path}/store.db", default_queue=f"q-{unique}", schedules=SCHEDULES
    )
    now = time.time()
    hour = now - now % 3600
    leader = PeriodicScheduler(instance, "leader-host:42:abc")
    leader.tick(hour + 1)  # both schedules start
    leader.tick(hour + 3601)  # hourly-echo publishes the slot of the next hour
    instance.periodic_ticks = (hour + 1, hour + 3601)  # type: ignore[attr-defined]
    yield instance
    instance.transport.purge(instance.settings.default_queue)
    instance.close()
    reset_default_app()


def _nightly_slot_ticked(app: Decortask) -> float | None:
    """The 03:00 Europe/Paris slot the fixture's two ticks (this hour's start, the next's) reached, if any."""
    ticks = app.periodic_ticks  # type: ignore[attr-defined]
    paris = ZoneInfo("Europe/Paris")
    first = datetime.fromtimestamp(ticks[0], paris)
    slot = first.replace(hour=3, minute=0, second=0, microsecond=0)
    if slot.timestamp() <= ticks[0]:
        slot += timedelta(days=1)
    return slot.timestamp() if slot.timestamp() <= ticks[1] else None


def test_schedules_api_lists_what_decortask_schedules_lists(periodic_app: Decortask) -> None:
    with TestClient(create_dashboard(periodic_app, token=TOKEN), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/schedules").status_code == 401
        answer = c.get("/api/schedules", headers=BEARER)
    assert answer.status_code == 200, answer.text
    assert answer.json()["note"] is None
    rows = {row["name"]: row for row in answer.json()["schedules"]}
    assert set(rows) == set(SCHEDULES)
    from decortask.periodic_status import schedule_rows  # here: the module is new with this page

    # The very rows `decortask schedules --json` prints (one function computes both).
    expected = {
        r["name"]: r for r in schedule_rows(declared_entries(periodic_app), periodic_app.store, time.time())
    }
    for name, row in rows.items():
        assert {k: v for k, v in row.items() if k != "leader"} == {
            k: v for k, v in expected[name].items() if k != "leader"
        }
    hourly, nightly = rows["hourly-echo"], rows[MARKUP_SCHEDULE]
    assert (hourly["task"], hourly["schedule"], hourly["expression"], hourly["tz"]) == (
        "dash.echo", "every 1h", 3600, None
    )  # fmt: skip
    # The fixture ticks at the start of this hour and of the next: between 01:00 and 02:00 UTC in winter
    # (03:00 in Paris) the second tick publishes the nightly slot too.
    assert (nightly["expression"], nightly["tz"], nightly["last_at"]) == (
        "0 3 * * *", "Europe/Paris", _nightly_slot_ticked(periodic_app)
    )  # fmt: skip
    assert hourly["last_outcome"] == "PENDING" and hourly["last_task_id"] is not None
    assert hourly["next_at"] == hourly["last_at"] + 3600 and hourly["paused"] is False
    assert hourly["leader"] == "leader-host:42:abc"


def test_schedules_api_pause_and_resume_need_auth_and_csrf_and_are_kept_in_the_store(
    periodic_app: Decortask,
) -> None:
    state = periodic_state(periodic_app.store)
    with TestClient(create_dashboard(periodic_app, token=TOKEN), base_url="http://127.0.0.1:8000") as c:
        path = "/api/schedules/hourly-echo/pause"
        assert c.post(path).status_code == 401
        assert c.post(path, headers=BEARER).status_code == 403  # no CSRF token
        assert c.post(path, headers={**BEARER, "X-CSRF-Token": "0" * 64}).status_code == 403
        assert c.get(path, headers=BEARER).status_code == 405
        assert not state.schedule_state("hourly-echo").paused  # type: ignore[union-attr]
        paused = post(c, path)
        assert paused.status_code == 200 and paused.json() == {"name": "hourly-echo", "paused": True}
        assert state.schedule_state("hourly-echo").paused  # type: ignore[union-attr]
        listed = {r["name"]: r for r in c.get("/api/schedules", headers=BEARER).json()["schedules"]}
        assert listed["hourly-echo"]["paused"] is True and listed["hourly-echo"]["next_at"] is None
        # A name with markup and slashes reaches the right schedule once URL-encoded.
        quoted = "/api/schedules/" + quote(MARKUP_SCHEDULE, safe="") + "/pause"
        assert post(c, quoted).status_code == 200
        assert state.schedule_state(MARKUP_SCHEDULE).paused  # type: ignore[union-attr]
        resumed = post(c, "/api/schedules/hourly-echo/resume")
        assert resumed.status_code == 200 and resumed.json()["paused"] is False
        assert not state.schedule_state("hourly-echo").paused  # type: ignore[union-attr]
        unknown = post(c, "/api/schedules/nope/pause")
        assert unknown.status_code == 404 and "hourly-echo" in unknown.json()["error"]


def test_schedules_api_says_why_when_the_store_keeps_no_schedules(
    app: Decortask, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        api_module,
        "schedule_rows",
        lambda *a: periodic_state(object()),  # what a store without periodic state raises
    )
    answer = client.get("/api/schedules", headers=BEARER)
    assert answer.status_code == 200
    assert answer.json()["schedules"] == [] and "keeps no periodic-task state" in answer.json()["note"]


# -- auth, sessions, headers ---------------------------------------------------------------------------


def test_login_form_sets_a_session_and_logout_ends_it(client: TestClient) -> None:
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    origin = {"Origin": "http://127.0.0.1:8000"}
    wrong = client.post("/login", data={"csrf_token": csrf.group(1), "token": "nope"}, headers=origin)
    assert wrong.status_code == 401 and "not right" in wrong.text
    no_csrf = client.post("/login", data={"token": TOKEN}, headers=origin)
    assert no_csrf.status_code == 403
    done = client.post(
        "/login", data={"csrf_token": csrf.group(1), "token": TOKEN}, headers=origin, follow_redirects=False
    )
    assert done.status_code == 303
    assert client.get("/api/tasks").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'name="csrf-token"' in page.text
    session_csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert session_csrf is not None
    out = client.post(
        "/logout", data={"csrf_token": session_csrf.group(1)}, headers=origin, follow_redirects=False
    )
    assert out.status_code == 303
    assert client.get("/api/tasks").status_code == 401


def test_repeated_wrong_tokens_are_throttled(client: TestClient) -> None:
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf is not None
    origin = {"Origin": "http://127.0.0.1:8000"}
    codes = [
        client.post(
            "/login", data={"csrf_token": csrf.group(1), "token": f"guess-{n}"}, headers=origin
        ).status_code
        for n in range(12)
    ]
    assert codes == [401] * 10 + [429] * 2
    # Even the right token waits now; API clients with the Bearer header are unaffected.
    right = client.post("/login", data={"csrf_token": csrf.group(1), "token": TOKEN}, headers=origin)
    assert right.status_code == 429
    assert client.get("/api/tasks", headers=BEARER).status_code == 200


def test_responses_carry_security_headers(client: TestClient) -> None:
    for path in ("/login", "/api/tasks", "/assets/dashboard.js"):
        headers = client.get(path, headers=BEARER).headers
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp


def test_open_dashboard_on_loopback_needs_no_token_but_checks_host_and_csrf(app: Decortask) -> None:
    with TestClient(create_dashboard(app), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/tasks").status_code == 200
        handle = echo.apply_async(args=("x",), app=app)
        assert c.post(f"/api/tasks/{handle.id}/cancel").status_code == 403
        csrf = csrf_for(c)
        origin = {"Origin": "http://127.0.0.1:8000", "X-CSRF-Token": csrf}
        assert c.post(f"/api/tasks/{handle.id}/cancel", headers=origin).status_code == 200
    # A page on another name that resolves to 127.0.0.1 (DNS rebinding) gets nothing.
    with TestClient(create_dashboard(app), base_url="http://evil.example:8000") as c:
        refused = c.get("/api/tasks")
        assert refused.status_code == 403 and "localhost" in refused.text


def test_refuses_to_start_on_a_public_address_without_a_token(app: Decortask) -> None:
    with pytest.raises(ConfigurationError, match="without a token"):
        create_dashboard(app, host="0.0.0.0")
    create_dashboard(app, host="0.0.0.0", token=TOKEN)  # with a token it may
    env = {k: v for k, v in os.environ.items() if k != "DECORTASK_DASHBOARD_TOKEN"}
    result = CliRunner().invoke(cli_main, ["dashboard", "--host", "0.0.0.0", "--port", "1"], env=env)
    assert result.exit_code != 0
    assert "refusing to serve the dashboard on 0.0.0.0 without a token" in result.output
    assert "DECORTASK_DASHBOARD_TOKEN" in result.output


def test_cli_refuses_a_memory_store_which_has_nothing_to_show() -> None:
    env = {"DECORTASK_BROKER_URL": "memory://", "DECORTASK_STORE_URL": "memory://"}
    result = CliRunner().invoke(cli_main, ["dashboard", "--port", "1"], env=env)
    assert result.exit_code != 0 and "lives inside one process" in result.output


def test_cli_started_where_there_is_no_sqlite_store_says_it_starts_an_empty_one(tmp_path: Path) -> None:
    """Run from another directory than the app's, it used to show an empty store it had just created, silently."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECORTASK_")}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "decortask", "dashboard", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    assert f"no SQLite store at {tmp_path.resolve() / 'decortask.db'}" in first, first
    assert "starting on an empty one, which stays empty unless your workers use this file" in first


def test_cli_says_which_extra_to_install_when_starlette_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("decortask.dashboard")]:
        monkeypatch.delitem(sys.modules, name)
    # None in sys.modules makes an import fail, as if the package were not installed.
    for name in [m for m in sys.modules if m.split(".")[0] in ("starlette", "uvicorn")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "starlette", None)
    result = CliRunner().invoke(cli_main, ["dashboard"])
    assert result.exit_code != 0
    assert "pip install 'decortask[dashboard]'" in result.output


# -- secrets and escaping ------------------------------------------------------------------------------


def test_a_password_in_the_urls_never_reaches_a_page_or_response(tmp_path: Path, unique: str) -> None:
    store_url = f"sqlite:///{tmp_path}/store.db"
    runner = Decortask("memory://", store_url, default_queue=f"q-{unique}")
    failed = leaky.apply_async(args=(f"redis://default:{SENTINEL}@10.0.0.1:6379/0", SENTINEL), app=runner)
    run_pending(runner)
    runner.close()
    broker = f"amqp://guest:{SENTINEL}@127.0.0.1:1//"
    viewer = Decortask(broker, store_url, default_queue=f"q-{unique}", publish_retries=0)
    try:
        with TestClient(create_dashboard(viewer, token=TOKEN), base_url="http://127.0.0.1:8000") as c:
            bodies = []
            for path in (
                "/",
                "/login",
                f"/tasks/{failed.id}",
                "/api/overview",
                "/api/tasks",
                f"/api/tasks/{failed.id}",
                f"/api/tasks/{failed.id}?args=1",
                "/api/queues",
                "/api/deadletters",
                "/api/workers",
                "/api/counts",
            ):
                answer = c.get(path, headers=BEARER)
                bodies.append((path, answer.status_code, answer.text))
            retried = post(c, f"/api/tasks/{failed.id}/retry")  # the broker is unreachable: masked warning
            bodies.append(("retry", retried.status_code, retried.text))
        for path, _, body in bodies:
            assert SENTINEL not in body, path
        overview = json.loads(dict((p, b) for p, _, b in bodies)["/api/overview"])
        assert overview["broker"] == "amqp://guest:****@127.0.0.1:1//"
        queues = json.loads(dict((p, b) for p, _, b in bodies)["/api/queues"])["queues"]
        assert queues[0]["error"] and queues[0]["ready"] is None
    finally:
        viewer.close()
        reset_default_app()


def test_markup_in_logs_and_errors_is_rendered_escaped(app: Decortask, client: TestClient) -> None:
    handle = xss.apply_async(app=app)
    run_pending(app)
    page = client.get(f"/tasks/{handle.id}", headers=BEARER)
    assert page.status_code == 200
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page.text
    api = client.get(f"/api/tasks/{handle.id}", headers=BEARER)
    assert api.headers["content-type"] == "application/json"
    assert api.headers["x-content-type-options"] == "nosniff"
    assert XSS in api.json()["error_message"]  # data stays data; the page script sets it as text


def test_page_script_never_turns_data_into_markup() -> None:
    for api in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert api not in SCRIPT, api
    assert "textContent" in SCRIPT


# -- live updates --------------------------------------------------------------------------------------


def test_change_feed_reports_new_and_changed_tasks_after_its_baseline(app: Decortask) -> None:
    echo.apply_async(args=("before",), app=app)
    feed = ChangeFeed(app)
    assert feed.poll() == []
    handle = echo.apply_async(args=("after",), app=app)
    assert [(c["id"], c["status"]) for c in feed.poll()] == [(handle.id, "PENDING")]
    assert feed.poll() == []
    run_pending(app)
    assert {c["status"] for c in feed.poll()} == {"SUCCESS"}


def test_event_stream_sends_hello_then_task_changes(app: Decortask) -> None:
    async def run() -> list[bytes]:
        closing = asyncio.Event()

        async def in_thread(fn: Any, *args: Any) -> Any:
            return await asyncio.to_thread(fn, *args)

        chunks: list[bytes] = []
        events = stream(app, in_thread, 0.05, closing)
        async for chunk in events:
            chunks.append(chunk)
            if chunk.startswith(b"event: hello"):
                await asyncio.to_thread(echo.apply_async, args=("live",), app=app)
            if b"event: counts" in chunk:
                closing.set()
        return chunks

    chunks = asyncio.run(asyncio.wait_for(run(), 30))
    text = b"".join(chunks).decode()
    assert text.index("event: hello") < text.index("event: task") < text.index("event: counts")
    assert '"status":"PENDING"' in text


def test_change_feed_reports_the_end_of_a_task_that_fell_out_of_the_newest(
    app: Decortask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "RECENT", 2)
    old = echo.apply_async(args=("old",), app=app)
    feed = ChangeFeed(app)
    feed.poll()
    newer = [echo.apply_async(args=(f"new {n}",), app=app) for n in range(3)]
    app.store.transition(old.id, TaskStatus.CANCELLED, reason="cancelled", finished_at=time.time())
    changes = {c["id"]: c["status"] for c in feed.poll()}
    assert changes[old.id] == "CANCELLED"
    assert {h.id for h in newer} <= set(changes)
