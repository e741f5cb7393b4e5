"""The Django app config: builds the project's decortask app and discovers `tasks` modules at startup."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed
from django.utils.module_loading import autodiscover_modules

from .configure import build_app, is_decortask_setting


class DecortaskConfig(AppConfig):  # type: ignore[misc]  # django ships no type hints
    """`decortask.contrib.django` in `INSTALLED_APPS`."""

    name = "decortask.contrib.django"
    label = "decortask"
    verbose_name = "decortask"

    def ready(self) -> None:
        build_app()
        autodiscover_modules("tasks")
        setting_changed.connect(_rebuild_on_change, dispatch_uid="decortask.contrib.django.settings")


def _rebuild_on_change(*, setting: str, **kwargs: Any) -> None:
    # `override_settings(DECORTASK_BROKER_URL=...)` in a test switches the app, like Django's own caches.
    if is_decortask_setting(setting):
        build_app()
