"""Checked by mypy in tests/test_static.py: lines marked `# error` must be type errors, others must pass."""

from __future__ import annotations

from decortask import TaskContext, TaskHandle, task


@task
def add(a: int, b: int) -> int:
    return a + b


@task(retries=2, queue="billing")
def send_invoice(ctx: TaskContext, order_id: int, note: str = "") -> str:
    return f"{ctx.task_id}:{order_id}:{note}"


ok_add: TaskHandle[int] = add.delay(1, 2)
ok_kw: TaskHandle[int] = add.delay(a=1, b=2)
ok_ctx: TaskHandle[str] = send_invoice.delay(42, note="x")
value: int = add.delay(1, 2).get(timeout=1)
local: int = add(1, 2)

add.delay("1", 2)  # error
add.delay(1)  # error
add.delay(1, 2, 3)  # error
add.delay(1, c=2)  # error
send_invoice.delay("42")  # error
wrong: TaskHandle[str] = add.delay(1, 2)  # error


@task
async def fetch(ctx: TaskContext, url: str) -> bytes:
    return url.encode()


ok_async: TaskHandle[bytes] = fetch.delay("https://example.invalid")
fetched: bytes = fetch.delay("x").get()
fetch.delay(1)  # error
wrong_async: TaskHandle[str] = fetch.delay("x")  # error
