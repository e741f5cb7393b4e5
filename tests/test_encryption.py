"""Encrypted task arguments (extra `crypto`): B-10 and the settings, wire format and key rotation around it.

Producer and worker are separate apps sharing one SQLite store (so the worker knows the producer's records)
and the process-wide `memory://` broker on a queue of their own.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from decortask import (
    ConfigurationError,
    Decortask,
    MessageError,
    PayloadTooLargeError,
    TaskContext,
    TaskStatus,
    recovery,
    task,
)
from decortask.app import reset_default_app
from decortask.config import Settings
from decortask.message import Message, decode
from decortask.scheduler import Scheduler
from decortask.security import MessageCipher
from decortask.testing import run_pending

SECRET = "sesame-7c1f2e"  # a positional argument value that must never reach the broker or a log
KW_SECRET = "kw-value-93ab"  # a keyword argument value, likewise
FAR_FUTURE = time.time() + 10 * 365 * 86400

CALLS: list[str] = []


@task(name="enc.echo")
def echo(secret: str, note: str = "") -> str:
    CALLS.append(secret)
    return secret + note


@task(name="enc.other")
def other(secret: str) -> str:
    CALLS.append(secret)
    return secret


@task(name="enc.flaky", retries=1, delay=5.0)
def flaky(ctx: TaskContext, secret: str) -> str:
    if ctx.attempt == 1:
        raise ConnectionError("the first attempt fails")
    return secret


@task(name="enc.requeued_on_loss", requeue_on_interrupt=True)
def requeued_on_loss(secret: str) -> str:
    return secret


def new_key() -> str:
    return Fernet.generate_key().decode()


AppFactory = Callable[..., Decortask]


@pytest.fixture
def make_app(tmp_path: Path, unique: str) -> Iterator[AppFactory]:
    """Apps on one queue of the memory broker, all sharing one SQLite store."""
    apps: list[Decortask] = []
    CALLS.clear()

    def make(**settings: Any) -> Decortask:
        app = Decortask(
            "memory://",
            f"sqlite:///{tmp_path}/store.db",
            default_queue=f"q-{unique}",
            set_default=False,
            **settings,
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
    reset_default_app()


def take_bodies(app: Decortask, count: int) -> list[dict[str, Any]]:
    """Remove `count` messages from the app's queue and return their raw envelopes."""
    queue = app.settings.default_queue
    session = app.transport.open_consumer([queue], prefetch=count, consume=False)
    try:
        bodies = []
        for _ in range(count):
            delivery = session.get(queue)
            assert delivery is not None
            bodies.append(json.loads(delivery.body))
            session.ack(delivery)
        assert session.get(queue) is None
        return bodies
    finally:
        session.close()


def publish(app: Decortask, envelope: dict[str, Any]) -> None:
    app.transport.publish(json.dumps(envelope).encode(), app.settings.default_queue)


def dead_letters(app: Decortask) -> list[tuple[dict[str, Any], bytes]]:
    """Every message in the app's dead-letter queue, as (headers, body); the queue is emptied."""
    dlq = app.settings.default_queue + ".dlq"
    session = app.transport.open_consumer([dlq], prefetch=10, consume=False)
    found = []
    try:
        while (delivery := session.get(dlq)) is not None:
            found.append((delivery.headers, delivery.body))
            session.ack(delivery)
    finally:
        session.close()
    return found


def assert_refused(
    worker: Decortask, task_ids: list[str], caplog: pytest.LogCaptureFixture, plaintext: bool = False
) -> None:
    """Each task FAILED (integrity_error), dead-lettered, never run, and no argument value anywhere in view.

    A dead letter keeps its body byte for byte, so only a `plaintext` message's dead letter shows arguments.
    """
    for task_id in task_ids:
        record = worker.store.get(task_id)
        assert record is not None
        assert (record.status, record.reason) == (TaskStatus.FAILED, "integrity_error")
        assert SECRET not in (record.error_message or "") and KW_SECRET not in (record.error_message or "")
    dead = dead_letters(worker)
    assert len(dead) == len(task_ids)
    for headers, body in dead:
        assert headers["x-decortask-reason"] == "integrity_error"
        assert SECRET not in str(headers) and KW_SECRET not in str(headers)
        assert plaintext or (SECRET.encode() not in body and KW_SECRET.encode() not in body)
    assert CALLS == []
    assert "dead-lettered" in caplog.text  # the refusal was logged ...
    assert SECRET not in caplog.text and KW_SECRET not in caplog.text  # ... without the payload


# -- B-10 ------------------------------------------------------------------------------------------------------


def test_b10_round_trip_runs_and_the_broker_sees_only_ciphertext(make_app: AppFactory) -> None:
    app = make_app(encryption_keys=new_key())
    handle = app.send_task(echo, (SECRET,), {"note": KW_SECRET})
    queue = app.settings.default_queue
    session = app.transport.open_consumer([queue], prefetch=1, consume=False)
    try:
        raw = session.get(queue)
        assert raw is not None
        assert SECRET.encode() not in raw.body and KW_SECRET.encode() not in raw.body
        envelope = json.loads(raw.body)
        assert "args" not in envelope and "kwargs" not in envelope
        assert (envelope["task"], envelope["id"], envelope["v"]) == ("enc.echo", handle.id, 1)
        assert isinstance(envelope["enc"], str)
        session.requeue(raw)
    finally:
        session.close()
    assert run_pending(app) == 1
    assert handle.get(timeout=1) == SECRET + KW_SECRET
    # The store is trusted: it keeps the arguments in the clear, for `decortask show` and retries.
    record = handle.record()
    assert (record.args, record.kwargs) == ([SECRET], {"note": KW_SECRET})


def test_b10_key_rotation_decrypts_a_message_made_with_the_old_key(make_app: AppFactory) -> None:
    old, new = new_key(), new_key()
    old_producer = make_app(encryption_keys=old)
    waiting = old_producer.send_task(echo, (SECRET,), {})
    worker = make_app(encryption_keys=f"{new},{old}")
    assert run_pending(worker) == 1
    assert worker.handle(waiting.id).get(timeout=1) == SECRET
    # The rotated producer encrypts with the new key only: a worker holding just the old key cannot read it.
    worker.send_task(echo, ("x",), {})
    (envelope,) = take_bodies(worker, 1)
    assert MessageCipher(new).decrypt(envelope["enc"]) is not None
    assert MessageCipher(old).decrypt(envelope["enc"]) is None


def test_b10_wrong_key_is_failed_and_dead_lettered_without_the_payload(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    producer = make_app(encryption_keys=new_key())
    worker = make_app(encryption_keys=new_key())
    handle = producer.send_task(echo, (SECRET,), {"note": KW_SECRET})
    assert run_pending(worker) == 1
    assert_refused(worker, [handle.id], caplog)


def test_b10_tampered_token_is_failed_and_dead_lettered(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(encryption_keys=new_key())
    handle = app.send_task(echo, (SECRET,), {"note": KW_SECRET})
    (envelope,) = take_bodies(app, 1)
    token: str = envelope["enc"]
    middle = len(token) // 2
    envelope["enc"] = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    publish(app, envelope)
    assert run_pending(app) == 1
    assert_refused(app, [handle.id], caplog)


@pytest.mark.parametrize("same_task", [True, False], ids=["same-task-other-id", "other-task"])
def test_b10_ciphertext_moved_to_another_envelope_is_refused(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, same_task: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(encryption_keys=new_key())
    first = app.send_task(echo, (SECRET,), {"note": KW_SECRET})
    second = app.send_task(echo if same_task else other, (SECRET,), {})
    one, two = take_bodies(app, 2)
    one["enc"], two["enc"] = two["enc"], one["enc"]
    publish(app, one)
    publish(app, two)
    assert run_pending(app) == 2
    assert_refused(app, [first.id, second.id], caplog)


def test_b10_plaintext_message_to_a_keyed_worker_is_refused(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    producer = make_app()  # no keys: sends args in the clear
    worker = make_app(encryption_keys=new_key())
    handle = producer.send_task(echo, (SECRET,), {"note": KW_SECRET})
    assert run_pending(worker) == 1
    assert_refused(worker, [handle.id], caplog, plaintext=True)


def test_b10_encrypted_message_to_a_worker_without_keys_is_refused(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    producer = make_app(encryption_keys=new_key())
    worker = make_app()
    handle = producer.send_task(echo, (SECRET,), {"note": KW_SECRET})
    assert run_pending(worker) == 1
    assert_refused(worker, [handle.id], caplog)


def test_accept_plaintext_lets_a_keyed_worker_run_plaintext_messages(make_app: AppFactory) -> None:
    producer = make_app()
    worker = make_app(encryption_keys=new_key(), accept_plaintext=True)
    handle = producer.send_task(echo, (SECRET,), {})
    assert run_pending(worker) == 1
    assert worker.handle(handle.id).get(timeout=1) == SECRET


# -- retries and delayed work stay encrypted ----------------------------------------------------------------


def test_a_retry_is_published_encrypted(make_app: AppFactory) -> None:
    app = make_app(encryption_keys=new_key())
    handle = app.send_task(flaky, (SECRET,), {})
    assert run_pending(app) == 1
    assert handle.status is TaskStatus.RETRYING
    assert Scheduler(app, "peek").tick(FAR_FUTURE) == 1  # publishes the retry message the executor built
    (envelope,) = take_bodies(app, 1)
    assert envelope["attempt"] == 2 and "args" not in envelope and SECRET not in json.dumps(envelope)
    publish(app, envelope)
    assert run_pending(app, now=FAR_FUTURE) == 1
    assert handle.get(timeout=1) == SECRET


def test_a_countdown_waits_in_the_schedule_encrypted(make_app: AppFactory) -> None:
    app = make_app(encryption_keys=new_key())
    handle = echo.apply_async(args=(SECRET,), countdown=3600, app=app)
    assert Scheduler(app, "peek").tick(FAR_FUTURE) == 1
    (envelope,) = take_bodies(app, 1)
    assert "enc" in envelope and SECRET not in json.dumps(envelope)
    publish(app, envelope)
    assert run_pending(app, now=FAR_FUTURE) == 1
    assert handle.get(timeout=1) == SECRET


def test_an_attempt_the_reaper_requeues_is_published_encrypted(make_app: AppFactory) -> None:
    app = make_app(encryption_keys=new_key())
    handle = app.send_task(requeued_on_loss, (SECRET,), {})
    take_bodies(app, 1)  # the first delivery is lost with its "worker"
    app.store.transition(handle.id, TaskStatus.RUNNING, attempt=1, owner="dead-worker", started_at=0.0)
    assert recovery.reap(app, owner_alive=lambda owner: False) == 1
    assert Scheduler(app, "peek").tick(FAR_FUTURE) == 1
    (envelope,) = take_bodies(app, 1)
    assert envelope["attempt"] == 2 and "enc" in envelope and SECRET not in json.dumps(envelope)
    publish(app, envelope)
    assert run_pending(app) == 1
    assert handle.get(timeout=1) == SECRET


# -- the envelope, directly ---------------------------------------------------------------------------------


def _sealed(cipher: MessageCipher, **inner: Any) -> dict[str, Any]:
    envelope = Message(id="m-1", task="enc.echo", created_at=1.0).to_dict()
    del envelope["args"], envelope["kwargs"]
    secret = {"v": 1, "task": "enc.echo", "id": "m-1", "args": [SECRET], "kwargs": {}, **inner}
    envelope["enc"] = cipher.encrypt(json.dumps(secret).encode())
    return envelope


def test_decode_round_trip_keeps_every_field_and_the_cipher() -> None:
    cipher = MessageCipher(new_key())
    message = Message(
        id="m-1", task="enc.echo", args=[SECRET], kwargs={"note": KW_SECRET}, attempt=3, priority=4
    )
    received = decode(message.encode(cipher=cipher), "application/json", cipher=cipher)
    assert received == message and received.cipher is cipher
    assert SECRET not in repr(received) and "<encrypted>" in repr(received)
    assert SECRET in repr(message)  # nothing to hide on a message that travels in the clear


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"v": True}, "sealed for another"),  # True == 1 in Python, but it is not the integer 1
        ({"v": 2}, "sealed for another"),
        ({"id": "m-2"}, "sealed for another"),
        ({"task": "enc.other"}, "sealed for another"),
        ({"args": {"a": 1}}, "'args' as an array"),
    ],
)
def test_decode_checks_what_the_token_seals(change: dict[str, Any], detail: str) -> None:
    cipher = MessageCipher(new_key())
    with pytest.raises(MessageError) as info:
        decode(json.dumps(_sealed(cipher, **change)), "application/json", cipher=cipher)
    assert (info.value.reason, info.value.task_id) == ("integrity_error", "m-1")
    assert detail in info.value.detail and SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"enc": 12}, "must be a string"),
        ({"enc": "not-a-token"}, "cannot be decrypted"),
        ({"args": [SECRET]}, "must not also carry"),
    ],
)
def test_decode_refuses_a_malformed_enc(change: dict[str, Any], detail: str) -> None:
    cipher = MessageCipher(new_key())
    envelope = {**_sealed(cipher), **change}
    with pytest.raises(MessageError) as info:
        decode(json.dumps(envelope), "application/json", cipher=cipher)
    assert (info.value.reason, info.value.task_id) == ("integrity_error", "m-1")
    assert detail in info.value.detail and SECRET not in str(info.value)


def test_payload_limit_counts_the_encrypted_body() -> None:
    cipher = MessageCipher(new_key())
    message = Message(id="m-1", task="enc.echo", args=["x" * 1400])
    assert len(message.encode(2048)) < 2048  # fits in the clear ...
    with pytest.raises(PayloadTooLargeError):
        message.encode(2048, cipher=cipher)  # ... but not once encrypted (base64 and Fernet's framing)


# -- settings -----------------------------------------------------------------------------------------------


def test_a_bad_key_is_a_configuration_error_naming_its_index_only() -> None:
    good = new_key()
    bad = "definitely-not-a-fernet-key"
    with pytest.raises(ConfigurationError, match="index 1") as info:
        Decortask("memory://", "memory://", set_default=False, encryption_keys=f"{good},{bad}")
    assert good not in str(info.value) and bad not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(ConfigurationError, match="index 0") as info:
        Settings.load(env={"DECORTASK_ENCRYPTION_KEYS": f"{bad},{good}"})
    assert good not in str(info.value) and bad not in str(info.value)


def test_keys_without_cryptography_installed_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # makes the import fail
    with pytest.raises(ConfigurationError, match=r"pip install 'decortask\[crypto\]'"):
        Settings.load({"encryption_keys": "anything"})
    assert Settings.load(env={}).encryption_keys == ""  # without keys, cryptography is never imported


def test_settings_from_the_environment_and_keys_never_in_a_repr() -> None:
    key = new_key()
    settings = Settings.load(
        env={"DECORTASK_ENCRYPTION_KEYS": f" {key} ", "DECORTASK_ACCEPT_PLAINTEXT": "true"}
    )
    assert settings.accept_plaintext is True
    assert key not in repr(settings)
    app = Decortask("memory://", "memory://", set_default=False, encryption_keys=key)
    assert app.cipher is not None and key not in repr(app.cipher)
    assert Decortask("memory://", "memory://", set_default=False).cipher is None
    with pytest.raises(ConfigurationError, match="DECORTASK_ACCEPT_PLAINTEXT"):
        Settings.load(env={"DECORTASK_ACCEPT_PLAINTEXT": "maybe"})
