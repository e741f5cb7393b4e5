"""The JSON API and the admission step every route goes through (auth, then CSRF on POST).

Reads: `GET /api/...`. Changes: `POST /api/tasks/{id}/retry`, `POST /api/tasks/{id}/cancel`,
`POST /api/deadletters/replay`, `POST /api/schedules/{name}/pause` and `.../resume`, each with the
session's CSRF token. Errors are JSON `{"error": ...}` with 404 (unknown task or schedule), 409 (the task's state does not allow it), 401 (no or wrong credentials), 403 (CSRF or
origin), 503 (broker or store unreachable); every message is masked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..admin import rerun_task
from ..control import request_cancel
from ..deadletters import replay
from ..errors import (
    BrokerUnavailable,
    ConfigurationError,
    DecortaskError,
    StoreError,
    TaskNotFound,
    TaskStateConflict,
)
from ..periodic_config import declared_entries
from ..periodic_status import pause_schedule, resume_schedule, schedule_rows, unknown_schedule
from ..security import mask_text, scrub
from ..states import TaskStatus
from ..store.base import TASK_ORDERS
from . import queries
from .activity import Activity
from .auth import CSRF_HEADER, SESSION_COOKIE, Caller, Guard, new_session_id
from .events import stream
from .workflow_view import workflow_view

if TYPE_CHECKING:
    from ..app import Decortask

logger = logging.getLogger("decortask.dashboard")

#: Largest request body accepted (JSON or a login form).
MAX_BODY = 64 * 1024
#: Most event streams open at once; each polls the store.
MAX_STREAMS = 32

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class DashboardState:
    """What every route needs; kept on the Starlette app as `app.state.dashboard`."""

    app: Decortask
    guard: Guard
    queues: tuple[str, ...] = ()
    poll_interval: float = 0.5
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0
    #: The Charts view's data (cached store scan, queue depth samples).
    activity: Activity = field(init=False)

    def __post_init__(self) -> None:
        self.activity = Activity(lambda: self.app.store)


def state_of(request: Request) -> DashboardState:
    state: DashboardState = request.app.state.dashboard
    return state


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    return Response(body, status_code=status, media_type="application/json")


def error(code: int, message: str, **extra: Any) -> Response:
    return json_response({"error": mask_text(message), **extra}, code)


def set_session_cookie(request: Request, response: Response, session: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def ensure_session(request: Request) -> tuple[str, bool]:
    """The request's session id, or a new anonymous one (True when it must be set as a cookie)."""
    current = request.cookies.get(SESSION_COOKIE)
    return (current, False) if current else (new_session_id(), True)


async def read_body(request: Request) -> bytes | None:
    """The request body, or None when it is larger than MAX_BODY."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def form_fields(body: bytes) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (the login form), first value of each field."""
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def caller_of(request: Request) -> Caller | None:
    return state_of(request).guard.admit(dict(request.headers), dict(request.cookies))


def csrf_failure(request: Request, caller: Caller, supplied: str | None) -> Response | None:
    problem = state_of(request).guard.csrf_problem(
        caller,
        supplied,
        request.headers.get("origin"),
        request.headers.get("referer"),
        request.headers.get("host", ""),
    )
    return error(403, problem) if problem is not None else None


def guarded(handler: Callable[[Request, Caller], Awaitable[Response]], *, post: bool = False) -> Handler:
    """Wrap an API handler: 401 without credentials, and on POST 403 without a valid CSRF token and origin."""

    async def endpoint(request: Request) -> Response:
        caller = caller_of(request)
        if caller is None:
            refusal = error(
                401,
                "authentication required: send 'Authorization: Bearer <token>' or log in at /login",
            )
            refusal.headers["WWW-Authenticate"] = 'Bearer realm="decortask"'
            return refusal
        if post:
            failure = csrf_failure(request, caller, request.headers.get(CSRF_HEADER))
            if failure is not None:
                return failure
        try:
            return await handler(request, caller)
        except DecortaskError as exc:
            # Anything the handler did not expect (a payload too large to re-publish, ...): say what, masked.
            logger.warning(
                "dashboard %s %s failed: %s", request.method, request.url.path, mask_text(str(exc))
            )
            return error(500, f"{type(exc).__name__}: {exc}")

    return endpoint


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking store or broker call in a worker thread, off the event loop."""
    return await run_in_threadpool(fn, *args)


def outage(exc: DecortaskError) -> Response:
    return error(503, f"{type(exc).__name__}: {exc}")


# -- reads ---------------------------------------------------------------------------------------------


async def session_info(request: Request, caller: Caller) -> Response:
    """The CSRF token for this session (scripts and API clients send it back on every POST)."""
    state = state_of(request)
    session: str | None
    session, fresh = (caller.session, False) if caller.session else ensure_session(request)
    if caller.method == "bearer" and caller.session is None:
        session, fresh = None, False  # a cookie-less API client: the token is bound to its bearer token
    response = json_response(
        {
            "csrf_token": state.guard.csrf_token(session),
            "auth": caller.method,
            "token_required": state.guard.requires_token,
        }
    )
    if fresh and session is not None:
        set_session_cookie(request, response, session)
    return response


async def overview(request: Request, caller: Caller) -> Response:
    return json_response(queries.overview(state_of(request).app))


def task_filter(request: Request) -> queries.TaskFilter:
    params = request.query_params
    raw_statuses = [s for value in params.getlist("status") for s in value.split(",") if s.strip()]
    statuses = None
    if raw_statuses:
        known = {s.value for s in TaskStatus}
        unknown = [s for s in raw_statuses if s.strip().upper() not in known]
        if unknown:
            raise ConfigurationError(
                f"unknown status {', '.join(unknown)}; use one of {', '.join(sorted(known))}"
            )
        statuses = frozenset(TaskStatus(s.strip().upper()) for s in raw_statuses)
    return queries.TaskFilter(
        statuses=statuses,
        name=params.get("name") or None,
        queue=params.get("queue") or None,
        tag=params.get("tag") or None,
        text=params.get("q") or None,
        order=_order(params.get("sort")),
        limit=_int(params.get("limit"), 50, "limit"),
        offset=_int(params.get("offset"), 0, "offset"),
    )


def _order(raw: str | None) -> str:
    order = (raw or "-created").strip()
    if order not in TASK_ORDERS:
        raise ConfigurationError(
            f"cannot sort tasks by {order!r}; use one of {', '.join(sorted(TASK_ORDERS))}"
        )
    return order


def _int(raw: str | None, default: int, name: str) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{name} must not be negative, got {value}")
    return value


async def list_tasks(request: Request, caller: Caller) -> Response:
    try:
        flt = task_filter(request)
    except ConfigurationError as exc:
        return error(400, str(exc))
    try:
        return json_response(await in_thread(queries.list_tasks, state_of(request).app, flt))
    except StoreError as exc:
        return outage(exc)


async def task_detail(request: Request, caller: Caller) -> Response:
    task_id = request.path_params["task_id"]
    include_args = request.query_params.get("args") in ("1", "true", "yes")
    try:
        record = await in_thread(state_of(request).app.store.get, task_id)
    except StoreError as exc:
        return outage(exc)
    if record is None:
        return error(404, f"no task {task_id} in the store (records are deleted history_ttl after they end)")
    registry = state_of(request).app.registry
    return json_response(queries.task_detail(record, include_args=include_args, registry=registry))


async def task_workflow(request: Request, caller: Caller) -> Response:
    """The workflow the task belongs to (`workflow_view.py`): `{"workflow": {...}}`, or null for none."""
    task_id = request.path_params["task_id"]
    app = state_of(request).app
    try:
        record = await in_thread(app.store.get, task_id)
        if record is None:
            return error(
                404, f"no task {task_id} in the store (records are deleted history_ttl after they end)"
            )
        return json_response({"workflow": await in_thread(workflow_view, app, record)})
    except StoreError as exc:
        return outage(exc)


async def counts(request: Request, caller: Caller) -> Response:
    try:
        return json_response(await in_thread(queries.status_counts, state_of(request).app))
    except StoreError as exc:
        return outage(exc)


async def workers(request: Request, caller: Caller) -> Response:
    try:
        return json_response({"workers": await in_thread(queries.workers, state_of(request).app)})
    except StoreError as exc:
        return outage(exc)


async def queue_list(request: Request, caller: Caller) -> Response:
    state = state_of(request)
    try:
        return json_response({"queues": await in_thread(queries.queues, state.app, state.queues)})
    except StoreError as exc:
        return outage(exc)


async def activity(request: Request, caller: Caller) -> Response:
    """The last hour for the Charts view: ended tasks per minute, runtime percentiles, queue depth."""
    try:
        return json_response(await in_thread(state_of(request).activity.report))
    except StoreError as exc:
        return outage(exc)


async def dead_letter_list(request: Request, caller: Caller) -> Response:
    state = state_of(request)
    try:
        limit = _int(request.query_params.get("limit"), 50, "limit")
        data = await in_thread(queries.dead_letters, state.app, request.query_params.get("queue"), limit)
    except ConfigurationError as exc:
        return error(400, str(exc))
    except (BrokerUnavailable, StoreError) as exc:
        return outage(exc)
    return json_response(data)


async def schedule_list(request: Request, caller: Caller) -> Response:
    """Periodic schedules as `decortask schedules` lists them; `note` says why there are none to show."""
    app = state_of(request).app
    try:
        rows = await in_thread(lambda: schedule_rows(declared_entries(app), app.store, time.time()))
    except ConfigurationError as exc:
        # A store without periodic state (or a bad schedules setting): the section says why, nothing fails.
        return json_response({"schedules": [], "note": mask_text(str(exc))})
    except StoreError as exc:
        return outage(exc)
    return json_response({"schedules": scrub(rows), "note": None})


async def events(request: Request, caller: Caller) -> Response:
    state = state_of(request)
    if state.streams >= MAX_STREAMS:
        return error(429, f"{MAX_STREAMS} live streams are open already; close a dashboard tab")

    async def body() -> Any:
        # Counted once the body runs: a stream whose client left before it began never holds a slot.
        state.streams += 1
        try:
            async for chunk in stream(state.app, in_thread, state.poll_interval, state.closing):
                yield chunk
        finally:
            state.streams -= 1

    return StreamingResponse(body(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


# -- changes -------------------------------------------------------------------------------------------


async def retry(request: Request, caller: Caller) -> Response:
    """Re-run an ended task (the same rules as `decortask retry`): pressing twice makes one new attempt."""
    task_id = request.path_params["task_id"]
    app = state_of(request).app
    try:
        record = await in_thread(rerun_task, app, task_id)
    except TaskNotFound as exc:
        return error(404, str(exc))
    except TaskStateConflict as exc:
        status = exc.status.value if isinstance(exc.status, TaskStatus) else None
        return error(409, str(exc), task_id=task_id, status=status)
    except BrokerUnavailable as exc:
        # The record is PENDING and its message waits in the store's schedule: the retry did happen.
        return json_response({"task": None, "attempt": None, "warning": mask_text(str(exc))}, 202)
    except StoreError as exc:
        return outage(exc)
    return json_response({"task": queries.task_detail(record), "attempt": record.attempt + 1}, 202)


async def cancel(request: Request, caller: Caller) -> Response:
    """Cancel a task (the same request as `decortask cancel`); 409 when it has already ended."""
    task_id = request.path_params["task_id"]
    app = state_of(request).app
    try:
        done = await in_thread(request_cancel, app, task_id)
        record = await in_thread(app.store.get, task_id)
    except TaskNotFound as exc:
        return error(404, str(exc))
    except StoreError as exc:
        return outage(exc)
    status = record.status.value if record is not None else None
    if not done:
        return error(409, f"task {task_id} has already ended ({status}); nothing to cancel", status=status)
    return json_response(
        {
            "task": queries.task_detail(record) if record is not None else None,
            "cancelled": status == TaskStatus.CANCELLED.value,
            "stop_requested": status != TaskStatus.CANCELLED.value,
        }
    )


async def pause(request: Request, caller: Caller) -> Response:
    """Pause a schedule (as `decortask schedules pause`): its slots are skipped until it is resumed."""
    return await _set_paused(request, True)


async def resume(request: Request, caller: Caller) -> Response:
    """Resume a schedule (as `decortask schedules resume`) from its next slot."""
    return await _set_paused(request, False)


async def _set_paused(request: Request, paused: bool) -> Response:
    name = request.path_params["name"]
    app = state_of(request).app

    def change() -> str | None:
        problem = unknown_schedule(name, declared_entries(app), app.store)
        if problem is None and paused:
            pause_schedule(app.store, name)
        elif problem is None:
            resume_schedule(app.store, name)
        return problem

    try:
        problem = await in_thread(change)
    except ConfigurationError as exc:
        return error(409, str(exc))
    except StoreError as exc:
        return outage(exc)
    if problem is not None:
        return error(404, problem)
    return json_response({"name": name, "paused": paused})


async def replay_dead_letters(request: Request, caller: Caller) -> Response:
    """Replay dead letters: JSON `{"queue": Q, "ids": [...]}` or `{"queue": Q, "all": true}`."""
    body = await read_body(request)
    if body is None:
        return error(413, f"request body over {MAX_BODY} bytes")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return error(400, 'send JSON: {"queue": "...", "ids": ["..."]} or {"queue": "...", "all": true}')
    if not isinstance(data, dict):
        return error(400, "the body must be a JSON object")
    queue, ids, everything = data.get("queue"), data.get("ids"), data.get("all") is True
    if queue is not None and not isinstance(queue, str):
        return error(400, "queue must be a string")
    if everything == (ids is not None):
        return error(400, 'give either "ids" (a list of dead-letter ids) or "all": true')
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or not ids):
        return error(400, "ids must be a non-empty list of dead-letter ids as the list shows them")
    app = state_of(request).app
    try:
        report = await in_thread(replay, app, queue, None if everything else ids)
    except ConfigurationError as exc:
        return error(400, str(exc))
    except (BrokerUnavailable, StoreError) as exc:
        return outage(exc)
    outcomes = [
        {"id": o.id, "action": o.action, "detail": mask_text(o.detail), "attempt": o.attempt}
        for o in report.outcomes
    ]
    return json_response({"ok": report.ok, "outcomes": outcomes, "missing": report.missing})


async def healthz(request: Request) -> Response:
    return json_response({"ok": True})
