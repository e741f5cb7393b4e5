"""Serve the dashboard with uvicorn (what `decortask dashboard` runs)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import uvicorn

from .app import create_dashboard

if TYPE_CHECKING:
    from ..app import Decortask
    from .api import DashboardState

logger = logging.getLogger("decortask.dashboard")
#: Seconds open connections (event streams) get to close after SIGTERM/SIGINT.
SHUTDOWN_GRACE = 3


class _Server(uvicorn.Server):
    """Ends the event streams as soon as shutdown starts, instead of waiting for browsers to hang up."""

    def __init__(self, config: uvicorn.Config, state: DashboardState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            loop.call_soon_threadsafe(self._state.closing.set)
        super().handle_exit(sig, frame)


def serve(
    app: Decortask,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    queues: tuple[str, ...] = (),
    allowed_origins: tuple[str, ...] = (),
    log_level: str = "info",
) -> None:
    """Run the dashboard until SIGTERM/SIGINT.

    Raises:
        ConfigurationError: no token on a non-loopback host.
    """
    dashboard = create_dashboard(app, token=token, host=host, queues=queues, allowed_origins=allowed_origins)
    config = uvicorn.Config(
        dashboard,
        host=host,
        port=port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        # The dashboard sets its own security headers; uvicorn's Server header says nothing useful.
        server_header=False,
        proxy_headers=False,
    )
    _Server(config, dashboard.state.dashboard).run()
