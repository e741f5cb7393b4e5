"""decortask.compat.celery's canvas: Celery-style tasks compose with `.s()`, `.si()`, `.signature()`,
`chain`, `group`, `chord`, `link=` and `link_error=` into decortask workflows.

The examples of Celery's "Canvas: Designing Work-flows" guide (tests/celery_canvas_tasks.py, only its import
changed) run under a real `decortask worker` on the embedded SQLite broker, Redis and RabbitMQ; what the
compat layer refuses, and the shapes it builds, are checked in process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import celery_canvas_tasks as tasks
import pytest
from workers import app_with_worker, poll_until

from decortask import Decortask, Signature, TaskFailed, TaskHandle
from decortask.canvas import Chain, Chord, Group, derived_id
from decortask.compat.celery import (
    UnsupportedCeleryFeature,
    chain,
    chord,
    group,
    maybe_signature,
    shared_task,
    signature,
)
from decortask.compat.celery_errback import ERRBACK_TASK, takes_request

# -- the Celery guide's examples under a real worker ---------------------------------------------------------


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.broker),
        pytest.param("amqp", marks=pytest.mark.broker),
    ],
)
def canvas_worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Decortask]:
    """A current app on the broker kind, and a `decortask worker -A tests.celery_canvas_tasks` on its queue."""
    tmp_path = tmp_path_factory.mktemp(f"celery-canvas-{request.param}")
    with app_with_worker(request.param, tmp_path, "tests.celery_canvas_tasks", "celery-canvas") as app:
        yield app


def test_a_chain_of_celery_style_signatures_feeds_each_result_to_the_next(canvas_worker: Decortask) -> None:
    piped = (tasks.add.s(2, 2) | tasks.add.s(4) | tasks.add.s(8))()
    chained = chain(tasks.add.s(4, 4), tasks.mul.s(8), tasks.mul.s(10)).apply_async()

    assert piped.get(timeout=60) == 16
    assert chained.get(timeout=60) == 640


def test_a_group_returns_its_members_results_in_order(canvas_worker: Decortask) -> None:
    result = group(tasks.add.s(i, i) for i in range(10))()

    assert result.get(timeout=60) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_a_chord_calls_its_callback_with_the_headers_results_every_way_celery_writes_it(
    canvas_worker: Decortask,
) -> None:
    written_whole = chord((tasks.add.s(i, i) for i in range(10)), tasks.xsum.s()).apply_async()
    called = chord((tasks.add.s(i, i) for i in range(10)), tasks.xsum.s())()
    header_then_callback = chord(tasks.add.s(i, i) for i in range(10))(tasks.xsum.s())

    assert written_whole.get(timeout=60) == 90
    assert called.get(timeout=60) == 90
    assert header_then_callback.get(timeout=60) == 90


def test_a_bound_tasks_signature_runs_with_self_bound_as_the_worker_runs_it(canvas_worker: Decortask) -> None:
    result = (tasks.add.s(1, 2) | tasks.whoami.s()).apply_async()

    assert result.get(timeout=60) == {
        "value": 3,
        "id": result.id,
        "task": "celery_canvas.whoami",
        "name": "celery_canvas.whoami",
    }


def test_link_calls_back_with_the_result_and_link_error_with_the_failed_tasks_id(
    canvas_worker: Decortask,
) -> None:
    good = tasks.add.apply_async((2, 2), link=tasks.add.s(16), link_error=tasks.error_handler.s())
    bad = tasks.fails.apply_async((7,), link=tasks.add.s(16), link_error=tasks.error_handler.s())

    callback = TaskHandle(canvas_worker, derived_id(good.id, "link:0"), "celery_canvas.add")
    errback = TaskHandle(canvas_worker, derived_id(bad.id, "link_error:0"), "celery_canvas.error_handler")
    poll_until(lambda: canvas_worker.store.get(callback.id), 60, "the link to be sent")
    poll_until(lambda: canvas_worker.store.get(errback.id), 60, "the errback to be sent")

    assert callback.get(timeout=60) == 20
    assert errback.get(timeout=60) == f"Task {bad.id} raised exception: builtins.ValueError: 7 is not welcome"
    assert (good.state, bad.state) == ("SUCCESS", "FAILURE")
    assert canvas_worker.store.get(derived_id(good.id, "link_error:0")) is None
    assert canvas_worker.store.get(derived_id(bad.id, "link:0")) is None


def test_an_errback_taking_request_exc_and_traceback_gets_the_failed_tasks(canvas_worker: Decortask) -> None:
    bad = tasks.fails.apply_async((7,), link_error=tasks.log_error.s())

    errback = TaskHandle(canvas_worker, derived_id(bad.id, "link_error:0"), ERRBACK_TASK)
    poll_until(lambda: canvas_worker.store.get(errback.id), 60, "the errback to be sent")
    assert errback.get(timeout=60) == {
        "id": bad.id,
        "task": "celery_canvas.fails",
        "args": [7],
        "exc": "builtins.ValueError: 7 is not welcome",
        "traceback": "ValueError: 7 is not welcome",
    }


def test_a_chain_stops_at_a_failing_celery_style_step(canvas_worker: Decortask) -> None:
    result = (tasks.add.s(1, 1) | tasks.fails.s() | tasks.add.s(1)).apply_async()

    with pytest.raises(TaskFailed, match=re.escape("2 is not welcome; the steps after it did not run")):
        result.get(timeout=60)


# -- in process: what the compat layer builds and refuses --------------------------------------------------


def test_s_si_and_signature_are_the_native_tasks_signatures() -> None:
    assert tasks.add.s(2) == tasks.add.native.s(2) == Signature("celery_canvas.add", (2,))
    assert tasks.add.si(2, 2) == Signature("celery_canvas.add", (2, 2), immutable=True)
    assert tasks.add.signature((2, 2), countdown=10) == Signature(
        "celery_canvas.add", (2, 2), options={"countdown": 10}
    )
    assert tasks.add.signature((2,), {"y": 2}, options={"queue": "maths"}, immutable=True) == Signature(
        "celery_canvas.add", (2,), {"y": 2}, {"queue": "maths"}, immutable=True
    )
    assert tasks.whoami.s(1) == Signature("celery_canvas.whoami", (1,))  # bind=True: no `self` in it


def test_signature_and_maybe_signature_read_every_form_celery_passes() -> None:
    expected = Signature("celery_canvas.add", (2, 2), options={"countdown": 1})
    assert signature("celery_canvas.add", args=(2, 2), countdown=1) == expected
    assert signature(tasks.add, (2, 2), options={"countdown": 1}) == expected
    assert signature(expected) is expected
    celery_dict = {"task": "celery_canvas.add", "args": [2, 2], "kwargs": {}, "options": {"countdown": 1},
                   "subtask_type": None, "immutable": False}  # fmt: skip
    assert signature(celery_dict) == maybe_signature(celery_dict) == expected
    assert signature(expected.to_dict()) == expected
    assert maybe_signature(None) is None


def test_chain_group_and_chord_take_celerys_forms() -> None:
    steps = [tasks.add.s(1, 1), tasks.mul.s(2)]
    assert isinstance(chain(steps), Chain) and chain(steps).steps == chain(*steps).steps
    assert isinstance(group([tasks.add.s(1, 1), tasks.add.s(2, 2)]), Group)
    assert len(group(tasks.add.s(i, i) for i in range(4)).members) == 4
    made = chord([tasks.add.s(1, 1)], tasks.xsum.s())
    assert isinstance(made, Chord) and made.callback == tasks.xsum.s()
    assert isinstance(tasks.add.s(1, 1) | group(tasks.mul.s(2), tasks.mul.s(3)) | tasks.xsum.s(), Chain)


def test_a_workflow_of_celery_style_tasks_runs_eagerly(decortask_eager: Decortask) -> None:
    assert (tasks.add.s(2, 2) | tasks.whoami.s()).apply_async().get(timeout=5)["value"] == 4
    assert chord((tasks.add.s(i, i) for i in range(4)), tasks.xsum.s()).apply_async().get(timeout=5) == 12


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: tasks.add.map([1, 2]), "use group(add.s(item) for item in items)"),
        (lambda: tasks.add.starmap([(1, 2)]), "use group(add.s(*item) for item in items)"),
        (lambda: tasks.add.chunks([(1, 2)], 10), "write a task that takes a list of items and loops over it"),
        (
            lambda: tasks.add.signature((1, 2), eta=0),
            "option eta= is not supported: a signature is sent later",
        ),
        (lambda: tasks.add.signature((1, 2), link=tasks.add.s(1)), "pass link= to the task's apply_async()"),
        (
            lambda: signature({"task": "x", "subtask_type": "chord"}),
            "a serialized Celery chord cannot be read",
        ),
        (
            lambda: chord([tasks.add.s(1, 1)], tasks.xsum.s(), interval=1),
            "option(s) interval are not supported",
        ),
    ],
)
def test_canvas_idioms_without_an_equivalent_say_what_to_use_instead(make: Any, named: str) -> None:
    with pytest.raises(UnsupportedCeleryFeature, match=re.escape(named)) as refused:
        make()
    assert "issue 13" not in str(refused.value)


@pytest.mark.parametrize(
    "link", [print, "celery_canvas.add", [tasks.add.s(1), tasks.add.s(1) | tasks.add.s(2)]]
)
def test_link_that_is_not_a_signature_is_refused_saying_what_to_pass(
    decortask_app: Decortask, link: Any
) -> None:
    with pytest.raises(UnsupportedCeleryFeature, match=re.escape("link= takes signatures (task.s(...)")):
        tasks.add.apply_async((1, 2), link=link)


def test_errbacks_are_called_as_celery_decides_by_their_arity() -> None:
    def by_id(uuid: str) -> None: ...
    def by_request(request: Any, exc: Any, traceback: Any) -> None: ...
    def by_args(*args: Any) -> None: ...
    def bound(self: Any, uuid: str) -> None: ...

    assert (takes_request(by_id, False), takes_request(by_request, False), takes_request(by_args, False)) == (
        False,
        True,
        True,
    )
    assert takes_request(bound, True) is False  # a bind=True errback gets the id, as in Celery


def test_a_request_style_errback_with_its_own_arguments_runs_eagerly(decortask_eager: Decortask) -> None:
    @shared_task(name="compat.canvas.notify")
    def notify(request: Any, exc: Any, traceback: Any, channel: str) -> str:
        return f"{channel}: {request.task}{list(request.args)} {exc.error_message}"

    bad = tasks.fails.apply_async((3,), link_error=notify.s("ops"))

    errback = TaskHandle(decortask_eager, derived_id(bad.id, "link_error:0"), ERRBACK_TASK)
    assert errback.get(timeout=5) == "ops: celery_canvas.fails[3] 3 is not welcome"
