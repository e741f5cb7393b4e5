"""Bad input (SCENARIOS B-xx, plus F-18 and F-20) on every real broker, through the real receive path.

`run_pending` drives decode -> receipt rules -> execute -> settle exactly as a worker does, on the app's real
broker and store. Every refusal must name its reason, keep the evidence (a dead letter), and leave the driver
running: after each bad message a good task on the same queue still succeeds.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from broker_apps import KINDS, BrokerApp, close_app, open_app, publish_raw, take_all

from decortask import (
    ArgumentEncodingError,
    ConfigurationError,
    Decortask,
    PayloadTooLargeError,
    TaskContext,
    TaskFailed,
    TaskStatus,
    task,
)
from decortask.admin import TaskStateConflict, retry_task
from decortask.deadletters import DeadLetter, list_dead_letters
from decortask.message import Message
from decortask.store import TaskQuery, TaskRecord
from decortask.testing import run_pending

pytestmark = pytest.mark.broker

FAR_FUTURE = time.time() + 10 * 365 * 86400
MAX_PAYLOAD = 64 * 1024
#: (task id, attempt) of every execution of the tasks below, so tests count runs instead of guessing.
runs: list[tuple[str, int]] = []


@task(name="badinput.sum_numbers")
def sum_numbers(a: int, b: int) -> int:
    return a + b


@task(name="badinput.count_me")
def count_me(ctx: TaskContext, label: str) -> str:
    runs.append((ctx.task_id, ctx.attempt))
    return label


@task(name="badinput.with_retries", retries=3, delay=0.01)
def with_retries(ctx: TaskContext, a: int) -> int:
    runs.append((ctx.task_id, ctx.attempt))
    return a


@task(name="badinput.takes_data")
def takes_data(data: dict[str, Any]) -> int:
    return len(data)


@task(name="badinput.fails_first")
def fails_first(ctx: TaskContext) -> int:
    runs.append((ctx.task_id, ctx.attempt))
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails on purpose")
    return ctx.attempt


@pytest.fixture(params=KINDS)
def ba(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[BrokerApp]:
    setup = open_app(request.param, tmp_path, unique, max_payload_bytes=MAX_PAYLOAD)
    runs.clear()
    yield setup
    close_app(setup)


def new_id() -> str:
    return uuid.uuid4().hex


def envelope(task_name: str = "badinput.sum_numbers", **fields: Any) -> dict[str, Any]:
    """A valid v1 envelope as a dict, with `fields` replacing its defaults."""
    data = Message(id=new_id(), task=task_name, args=[1, 2], created_at=time.time()).to_dict()
    data.update(fields)
    return data


def publish_json(ba: BrokerApp, data: dict[str, Any] | list[Any], queue: str | None = None) -> None:
    ba.app.transport.publish(json.dumps(data).encode(), queue or ba.queue)


def assert_still_serving(ba: BrokerApp, queue: str | None = None) -> None:
    """A good task on the same queue still runs to SUCCESS after the bad message."""
    queue = queue or ba.queue
    handle = sum_numbers.apply_async(args=(20, 22), queue=queue, app=ba.app)
    run_pending(ba.app, [queue])
    assert (handle.status, handle.get(timeout=1)) == (TaskStatus.SUCCESS, 42)
    assert ba.app.transport.queue_size(queue) == 0


def assert_nothing_sent(ba: BrokerApp) -> None:
    assert ba.app.transport.queue_size(ba.queue) == 0
    assert ba.app.store.count_tasks(TaskQuery()) == 0
    assert ba.app.store.count_schedule() == 0


def only_dead_letter(ba: BrokerApp, queue: str | None = None) -> DeadLetter:
    queue = queue or ba.queue
    assert ba.app.transport.queue_size(queue) == 0, "the bad message must not stay on the work queue"
    letters = list_dead_letters(ba.app, queue)
    assert len(letters) == 1, letters
    assert letters[0].queue == queue
    return letters[0]


# -- B-01 ----------------------------------------------------------------------------------------------------


def test_b01_unregistered_task_is_dead_lettered_naming_the_closest(
    ba: BrokerApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="decortask")
    sentinel = "argument-sentinel-5521"
    data = envelope("badinput.sum_number", args=[sentinel, 2], kwargs={"note": sentinel})
    publish_json(ba, data)
    run_pending(ba.app, [ba.queue])
    record = ba.app.store.get(data["id"])
    assert record is not None
    assert (record.status, record.reason) == (TaskStatus.FAILED, "unregistered_task")
    assert "did you mean 'badinput.sum_numbers'" in (record.error_message or "")
    assert "'badinput.sum_numbers'" in caplog.text
    assert sentinel not in caplog.text
    letter = only_dead_letter(ba)
    assert (letter.id, letter.reason, letter.task) == (data["id"], "unregistered_task", "badinput.sum_number")
    assert sentinel not in letter.detail
    assert_still_serving(ba)


# -- B-02 ----------------------------------------------------------------------------------------------------


def test_b02_malformed_json_is_dead_lettered_with_raw_bytes(ba: BrokerApp) -> None:
    body = b'{"v": 1, "id": "half-a-message", "task": \xff\xfe'
    ba.app.transport.publish(body, ba.queue)
    run_pending(ba.app, [ba.queue])
    letter = only_dead_letter(ba)
    assert letter.reason == "decode_error" and not letter.replayable
    assert letter.id.startswith("sha256:") and letter.size == len(body)
    [dead] = take_all(ba.app, ba.queue + ".dlq")
    assert dead.body == body
    assert dead.headers["x-decortask-reason"] == "decode_error"
    assert dead.headers["x-decortask-original-queue"] == ba.queue
    assert_still_serving(ba)


def test_b02_deeply_nested_json_is_dead_lettered(ba: BrokerApp) -> None:
    depth = 25_000  # 50 KB, well under the payload limit
    body = (
        b'{"v": 1, "id": "deep", "task": "badinput.takes_data", "args": ' + b"[" * depth + b"]" * depth + b"}"
    )
    ba.app.transport.publish(body, ba.queue)
    run_pending(ba.app, [ba.queue])
    assert only_dead_letter(ba).reason == "decode_error"
    assert_still_serving(ba)


def test_b02_a_compression_header_is_refused_without_expanding_the_body(ba: BrokerApp) -> None:
    headers = {"compression": "application/x-gzip"}
    publish_raw(ba.app, ba.queue, b'{"v": 1, "not": "compressed"}', "application/json", headers)
    run_pending(ba.app, [ba.queue])
    assert only_dead_letter(ba).reason == "compression_not_allowed"
    assert_still_serving(ba)


# -- B-03 ----------------------------------------------------------------------------------------------------


class _CreatesFile:
    """Unpickling this calls open(path, "w"): proof, if the file appears, that a body was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (self.path, "w"))


def _hostile_body(kind: str, path: Path) -> tuple[bytes, str]:
    if kind == "pickle":
        return pickle.dumps(_CreatesFile(str(path))), "application/x-python-serialize"
    return f"!!python/object/apply:builtins.open ['{path}', 'w']\n".encode(), "application/x-yaml"


@pytest.mark.parametrize("kind", ["pickle", "yaml"])
def test_b03_pickle_and_yaml_are_never_deserialized(ba: BrokerApp, kind: str, tmp_path: Path) -> None:
    if kind == "pickle":  # the payload is live: unpickling a twin of it does create its file
        twin = tmp_path / "twin"
        pickle.loads(_hostile_body("pickle", twin)[0])  # the point of the check
        assert twin.exists()
    marker = tmp_path / f"unpickled-{kind}"
    body, content_type = _hostile_body(kind, marker)
    publish_raw(ba.app, ba.queue, body, content_type)
    run_pending(ba.app, [ba.queue])
    assert not marker.exists()
    letter = only_dead_letter(ba)
    assert (letter.reason, letter.content_type, letter.replayable) == (
        "content_type_not_allowed",
        content_type,
        False,
    )
    assert not marker.exists()  # listing the dead letter does not deserialize it either
    [dead] = take_all(ba.app, ba.queue + ".dlq")
    assert dead.body == body
    assert_still_serving(ba)
    assert not marker.exists()


# -- B-04 ----------------------------------------------------------------------------------------------------

_MISSING = object()
B04_CASES = [
    ("v", _MISSING),
    ("v", "1"),
    ("id", _MISSING),
    ("id", 42),
    ("id", ""),
    ("task", _MISSING),
    ("task", ["badinput.sum_numbers"]),
    ("args", {"a": 1}),
    ("kwargs", [1, 2]),
    ("attempt", "1"),
    ("attempt", 0),
    ("eta", "tomorrow"),
    ("expires", "soon"),
    ("created_at", "yesterday"),
    ("idempotency_key", 7),
    ("tags", {"tenant": 1}),
    ("priority", "high"),
    ("priority", 42),
    ("parent_id", 1),
    ("root_id", 1),
    ("workflow", "chain"),
]


def _case_id(case: tuple[str, object]) -> str:
    name, value = case
    return f"{name}-missing" if value is _MISSING else f"{name}-{type(value).__name__}-{value!r}"


@pytest.mark.parametrize("case", B04_CASES, ids=[_case_id(c) for c in B04_CASES])
def test_b04_missing_or_mistyped_field_is_dead_lettered(ba: BrokerApp, case: tuple[str, object]) -> None:
    name, value = case
    data = envelope()
    if value is _MISSING:
        del data[name]
    else:
        data[name] = value
    publish_json(ba, data)
    run_pending(ba.app, [ba.queue])
    letter = only_dead_letter(ba)
    assert letter.reason == "invalid_envelope"
    assert f"'{name}'" in letter.detail
    assert not letter.replayable and letter.id.startswith("sha256:")
    assert ba.app.store.count_tasks(TaskQuery()) == 0  # a message that fails validation creates nothing
    assert_still_serving(ba)


def test_b04_body_that_is_not_an_object_is_dead_lettered(ba: BrokerApp) -> None:
    publish_json(ba, [1, "badinput.sum_numbers"])
    run_pending(ba.app, [ba.queue])
    assert only_dead_letter(ba).reason == "invalid_envelope"
    assert_still_serving(ba)


# -- B-05 ----------------------------------------------------------------------------------------------------

B05_CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("set-in-args", lambda: takes_data.delay({"items": [1, {2, 3}]}), "args[0]['items'][1] (a set)"),
    (
        "datetime-in-kwargs",
        lambda: takes_data.delay(data={"when": datetime.now(timezone.utc)}),
        "kwargs['data']['when'] (a datetime)",
    ),
    ("int-key", lambda: takes_data.delay({1: "one"}), "args[0] (key 1 is not a str)"),
    ("nan", lambda: takes_data.delay({"x": float("nan")}), "args[0]['x'] (a non-finite float)"),
]


@pytest.mark.parametrize("case", B05_CASES, ids=[c[0] for c in B05_CASES])
def test_b05_unencodable_argument_fails_at_the_call_site_naming_its_path(
    ba: BrokerApp, case: tuple[str, Callable[[], Any], str]
) -> None:
    _, call, path = case
    with pytest.raises(ArgumentEncodingError, match=re.escape(path)):
        call()
    assert_nothing_sent(ba)
    assert_still_serving(ba)


# -- B-06 ----------------------------------------------------------------------------------------------------


def test_b06_oversized_call_fails_at_the_call_site(ba: BrokerApp) -> None:
    with pytest.raises(PayloadTooLargeError, match=f"over the {MAX_PAYLOAD}-byte limit"):
        takes_data.delay({"blob": "x" * MAX_PAYLOAD})
    assert_nothing_sent(ba)
    assert_still_serving(ba)


def test_b06_oversized_raw_message_is_dead_lettered(ba: BrokerApp) -> None:
    data = envelope("badinput.takes_data", args=[{"blob": "x" * (MAX_PAYLOAD + 10)}])
    body = json.dumps(data).encode()
    ba.app.transport.publish(body, ba.queue)  # straight to the broker, past the call-site check
    run_pending(ba.app, [ba.queue])
    letter = only_dead_letter(ba)
    assert (letter.reason, letter.size, letter.replayable) == ("payload_too_large", len(body), False)
    assert ba.app.store.get(data["id"]) is None
    [dead] = take_all(ba.app, ba.queue + ".dlq")
    assert dead.body == body
    assert_still_serving(ba)


def test_b06_payload_too_large_for_the_worker_fails_its_task_instead_of_leaving_it_pending(
    ba: BrokerApp, caplog: pytest.LogCaptureFixture
) -> None:
    # The producer allows more than the worker: the record is written PENDING, then the worker refuses.
    settings = ba.app.settings
    producer = Decortask(
        settings.broker_url,
        settings.store_url,
        default_queue=ba.queue,
        max_payload_bytes=4 * MAX_PAYLOAD,
    )
    try:
        sent = takes_data.apply_async(args=({"blob": "x" * (MAX_PAYLOAD + 10)},), app=producer)
    finally:
        producer.close()
    caplog.set_level(logging.INFO, logger="decortask")
    run_pending(ba.app, [ba.queue])
    handle = ba.app.handle(sent.id)
    record = handle.record()
    assert (record.status, record.reason) == (TaskStatus.FAILED, "payload_too_large")
    assert f"over the {MAX_PAYLOAD}-byte limit" in (record.error_message or "")
    with pytest.raises(TaskFailed) as failed:
        handle.get(timeout=1)  # it ends at once instead of timing out
    assert failed.value.reason == "payload_too_large"
    letter = only_dead_letter(ba)
    assert (letter.reason, letter.replayable) == ("payload_too_large", False)
    lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert lines == [
        f"task badinput.takes_data[{sent.id}] dead-lettered to {ba.queue}.dlq (payload_too_large): "
        f"{record.error_message}"
    ]
    assert "xxxxxxxx" not in caplog.text
    assert_still_serving(ba)


def test_b06_payload_too_large_does_not_fail_a_task_that_has_ended(ba: BrokerApp) -> None:
    handle = sum_numbers.delay(1, 2)
    run_pending(ba.app, [ba.queue])
    assert handle.get(timeout=1) == 3
    # A late, oversized copy of the finished task's message (its id comes first, as decortask writes it).
    body = json.dumps(envelope(id=handle.id, args=[1, 2], kwargs={"pad": "x" * MAX_PAYLOAD})).encode()
    ba.app.transport.publish(body, ba.queue)
    run_pending(ba.app, [ba.queue])
    assert only_dead_letter(ba).reason == "payload_too_large"
    record = handle.record()
    assert (record.status, record.result) == (TaskStatus.SUCCESS, 3)


def test_b06_a_compressed_bomb_is_dead_lettered_unexpanded_and_readable(ba: BrokerApp) -> None:
    inflated = json.dumps(envelope("badinput.takes_data", args=[{"blob": " " * 2_000_000}])).encode()
    body = zlib.compress(inflated)
    publish_raw(ba.app, ba.queue, body, "application/json", {"compression": "application/x-gzip"})
    run_pending(ba.app, [ba.queue])
    letter = only_dead_letter(ba)
    assert letter.reason == "compression_not_allowed"
    [dead] = take_all(ba.app, ba.queue + ".dlq")
    assert dead.body == body  # kept byte for byte, never expanded
    assert dead.headers["x-decortask-original-compression"] == "application/x-gzip"
    assert_still_serving(ba)


# -- B-07 ----------------------------------------------------------------------------------------------------

B07_CALLS: list[tuple[str, Callable[[], Any], str]] = [
    ("too-many", lambda: with_retries.delay(1, 2), "too many positional arguments"),
    ("unknown-name", lambda: with_retries.delay(a=1, b=2), "unexpected keyword argument 'b'"),
    ("missing", lambda: with_retries.delay(), "missing a required argument: 'a'"),
]


@pytest.mark.parametrize("case", B07_CALLS, ids=[c[0] for c in B07_CALLS])
def test_b07_wrong_arguments_raise_type_error_at_delay(
    ba: BrokerApp, case: tuple[str, Callable[[], Any], str]
) -> None:
    _, call, words = case
    with pytest.raises(TypeError, match=f"badinput.with_retries.*{re.escape(words)}"):
        call()
    assert_nothing_sent(ba)
    assert_still_serving(ba)


@pytest.mark.parametrize(
    "args, kwargs", [([1, 2, 3], {}), ([], {"b": 1}), ([], {})], ids=["too-many", "unknown-name", "missing"]
)
def test_b07_hand_made_message_with_bad_arguments_fails_once(
    ba: BrokerApp, args: list[Any], kwargs: dict[str, Any]
) -> None:
    data = envelope("badinput.with_retries", args=args, kwargs=kwargs)
    publish_json(ba, data)
    run_pending(ba.app, [ba.queue], now=FAR_FUTURE)  # a retry, if one were scheduled, would run now
    run_pending(ba.app, [ba.queue], now=FAR_FUTURE)
    record = ba.app.store.get(data["id"])
    assert record is not None
    assert (record.status, record.reason, record.attempt) == (TaskStatus.FAILED, "bad_arguments", 1)
    assert "badinput.with_retries" in (record.error_message or "")
    assert runs == []
    assert ba.app.store.count_schedule() == 0
    assert_still_serving(ba)


# -- B-08 ----------------------------------------------------------------------------------------------------


def test_b08_version_99_is_dead_lettered(ba: BrokerApp) -> None:
    data = envelope(v=99)
    publish_json(ba, data)
    run_pending(ba.app, [ba.queue])
    letter = only_dead_letter(ba)
    assert letter.reason == "unsupported_version" and "99" in letter.detail
    assert ba.app.store.get(data["id"]) is None
    assert_still_serving(ba)


# -- B-09 ----------------------------------------------------------------------------------------------------


def test_b09_expired_message_is_cancelled_not_run(ba: BrokerApp) -> None:
    data = envelope("badinput.count_me", args=["too late"], expires=time.time() - 60)
    publish_json(ba, data)
    handle = count_me.apply_async(args=("also too late",), expires=0.05, app=ba.app)
    time.sleep(0.1)
    run_pending(ba.app, [ba.queue])
    for task_id in (data["id"], handle.id):
        record = ba.app.store.get(task_id)
        assert record is not None
        assert (record.status, record.reason, record.attempt) == (TaskStatus.CANCELLED, "expired", 0)
    assert runs == []
    assert list_dead_letters(ba.app, ba.queue) == []  # expiry is a normal end, not a refusal
    assert_still_serving(ba)


# -- B-15 ----------------------------------------------------------------------------------------------------


def test_b15_naive_eta_is_rejected(ba: BrokerApp) -> None:
    with pytest.raises(ConfigurationError, match=r"naive datetime.*timezone-aware"):
        sum_numbers.apply_async(args=(1, 2), eta=datetime(2030, 1, 1), app=ba.app)
    with pytest.raises(ConfigurationError, match="naive datetime"):
        sum_numbers.apply_async(args=(1, 2), expires=datetime(2030, 1, 1), app=ba.app)
    assert_nothing_sent(ba)
    assert_still_serving(ba)


def test_b15_past_eta_runs_now(ba: BrokerApp) -> None:
    handle = sum_numbers.apply_async(
        args=(1, 2), eta=datetime.now(timezone.utc) - timedelta(days=365), app=ba.app
    )
    assert handle.status is TaskStatus.PENDING  # not parked in the schedule
    data = envelope(args=[3, 4], eta=time.time() - 365 * 86400)  # a foreign producer's past eta
    publish_json(ba, data)
    assert run_pending(ba.app, [ba.queue]) == 2
    assert handle.get(timeout=1) == 3
    assert ba.app.handle(data["id"]).get(timeout=1) == 7
    assert ba.app.store.count_schedule() == 0


# -- B-18 ----------------------------------------------------------------------------------------------------


def test_b18_publish_to_a_new_queue_declares_it(ba: BrokerApp) -> None:
    fresh = ba.new_queue("never-declared")
    handle = sum_numbers.apply_async(args=(5, 6), queue=fresh, app=ba.app)
    assert ba.app.transport.queue_size(fresh) == 1  # declared on publish, the message kept
    assert run_pending(ba.app, [fresh]) == 1
    assert (handle.get(timeout=1), handle.record().queue) == (11, fresh)
    assert_still_serving(ba, fresh)


# -- F-18, F-20 ----------------------------------------------------------------------------------------------


def test_f18_retry_twice_makes_one_new_attempt(ba: BrokerApp) -> None:
    handle = fails_first.delay()
    run_pending(ba.app, [ba.queue])
    assert (handle.status, handle.attempts) == (TaskStatus.FAILED, 1)
    retry_task(ba.app, handle.id)
    with pytest.raises(TaskStateConflict, match="already PENDING") as second:
        retry_task(ba.app, handle.id)
    assert second.value.status is TaskStatus.PENDING
    assert ba.app.transport.queue_size(ba.queue) == 1
    assert ba.app.store.count_schedule() == 0
    run_pending(ba.app, [ba.queue], now=FAR_FUTURE)
    assert (handle.get(timeout=1), handle.attempts) == (2, 2)
    assert runs == [(handle.id, 1), (handle.id, 2)]
    assert_still_serving(ba)


def test_f18_retry_of_running_task_conflicts(ba: BrokerApp) -> None:
    now = time.time()
    record = TaskRecord(
        id=new_id(), name="badinput.count_me", queue=ba.queue, status=TaskStatus.PENDING, created_at=now,
        updated_at=now, args=["running"],
    )  # fmt: skip
    ba.app.store.create(record)
    ba.app.store.transition(record.id, TaskStatus.RUNNING, attempt=1, owner="worker-x", started_at=now)
    with pytest.raises(TaskStateConflict, match="RUNNING") as conflict:
        retry_task(ba.app, record.id)
    assert conflict.value.status is TaskStatus.RUNNING
    after = ba.app.store.get(record.id)
    assert after is not None and (after.status, after.attempt) == (TaskStatus.RUNNING, 1)
    assert ba.app.transport.queue_size(ba.queue) == 0
    assert ba.app.store.count_schedule() == 0


def test_f20_republished_success_message_is_skipped(ba: BrokerApp, caplog: pytest.LogCaptureFixture) -> None:
    handle = count_me.delay("once")
    run_pending(ba.app, [ba.queue])
    assert handle.get(timeout=1) == "once"
    before = handle.record()
    caplog.set_level(logging.INFO, logger="decortask")
    copy = Message(id=handle.id, task="badinput.count_me", args=["once"], attempt=1).encode()
    ba.app.transport.publish(copy, ba.queue)
    assert run_pending(ba.app, [ba.queue]) == 1
    after = handle.record()
    assert (after.status, after.attempt, after.result, after.finished_at) == (
        TaskStatus.SUCCESS,
        1,
        "once",
        before.finished_at,
    )
    assert runs == [(handle.id, 1)]
    assert ba.app.transport.queue_size(ba.queue) == 0  # acked, not requeued
    assert list_dead_letters(ba.app, ba.queue) == []  # a duplicate is not a refusal
    assert re.search(rf"duplicate delivery of task {handle.id}", caplog.text)
    assert_still_serving(ba)
