"""`create_dashboard`: the ASGI app (pages, login, JSON API, event stream) behind security headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError, StoreError, missing_extra
from ..security import mask_text
from . import api, page, queries
from .assets import SCRIPT, STYLES
from .auth import CSRF_FIELD, SESSION_COOKIE, Caller, Guard, check_exposure
from .chart_script import CHART_SCRIPT, CHART_STYLES
from .workflow_html import WORKFLOW_STYLES
from .workflow_view import workflow_view

if TYPE_CHECKING:
    from ..app import Decortask

#: Scripts and styles from the dashboard itself only; no inline script, no framing, no plugins.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    # Task data, CSRF tokens: nothing the dashboard sends may be kept by a browser or proxy cache.
    "cache-control": "no-store",
}


def create_dashboard(
    app: Decortask,
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    allowed_origins: Iterable[str] = (),
    queues: Iterable[str] = (),
    poll_interval: float = 0.5,
) -> Starlette:
    """The dashboard for `app` as an ASGI app, to be served at the root path (`decortask dashboard` does).

    Args:
        app: the decortask app whose store and broker to show.
        token: the access token (Bearer header or login form). None is allowed only when `host` is loopback.
        host: the address it will be served on; decides whether a token is required.
        allowed_origins: public origins POSTs may come from besides the Host header's own, for a proxy.
        queues: queues to show even before any task was sent to them.
        poll_interval: seconds between the event stream's store polls.

    Raises:
        ConfigurationError: no token on a non-loopback host, or a bad `poll_interval`.
    """
    check_exposure(host, token)
    if poll_interval <= 0:
        raise ConfigurationError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
    guard = Guard(token, tuple(allowed_origins))
    state = api.DashboardState(app, guard, tuple(queues), poll_interval)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # Queue depth has no history in the broker: the dashboard samples it while it runs.
        sampler = asyncio.create_task(
            state.activity.sample_queues(lambda: queries.queues(state.app, state.queues), state.closing)
        )
        yield
        state.closing.set()
        sampler.cancel()  # not waited for: a broker call that hangs must not hold up the shutdown

    routes = [
        Route("/", index),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/tasks/{task_id}", task_page),
        Route("/assets/dashboard.js", script),
        Route("/assets/dashboard.css", styles),
        Route("/healthz", api.healthz),
        Route("/api/session", api.guarded(api.session_info)),
        Route("/api/overview", api.guarded(api.overview)),
        Route("/api/tasks", api.guarded(api.list_tasks)),
        Route("/api/tasks/{task_id}", api.guarded(api.task_detail)),
        Route("/api/tasks/{task_id}/workflow", api.guarded(api.task_workflow)),
        Route("/api/tasks/{task_id}/retry", api.guarded(api.retry, post=True), methods=["POST"]),
        Route("/api/tasks/{task_id}/cancel", api.guarded(api.cancel, post=True), methods=["POST"]),
        Route("/api/counts", api.guarded(api.counts)),
        Route("/api/workers", api.guarded(api.workers)),
        Route("/api/queues", api.guarded(api.queue_list)),
        Route("/api/activity", api.guarded(api.activity)),
        Route("/api/deadletters", api.guarded(api.dead_letter_list)),
        Route("/api/deadletters/replay", api.guarded(api.replay_dead_letters, post=True), methods=["POST"]),
        Route("/api/schedules", api.guarded(api.schedule_list)),
        # `path`: a schedule's name is any text (a key of the schedules setting), slashes included.
        Route("/api/schedules/{name:path}/pause", api.guarded(api.pause, post=True), methods=["POST"]),
        Route("/api/schedules/{name:path}/resume", api.guarded(api.resume, post=True), methods=["POST"]),
        Route("/api/events", api.guarded(api.events)),
        # Prometheus text format, cluster-wide numbers from the store (docs/metrics.md); same auth as the API.
        Route("/metrics", api.guarded(metrics_endpoint(app, state.queues))),
    ]
    dashboard = Starlette(routes=routes, lifespan=lifespan)
    dashboard.state.dashboard = state
    # Outermost: the Host check and the headers apply to every response, errors included.
    dashboard.add_middleware(SecurityHeaders, guard=guard)
    return dashboard


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response, and refuses foreign Host names on an open dashboard."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if not self.guard.host_allowed(host):
            refusal = PlainTextResponse(
                "this dashboard has no token and answers only to localhost/127.0.0.1; "
                "open it by that name, or start it with --token",
                status_code=403,
            )
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def metrics_endpoint(
    app: Decortask, queues: tuple[str, ...]
) -> Callable[[Request, Caller], Awaitable[Response]]:
    """GET /metrics: the store's records by task, queue and state, queue depth and live workers
    (`decortask.contrib.prometheus.StoreMetrics`, built at the first scrape: the 'metrics' extra)."""
    built: list[Any] = []

    async def metrics(request: Request, caller: Caller) -> Response:
        if not built:
            try:
                from ..contrib.prometheus import StoreMetrics
            except ImportError as exc:
                return PlainTextResponse(str(missing_extra("/metrics", "metrics", exc)), status_code=501)
            built.append(StoreMetrics(app, queues))
        from ..contrib.prometheus import CONTENT_TYPE_LATEST

        body = await api.in_thread(built[0].exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics


# -- pages ---------------------------------------------------------------------------------------------


async def index(request: Request) -> Response:
    caller = api.caller_of(request)
    if caller is None:
        return RedirectResponse("/login", status_code=303)
    state = api.state_of(request)
    session, fresh = api.ensure_session(request) if caller.session is None else (caller.session, False)
    body = page.shell(
        state.guard.csrf_token(session), queries.overview(state.app), can_logout=caller.method == "session"
    )
    response = HTMLResponse(body)
    if fresh:
        api.set_session_cookie(request, response, session)
    return response


async def task_page(request: Request) -> Response:
    if api.caller_of(request) is None:
        return RedirectResponse("/login", status_code=303)
    task_id = request.path_params["task_id"]
    try:
        record = await api.in_thread(api.state_of(request).app.store.get, task_id)
    except StoreError as exc:
        return PlainTextResponse(mask_text(f"the store is unreachable: {exc}"), status_code=503)
    if record is None:
        return PlainTextResponse(f"no task {task_id} in the store", status_code=404)
    view = await api.in_thread(workflow_view, api.state_of(request).app, record)
    return HTMLResponse(page.task_page(queries.task_detail(record), view))


async def login_form(request: Request) -> Response:
    state = api.state_of(request)
    if not state.guard.requires_token:
        return RedirectResponse("/", status_code=303)
    session, fresh = api.ensure_session(request)
    response = HTMLResponse(page.login(state.guard.csrf_token(session)))
    if fresh:
        api.set_session_cookie(request, response, session)
    return response


async def login(request: Request) -> Response:
    state = api.state_of(request)
    if not state.guard.requires_token:
        return RedirectResponse("/", status_code=303)
    body = await api.read_body(request)
    if body is None:
        return PlainTextResponse("request too large", status_code=413)
    fields = api.form_fields(body)
    supplied_csrf, supplied_token = fields.get(CSRF_FIELD), fields.get("token", "")
    anonymous = Caller("login", request.cookies.get(SESSION_COOKIE) or None)
    failure = api.csrf_failure(request, anonymous, supplied_csrf)
    if failure is not None:
        return failure
    client = request.client.host if request.client is not None else ""
    if state.guard.login_blocked(client):
        return PlainTextResponse(
            "too many wrong tokens from this address; wait a minute before trying again", status_code=429
        )
    session = state.guard.login(supplied_token, client)
    if session is None:
        again, _ = api.ensure_session(request)
        return HTMLResponse(
            page.login(state.guard.csrf_token(again), "That token is not right."), status_code=401
        )
    response = RedirectResponse("/", status_code=303)
    api.set_session_cookie(request, response, session)
    return response


async def logout(request: Request) -> Response:
    caller = api.caller_of(request)
    if caller is None:
        return RedirectResponse("/login", status_code=303)
    body = await api.read_body(request)
    if body is None:
        return PlainTextResponse("request too large", status_code=413)
    failure = api.csrf_failure(request, caller, api.form_fields(body).get(CSRF_FIELD))
    if failure is not None:
        return failure
    api.state_of(request).guard.logout(caller.session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def script(request: Request) -> Response:
    # One file (one <script>): the page's script and the Charts view's, which it calls.
    return Response(SCRIPT + CHART_SCRIPT, media_type="text/javascript")


async def styles(request: Request) -> Response:
    return Response(STYLES + CHART_STYLES + WORKFLOW_STYLES, media_type="text/css")
