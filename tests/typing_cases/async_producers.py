"""Checked by mypy in tests/test_middleware.py: lines marked `# error` must be type errors, others must pass."""
# ruff: noqa: F841  (locals exist to be type-checked)

from __future__ import annotations

from decortask import TaskContext, TaskHandle, TaskStatus, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task
async def fetch(ctx: TaskContext, url: str) -> bytes:
    return url.encode()


async def producer() -> None:
    ok: TaskHandle[int] = await add.adelay(1, 2)
    ok_kw: TaskHandle[int] = await add.adelay(a=1, b=2)
    ok_opts: TaskHandle[int] = await add.aapply_async(args=(1, 2), countdown=5, queue="q")
    ok_async: TaskHandle[bytes] = await fetch.adelay("https://example.invalid")
    status: TaskStatus = await ok.astatus()
    value: int = await ok.aget(timeout=1)
    also: int = await ok_kw
    cancelled: bool = await ok_opts.acancel()
    done: bool = await ok_async.adone()
    await add.adelay("1", 2)  # error
    await add.adelay(1)  # error
    await fetch.adelay(1)  # error
    wrong: TaskHandle[str] = await add.adelay(1, 2)  # error
    not_awaited: TaskHandle[int] = add.adelay(1, 2)  # error


def in_a_transaction() -> None:
    add.delay_on_commit(1, 2)
    add.delay_on_commit(a=1, b=2)
    add.delay_on_commit("1", 2)  # error
    add.delay_on_commit(1)  # error
