"""B-19: a RabbitMQ queue declared beforehand with other arguments than decortask's (quorum, no priority).

RabbitMQ refuses decortask's declaration with PRECONDITION_FAILED and closes the channel. The producer and
the worker must both say, in one line, what differs and how to fix it, and leave no broken connection behind.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import behaviour_tasks as bt
import kombu
import pytest

from decortask import BrokerUnavailable, Decortask
from decortask.app import reset_default_app
from decortask.store import TaskQuery

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parent.parent

# What a user (or another tool) may have declared: a quorum queue where the settings say classic (with the
# default queue_type="auto" it is used as it is: tests/test_quorum_queues.py), and a classic queue without
# priorities. Each: (its arguments, the argument that differs, the broker's value, decortask's queue_type).
PREDECLARED = {
    "quorum": ({"x-queue-type": "quorum"}, "x-queue-type", "quorum", "classic"),
    "classic-without-priority": ({}, "x-max-priority", "9", "auto"),
}


def _declare_foreign_queue(url: str, name: str, arguments: dict[str, Any]) -> None:
    """Declare `name` with kombu directly, as another program would, not through decortask."""
    with kombu.Connection(url, connect_timeout=5) as conn:
        queue = kombu.Queue(
            name, kombu.Exchange(""), routing_key=name, durable=True, queue_arguments=arguments
        )
        queue(conn.default_channel).declare()


def _delete_queues(url: str, *names: str) -> None:
    with kombu.Connection(url, connect_timeout=5) as conn:
        for name in names:
            # A fresh channel each: deleting a queue never declared fails, and the broker closes the channel.
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(name)


@pytest.fixture(params=sorted(PREDECLARED))
def foreign_queue(
    request: pytest.FixtureRequest, amqp_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str, str]]:
    """(queue name, the argument that differs, the value the broker holds) for a queue declared elsewhere;
    DECORTASK_QUEUE_TYPE says how this test's app and worker declare it."""
    arguments, differs, value, queue_type = PREDECLARED[request.param]
    monkeypatch.setenv("DECORTASK_QUEUE_TYPE", queue_type)
    name = f"b19-{request.param}-{unique}"
    _declare_foreign_queue(amqp_url, name, arguments)
    try:
        yield name, differs, value
    finally:
        _delete_queues(amqp_url, name, name + ".dlq", f"b19-ok-{unique}")


def _assert_says_what_differs_and_how_to_fix(text: str, queue: str, differs: str, value: str) -> None:
    assert "\n" not in text.strip(), text
    assert queue in text and differs in text and value in text, text
    assert "delete" in text and "another queue" in text, text  # the two ways out
    assert "check that the broker is running" not in text, text  # it is running: that advice misleads


def test_b19_delay_to_a_queue_declared_with_other_arguments_says_what_differs_in_one_line(
    amqp_url: str, unique: str, tmp_path: Path, foreign_queue: tuple[str, str, str]
) -> None:
    queue, differs, value = foreign_queue
    app = Decortask(amqp_url, f"sqlite:///{tmp_path}/store.db", default_queue=queue)
    try:
        for _ in range(2):  # the second call meets the same clear error, not a broken connection
            with pytest.raises(BrokerUnavailable) as caught:
                bt.add.delay(1, 2)
            assert type(caught.value).__name__ == "QueueMismatch", repr(caught.value)
            _assert_says_what_differs_and_how_to_fix(str(caught.value), queue, differs, value)
        assert (
            app.store.count_tasks(TaskQuery()) == 0
        )  # no phantom PENDING record for what was never published
        # The broker closed the channel; the app's connection state recovered: another queue still works.
        handle = bt.add.apply_async(args=(2, 3), queue=f"b19-ok-{unique}")
        assert handle.id
    finally:
        app.close()
        reset_default_app()


def test_b19_worker_on_a_queue_declared_with_other_arguments_exits_with_one_clear_line(
    amqp_url: str, tmp_path: Path, foreign_queue: tuple[str, str, str]
) -> None:
    queue, differs, value = foreign_queue
    command = ["worker", "-A", "tests.behaviour_tasks", "-Q", queue, "--broker-url", amqp_url]
    result = subprocess.run(
        [sys.executable, "-m", "decortask", *command, "--store-url", f"sqlite:///{tmp_path}/store.db"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    _assert_says_what_differs_and_how_to_fix(errors[0], queue, differs, value)
