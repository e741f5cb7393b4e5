"""Prometheus metrics (issue 15): a worker's /metrics on --metrics-port, and the dashboard's /metrics.

The worker counts what it settled (per process); the dashboard reports what the store holds (cluster-wide).
`promtool check metrics` (Debian's prometheus package; `.ci/run` installs it) lints both outputs: the test
skips without it on a laptop and fails under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import metrics_tasks as mt
import pytest
from conftest import IN_CI, broker_urls
from prometheus_client.parser import text_string_to_metric_families
from workers import REPO

from decortask import Decortask, TaskStatus, task
from decortask.app import reset_default_app
from decortask.contrib.prometheus import StoreMetrics, WorkerMetrics
from decortask.outcomes import Outcome, Reason, Settle
from decortask.store.base import TaskQuery
from decortask.transports.session import Delivery

TOKEN = "metrics-test-token-0123456789abcdef"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@task(name="metrics.ghost")
def ghost() -> None:
    """Registered here, in the producer, but not in the worker's -A module: the worker dead-letters it."""


def samples(text: str) -> Samples:
    """Every sample of a text exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def promtool_check(text: str) -> str:
    """`promtool check metrics` on `text`; its output. Skips without promtool locally, fails under CI."""
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (apt-get install prometheus)"
        if IN_CI:
            pytest.fail(message + "; .ci/run installs it under CI=true")
        pytest.skip(message)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60, check=False
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output
    return output


def delivery(queue: str, body: dict[str, object] | bytes) -> Delivery:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(raw, "application/json", {}, queue, False, None)


# -- the counting rules, without a broker -------------------------------------------------------------------


def test_each_settled_outcome_counts_once_by_final_state_with_no_task_id_in_any_label() -> None:
    app = Decortask("memory://", "memory://")
    try:
        metrics = WorkerMetrics(app, ["q"], cache_seconds=0)
        task_id = uuid.uuid4().hex
        now = time.time()
        ok = delivery("q", {"v": 1, "id": task_id, "task": "metrics.ok", "created_at": now - 2.0})
        retried = delivery(
            "q", {"v": 1, "id": "r1", "task": "metrics.flaky", "eta": now - 0.5, "created_at": 1}
        )
        stranger = delivery("q", {"v": 1, "id": "x1", "task": "no.such.task", "created_at": now})
        unreadable = delivery("q", b"\xff not json")
        metrics.settled(ok, Outcome(Settle.ACK, TaskStatus.SUCCESS, ran=True), now, now + 0.25)
        # A duplicate delivery of a finished task changes nothing: not counted again.
        metrics.settled(ok, Outcome(Settle.ACK, TaskStatus.SUCCESS, Reason.DUPLICATE), None, None)
        metrics.settled(retried, Outcome(Settle.ACK, TaskStatus.RETRYING, ran=True), now, now + 0.1)
        metrics.settled(
            retried, Outcome(Settle.ACK, TaskStatus.PENDING, Reason.SHUTDOWN, ran=True), None, None
        )
        metrics.settled(
            stranger, Outcome(Settle.DEAD_LETTER, TaskStatus.FAILED, Reason.UNREGISTERED_TASK), None, None
        )
        metrics.settled(unreadable, Outcome(Settle.DEAD_LETTER, None, Reason.DECODE_ERROR), None, None)
        # A call over its task's limits waits in the schedule: counted as throttled, never as an outcome.
        for reason in (Reason.RATE_LIMITED, Reason.RATE_LIMITED, Reason.CONCURRENCY_LIMITED):
            metrics.settled(ok, Outcome(Settle.ACK, TaskStatus.SCHEDULED, reason), None, None)
        text = metrics.exposition().decode()
    finally:
        app.close()
        reset_default_app()
    found = samples(text)
    assert value(found, "decortask_tasks_total", task="metrics.ok", queue="q", state="SUCCESS") == 1
    assert value(found, "decortask_task_retries_total", task="metrics.flaky", queue="q") == 1
    assert (
        value(found, "decortask_task_interruptions_total", task="metrics.flaky", queue="q", reason="shutdown")
        == 1
    )
    assert value(found, "decortask_tasks_total", task="unregistered", queue="q", state="FAILED") == 1
    assert (
        value(
            found, "decortask_dead_letters_total", task="unregistered", queue="q", reason="unregistered_task"
        )
        == 1
    )
    assert value(found, "decortask_dead_letters_total", task="unknown", queue="q", reason="decode_error") == 1
    assert value(found, "decortask_task_runtime_seconds_count", task="metrics.ok", queue="q") == 1
    assert value(found, "decortask_task_runtime_seconds_sum", task="metrics.ok", queue="q") == pytest.approx(
        0.25
    )
    assert value(found, "decortask_task_wait_seconds_sum", task="metrics.ok", queue="q") == pytest.approx(2.0)
    # The retried attempt's wait runs from its due time (eta), not from the task's creation.
    assert value(found, "decortask_task_wait_seconds_sum", task="metrics.flaky", queue="q") == pytest.approx(
        0.5
    )
    for reason, count in (("rate_limited", 2), ("concurrency_limited", 1)):
        assert (
            value(found, "decortask_task_throttled_total", task="metrics.ok", queue="q", reason=reason)
            == count
        )
    assert value(found, "decortask_queue_messages", queue="q") == 0
    assert task_id not in text and "no.such.task" not in text
    assert "decortask_workers_alive" in text


# -- a real worker ----------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def broker_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Decortask]:
    token = uuid.uuid4().hex[:10]
    broker_url, store_url = broker_urls(request.param, tmp_path, token)
    app = Decortask(broker_url, store_url, default_queue=f"metrics-{token}")
    try:
        yield app
    finally:
        app.close()
        reset_default_app()


def _wait_until(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _store_count(app: Decortask, name: str, status: TaskStatus) -> int:
    return app.store.count_tasks(
        TaskQuery(statuses=frozenset({status}), name=name, queue=app.settings.default_queue)
    )


def test_worker_metrics_port_shows_the_counts_the_store_holds_after_a_mixed_run(
    broker_app: Decortask, tmp_path: Path
) -> None:
    app = broker_app
    queue = app.settings.default_queue
    handles = [mt.ok.delay(n) for n in range(3)] + [mt.flaky.delay(), mt.boom.delay(), ghost.delay()]
    log_path = tmp_path / "worker.log"
    command = [
        sys.executable, "-m", "decortask", "worker", "-A", "tests.metrics_tasks", "-Q", queue, "-c", "2",
        "--broker-url", app.settings.broker_url, "--store-url", app.settings.store_url,
        "--metrics-port", "0",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_until(lambda: all(app.store.get(h.id).status.terminal for h in handles), "every task to end")  # type: ignore[union-attr]
        _wait_until(lambda: "metrics: http://" in log_path.read_text(), "the metrics line")
        match = re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics)", log_path.read_text())
        assert match, log_path.read_text()

        # The dead letter is published right after its record is written: wait for the worker to report it.
        def scrape() -> str:
            with urllib.request.urlopen(match.group(1), timeout=10) as response:
                assert response.status == 200
                return str(response.read().decode())

        _wait_until(lambda: "decortask_dead_letters_total{" in scrape(), "the dead letter's count")
        text = scrape()
    finally:
        process.terminate()
        process.wait(30)
    found = samples(text)
    expected = {
        ("metrics.ok", TaskStatus.SUCCESS): 3,
        ("metrics.flaky", TaskStatus.SUCCESS): 1,
        ("metrics.boom", TaskStatus.FAILED): 1,
    }
    for (name, status), count in expected.items():
        assert _store_count(app, name, status) == count
        assert value(found, "decortask_tasks_total", task=name, queue=queue, state=status.value) == count
    assert _store_count(app, "metrics.ghost", TaskStatus.FAILED) == 1
    assert value(found, "decortask_tasks_total", task="unregistered", queue=queue, state="FAILED") == 1
    assert (
        value(
            found,
            "decortask_dead_letters_total",
            task="unregistered",
            queue=queue,
            reason="unregistered_task",
        )
        == 1
    )
    assert value(found, "decortask_task_retries_total", task="metrics.flaky", queue=queue) == 1
    # Every attempt that ran was timed: 3 + 2 (flaky's two attempts) + 1.
    runs = sum(
        value(found, "decortask_task_runtime_seconds_count", task=name, queue=queue)
        for name in ("metrics.ok", "metrics.flaky", "metrics.boom")
    )
    assert runs == 6
    assert value(found, "decortask_task_wait_seconds_count", task="metrics.flaky", queue=queue) == 2
    assert value(found, "decortask_workers_alive") >= 1
    assert value(found, "decortask_queue_messages", queue=queue) == 0
    assert value(found, "decortask_dead_letter_queue_messages", queue=queue) == 1
    for handle in handles:
        assert handle.id not in text
    print(promtool_check(text))


# -- the dashboard ----------------------------------------------------------------------------------------


def test_dashboard_metrics_refuses_without_the_token_and_shows_the_store_counts_with_it(
    tmp_path: Path,
) -> None:
    pytest.importorskip("starlette")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from decortask.dashboard import create_dashboard
    from decortask.testing import run_pending

    url = f"sqlite:///{tmp_path}/decortask.db"
    app = Decortask(url, url, default_queue=f"metrics-{uuid.uuid4().hex[:8]}")
    queue = app.settings.default_queue
    try:
        mt.ok.delay(1)
        mt.ok.delay(2)
        mt.boom.delay()
        run_pending(app)
        with TestClient(create_dashboard(app, token=TOKEN), base_url="http://127.0.0.1:8000") as client:
            refused = client.get("/metrics")
            wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
            answered = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 401 and "decortask_" not in refused.text
        assert wrong.status_code == 401
        assert answered.status_code == 200, answered.text
        assert answered.headers["content-type"].startswith("text/plain")
        found = samples(answered.text)
        assert value(found, "decortask_store_tasks", task="metrics.ok", queue=queue, state="SUCCESS") == 2
        assert value(found, "decortask_store_tasks", task="metrics.boom", queue=queue, state="FAILED") == 1
        assert value(found, "decortask_queue_messages", queue=queue) == 0
        assert ("decortask_workers_alive", frozenset()) in found
        print(promtool_check(answered.text))
    finally:
        app.close()
        reset_default_app()


def test_store_metrics_reuse_one_computation_within_the_cache_window(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/decortask.db"
    app = Decortask(url, url)
    try:
        metrics = StoreMetrics(app, cache_seconds=3600)
        first = metrics.exposition()
        mt.ok.delay(1)  # a new PENDING record: not seen until the cached answer expires
        assert metrics.exposition() == first
        assert b'state="PENDING"' not in first
        assert b'state="PENDING"' in StoreMetrics(app, cache_seconds=0).exposition()
    finally:
        app.close()
        reset_default_app()


def test_a_metrics_port_in_use_stops_the_worker_with_a_message_naming_the_option(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/decortask.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        command = [
            sys.executable, "-m", "decortask", "worker", "-A", "tests.metrics_tasks", "--burst",
            "--broker-url", url, "--store-url", url, "--metrics-port", str(port),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, capture_output=True, timeout=120, check=False)
    assert result.returncode != 0
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr.decode()
    assert "--metrics-port" in result.stderr.decode()
