"""Checked by mypy in tests/test_calling.py: lines marked `# error` must be type errors, others must pass.

The per-call options are typed keywords on `apply_async`, `aapply_async` and `apply_many`, whatever object
carries them inside.
"""
# ruff: noqa: F841  (locals exist to be type-checked)

from __future__ import annotations

from datetime import datetime, timezone

from decortask import TaskContext, TaskHandle, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
async def fetch(ctx: TaskContext, url: str) -> bytes:
    return url.encode()


tags = {"tenant": "acme"}
when = datetime.now(timezone.utc)

sent: TaskHandle[int] = add.apply_async((1, 2), countdown=5, priority=3, queue="q", tags=tags)
keyed: TaskHandle[int] = add.apply_async(args=(1, 2), eta=when, expires=when, idempotency_key="k")
add.apply_async((1, 2), countdown="5")  # error
add.apply_async((1, 2), priority="high")  # error
add.apply_async((1, 2), tags={"n": 1})  # error
add.apply_async((1, 2), nope=1)  # error
add.apply_async((1, 2), {}, 5)  # error
wrong: TaskHandle[str] = add.apply_async((1, 2))  # error

batch: list[TaskHandle[int]] = add.apply_many([add.call(1, 2)], countdown=5, priority=3, queue="q", tags=tags)
add.apply_many([add.call(1, 2)], eta="soon")  # error
add.apply_many([add.call(1, 2)], idempotency_key="k")  # error


async def producer() -> None:
    ok: TaskHandle[int] = await add.aapply_async((1, 2), countdown=5, priority=3, queue="q", tags=tags)
    ok_kw: TaskHandle[int] = await add.aapply_async(args=(1, 2), eta=when, idempotency_key="k", app=None)
    await add.aapply_async((1, 2), countdown="5")  # error
    await add.aapply_async((1, 2), priority="high")  # error
    await add.aapply_async((1, 2), nope=1)  # error
    await add.aapply_async((1, 2), {}, 5)  # error
    wrong_async: TaskHandle[str] = await add.aapply_async((1, 2))  # error
    not_awaited: TaskHandle[int] = add.aapply_async((1, 2))  # error
    fetched: TaskHandle[bytes] = await fetch.aapply_async(("https://example.invalid",), countdown=1)
    wrong_fetch: TaskHandle[str] = await fetch.aapply_async(("x",))  # error
