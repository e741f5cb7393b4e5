"""Sentry integration: a real `sentry_sdk` client whose transport records envelopes (no network).

Tasks run through the real decode -> execute -> settle path (`run_pending`) on the memory broker and on the
embedded SQLite broker and store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from decortask import Decortask, Retry, TaskContext, TaskStatus, task, task_log
from decortask.app import reset_default_app
from decortask.contrib.sentry import SentryMiddleware
from decortask.errors import ConfigurationError
from decortask.testing import run_pending

LATER = 10_000.0  # run_pending(now=...) this far ahead: retry delays are due at once


class RecordingTransport(Transport):
    """Keeps every envelope the client sends, instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self, kind: str = "event") -> list[dict[str, Any]]:
        found = []
        for envelope in self.envelopes:
            for item in envelope.items:
                if item.type == kind and item.payload.json is not None:
                    found.append(item.payload.json)
        return found


class InvoiceError(Exception):
    pass


@task(retries=2, delay=5.0, name="sentry_tests.always_fails")
def always_fails(ctx: TaskContext, order: int) -> None:
    task_log("rendering invoice", order=order)
    task_log(f"attempt {ctx.attempt} about to fail")
    raise InvoiceError(f"printer on fire for order {order}")


@task(retries=2, delay=5.0, name="sentry_tests.flaky")
def flaky(ctx: TaskContext, fail_times: int) -> str:
    task_log("trying")
    if ctx.attempt <= fail_times:
        raise InvoiceError(f"attempt {ctx.attempt} failed")
    return "done"


@task(retries=1, name="sentry_tests.asks_to_retry")
def asks_to_retry(ctx: TaskContext) -> str:
    if ctx.attempt == 1:
        raise Retry(delay=1.0)
    return "second time lucky"


@task(name="sentry_tests.async_fails")
async def async_fails(order: int) -> None:
    task_log("async step", order=order)
    raise InvoiceError("async failure")


@pytest.fixture
def transport() -> Iterator[RecordingTransport]:
    recorder = RecordingTransport()
    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1",  # never contacted: the transport above replaces HTTP
        transport=recorder,
        traces_sample_rate=1.0,
        default_integrations=False,
    )
    yield recorder
    sentry_sdk.init()  # an inactive client: no DSN, nothing captured by later tests


def _make_app(kind: str, tmp_path: Path, unique: str, report: str = "final") -> Decortask:
    if kind == "memory":
        urls = ("memory://", "memory://")
    else:
        url = f"sqlite:///{os.fspath(tmp_path)}/decortask.db"
        urls = (url, url)
    return Decortask(
        *urls,
        default_queue=f"q-{unique}",
        middleware=[SentryMiddleware(report=report)],  # type: ignore[arg-type]
    )


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Decortask]:
    made = _make_app(request.param, tmp_path, unique)
    yield made
    made.close()
    reset_default_app()


def test_final_failure_is_one_event_with_task_tags_and_task_log_breadcrumbs(
    app: Decortask, transport: RecordingTransport
) -> None:
    handle = always_fails.delay(42)
    run_pending(app, now=time.time() + LATER)

    assert handle.status is TaskStatus.FAILED and handle.attempts == 3
    events = transport.events()
    assert len(events) == 1
    event = events[0]
    assert event["exception"]["values"][-1]["type"] == "InvoiceError"
    assert event["exception"]["values"][-1]["mechanism"] == {"type": "decortask", "handled": False}
    tags = event["tags"]
    assert tags["decortask.task"] == "sentry_tests.always_fails"
    assert tags["decortask.task_id"] == handle.id
    assert tags["decortask.attempt"] == "3"
    assert tags["decortask.queue"] == app.settings.default_queue
    assert tags["decortask.worker"] == "run_pending"
    crumbs = [c for c in event["breadcrumbs"]["values"] if c["category"] == "task_log"]
    assert [c["message"] for c in crumbs if c["data"]["attempt"] == 3] == [
        "rendering invoice",
        "attempt 3 about to fail",
    ]
    assert crumbs[0]["data"]["order"] == 42


def test_a_task_that_succeeds_after_retries_reports_nothing(
    app: Decortask, transport: RecordingTransport
) -> None:
    handle = flaky.delay(2)
    run_pending(app, now=time.time() + LATER)

    assert handle.get(timeout=5) == "done" and handle.attempts == 3
    assert transport.events() == []


def test_every_attempt_reports_each_failed_attempt_but_not_the_success(
    tmp_path: Path, unique: str, transport: RecordingTransport
) -> None:
    app = _make_app("sqlite", tmp_path, unique, report="every_attempt")
    try:
        handle = flaky.delay(2)
        run_pending(app, now=time.time() + LATER)
        assert handle.get(timeout=5) == "done"
    finally:
        app.close()
        reset_default_app()
    events = transport.events()
    assert [e["tags"]["decortask.attempt"] for e in events] == ["1", "2"]
    assert {e["tags"]["decortask.final"] for e in events} == {"false"}


def test_retry_raised_by_the_task_is_not_an_error_even_when_reporting_every_attempt(
    tmp_path: Path, unique: str, transport: RecordingTransport
) -> None:
    app = _make_app("memory", tmp_path, unique, report="every_attempt")
    try:
        handle = asks_to_retry.delay()
        run_pending(app, now=time.time() + LATER)
        assert handle.get(timeout=5) == "second time lucky"
    finally:
        app.close()
        reset_default_app()
    assert transport.events() == []


def test_the_task_continues_the_trace_of_the_request_that_enqueued_it(
    app: Decortask, transport: RecordingTransport
) -> None:
    with sentry_sdk.start_transaction(name="POST /invoices", op="http.server") as request:
        handle = always_fails.delay(7)
    run_pending(app, now=time.time() + LATER)

    (error,) = transport.events()
    assert error["contexts"]["trace"]["trace_id"] == request.trace_id
    task_transactions = [t for t in transport.events("transaction") if t["transaction"] == always_fails.name]
    assert len(task_transactions) == 3  # one per attempt, all in the request's trace
    assert {t["contexts"]["trace"]["trace_id"] for t in task_transactions} == {request.trace_id}
    assert {t["contexts"]["trace"]["parent_span_id"] for t in task_transactions} == {request.span_id}
    assert [t["contexts"]["trace"]["status"] for t in task_transactions] == [
        "aborted",
        "aborted",
        "internal_error",
    ]
    assert handle.status is TaskStatus.FAILED


def test_async_task_failures_are_reported_from_the_event_loop(
    app: Decortask, transport: RecordingTransport
) -> None:
    handle = async_fails.delay(3)
    run_pending(app)

    assert handle.status is TaskStatus.FAILED
    (event,) = transport.events()
    assert event["tags"]["decortask.task"] == "sentry_tests.async_fails"
    assert [c["message"] for c in event["breadcrumbs"]["values"] if c["category"] == "task_log"] == [
        "async step"
    ]


def test_unknown_report_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="'final' or 'every_attempt'"):
        SentryMiddleware(report="sometimes")  # type: ignore[arg-type]
