"""garrison's settings from Django's settings: the ``GARRISON`` dict, then ``GARRISON_*`` variables.

::

    GARRISON = {
        "DATABASE": "default",                  # share this Django database (PostgreSQL) with garrison
        "BROKER_URL": "redis://localhost:6379/0",
        "AUTOMATIONS": ["signups.automations"],
        "IN_TRANSACTION": True,                 # ingest() writes in the app's transaction by default
    }

Every key of :class:`garrison.config.Settings` is accepted in capitals (``DATABASE_URL``, ``TENANT``,
``RELAY_AFTER``...); what the dict leaves out comes from the environment, as everywhere in garrison. Two
keys are Django's own: ``DATABASE`` (a ``DATABASES`` alias whose PostgreSQL database garrison's tables
live in; garrison's URL is built from it) and ``IN_TRANSACTION`` (the default of ``ingest``'s
``in_transaction``).

Celery's Django settings (``CELERY_*``, the ``namespace="CELERY"`` convention) are honoured or refused,
never silently ignored. ``CELERY_BROKER_URL`` is garrison's broker when ``GARRISON["BROKER_URL"]`` (or
``GARRISON_BROKER_URL``) does not name one, and refused when it names another; a ``visibility_timeout`` in
``CELERY_BROKER_TRANSPORT_OPTIONS`` likewise. A ``CELERY_*`` setting garrison cannot run with (pickle,
eager mode...) is refused, naming it. Any other ``CELERY_*`` setting configures your own Celery app, not
garrison's worker (``manage.py garrison worker``): garrison says so once, naming them, at startup.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL

from garrison.config import Settings
from garrison.config.conventions import conflicts
from garrison.contrib import settings_from_config
from garrison.errors import ConfigurationError

log = logging.getLogger("garrison.django")

__all__ = ["DjangoOptions", "read_options"]

# Keys of the GARRISON dict that configure the integration rather than garrison itself.
OWN_KEYS = ("DATABASE", "IN_TRANSACTION")
# Django OPTIONS that are libpq connection parameters (the rest, e.g. "pool", are Django's).
LIBPQ_OPTIONS = (
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "connect_timeout", "application_name",
    "options", "target_session_attrs", "service", "passfile", "keepalives", "keepalives_idle",
)


@dataclass(frozen=True, slots=True)
class DjangoOptions:
    """What the Django integration runs with."""

    settings: Settings
    # The Django database alias garrison shares (its tables live there), or None.
    database: str | None
    # ``ingest``'s default: write in the app's transaction (needs ``database``) or after its commit.
    in_transaction: bool


def read_options() -> DjangoOptions:
    """Read ``settings.GARRISON`` (absent: environment only). Errors name the key to fix."""
    from django.conf import settings as django_settings  # type: ignore[import-untyped]

    raw = getattr(django_settings, "GARRISON", None) or {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"settings.GARRISON must be a dict, not {type(raw).__name__}", field="GARRISON")
    given: dict[str, Any] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or name != name.upper():
            raise ConfigurationError(f"GARRISON[{name!r}]: keys are in capitals, e.g. 'BROKER_URL'", field=str(name))
        if name not in OWN_KEYS:
            given[name.lower()] = value

    database = raw.get("DATABASE")
    if database is not None:
        if "DATABASE_URL" in raw:
            raise ConfigurationError(
                'GARRISON has both "DATABASE" and "DATABASE_URL": name a Django database to share, '
                "or give garrison a URL of its own, not both",
                field="DATABASE",
            )
        given["database_url"] = database_url(database)

    in_transaction = raw.get("IN_TRANSACTION", False)
    if not isinstance(in_transaction, bool):
        raise ConfigurationError(
            f'GARRISON["IN_TRANSACTION"] must be True or False, not {in_transaction!r}', field="IN_TRANSACTION"
        )
    if in_transaction and database is None:
        raise ConfigurationError(
            'GARRISON["IN_TRANSACTION"] needs GARRISON["DATABASE"]: events can only share a transaction with '
            "the app when garrison's tables are in the app's database",
            field="IN_TRANSACTION",
        )
    settings = settings_from_config(given, lambda name: f'GARRISON["{name.upper()}"]')
    settings = _with_celery_settings(settings, given, django_settings)
    return DjangoOptions(settings=settings, database=database, in_transaction=in_transaction)


# CELERY_* settings that garrison's own Celery app honours (mapped to its settings above) or judges.
HONOURED = ("CELERY_BROKER_URL", "CELERY_BROKER_TRANSPORT_OPTIONS")
JUDGED = ("accept_content", "task_serializer", "result_serializer", "event_serializer", "task_always_eager")


def _with_celery_settings(settings: Settings, given: Mapping[str, Any], django_settings: Any) -> Settings:
    """Apply ``CELERY_BROKER_URL`` (and its visibility timeout) to garrison's settings, or refuse them
    when garrison's own settings say otherwise; refuse a CELERY_* value garrison cannot run with; name the
    rest once in the log."""
    celery = {name: getattr(django_settings, name) for name in dir(django_settings) if name.startswith("CELERY_")}
    if not celery:
        return settings
    overrides: dict[str, Any] = {}
    broker = celery.get("CELERY_BROKER_URL")
    if broker:
        ours = given.get("broker_url") or Settings.from_env().broker_url
        if "broker_url" in given or ours != "filesystem://":
            if str(ours) != str(broker):
                raise ConfigurationError(
                    f"settings.CELERY_BROKER_URL = {_safe(broker)!r}, but garrison's broker is {_safe(str(ours))!r} "
                    '(GARRISON["BROKER_URL"] or GARRISON_BROKER_URL): garrison\'s workers would not see your '
                    "Celery app's broker. Remove one of them, or make them equal",
                    field="CELERY_BROKER_URL",
                )
        else:
            overrides["broker_url"] = str(broker)
    options = celery.get("CELERY_BROKER_TRANSPORT_OPTIONS") or {}
    visibility = options.get("visibility_timeout") if isinstance(options, Mapping) else None
    if visibility is not None and "broker_visibility_timeout" not in given:
        overrides["broker_visibility_timeout"] = float(visibility)
    problems = conflicts({name[len("CELERY_"):].lower(): value for name, value in celery.items()},
                         label=lambda n: f"settings.CELERY_{n.upper()}", only=JUDGED)
    if problems:
        raise ConfigurationError("garrison cannot run with these Celery settings:\n  " + "\n  ".join(problems),
                                 field="CELERY")
    others = sorted(set(celery) - set(HONOURED))
    if others:
        log.warning(
            "these CELERY_* settings configure your own Celery app, not garrison's worker (manage.py garrison "
            "worker), which takes only CELERY_BROKER_URL and CELERY_BROKER_TRANSPORT_OPTIONS' visibility_timeout: "
            "%s. To run garrison's tasks in your app instead, call garrison.tasks.install(app)", ", ".join(others),
        )
    try:
        return settings.with_overrides(**overrides) if overrides else settings
    except ConfigurationError as exc:
        raise ConfigurationError(f"with your CELERY_* settings applied: {exc.message}", field="CELERY") from exc


def _safe(url: str) -> str:
    """A URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else url


def database_url(alias: Any) -> str:
    """garrison's URL for the Django database ``alias``, which must be PostgreSQL on psycopg 3."""
    from django.db import connections  # type: ignore[import-untyped]

    if not isinstance(alias, str) or alias not in connections.settings:
        known = ", ".join(repr(a) for a in connections.settings)
        raise ConfigurationError(
            f'GARRISON["DATABASE"] = {alias!r} is not in settings.DATABASES (it has {known})', field="DATABASE"
        )
    conf = connections.settings[alias]
    if conf.get("ENGINE") != "django.db.backends.postgresql":
        raise ConfigurationError(
            f'GARRISON["DATABASE"] = {alias!r} uses {conf.get("ENGINE")!r}; sharing a database with garrison '
            "needs django.db.backends.postgresql",
            field="DATABASE",
        )
    from django.db.backends.postgresql.psycopg_any import is_psycopg3  # type: ignore[import-untyped]

    if not is_psycopg3:
        raise ConfigurationError(
            f'GARRISON["DATABASE"] = {alias!r}: Django is using psycopg2; garrison shares a connection only '
            "with psycopg 3",
            field="DATABASE",
        )
    options = conf.get("OPTIONS") or {}
    query = {k: str(options[k]) for k in LIBPQ_OPTIONS if options.get(k) is not None}
    host = conf.get("HOST") or None
    if host and host.startswith("/"):  # a Unix socket directory
        query["host"], host = host, None
    url = URL.create(
        "postgresql",
        username=conf.get("USER") or None,
        password=conf.get("PASSWORD") or None,
        host=host,
        port=int(conf["PORT"]) if conf.get("PORT") else None,
        database=conf.get("NAME") or None,
        query=query,
    )
    return url.render_as_string(hide_password=False)
