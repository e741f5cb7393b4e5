"""Dead-letter queues on every real broker: listing consumes nothing, replay runs one fresh attempt."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_apps import KINDS, BrokerApp, close_app, open_app, publish_raw, take_all

from decortask import ConfigurationError, Decortask, TaskContext, TaskStatus, registry, task
from decortask.app import reset_default_app
from decortask.deadletters import (
    DROPPED,
    KEPT,
    RAW_ID_PREFIX,
    REPLAYED,
    list_dead_letters,
    replay,
)
from decortask.message import Message
from decortask.testing import run_pending

REPO = Path(__file__).resolve().parent.parent
#: (task id, attempt) of every run of a task defined in this module.
runs: list[tuple[str, int]] = []


@task(name="dl.echo")
def echo(ctx: TaskContext, text: str) -> str:
    runs.append((ctx.task_id, ctx.attempt))
    return text


@pytest.fixture(params=KINDS)
def ba(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[BrokerApp]:
    setup = open_app(request.param, tmp_path, unique)
    runs.clear()
    yield setup
    close_app(setup)


@pytest.fixture
def late_task(unique: str) -> Iterator[str]:
    """The name of a task that is registered only when the test calls `register_late(name)`."""
    name = f"dl.deployed-late-{unique}"
    yield name
    registry.unregister(name)


def register_late(name: str) -> None:
    """Deploy the missing task, as an operator would before replaying its dead letters."""

    def deployed_late(ctx: TaskContext, text: str) -> str:
        runs.append((ctx.task_id, ctx.attempt))
        return text.upper()

    task(name=name)(deployed_late)


def dead_letter_unregistered(ba: BrokerApp, name: str, text: str = "hello") -> str:
    """Publish a message for the unregistered task `name` and let the worker path dead-letter it."""
    task_id = uuid.uuid4().hex
    body = Message(id=task_id, task=name, args=[text], created_at=time.time()).encode()
    ba.app.transport.publish(body, ba.queue)
    run_pending(ba.app, [ba.queue])
    record = ba.app.store.get(task_id)
    assert record is not None and record.reason == "unregistered_task"
    return task_id


def dlq_size(ba: BrokerApp) -> int:
    return ba.app.transport.queue_size(ba.queue + ".dlq")


# -- listing -------------------------------------------------------------------------------------------------


def test_list_shows_every_dead_letter_and_consumes_none(ba: BrokerApp, late_task: str) -> None:
    started = time.time()
    first = dead_letter_unregistered(ba, late_task)
    second = dead_letter_unregistered(ba, late_task, "again")
    ba.app.transport.publish(b"{not json", ba.queue)
    run_pending(ba.app, [ba.queue])
    assert dlq_size(ba) == 3
    listed = list_dead_letters(ba.app, ba.queue)
    assert dlq_size(ba) == 3
    by_id = {letter.id: letter for letter in listed}
    assert set(by_id) >= {first, second} and len(by_id) == 3
    [raw_id] = set(by_id) - {first, second}
    assert raw_id.startswith("sha256:") and len(raw_id) == len("sha256:") + 16
    for task_id in (first, second):
        letter = by_id[task_id]
        assert (letter.reason, letter.task, letter.queue, letter.replayable) == (
            "unregistered_task",
            late_task,
            ba.queue,
            True,
        )
        assert "no task named" in letter.detail
        assert letter.dead_lettered_at is not None and started <= letter.dead_lettered_at <= time.time()
    assert (by_id[raw_id].reason, by_id[raw_id].replayable) == ("decode_error", False)
    # Stable: the same ids on every listing, whatever order the broker gives them back in.
    assert {letter.id for letter in list_dead_letters(ba.app, ba.queue)} == set(by_id)
    assert len(list_dead_letters(ba.app, ba.queue, limit=2)) == 2
    assert dlq_size(ba) == 3
    assert [d.body for d in take_all(ba.app, ba.queue + ".dlq")].count(b"{not json") == 1


def test_list_of_a_queue_without_dead_letters_is_empty(ba: BrokerApp) -> None:
    assert list_dead_letters(ba.app, ba.queue) == []
    assert list_dead_letters(ba.app, ba.queue + ".dlq") == []  # the DLQ's own name is accepted too
    with pytest.raises(ConfigurationError, match="limit"):
        list_dead_letters(ba.app, ba.queue, limit=0)


# -- replay --------------------------------------------------------------------------------------------------


def test_replay_by_id_runs_one_fresh_attempt_and_removes_only_that_letter(
    ba: BrokerApp, late_task: str
) -> None:
    chosen = dead_letter_unregistered(ba, late_task, "chosen")
    other = dead_letter_unregistered(ba, late_task, "other")
    register_late(late_task)
    report = replay(ba.app, ba.queue, [chosen])
    assert report.ok and report.missing == []
    assert [(o.id, o.action, o.attempt) for o in report.outcomes] == [(chosen, REPLAYED, 1)]
    record = ba.app.store.get(chosen)
    assert record is not None and (record.status, record.reason, record.attempt) == (
        TaskStatus.PENDING,
        None,
        0,
    )
    assert [letter.id for letter in list_dead_letters(ba.app, ba.queue)] == [other]
    # Replaying the same id again finds nothing: the first replay acked it, and publishes nothing more.
    again = replay(ba.app, ba.queue, [chosen])
    assert (again.outcomes, again.missing, again.ok) == ([], [chosen], False)
    assert ba.app.transport.queue_size(ba.queue) == 1
    assert ba.app.store.count_schedule() == 0
    run_pending(ba.app, [ba.queue])
    assert ba.app.handle(chosen).get(timeout=1) == "CHOSEN"
    assert runs == [(chosen, 1)]
    assert dlq_size(ba) == 1


def test_replay_all_replays_the_valid_and_keeps_the_rest(ba: BrokerApp, late_task: str) -> None:
    ids = [dead_letter_unregistered(ba, late_task, f"n{n}") for n in range(3)]
    ba.app.transport.publish(b"\x00\x01 not json", ba.queue)
    run_pending(ba.app, [ba.queue])
    register_late(late_task)
    report = replay(ba.app, ba.queue)
    actions = {o.id: o.action for o in report.outcomes}
    assert {i: actions[i] for i in ids} == dict.fromkeys(ids, REPLAYED)
    [kept] = [o for o in report.outcomes if o.action == KEPT]
    assert (
        kept.id.startswith("sha256:")
        and "decode_error" in kept.detail
        and "cannot be replayed" in kept.detail
    )
    assert not report.ok
    assert [letter.reason for letter in list_dead_letters(ba.app, ba.queue)] == ["decode_error"]
    run_pending(ba.app, [ba.queue])
    assert sorted(ba.app.handle(i).get(timeout=1) for i in ids) == ["N0", "N1", "N2"]
    assert sorted(runs) == sorted((i, 1) for i in ids)


def test_replay_never_deserializes_a_pickle_letter(ba: BrokerApp, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class CreatesFile:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(marker), "w"))

    body = pickle.dumps(CreatesFile())
    publish_raw(ba.app, ba.queue, body, "application/x-python-serialize")
    run_pending(ba.app, [ba.queue])
    report = replay(ba.app, ba.queue)
    [outcome] = report.outcomes
    assert outcome.action == KEPT and "content_type_not_allowed" in outcome.detail
    assert not marker.exists()
    assert [d.body for d in take_all(ba.app, ba.queue + ".dlq")] == [body]


def test_a_compressed_dead_letter_is_listed_unexpanded_and_stays(ba: BrokerApp, late_task: str) -> None:
    task_id = dead_letter_unregistered(ba, late_task)
    # A `compression` header: decortask never lets kombu expand a body, so the letter is shown as it is.
    publish_raw(
        ba.app, ba.queue + ".dlq", b"plain", "application/json", {"compression": "application/x-gzip"}
    )
    listed = {letter.id: letter for letter in list_dead_letters(ba.app, ba.queue)}
    [compressed] = [ident for ident in listed if ident != task_id]
    assert compressed.startswith(RAW_ID_PREFIX)
    assert not listed[compressed].replayable
    assert "compression_not_allowed" in (listed[compressed].problem or "")
    register_late(late_task)
    report = replay(ba.app, ba.queue)
    assert sorted((o.id, o.action) for o in report.outcomes) == sorted(
        [(task_id, REPLAYED), (compressed, KEPT)]
    )
    assert dlq_size(ba) == 1
    assert ba.app.transport.purge(ba.queue + ".dlq") == 1  # the broker's purge never reads bodies
    run_pending(ba.app, [ba.queue])
    assert runs == [(task_id, 1)]


def test_a_dead_letter_nested_too_deep_to_parse_is_listed_as_not_replayable(ba: BrokerApp) -> None:
    body = b"[" * 25_000 + b"]" * 25_000
    publish_raw(ba.app, ba.queue + ".dlq", body, "application/json", {"x-decortask-reason": "decode_error"})
    [letter] = list_dead_letters(ba.app, ba.queue)
    assert (letter.reason, letter.replayable, letter.size) == ("decode_error", False, len(body))
    assert "too deeply" in (letter.problem or "")
    [outcome] = replay(ba.app, ba.queue).outcomes
    assert outcome.action == KEPT and dlq_size(ba) == 1


def test_replay_after_a_lost_ack_runs_the_task_once(ba: BrokerApp, late_task: str) -> None:
    task_id = dead_letter_unregistered(ba, late_task, "once")
    [original] = take_all(ba.app, ba.queue + ".dlq")

    def lose_the_ack() -> None:
        # The dead letter comes back, as if the replaying process died after publishing, before its ack.
        publish_raw(ba.app, ba.queue + ".dlq", original.body, "application/json", original.headers)

    lose_the_ack()
    register_late(late_task)
    assert [o.action for o in replay(ba.app, ba.queue, [task_id]).outcomes] == [REPLAYED]
    lose_the_ack()
    # Before the task ran: the record is PENDING, so the same attempt is published once more.
    assert [o.action for o in replay(ba.app, ba.queue, [task_id]).outcomes] == [REPLAYED]
    assert ba.app.transport.queue_size(ba.queue) == 2
    run_pending(ba.app, [ba.queue])
    assert runs == [(task_id, 1)]  # the second copy was a duplicate of attempt 1, skipped
    assert ba.app.handle(task_id).get(timeout=1) == "ONCE"
    lose_the_ack()
    # After the task ran: the record changed after the letter was dead-lettered, so nothing is published.
    [outcome] = replay(ba.app, ba.queue, [task_id]).outcomes
    assert outcome.action == DROPPED and "re-run after it was dead-lettered" in outcome.detail
    assert ba.app.transport.queue_size(ba.queue) == 0 and dlq_size(ba) == 0
    assert runs == [(task_id, 1)]


def test_replay_recreates_a_record_that_is_gone(ba: BrokerApp, late_task: str) -> None:
    task_id = dead_letter_unregistered(ba, late_task, "gone")
    ba.app.store.delete(task_id)  # expired after history_ttl, say
    register_late(late_task)
    [outcome] = replay(ba.app, ba.queue, [task_id]).outcomes
    assert (outcome.action, outcome.attempt) == (REPLAYED, 1)
    run_pending(ba.app, [ba.queue])
    record = ba.app.store.get(task_id)
    assert record is not None and (record.status, record.result, record.name) == (
        TaskStatus.SUCCESS,
        "GONE",
        late_task,
    )


def test_replay_of_a_failed_retry_attempt_publishes_the_next_attempt(ba: BrokerApp) -> None:
    handle = echo.delay("x")
    run_pending(ba.app, [ba.queue])
    assert handle.attempts == 1
    # A later attempt's message refused as unregistered (say, by a worker running an old deploy).
    body = Message(id=handle.id, task="dl.echo", args=["x"], attempt=2).to_dict()
    ba.app.store.transition(handle.id, TaskStatus.PENDING, expect={TaskStatus.SUCCESS})
    ba.app.store.transition(handle.id, TaskStatus.FAILED, reason="unregistered_task", finished_at=time.time())
    time.sleep(0.01)
    headers = {
        "x-decortask-reason": "unregistered_task",
        "x-decortask-detail": "no task named 'dl.echo' is registered",
        "x-decortask-original-queue": ba.queue,
        "x-decortask-original-content-type": "application/json",
        "x-decortask-dead-lettered-at": time.time(),
    }
    publish_raw(ba.app, ba.queue + ".dlq", json.dumps(body).encode(), "application/json", headers)
    [outcome] = replay(ba.app, ba.queue, [handle.id]).outcomes
    assert (outcome.action, outcome.attempt) == (REPLAYED, 2)
    run_pending(ba.app, [ba.queue])
    assert (handle.status, handle.attempts) == (TaskStatus.SUCCESS, 2)
    assert runs == [(handle.id, 1), (handle.id, 2)]


def test_replay_needs_ids_or_all(ba: BrokerApp) -> None:
    with pytest.raises(ConfigurationError, match="ids"):
        replay(ba.app, ba.queue, [])
    report = replay(ba.app, ba.queue, ["no-such-letter"])
    assert (report.outcomes, report.missing) == ([], ["no-such-letter"])


# -- CLI -----------------------------------------------------------------------------------------------------


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decortask", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


@pytest.fixture
def cli_env(tmp_path: Path, unique: str) -> Iterator[tuple[Decortask, dict[str, str]]]:
    url = f"sqlite:///{tmp_path}/cli.db"
    queue = f"cli-{unique}"
    app = Decortask(url, url, default_queue=queue)
    runs.clear()
    yield app, {"DECORTASK_BROKER_URL": url, "DECORTASK_STORE_URL": url, "DECORTASK_DEFAULT_QUEUE": queue}
    app.close()
    reset_default_app()


def test_cli_dlq_list_and_replay(cli_env: tuple[Decortask, dict[str, str]], late_task: str) -> None:
    app, env = cli_env
    queue = app.settings.default_queue
    setup = BrokerApp("sqlite", app, queue)
    first = dead_letter_unregistered(setup, late_task, "a")
    second = dead_letter_unregistered(setup, late_task, "b")
    app.transport.publish(b"garbage", queue)
    run_pending(app, [queue])
    listing = _cli(env, "dlq", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert {r["id"] for r in rows} >= {first, second} and len(rows) == 3
    assert {r["reason"] for r in rows} == {"unregistered_task", "decode_error"}
    text = _cli(env, "dlq", "list", "-Q", queue, "--limit", "1")
    assert text.returncode == 0 and first in text.stdout and "unregistered_task" in text.stdout
    usage = _cli(env, "dlq", "replay")
    assert usage.returncode == 2 and "--all" in usage.stderr
    register_late(late_task)  # in this process, which runs the replayed tasks below
    replayed = _cli(env, "dlq", "replay", first)
    assert replayed.returncode == 0, replayed.stderr
    assert f"{first}  replayed: attempt 1 published to {queue}" in replayed.stdout
    rest = _cli(env, "dlq", "replay", "--all")
    assert rest.returncode == 1
    assert f"{second}  replayed" in rest.stdout and "kept: not a valid decortask message" in rest.stdout
    errors = [line for line in rest.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "each line above says why" in errors[0]
    missing = _cli(env, "dlq", "replay", first)
    assert missing.returncode == 1 and "not found in the dead-letter queue" in missing.stdout
    run_pending(app, [queue])
    assert sorted(runs) == sorted([(first, 1), (second, 1)])


def test_cli_purge_asks_first_and_cancels_the_purged_tasks(cli_env: tuple[Decortask, dict[str, str]]) -> None:
    app, env = cli_env
    queue = app.settings.default_queue
    handles = [echo.delay(str(n)) for n in range(3)]
    app.transport.publish(b"garbage", queue + ".dlq")
    declined = _cli(env, "purge", queue, stdin="n\n")
    assert declined.returncode == 1 and "Delete the 3 ready messages" in declined.stdout
    assert app.transport.queue_size(queue) == 3
    done = _cli(env, "purge", queue, "--yes")
    assert done.returncode == 0, done.stderr
    assert "deleted 3 messages" in done.stdout and "3 tasks CANCELLED" in done.stdout
    assert app.transport.queue_size(queue) == 0
    for handle in handles:
        record = handle.record()
        assert (record.status, record.reason) == (TaskStatus.CANCELLED, "purged")
    assert app.transport.queue_size(queue + ".dlq") == 1  # purging a queue leaves its dead letters
    dead = _cli(env, "purge", queue, "--dlq", "--yes")
    assert dead.returncode == 0 and f"deleted 1 dead letters from {queue}.dlq" in dead.stdout
    assert app.transport.queue_size(queue + ".dlq") == 0
    app.transport.publish(Message(id="dead-1", task="dl.echo", args=["x"]).encode(), queue + ".dlq")
    by_name = _cli(env, "purge", f"{queue}.dlq", "--yes")  # a .dlq name is purged as dead letters
    assert by_name.returncode == 0 and "deleted 1 dead letters" in by_name.stdout
    assert app.store.get("dead-1") is None
    empty = _cli(env, "purge", queue)  # nothing to delete: no question asked
    assert empty.returncode == 0 and "nothing to purge" in empty.stdout
    assert runs == []
