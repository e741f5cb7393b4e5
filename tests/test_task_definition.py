"""@task: options are validated at decoration, names are stable, calling directly is a local call."""

from __future__ import annotations

import pytest

from decortask import DuplicateTaskError, TaskContext, TaskDefinitionError, registry, task


def test_bare_decorator_registers_module_qualname() -> None:
    @task
    def plain(x: int) -> int:
        return x * 2

    assert plain.name == f"{__name__}.test_bare_decorator_registers_module_qualname.<locals>.plain"
    assert registry.get(plain.name) is plain


def test_direct_call_is_a_plain_local_call() -> None:
    @task(name="spec.direct")
    def double(x: int) -> int:
        return x * 2

    assert double(21) == 42


def test_direct_call_injects_a_local_context() -> None:
    @task(name="spec.direct_ctx")
    def whoami(ctx: TaskContext, x: int) -> str:
        return f"{ctx.task_id}:{x}"

    assert whoami(1) == "local:1"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"delay": -0.1}, "delay"),
        ({"backoff": 0.5}, "backoff"),
        ({"max_delay": "soon"}, "max_delay"),
        ({"jitter": 2}, "jitter"),
        ({"retry_on": "ValueError"}, "retry_on"),
        ({"dont_retry_on": [int]}, "dont_retry_on"),
        ({"persist": "yes"}, "persist"),
        ({"requeue_on_interrupt": 1}, "requeue_on_interrupt"),
        ({"priority": 10}, "priority"),
        ({"queue": ""}, "queue"),
        ({"timeout": 0}, "timeout"),
        ({"expires": -5}, "expires"),
        ({"name": ""}, "name"),
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"retrys": 3}, "retrys"),
    ],
)
def test_bad_option_fails_at_decoration_naming_the_option(options: dict[str, object], named: str) -> None:
    with pytest.raises(TaskDefinitionError, match=named):

        @task(**options)  # type: ignore[call-overload]
        def victim() -> None:
            return None


def test_options_are_kept() -> None:
    @task(
        name="spec.options", retries=3, delay=1.0, backoff=2.0, max_delay=5, jitter=0.1, retry_on=(KeyError,)
    )
    def configured() -> None:
        return None

    policy = configured.options.retry_policy
    assert (policy.retries, policy.delay, policy.backoff, policy.max_delay, policy.jitter) == (
        3,
        1.0,
        2.0,
        5,
        0.1,
    )
    assert policy.retry_on == (KeyError,)
    assert configured.options.persist is True


def test_duplicate_name_is_an_error() -> None:
    @task(name="spec.duplicate")
    def first() -> None:
        return None

    with pytest.raises(DuplicateTaskError, match=r"spec\.duplicate"):

        @task(name="spec.duplicate")
        def second() -> None:
            return None


def test_unknown_name_suggests_the_closest() -> None:
    @task(name="spec.send_invoice")
    def send_invoice() -> None:
        return None

    assert "did you mean 'spec.send_invoice'" in registry.unknown_message("spec.send_invoic")
