"""The web dashboard: JSON API, server-sent events and an HTML page (needs the `dashboard` extra).

`create_dashboard(app, token=...)` returns an ASGI app; `decortask dashboard` serves it with uvicorn.
"""

from __future__ import annotations

from .app import create_dashboard

__all__ = ["create_dashboard"]
