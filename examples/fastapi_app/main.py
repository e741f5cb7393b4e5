"""The FastAPI app: `uvicorn examples.fastapi_app.main:app`.

Endpoints enqueue with `await task.adelay(...)`, which records and publishes off the event loop, and read
tasks with the handle's async methods. decortask is configured by `DECORTASK_*` environment variables (or a
`Decortask(...)` created at import, which becomes the current app).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, status
from pydantic import BaseModel, Field

from decortask import Decortask, TaskHandle, TaskNotFound, WaitTimeout, current_app

from .tasks import build_report, ping


class ReportRequest(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    pages: int = Field(ge=1, le=1000)


class TaskView(BaseModel):
    id: str
    status: str
    progress: float | None = None
    progress_message: str | None = None
    result: Any = None
    error: str | None = None
    logs: list[str] = []


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    current_app().close()  # broker connections and the store, at shutdown


app = FastAPI(title="decortask reports", lifespan=lifespan)
Tasks = Annotated[Decortask, Depends(current_app)]


def report_handle(tasks: Decortask, task_id: str) -> TaskHandle[dict[str, object]]:
    return tasks.handle(task_id, build_report.name)  # with a name given, no store read happens here


@app.post("/reports", status_code=status.HTTP_202_ACCEPTED)
async def create_report(body: ReportRequest) -> dict[str, str]:
    handle = await build_report.adelay(body.title, body.pages)
    return {"id": handle.id, "status_url": f"/reports/{handle.id}"}


@app.get("/reports/{task_id}")
async def show_report(task_id: str, tasks: Tasks) -> TaskView:
    try:
        record = await report_handle(tasks, task_id).arecord()
    except TaskNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report task {task_id}") from None
    return TaskView(
        id=record.id,
        status=record.status.value,
        progress=record.progress,
        progress_message=record.progress_message,
        result=record.result,
        error=record.error_message,
        logs=[line.message for line in record.logs],
    )


@app.get("/reports/{task_id}/result")
async def report_result(task_id: str, tasks: Tasks, wait: float = 0.0) -> dict[str, Any]:
    """The report once done; with `?wait=N`, waits up to N seconds (without blocking other requests)."""
    handle = report_handle(tasks, task_id)
    try:
        outcome = await handle.await_result(timeout=min(max(wait, 0.0), 30.0))
    except TaskNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report task {task_id}") from None
    except WaitTimeout:
        raise HTTPException(status.HTTP_409_CONFLICT, "the report is not ready yet") from None
    return {"id": task_id, "status": outcome.status.value, "value": outcome.value, "reason": outcome.reason}


@app.post("/reports/{task_id}/cancel")
async def cancel_report(task_id: str, tasks: Tasks) -> dict[str, bool]:
    """Cancel: a waiting report never starts, a running one is asked to stop; False once it has ended."""
    try:
        return {"cancelled": await report_handle(tasks, task_id).acancel()}
    except TaskNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report task {task_id}") from None


@app.post("/ping/{host}")
async def ping_host(host: str) -> dict[str, str]:
    """Enqueue an `async def` task and await its result: the event loop serves other requests meanwhile."""
    handle = await ping.adelay(host)
    try:
        reply = await handle.aget(timeout=10)
    except WaitTimeout:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "no worker answered in 10 s") from None
    return {"id": handle.id, "reply": reply}
