"""Flask integration: `Decortask(app)` / `init_app(app)`, settings from `app.config`, tasks in the app context.

```python
from flask import Flask
from decortask.contrib.flask import Decortask

app = Flask(__name__)
app.config["DECORTASK_BROKER_URL"] = "redis://localhost:6379/0"
decortask = Decortask(app)          # or Decortask() at module level and decortask.init_app(app) in a factory
```

Run a worker with `decortask worker -A yourpackage.app:app`: the CLI finds the extension in
`app.extensions["decortask"]`. See docs/integrations/flask.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from flask import Flask
from flask.ctx import AppContext

from .. import app as core
from ..config import Settings, settings_from_config
from ..context import TaskContext
from ..message import Message
from ..middleware import ExecutionOutcome, Middleware

logger = logging.getLogger("decortask.flask")

#: The key under `app.extensions` where the extension lives (what `decortask worker -A pkg:app` looks up).
EXTENSION_KEY = "decortask"

# The app contexts pushed for the tasks running in this thread (or asyncio task), innermost last: contextvars,
# because an event loop runs many `async def` tasks on one thread; a stack, because a task can run another
# in the same thread (eager mode in tests, `run_pending` inside a task).
_pushed: ContextVar[tuple[AppContext, ...]] = ContextVar("decortask_flask_app_contexts", default=())


def settings_from_flask(config: Any) -> dict[str, Any]:
    """The `Settings` fields set in a Flask `app.config` (`DECORTASK_*` keys, or a `DECORTASK` dict)."""
    return settings_from_config("app.config", config.get("DECORTASK"), config)


class FlaskAppContext(Middleware):
    """Runs every task inside its Flask app's application context, like a request would.

    `current_app`, `g` and extensions that rely on the app context (e.g. Flask-SQLAlchemy) work in tasks,
    and `teardown_appcontext` functions run after each attempt.
    """

    def __init__(self, extension: Decortask) -> None:
        self.extension = extension
        self._warned = False

    def before_execute(self, app: core.Decortask, message: Message, ctx: TaskContext) -> None:
        flask_app = self.extension.flask_app
        if flask_app is None:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "the Flask extension was never bound to an app (init_app), so tasks run without an app "
                    "context; point the worker's -A at the Flask app, e.g. -A yourpackage.wsgi:app"
                )
            return
        pushed = flask_app.app_context()
        pushed.push()
        _pushed.set((*_pushed.get(), pushed))

    def after_execute(
        self, app: core.Decortask, message: Message, ctx: TaskContext, outcome: ExecutionOutcome
    ) -> None:
        stack = _pushed.get()
        if not stack:
            return
        _pushed.set(stack[:-1])
        stack[-1].pop(outcome.exception if isinstance(outcome.exception, Exception) else None)


class Decortask(core.Decortask):
    """decortask as a Flask extension: a `decortask.Decortask` configured from `app.config`.

    Every `Settings` field can be set as `app.config["DECORTASK_<FIELD>"]` (e.g. `DECORTASK_BROKER_URL`) or
    in an `app.config["DECORTASK"]` dict; keyword arguments given here win over `app.config`, which wins
    over `DECORTASK_*` environment variables. `init_app` makes this the current app for `.delay()`.

    Args:
        app: the Flask app; or call `init_app(app)` later (application factories).
        middleware: more middleware, run after the app-context one.
        **settings: `Settings` fields that win over `app.config`.
    """

    def __init__(
        self, app: Flask | None = None, *, middleware: Iterable[Middleware] = (), **settings: Any
    ) -> None:
        self._explicit = dict(settings)
        #: The Flask app tasks run in; None until `init_app`.
        self.flask_app: Flask | None = None
        # Until init_app, the environment and the keyword arguments configure it.
        super().__init__(set_default=False, **settings)
        self.add_middleware(FlaskAppContext(self))
        for extra in middleware:
            self.add_middleware(extra)
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        flask_name = self.flask_app.name if self.flask_app is not None else None
        return f"<Decortask flask_app={flask_name!r} broker={self.broker_url_masked} store={self.store_url_masked}>"

    def init_app(self, app: Flask) -> None:
        """Configure from `app.config`, register as `app.extensions["decortask"]` and become the current app.

        Calling it again with another app (a test creating one app per case) moves the extension to that app.

        Raises:
            ConfigurationError: an unknown `DECORTASK_*` key or an invalid value in `app.config`.
        """
        settings = Settings.load({**settings_from_flask(app.config), **self._explicit})
        if settings != self.settings:
            self.close()  # connections of the old settings; reopened lazily with the new ones
            self.settings = settings
            self._cipher = None
        self.flask_app = app
        app.extensions[EXTENSION_KEY] = self
        self.set_default()
