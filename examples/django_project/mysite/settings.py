"""Settings of the notes example: a Django project whose view enqueues a task that writes through the ORM.

Data (the Django database and decortask's SQLite broker and store) live in `NOTES_DATA_DIR`, by default a
directory under the system's temporary directory: never in the source tree.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("NOTES_DATA_DIR") or Path(tempfile.gettempdir()) / "decortask-notes-example")
DATA_DIR.mkdir(parents=True, exist_ok=True)

# A development key: set DJANGO_SECRET_KEY anywhere else.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-decortask-notes-example")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "decortask.contrib.django",
    "notes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
WSGI_APPLICATION = "mysite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "notes.sqlite3",
        # The web process and the worker write the same file: wait for each other's locks.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"

# decortask: any Settings field, as a dict (or as DECORTASK_<FIELD> settings). The environment variables
# DECORTASK_BROKER_URL / DECORTASK_STORE_URL switch to Redis or RabbitMQ; by default both are one SQLite file.
_EMBEDDED = f"sqlite:///{DATA_DIR / 'decortask.db'}"
DECORTASK = {
    "broker_url": os.environ.get("DECORTASK_BROKER_URL") or _EMBEDDED,
    "store_url": os.environ.get("DECORTASK_STORE_URL") or _EMBEDDED,
}
