"""Live events (issue 15): the store's event feed, `EventSubscriber`, `decortask events` and the dashboard's stream.

The feed is written by the store in the same atomic step as each change (SQLite triggers, Redis Lua), and read
by subscribers at their own pace from a cursor. These tests run real stores; the Done-when test runs two real
worker processes and a subscriber process. Timing claims (a slow subscriber does not slow the workers) are
measured by benchmarks/events_drain.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import behaviour_tasks as bt
import pytest
from conftest import broker_urls, delete_redis_namespace, drop_postgres_schema, require_redis
from workers import REPO, WorkerProcess, poll_until, run_burst_worker

from decortask import Decortask
from decortask.app import reset_default_app
from decortask.events import Event, EventSubscriber, feed_for
from decortask.states import TaskStatus
from decortask.store.base import TaskQuery
from decortask.testing import run_pending

#: The SQLite store (triggers), Redis (Lua) and PostgreSQL (triggers, on the Redis broker).
KINDS = ["sqlite", "redis", "redis+postgres"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def events_app(kind: str, tmp_path: Path, unique: str) -> Iterator[Decortask]:
    """An app with events on, on the `kind` broker and store, with a queue and (Redis) a namespace of its own."""
    broker_url, store_url = broker_urls(kind, tmp_path, unique)
    app = Decortask(broker_url, store_url, default_queue=f"events-{unique}", events=True)
    try:
        yield app
    finally:
        _close(app, kind, broker_url, unique)


def _close(app: Decortask, kind: str, broker_url: str, unique: str) -> None:
    """Close an app of `broker_urls(kind, ..., unique)` and delete what it left on the servers."""
    app.close()
    reset_default_app()
    if kind == "redis":
        delete_redis_namespace(broker_url, f"test-{unique}")
    if kind.endswith("+postgres"):
        drop_postgres_schema(unique)


def _decortask(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decortask", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _by_task(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event["task_id"] is not None:
            found.setdefault(event["task_id"], []).append(event)
    return found


# -- Done when: another process sees every state change of 1,000 tasks run by two workers, in order -------------


def test_a_subscriber_process_receives_every_state_change_of_1000_tasks_run_by_two_workers_in_order(
    events_app: Decortask, tmp_path: Path
) -> None:
    app = events_app
    start = EventSubscriber(app).cursor  # the feed's newest event: the subscriber resumes after it
    out = tmp_path / "events.jsonl"
    with open(out, "wb") as sink:
        subscriber = subprocess.Popen(
            [
                sys.executable, "-m", "decortask", "events", "--store-url", app.settings.store_url,
                "--since", str(start), "--kind", "state", "--kind", "gap", "--json", "--timeout", "5",
            ],
            cwd=REPO, stdout=sink, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        handles = bt.add.map([(i, i) for i in range(1000)], app=app)
        workers = [
            WorkerProcess(
                app.settings.broker_url,
                app.settings.store_url,
                app.settings.default_queue,
                tmp_path / f"worker-{n}.log",
                concurrency=4,
                extra_args=("--events",),
            ).start()
            for n in range(2)
        ]
        try:
            done = TaskQuery(statuses=frozenset({TaskStatus.SUCCESS}))
            poll_until(
                lambda: app.store.count_tasks(done) == 1000, 120, "1000 tasks to succeed", interval=0.2
            )
        finally:
            for worker in workers:
                worker.stop()
        assert subscriber.wait(timeout=120) == 0, subscriber.stderr.read() if subscriber.stderr else ""
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.wait(10)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e for e in events if e["kind"] == "gap"] == []
    by_task = _by_task(events)
    assert set(by_task) == {h.id for h in handles}
    for handle in handles:
        seen = by_task[handle.id]
        assert [(e["status"], e["attempt"]) for e in seen] == [("PENDING", 0), ("RUNNING", 1), ("SUCCESS", 1)]
        cursors = [e["cursor"] for e in seen]
        assert cursors == sorted(cursors)
    # Nothing missing anywhere: the state events are consecutive cursors of the feed, and both workers ran tasks.
    assert [e["cursor"] for e in events] == list(range(start + 1, start + 3001))
    assert len({e["worker"].split("/")[0] for e in events if e["status"] == "SUCCESS"}) == 2


def test_a_process_pool_worker_started_with_events_writes_them_from_its_children(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/pool.db"
    app = Decortask(url, url, default_queue=f"pool-{uuid.uuid4().hex[:8]}", events=True)
    try:
        start = EventSubscriber(app).cursor
        handles = bt.add.map([(1, 2), (3, 4)], app=app)
        run_burst_worker(app, tmp_path, "tests.behaviour_tasks", "--pool", "processes", "-c", "1", "--events")
        events = list(EventSubscriber(app, since=start, kinds=["state"]).events(timeout=0.5))
        by_task = {h.id: [e.status for e in events if e.task_id == h.id] for h in handles}
        wanted = [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCESS]
        assert by_task == {h.id: wanted for h in handles}
        assert all("/" in (e.worker or "") for e in events if e.status is TaskStatus.RUNNING)  # a child's id
    finally:
        app.close()
        reset_default_app()


# -- what an event carries ----------------------------------------------------------------------------------


def test_events_carry_state_progress_and_masked_log_lines_but_never_arguments_or_results(
    events_app: Decortask,
) -> None:
    subscriber = EventSubscriber(events_app)
    handle = bt.report.apply_async(args=("password=hunter2 in the argument",), app=events_app)
    run_pending(events_app)
    events = [e for e in subscriber.poll(timeout=5) if e.task_id == handle.id]
    assert [(e.kind, e.status) for e in events if e.kind != "log"] == [
        ("state", TaskStatus.PENDING),
        ("state", TaskStatus.RUNNING),
        ("progress", TaskStatus.RUNNING),
        ("state", TaskStatus.SUCCESS),
    ]
    assert [e.message for e in events if e.kind == "log"] == ["received", "finished"]
    progress = next(e for e in events if e.kind == "progress")
    assert (progress.progress, progress.message) == (0.75, "almost there")
    running = next(e for e in events if e.status is TaskStatus.RUNNING)
    assert running.worker == "run_pending" and running.attempt == 1 and running.name == "bt.report"
    text = json.dumps([e.to_dict() for e in events])
    assert "hunter2" not in text and "PASSWORD" not in text  # neither the argument nor the result


def test_log_text_is_masked_in_events(events_app: Decortask) -> None:
    subscriber = EventSubscriber(events_app)
    record = bt.add.apply_async(args=(1, 2), app=events_app)
    from decortask.store.base import LogLine

    events_app.store.append_log(record.id, LogLine(time.time(), "connecting with password=hunter2", 0))
    (log,) = [e for e in subscriber.poll(timeout=5) if e.kind == "log"]
    assert "hunter2" not in (log.message or "") and log.message is not None and "password=" in log.message


# -- cursors, filters, gaps, isolation -----------------------------------------------------------------------


def test_a_subscriber_resumes_from_its_cursor_with_nothing_repeated_or_missed(events_app: Decortask) -> None:
    first = EventSubscriber(events_app)
    handles = bt.add.map([(i, 1) for i in range(10)], app=events_app)
    part = first.poll(timeout=5)
    assert [e.task_id for e in part] == [h.id for h in handles]  # ten PENDING events
    first.close()
    run_pending(events_app)
    resumed = EventSubscriber(events_app, since=part[-1].cursor)
    rest = list(resumed.events(timeout=1))
    assert rest[0].cursor == part[-1].cursor + 1
    assert sorted((e.task_id, e.status) for e in rest) == sorted(
        (h.id, s) for h in handles for s in (TaskStatus.RUNNING, TaskStatus.SUCCESS)
    )


def test_filters_keep_the_names_queues_and_states_asked_for(events_app: Decortask) -> None:
    only = EventSubscriber(events_app, names=["bt.report"], states=["SUCCESS"], kinds=["state"])
    bt.add.apply_async(args=(1, 2), app=events_app)
    wanted = bt.report.apply_async(args=("x",), app=events_app)
    run_pending(events_app)
    events = only.poll(timeout=5)
    assert [(e.task_id, e.status) for e in events] == [(wanted.id, TaskStatus.SUCCESS)]
    elsewhere = EventSubscriber(events_app, queues=["no-such-queue"], since="oldest")
    assert elsewhere.poll() == []


def test_a_subscriber_behind_the_trim_horizon_gets_a_gap_event_then_the_kept_events(
    events_app: Decortask,
) -> None:
    behind = EventSubscriber(events_app)
    handles = bt.add.map([(i, 1) for i in range(30)], app=events_app)  # 30 PENDING events
    feed = feed_for(events_app.store)
    assert feed.trim(keep=10) == 20
    events = behind.poll(timeout=5)
    assert events[0].kind == "gap" and events[0].missed == 20
    assert [e.task_id for e in events[1:]] == [h.id for h in handles[20:]]
    assert "20 events were trimmed" in events[0].line()


def test_the_sqlite_feed_trims_itself_to_events_max(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/small.db"
    app = Decortask(url, url, default_queue="small", events=True, events_max=10)
    try:
        start = EventSubscriber(app, since="oldest")
        bt.add.map([(i, 1) for i in range(50)], app=app)
        oldest, newest = feed_for(app.store).bounds()
        assert (
            newest == 50 and newest - oldest + 1 <= 20
        )  # about events_max: trimmed every min(1000, max) rows
        gap, *kept = start.poll()
        assert gap.kind == "gap" and gap.missed == oldest - 1 and len(kept) == newest - oldest + 1
    finally:
        app.close()
        reset_default_app()


def test_no_events_are_written_unless_the_setting_asks(kind: str, tmp_path: Path, unique: str) -> None:
    broker_url, store_url = broker_urls(kind, tmp_path, unique)
    quiet = Decortask(broker_url, store_url, default_queue=f"quiet-{unique}")
    try:
        bt.add.map([(i, 1) for i in range(5)], app=quiet)
        run_pending(quiet)
        assert feed_for(quiet.store).bounds()[1] == 0
    finally:
        _close(quiet, kind, broker_url, unique)


def test_a_subscriber_that_raises_stops_alone_and_the_next_one_resumes_after_it(
    events_app: Decortask,
) -> None:
    seen: list[Event] = []
    crashing = EventSubscriber(events_app)
    handles = bt.add.map([(i, 1) for i in range(5)], app=events_app)
    with pytest.raises(RuntimeError):
        for event in crashing.events(timeout=2):
            seen.append(event)
            if len(seen) == 2:
                raise RuntimeError("the subscriber's own bug")
    # The writers never waited for it: the tasks still run to the end.
    assert run_pending(events_app) == 5
    assert all(events_app.store.get(h.id).status is TaskStatus.SUCCESS for h in handles)  # type: ignore[union-attr]
    after = list(EventSubscriber(events_app, since=seen[-1].cursor).events(timeout=1))
    assert [e.task_id for e in after[:3]] == [h.id for h in handles[2:]]
    assert len(after) == 3 + 2 * 5


def test_async_subscribers_read_the_same_events(events_app: Decortask) -> None:
    subscriber = EventSubscriber(events_app)
    handle = bt.add.apply_async(args=(2, 3), app=events_app)

    async def read() -> list[Event]:
        return [event async for event in subscriber.aevents(timeout=1)]

    assert [(e.task_id, e.status) for e in asyncio.run(read())] == [(handle.id, TaskStatus.PENDING)]


def test_a_memory_store_says_it_keeps_no_feed() -> None:
    from decortask.errors import ConfigurationError

    app = Decortask("memory://", "memory://", set_default=False)
    with pytest.raises(ConfigurationError, match="keeps no event feed"):
        EventSubscriber(app)


# -- decortask events --------------------------------------------------------------------------------------


def test_decortask_events_prints_one_masked_line_per_event_and_filters(events_app: Decortask) -> None:
    start = str(EventSubscriber(events_app).cursor)
    plain = bt.add.apply_async(args=(1, 2), app=events_app)
    secret = bt.report.apply_async(args=("x",), app=events_app)
    events_app.store.append_log(secret.id, _line("token=abc123def and more"))
    run_pending(events_app)
    url = events_app.settings.store_url
    shown = _decortask("events", "--store-url", url, "--since", start, "--timeout", "1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(f"SUCCESS     bt.add [{plain.id}] attempt 1 worker run_pending" in line for line in lines), (
        lines
    )
    assert any("log: token=****" in line for line in lines) and "abc123def" not in shown.stdout
    filtered = _decortask(
        "events", "--store-url", url, "--since", start, "--timeout", "1", "--json", "--name", "bt.report",
        "--state", "success", "--kind", "state",
    )  # fmt: skip
    assert filtered.returncode == 0, filtered.stderr
    rows = [json.loads(line) for line in filtered.stdout.splitlines()]
    assert [(r["task_id"], r["status"], r["kind"]) for r in rows] == [(secret.id, "SUCCESS", "state")]


def test_decortask_events_refuses_a_bad_since(events_app: Decortask) -> None:
    events_app.store.count_schedule()  # the store exists
    shown = _decortask("events", "--store-url", events_app.settings.store_url, "--since", "yesterday")
    assert shown.returncode != 0 and "since must be 'now', 'oldest' or a cursor" in shown.stderr


def test_decortask_events_on_a_store_that_never_had_events_says_they_are_off_by_default(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    quiet = Decortask(url, url, set_default=False)  # events off, the default
    bt.add.apply_async(args=(1, 2), app=quiet)
    run_pending(quiet)
    quiet.close()
    shown = _decortask("events", "--store-url", url, "--timeout", "0.5")
    assert shown.returncode == 0 and shown.stdout == "", shown.stderr
    assert "no events were ever written to this store: events are off by default" in shown.stderr
    assert "DECORTASK_EVENTS=1, decortask worker --events" in shown.stderr


def test_decortask_events_says_nothing_of_the_setting_once_events_were_written(events_app: Decortask) -> None:
    bt.add.apply_async(args=(1, 2), app=events_app)
    shown = _decortask("events", "--store-url", events_app.settings.store_url, "--timeout", "0.5")
    assert shown.returncode == 0 and "off by default" not in shown.stderr, shown.stderr


def _line(text: str) -> Any:
    from decortask.store.base import LogLine

    return LogLine(time.time(), text, 0)


# -- the dashboard's live view -------------------------------------------------------------------------------


def test_the_dashboard_stream_sends_every_state_of_a_task_from_the_feed(events_app: Decortask) -> None:
    from decortask.dashboard.events import stream

    async def run() -> str:
        closing = asyncio.Event()

        async def in_thread(fn: Any, *args: Any) -> Any:
            return await asyncio.to_thread(fn, *args)

        chunks: list[bytes] = []
        handle = None
        async for chunk in stream(events_app, in_thread, 0.5, closing):
            chunks.append(chunk)
            if chunk.startswith(b"event: hello"):
                handle = await asyncio.to_thread(bt.add.apply_async, args=(1, 2), app=events_app)
                await asyncio.to_thread(run_pending, events_app)
            if b'"status":"SUCCESS"' in chunk:
                closing.set()
        assert handle is not None
        return b"".join(chunks).decode()

    text = asyncio.run(asyncio.wait_for(run(), 30))
    statuses = [
        json.loads(line[len("data: ") :])["status"]
        for line in text.splitlines()
        if line.startswith("data: ") and '"status"' in line and '"id"' in line
    ]
    # Each state change as it happened, none collapsed into the final row (the poll could only see SUCCESS).
    assert statuses == ["PENDING", "RUNNING", "SUCCESS"]


def test_the_redis_feed_survives_a_lost_counter(tmp_path: Path) -> None:
    require_redis()
    from conftest import REDIS_URL

    namespace = f"test-{uuid.uuid4().hex[:10]}"
    url = f"{REDIS_URL}?namespace={namespace}"
    app = Decortask(REDIS_URL, url, default_queue=namespace, events=True)
    try:
        subscriber = EventSubscriber(app)
        bt.add.apply_async(args=(1, 1), app=app)
        import redis

        redis.Redis.from_url(REDIS_URL).delete(f"{namespace}:events:seq")
        bt.add.apply_async(args=(2, 2), app=app)
        assert [e.cursor for e in subscriber.poll(timeout=2)] == [1, 2]
    finally:
        app.close()
        reset_default_app()
        delete_redis_namespace(REDIS_URL, namespace)
