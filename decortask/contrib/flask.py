"""Flask integration: `Decortask(app)` / `init_app(app)`, settings from `app.config`, tasks in the app context.

```python
from flask import Flask
from decortask.contrib.flask import Decortask

app = Flask(__name__)
app.config["DECORTASK_BROKER_URL"] = "redis://localhost:6379/0"
decortask = Decortask(app)          # or Decortask() at module level and decortask.init_app(app) in a factory
```

Run a worker with `decortask worker -A yourpackage.app:app` (or `-A yourpackage:create_app`, a factory the
worker calls): the CLI finds the extension in `app.extensions["decortask"]`. See docs/integrations/flask.md.
"""

from __future__ import annotations

import inspect
import logging
import sys
import weakref
from collections.abc import Iterable
from contextvars import ContextVar
from types import FrameType, ModuleType
from typing import Any, ClassVar

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
#: Factory names Flask's own `--app` looks for; the worker's hint names the one the project has.
FACTORY_NAMES = ("create_app", "make_app")


def settings_from_flask(config: Any) -> dict[str, Any]:
    """The `Settings` fields set in a Flask `app.config` (`DECORTASK_*` keys, or a `DECORTASK` dict)."""
    return settings_from_config("app.config", config.get("DECORTASK"), config)


class FlaskAppContext(Middleware):
    """Runs every task inside its Flask app's application context, like a request would.

    `current_app`, `g` and extensions that rely on the app context (e.g. Flask-SQLAlchemy) work in tasks,
    and `teardown_appcontext` functions run after each attempt.
    """

    #: A test's own app (`decortask.testing.isolated_app`, the pytest plugin's fixtures) takes this middleware
    #: over from the app it replaces, so tasks run in the Flask app's context in tests too.
    inherited_by_test_apps: ClassVar[bool] = True

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
        #: The module that created the extension (where a worker's hint looks for the app or its factory).
        self.created_in = _creating_module(inspect.currentframe())
        # Until init_app, the environment and the keyword arguments configure it.
        super().__init__(set_default=False, **settings)
        #: The middleware that runs tasks in the app context (a test's own app takes it over).
        self.app_context = FlaskAppContext(self)
        self.add_middleware(self.app_context)
        _extensions.add(self)
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
        test_app = _current_test_app()
        if test_app is None:
            self.set_default()
            return
        # A test's own app (the pytest plugin's decortask_app, decortask_eager, decortask_worker) is current:
        # it stays current, so `.delay()` keeps going to its broker and store (and its eager mode), and it
        # runs tasks in this app's context from now on, as it would had this app existed before the test.
        others = [mw for mw in test_app.middleware if not isinstance(mw, FlaskAppContext)]
        test_app.middleware = [self.app_context, *others]
        logger.debug("Flask app %s bound during a test: tasks run on the test's app %r", app.name, test_app)


#: Every extension created in this process, so a worker can tell one that was never bound to an app.
_extensions: weakref.WeakSet[Decortask] = weakref.WeakSet()


def _creating_module(frame: FrameType | None) -> str | None:
    """The module whose code created the extension: past this module and subclasses' `__init__`s."""
    while frame is not None and (
        frame.f_globals.get("__name__") == __name__ or frame.f_code.co_name == "__init__"
    ):
        frame = frame.f_back
    return frame.f_globals.get("__name__") if frame is not None else None


def _current_test_app() -> core.Decortask | None:
    if "decortask.testing" not in sys.modules:
        return None  # nothing imported the module that makes test apps: there is none
    from ..testing import isolated_test_app

    return isolated_test_app()


def _root(module: str | None) -> str:
    return (module or "").partition(".")[0]


def _app_entry_point(extension: Decortask) -> str | None:
    """What `-A` should name for `extension`: a Flask app carrying it, else an app factory, in its package.

    Only modules already imported are searched (the ones `-A` imported): nothing is imported to find it.
    """
    package = _root(extension.created_in)
    if not package:
        return None
    # The creating module first (flaskr: the package's __init__ holds create_app), then its package's.
    names = [extension.created_in or "", *sorted(n for n in sys.modules if _root(n) == package)]
    modules = [m for m in map(sys.modules.get, dict.fromkeys(names)) if isinstance(m, ModuleType)]
    for module in modules:
        for attr, value in vars(module).items():
            if isinstance(value, Flask) and value.extensions.get(EXTENSION_KEY) is extension:
                return f"{module.__name__}:{attr}"
    for module in modules:
        for attr in FACTORY_NAMES:
            if inspect.isfunction(getattr(module, attr, None)):
                return f"{module.__name__}:{attr}"
    return None


def unbound_extension_problem(app: core.Decortask, target: str | None) -> str | None:
    """Why a worker started with `-A target` must not run, if the tasks' Flask extension has no Flask app.

    A worker pointed at the tasks module (`-A flaskr.tasks`) imports the package that creates the extension
    but never calls the app factory: `init_app` never runs, so the worker would take its settings from the
    environment instead of `app.config` (ignoring `FLASK_DECORTASK_*`) and run every task outside the
    application context, failing each one ("Working outside of application context"). Returns the one
    line to refuse with, naming the `-A` to use; None when the worker's app is fine.
    """
    if isinstance(app, Decortask):
        if app.flask_app is not None:
            return None
        suspects = [app]
    else:
        # The worker uses a plain app (the default one, from the environment): it matters only if the
        # registered tasks live in the package of an extension that was never bound.
        task_packages = {
            _root(getattr(t.fn, "__module__", None))
            for t in map(app.registry.find, app.registry.names())
            if t is not None
        }
        suspects = [
            ext
            for ext in list(_extensions)
            if ext.flask_app is None and _root(ext.created_in) in task_packages | {_root(target)}
        ]
    if not suspects:
        return None
    extension = suspects[0]
    entry = _app_entry_point(extension)
    fix = (
        f"start the worker with -A {entry}"
        if entry
        else "point -A at the Flask app (-A yourpackage.wsgi:app) or its factory (-A yourpackage:create_app)"
    )
    return (
        f"-A {target or '(none)'} loads the Flask extension created in {extension.created_in}, but it was "
        "never bound to a Flask app (init_app did not run: the app factory was not called), so this worker "
        "would ignore app.config (FLASK_DECORTASK_* too) and run every task outside the application "
        f"context; {fix}"
    )
