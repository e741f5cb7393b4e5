"""The example's tasks: a plain one and an `async def` one. Worker: `decortask worker -A examples.fastapi_app.tasks`."""

from __future__ import annotations

import asyncio
import hashlib

from decortask import TaskContext, task, task_log


@task(retries=2, delay=0.5)
def build_report(ctx: TaskContext, title: str, pages: int) -> dict[str, object]:
    """Render `pages` pages of a report, reporting progress per page; returns a digest of the result."""
    digest = hashlib.sha256(title.encode())
    for page in range(1, pages + 1):
        if ctx.should_stop():  # cancelled, or the worker is shutting down
            task_log("stopped early", page=page)
            break
        digest.update(f"page {page}".encode())
        ctx.set_progress(page / pages, f"page {page} of {pages}")
    task_log("report rendered", title=title, pages=pages)
    return {"title": title, "pages": pages, "digest": digest.hexdigest()[:16]}


@task
async def ping(ctx: TaskContext, host: str) -> str:
    """An `async def` task: workers run it on their event loop."""
    await asyncio.sleep(0)
    task_log("pinged", host=host)
    return f"pong from {host}"
