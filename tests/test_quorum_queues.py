"""RabbitMQ quorum queues (issue 16): `queue_type="quorum"` per queue or app-wide, on the real broker.

A quorum queue is declared durable with x-queue-type=quorum, a broker-side delivery limit above
`max_deliveries` and dead-lettering to `<queue>.dlq` (without one RabbitMQ drops the message at the limit).
Workers run, retry, dead-letter and recover killed tasks on it as on a classic queue; a queue that already
exists as a quorum queue is used as it is with `queue_type="auto"`; a mismatch is one clear line.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import behaviour_tasks as bt
import kombu
import pytest
from conftest import AMQP_URL, require_amqp
from workers import LEASE, LEASE_TIMEOUT, Rig, poll_until

from decortask import ConfigurationError, Decortask, TaskHandle, TaskStatus
from decortask.app import reset_default_app
from decortask.deadletters import list_dead_letters

pytestmark = pytest.mark.broker

#: What decortask declares a quorum queue `q` with, under the default max_deliveries (5).
QUORUM_ARGUMENTS = {"x-queue-type": "quorum", "x-delivery-limit": 20, "x-dead-letter-exchange": ""}


def _quorum_arguments(queue: str) -> dict[str, Any]:
    return {**QUORUM_ARGUMENTS, "x-dead-letter-routing-key": queue + ".dlq"}


def _is_quorum(queue: str) -> bool:
    """Whether `queue` is one decortask declared as quorum: its arguments match, and only its type differs
    from a classic queue's with the same arguments."""
    as_classic = {**_quorum_arguments(queue), "x-queue-type": "classic"}
    return _refusal(queue, _quorum_arguments(queue)) == "" and (
        "received 'classic' but current is 'quorum'" in _refusal(queue, as_classic)
    )


def _refusal(name: str, arguments: dict[str, Any]) -> str:
    """ "" if RabbitMQ takes a declaration of the existing queue `name` with `arguments`, else its reply."""
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        channel.queue_declare(name, passive=True)  # it must exist: this never creates one
        try:
            channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
        except Exception as exc:
            return str(getattr(exc, "reply_text", exc))
    return ""


def _declare_foreign(name: str, arguments: dict[str, Any]) -> None:
    """Declare `name` as another program would, not through decortask."""
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        conn.channel().queue_declare(name, durable=True, auto_delete=False, arguments=arguments)


def _delete(*names: str) -> None:
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        for name in names:
            with contextlib.suppress(Exception):  # never declared: the broker closes that channel
                conn.channel().queue_delete(name)


@pytest.fixture
def quorum(tmp_path: Path) -> Iterator[Rig]:
    """A rig on RabbitMQ whose app and workers declare every task queue as a quorum queue (app-wide)."""
    require_amqp()
    queue = f"quorum-{uuid.uuid4().hex[:10]}"
    store_url = f"sqlite:///{tmp_path}/decortask.db"
    app = Decortask(
        AMQP_URL,
        store_url,
        default_queue=queue,
        queue_type="quorum",
        sqlite_lease=LEASE,
        lease_timeout=LEASE_TIMEOUT,
    )
    env = {"DECORTASK_QUEUE_TYPE": "quorum", "DECORTASK_LEASE_TIMEOUT": str(LEASE_TIMEOUT)}
    try:
        yield Rig("amqp", app, AMQP_URL, store_url, queue, tmp_path / "effects.jsonl", tmp_path, env)
    finally:
        app.close()
        reset_default_app()
        _delete(queue, queue + ".dlq")


def _final(handle: TaskHandle[Any], timeout: float = 30) -> Any:
    return poll_until(lambda: handle.done() and handle.result(), timeout, f"{handle.id} to finish")


def test_a_quorum_queue_is_declared_with_a_delivery_limit_and_its_dead_letter_queue(quorum: Rig) -> None:
    bt.add.delay(1, 2)
    assert _is_quorum(quorum.queue)
    # The dead-letter queue is there before any message could reach the limit, and is a quorum queue too.
    assert _refusal(quorum.queue + ".dlq", {"x-queue-type": "quorum"}) == ""


def test_a_worker_on_a_quorum_queue_runs_retries_and_dead_letters(quorum: Rig) -> None:
    added, flaky = bt.add.delay(2, 3), bt.flaky.delay()  # flaky fails twice, then succeeds (retries)
    with quorum.worker("w0") as worker:
        assert _final(flaky).status is TaskStatus.SUCCESS, worker.log_tail()
    assert (added.get(timeout=1), flaky.get(timeout=1)) == (5, 3)

    killer = bt.kills_its_worker.delay()  # takes its worker down: three deliveries, then FAILED
    for round_ in range(1, 5):
        worker = quorum.worker(f"w{round_}").start()
        try:
            poll_until(
                lambda w=worker: w.process.poll() is not None or killer.done(),  # type: ignore[misc]
                30,
                "a delivery of kills_its_worker",
            )
        finally:
            worker.stop()
        if killer.done():
            break
    result = killer.result()
    assert (result.status, result.reason) == (TaskStatus.FAILED, "max_deliveries")
    assert quorum.effects_of(killer) == [(1, "started"), (2, "started"), (3, "started")]
    assert quorum.app.transport.queue_size(quorum.queue + ".dlq") == 1


def test_f05_on_a_quorum_queue_sigkill_reruns_an_opted_in_task_once(quorum: Rig) -> None:
    handle = bt.sleep_opted_in.delay(2.0)
    first = quorum.worker("w1").start()
    poll_until(lambda: handle.status is TaskStatus.RUNNING, 20, f"{handle.id} to start")
    first.kill()
    with quorum.worker("w2") as second:
        result = _final(handle)
        assert result.status is TaskStatus.SUCCESS, second.log_tail()
    assert result.attempts == 2
    assert quorum.effects_of(handle) == [(1, "started"), (2, "started"), (2, "finished")]


def test_the_broker_delivery_limit_dead_letters_to_the_dlq_instead_of_dropping(quorum: Rig) -> None:
    handle = bt.add.delay(1, 1)
    bound = quorum.app.transport.queue(quorum.queue)
    with kombu.Connection(AMQP_URL, connect_timeout=5) as conn:
        channel = conn.channel()
        # Something returns the message over and over without decortask counting it (here: a bare client).
        for _ in range(QUORUM_ARGUMENTS["x-delivery-limit"] + 1):  # type: ignore[operator]
            message = poll_until(lambda: bound(channel).get(no_ack=False), 10, "the message back")
            message.requeue()
    poll_until(lambda: quorum.app.transport.queue_size(quorum.queue + ".dlq") == 1, 10, "the dead letter")
    assert quorum.app.transport.queue_size(quorum.queue) == 0
    [letter] = list_dead_letters(quorum.app, quorum.queue)
    assert (letter.id, letter.queue, letter.reason) == (handle.id, quorum.queue, "delivery_limit")
    assert letter.replayable


def test_priority_on_a_quorum_queue_before_rabbitmq_4_is_refused_at_the_call(quorum: Rig) -> None:
    with pytest.raises(ConfigurationError) as caught:
        bt.add.apply_async(args=(1, 2), priority=5)
    text = str(caught.value)
    assert quorum.queue in text and "quorum" in text and "priorit" in text and "classic" in text, text
    assert bt.add.apply_async(args=(1, 2), priority=0).id  # no priority asked: sent as usual


def test_per_queue_type_overrides_the_app_wide_one(tmp_path: Path) -> None:
    require_amqp()
    token = uuid.uuid4().hex[:10]
    classic, quorum_queue = f"classic-{token}", f"billing-{token}"
    app = Decortask(
        AMQP_URL,
        f"sqlite:///{tmp_path}/store.db",
        default_queue=classic,
        queue_type="classic",
        queue_types=f"{quorum_queue}=quorum",
    )
    try:
        bt.add.delay(1, 2)
        bt.add.apply_async(args=(1, 2), queue=quorum_queue)
        assert _is_quorum(quorum_queue)
        assert _refusal(classic, {"x-max-priority": 9}) == ""
    finally:
        app.close()
        reset_default_app()
        _delete(classic, quorum_queue, quorum_queue + ".dlq")


def test_an_existing_quorum_queue_is_used_as_it_is_with_queue_type_auto(tmp_path: Path) -> None:
    require_amqp()
    queue = f"foreign-quorum-{uuid.uuid4().hex[:10]}"
    _declare_foreign(queue, {"x-queue-type": "quorum"})
    rig_app = Decortask(AMQP_URL, f"sqlite:///{tmp_path}/store.db", default_queue=queue)
    rig = Rig("amqp", rig_app, AMQP_URL, rig_app.settings.store_url, queue, tmp_path / "e.jsonl", tmp_path)
    try:
        assert rig_app.settings.queue_type == "auto"
        handle = bt.add.delay(20, 22)
        with rig.worker("w1") as worker:
            assert _final(handle).status is TaskStatus.SUCCESS, worker.log_tail()
        assert handle.get(timeout=1) == 42
        assert _refusal(queue, {"x-queue-type": "quorum"}) == ""  # still the queue it was, untouched
        with pytest.raises(ConfigurationError):  # found to be a quorum queue: it would ignore a priority
            bt.add.apply_async(args=(1, 2), priority=9)
    finally:
        rig_app.close()
        reset_default_app()
        _delete(queue, queue + ".dlq")


@pytest.mark.parametrize(
    ("existing", "settings", "differs", "theirs", "ours", "fits"),
    [
        ({}, {"queue_type": "quorum"}, "x-queue-type", "without x-queue-type", "x-queue-type='quorum'", ""),
        (
            {"x-queue-type": "quorum"},
            {"queue_type": "classic"},
            "x-queue-type",
            "'quorum'",
            "without",
            "auto",
        ),
        (
            {"x-queue-type": "quorum", "x-delivery-limit": 3},
            {"queue_type": "quorum"},
            "x-delivery-limit",
            "'3'",
            "'20'",
            "auto",  # a quorum queue decortask did not declare: used as it is under queue_type="auto"
        ),
    ],
    ids=["classic-exists-quorum-wanted", "quorum-exists-classic-wanted", "other-delivery-limit"],
)
def test_b19_a_worker_on_a_queue_of_another_type_exits_with_one_line_naming_both_values(
    tmp_path: Path,
    existing: dict[str, Any],
    settings: dict[str, str],
    differs: str,
    theirs: str,
    ours: str,
    fits: str,
) -> None:
    require_amqp()
    queue = f"b19-type-{uuid.uuid4().hex[:10]}"
    _declare_foreign(queue, existing)
    rig_app = Decortask(AMQP_URL, f"sqlite:///{tmp_path}/store.db", default_queue=queue)
    env = {f"DECORTASK_{name.upper()}": value for name, value in settings.items()}
    rig = Rig(
        "amqp", rig_app, AMQP_URL, rig_app.settings.store_url, queue, tmp_path / "e.jsonl", tmp_path, env
    )
    try:
        worker = rig.worker("w1").start()
        assert worker.wait(60) != 0
        log = worker.log_path.read_text()
        assert "Traceback" not in log, log
        [line] = [line for line in log.splitlines() if line.startswith("Error:")]
        assert queue in line and differs in line and theirs in line and ours in line, line
        assert "delete" in line and "another queue name" in line, line
        assert (f"queue_types={{{queue!r}: {fits!r}}} to use it as it is" in line) == bool(fits), line
    finally:
        rig_app.close()
        reset_default_app()
        _delete(queue, queue + ".dlq")
