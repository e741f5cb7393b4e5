"""Importing this module sets up the Django project named by `DJANGO_SETTINGS_MODULE`.

It is the worker's `-A` for a Django project: `python manage.py decortask_worker` passes it, so process-pool
children set Django up too. Equivalent by hand:
`DJANGO_SETTINGS_MODULE=mysite.settings decortask worker -A decortask.contrib.django.project`.
"""

from __future__ import annotations

import os

import django
from django.conf import settings

from ...errors import ConfigurationError

if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
    raise ConfigurationError(
        "decortask.contrib.django.project needs DJANGO_SETTINGS_MODULE (e.g. mysite.settings); "
        "or run the worker with `python manage.py decortask_worker`"
    )
django.setup()  # does nothing when manage.py already did it
