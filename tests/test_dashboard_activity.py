"""The Charts view's data, `GET /api/activity`: ended tasks per minute, runtime percentiles, queue depth.

Records with known `started_at`/`finished_at` go straight into a SQLite store; the API (Starlette's
TestClient, as in test_dashboard.py) must put each in its minute and compute exact percentiles.
"""

from __future__ import annotations

import math
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_dashboard import BEARER, TOKEN
from workers import poll_until

from decortask import Decortask, TaskStatus
from decortask.app import reset_default_app
from decortask.dashboard import create_dashboard
from decortask.dashboard.activity import Activity, QueueDepth
from decortask.dashboard.chart_script import CHART_SCRIPT
from decortask.store.base import TaskRecord

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette's TestClient prefers httpx2 (see test_dashboard.py)
    from starlette.testclient import TestClient


@pytest.fixture
def app(tmp_path: Path, unique: str) -> Iterator[Decortask]:
    instance = Decortask("memory://", f"sqlite:///{tmp_path}/store.db", default_queue=f"q-{unique}")
    yield instance
    instance.transport.purge(instance.settings.default_queue)
    instance.close()
    reset_default_app()


@pytest.fixture
def client(app: Decortask) -> Iterator[TestClient]:
    with TestClient(create_dashboard(app, token=TOKEN), base_url="http://127.0.0.1:8000") as c:
        yield c


def ended(
    status: TaskStatus, finished_at: float, runtime: float = 1.0, attempt: int = 1, **fields: Any
) -> TaskRecord:
    """A record of a task that ran `runtime` seconds and ended in `status` at `finished_at`."""
    started = finished_at - runtime
    return TaskRecord(
        id=uuid.uuid4().hex, name="charts.job", queue="charts", status=status, created_at=started - 1,
        updated_at=finished_at, started_at=started, finished_at=finished_at, attempt=attempt, **fields,
    )  # fmt: skip


def by_start(rows: list[dict[str, Any]], ts: float, width: float) -> dict[str, Any]:
    """The bucket of `rows` (each with a `start`) that holds the time `ts`."""
    [row] = [r for r in rows if r["start"] <= ts < r["start"] + width]
    return row


def test_activity_counts_ended_tasks_per_minute_by_final_state(app: Decortask, client: TestClient) -> None:
    now = time.time()
    minute = math.floor(now / 60) * 60  # the current minute's start: a record at +1 s is in it
    at = {"5 min ago": minute - 300 + 1, "12 min ago": minute - 720 + 1, "40 min ago": minute - 2400 + 1}
    records = [
        *(ended(TaskStatus.SUCCESS, at["5 min ago"] + n) for n in range(3)),
        ended(TaskStatus.FAILED, at["5 min ago"] + 5),
        *(ended(TaskStatus.FAILED, at["12 min ago"]) for _ in range(2)),
        ended(TaskStatus.INTERRUPTED, at["12 min ago"] + 2, attempt=3),  # two attempts before its last
        ended(TaskStatus.CANCELLED, at["40 min ago"]),
        ended(TaskStatus.SUCCESS, minute - 3 * 3600, runtime=1),  # ended long before the hour
    ]
    running = ended(TaskStatus.RUNNING, now, runtime=5)
    running.finished_at = None
    app.store.create_many([*records, running])
    response = client.get("/api/activity", headers=BEARER)
    assert response.status_code == 200, response.text
    data = response.json()
    minutes = data["minutes"]
    assert len(minutes) == 60 and minutes[-1]["start"] <= now < minutes[-1]["start"] + 60
    expected = {
        at["5 min ago"]: {"SUCCESS": 3, "FAILED": 1},
        at["12 min ago"]: {"FAILED": 2, "INTERRUPTED": 1, "retries": 2},
        at["40 min ago"]: {"CANCELLED": 1},
    }
    empty = {"SUCCESS": 0, "FAILED": 0, "CANCELLED": 0, "INTERRUPTED": 0, "retries": 0}
    wanted = {by_start(minutes, ts, 60)["start"]: {**empty, **counts} for ts, counts in expected.items()}
    got = {row["start"]: {k: v for k, v in row.items() if k != "start"} for row in minutes}
    assert {start: got[start] for start in wanted} == wanted
    assert all(counts == empty for start, counts in got.items() if start not in wanted)
    # Read: the records created in the last two hours (the running one too), not the three-hour-old one.
    assert data["capped"] is False and data["read"] == len(records) - 1 + 1
    assert not any(r.id in response.text for r in records)  # nothing about a single task


def test_activity_runtime_percentiles_per_five_minutes(app: Decortask, client: TestClient) -> None:
    bucket = math.floor(time.time() / 300) * 300 - 300  # the previous five minutes
    app.store.create_many([ended(TaskStatus.SUCCESS, bucket + 10 + n, runtime=n) for n in range(1, 21)])
    app.store.create_many([ended(TaskStatus.FAILED, bucket + 100, runtime=0.5)])  # 21 values: 0.5, 1..20
    data = client.get("/api/activity", headers=BEARER).json()
    assert len(data["runtime"]) == 12
    row = by_start(data["runtime"], bucket + 10, 300)
    # Nearest rank over 21 values: p50 is the 11th (10 s), p95 the 20th (19 s), p99 the 21st (20 s).
    assert (row["count"], row["p50"], row["p95"], row["p99"]) == (21, 10.0, 19.0, 20.0)
    others = [r for r in data["runtime"] if r is not row]
    assert all(r["count"] == 0 and r["p50"] is None for r in others)


def test_activity_reads_at_most_the_cap_newest_first_and_says_so(app: Decortask) -> None:
    now = time.time()
    app.store.create_many([ended(TaskStatus.SUCCESS, now - 600 + n) for n in range(60)])
    report = Activity(lambda: app.store, cap=25).report(now)
    assert (report["read"], report["capped"], report["cap"]) == (25, True, 25)
    assert sum(m["SUCCESS"] for m in report["minutes"]) == 25
    newest = max(m["start"] for m in report["minutes"] if m["SUCCESS"])
    assert newest == math.floor((now - 600 + 59) / 60) * 60  # the newest were read, not the oldest
    uncapped = Activity(lambda: app.store).report(now)
    assert (uncapped["read"], uncapped["capped"]) == (60, False)


def test_activity_is_cached_for_fifteen_seconds(app: Decortask) -> None:
    now = time.time()
    activity = Activity(lambda: app.store)
    app.store.create_many([ended(TaskStatus.SUCCESS, now - 30)])
    assert activity.report(now)["read"] == 1
    app.store.create_many([ended(TaskStatus.FAILED, now - 20)])
    assert activity.report(now + 10)["read"] == 1  # the cached scan
    again = activity.report(now + 16)
    assert again["read"] == 2 and sum(m["FAILED"] for m in again["minutes"]) == 1


def test_queue_depth_keeps_the_last_hour_and_says_when_it_began(client: TestClient, app: Decortask) -> None:
    def sampled() -> bool:
        found.append(client.get("/api/activity", headers=BEARER).json()["queues"])
        return bool(found[-1]["samples"])

    found: list[dict[str, Any]] = []
    poll_until(sampled, 10, "the first queue sample, taken as the dashboard starts")
    queues = found[-1]
    assert queues["full_hour"] is False  # the dashboard just started
    assert queues["samples"][0]["ready"] == {app.settings.default_queue: 0}  # sampled at startup
    depth = QueueDepth(started=0)
    for minute in range(90):
        depth.add(minute * 60.0, [{"name": "a", "ready": minute}, {"name": "b", "ready": None}])
    snapshot = depth.snapshot(89 * 60.0)
    assert snapshot["full_hour"] is True
    assert [s["ready"]["a"] for s in snapshot["samples"]] == list(range(29, 90))
    assert snapshot["samples"][0]["ready"]["b"] is None


def test_activity_needs_auth(client: TestClient) -> None:
    assert client.get("/api/activity").status_code == 401


def test_chart_script_never_turns_data_into_markup() -> None:
    for api in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert api not in CHART_SCRIPT, api
    assert "createElementNS" in CHART_SCRIPT and "textContent" in CHART_SCRIPT
