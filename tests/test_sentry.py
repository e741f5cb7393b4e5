"""Sentry integration: a real `sentry_sdk` client whose transport records envelopes (no network).

Tasks run through the real decode -> execute -> settle path (`run_pending`) on the memory broker and on the
embedded SQLite broker and store.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import uuid
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

    def dump(self) -> str:
        """Everything sent, every item of every kind, as one text to search."""
        return "\n".join(
            item.payload.get_bytes().decode("utf-8", "replace")
            for envelope in self.envelopes
            for item in envelope.items
        )


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


# -- issue 10 item 1: argument values never reach Sentry through decortask's frames --------------------------

SECRET = "s3cret-" + uuid.uuid4().hex[:12]
#: An argument value under a name sentry-sdk's own denylist does not know: it shows only in the user's frame.
PLAIN = "alice-" + uuid.uuid4().hex[:12]


@task(name="sentry_tests.login_refused")
def login_refused(user: str, secret: str, password: str = "") -> None:
    raise PermissionError("login refused")


@task(name="sentry_tests.async_login_refused")
async def async_login_refused(user: str, secret: str, password: str = "") -> None:
    raise PermissionError("login refused")


@pytest.fixture
def default_sentry() -> Iterator[RecordingTransport]:
    """sentry-sdk with its defaults (local variables on, default integrations), recording instead of sending."""
    recorder = RecordingTransport()
    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=recorder)
    yield recorder
    sentry_sdk.init()


def _frames(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        frame
        for value in event.get("exception", {}).get("values", [])
        for frame in (value.get("stacktrace") or {}).get("frames", [])
    ]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("which", ["sync", "async"])
def test_issue10_item1_sentry_events_hold_no_argument_values(
    encrypted: bool, which: str, tmp_path: Path, unique: str, default_sentry: RecordingTransport
) -> None:
    from cryptography.fernet import Fernet

    url = f"sqlite:///{os.fspath(tmp_path)}/decortask.db"
    keys = {"encryption_keys": Fernet.generate_key().decode()} if encrypted else {}
    app = Decortask(url, url, default_queue=f"q-{unique}", middleware=[SentryMiddleware()], **keys)  # type: ignore[arg-type]
    target = login_refused if which == "sync" else async_login_refused
    try:
        handle = target.delay(PLAIN, SECRET, password=SECRET)
        run_pending(app)
        assert handle.status is TaskStatus.FAILED
    finally:
        app.close()
        reset_default_app()
    sentry_sdk.flush()
    events = default_sentry.events()
    assert len(events) == 1
    frames = _frames(events[0])
    assert frames and all("vars" in frame for frame in frames)  # local variables are on (the default)
    assert any(f["module"].startswith("decortask.") for f in frames)
    assert default_sentry.dump().count(SECRET) == 0  # a count: the events are too long to print
    # The user's own frame keeps sentry-sdk's rules (its denylist hides `secret` and `password`, not `user`);
    # every other frame on decortask's path holds no argument value at all.
    elsewhere = [f for f in frames if f["function"] != target.fn.__name__]
    assert elsewhere and json.dumps(elsewhere, default=str).count(PLAIN) == 0


def test_issue10_item1_decortask_frames_are_blank_in_events_made_outside_a_task_scope(
    default_sentry: RecordingTransport,
) -> None:
    # E.g. the logging integration turning a worker's `logger.exception(...)` into an event: the same frames.
    SentryMiddleware()
    try:  # the arguments built inline: this test's own frame must not hold them either
        login_refused.run(None, inspect.signature(login_refused.fn).bind(PLAIN, SECRET, password=SECRET))  # type: ignore[arg-type]
    except PermissionError:
        sentry_sdk.capture_exception()
    sentry_sdk.flush()
    (event,) = default_sentry.events()
    (decortask_frame,) = [f for f in _frames(event) if f["module"] == "decortask.task"]
    assert decortask_frame["vars"] == {"self": "[Filtered]", "ctx": "[Filtered]", "bound": "[Filtered]"}
    assert default_sentry.dump().count(SECRET) == 0
