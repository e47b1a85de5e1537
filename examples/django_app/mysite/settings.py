"""A minimal Django project that shares its PostgreSQL database with garrison.

Set DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/garrison_example). garrison's broker is
its embedded default (a folder under ./.garrison) unless GARRISON_BROKER_URL says otherwise, e.g.
redis://127.0.0.1:6379/0: settings the GARRISON dict leaves out come from GARRISON_* variables.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "mysite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "garrison.contrib.django",
    "signups",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]


def database(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Every view runs in a transaction: garrison's events follow it (after commit, or inside it).
        "ATOMIC_REQUESTS": True,
    }


DATABASES = {"default": database(os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/garrison_example"))}

GARRISON = {
    # garrison's tables live in the app's own database, so an event can share the app's transaction.
    "DATABASE": "default",
    "AUTOMATIONS": ["signups.automations"],
}
