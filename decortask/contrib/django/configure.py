"""The project's decortask app, built from Django settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings
from django.db import transaction
from django.utils.module_loading import import_string

from ...app import Decortask
from ...config import ENV_PREFIX, settings_from_config
from ...errors import ConfigurationError
from ...middleware import Middleware
from .db import DatabaseConnectionsMiddleware

SOURCE = "Django settings"
#: Dotted paths of extra middleware classes (instantiated without arguments), e.g. Sentry's.
MIDDLEWARE_SETTING = "DECORTASK_MIDDLEWARE"

_project_app: Decortask | None = None


def is_decortask_setting(name: str) -> bool:
    """True for `DECORTASK` and `DECORTASK_*` setting names."""
    return name == "DECORTASK" or name.startswith(ENV_PREFIX)


def settings_from_django(settings: Any = django_settings) -> dict[str, Any]:
    """The `Settings` fields set in Django settings (`DECORTASK` dict and `DECORTASK_*` names)."""
    nested = getattr(settings, "DECORTASK", None)
    if isinstance(nested, dict):
        nested = {key: value for key, value in nested.items() if str(key).lower() != "middleware"}
    prefixed = {
        name: getattr(settings, name)
        for name in dir(settings)
        if name.startswith(ENV_PREFIX) and name != MIDDLEWARE_SETTING
    }
    return settings_from_config(SOURCE, nested, prefixed)


def middleware_from_django(settings: Any = django_settings) -> list[Middleware]:
    """Instances of the classes named by `DECORTASK_MIDDLEWARE` (or `DECORTASK["middleware"]`).

    The names come from the project's settings, never from a message or the store.
    """
    nested = getattr(settings, "DECORTASK", None)
    paths = getattr(settings, MIDDLEWARE_SETTING, None)
    if not paths and isinstance(nested, Mapping):
        paths = nested.get("middleware")
    paths = paths or []
    if isinstance(paths, str) or not all(isinstance(path, str) for path in paths):
        raise ConfigurationError(
            f"{SOURCE}: {MIDDLEWARE_SETTING} must be a list of dotted class paths, got {paths!r}"
        )
    found: list[Middleware] = []
    for path in paths:
        try:
            cls = import_string(path)
        except ImportError as exc:
            raise ConfigurationError(f"{SOURCE}: {MIDDLEWARE_SETTING} entry {path!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Middleware)):
            raise ConfigurationError(
                f"{SOURCE}: {MIDDLEWARE_SETTING} entry {path!r} is not a decortask.Middleware subclass"
            )
        found.append(cls())
    return found


def build_app() -> Decortask:
    """Build the project's app from Django settings and make it the current app.

    Its middleware closes stale database connections around each task (then the `DECORTASK_MIDDLEWARE`
    classes), and its commit hook is `transaction.on_commit`, for `task.delay_on_commit(...)`.

    Raises:
        ConfigurationError: an unknown `DECORTASK_*` setting or an invalid value.
    """
    global _project_app
    middleware = [DatabaseConnectionsMiddleware(), *middleware_from_django()]
    app = Decortask(**settings_from_django(), middleware=middleware)
    app.commit_hook = transaction.on_commit
    previous, _project_app = _project_app, app
    if previous is not None:
        previous.close()  # replaced (override_settings in a test): release its connections
    return app


def project_app() -> Decortask:
    """The app `build_app` made at startup (the current app, unless code made another since)."""
    if _project_app is None:
        raise ConfigurationError(
            "the Django project has no decortask app yet: add 'decortask.contrib.django' to INSTALLED_APPS "
            "and call django.setup() (manage.py does)"
        )
    return _project_app
