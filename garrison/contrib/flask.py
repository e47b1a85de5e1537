"""garrison in a Flask app: an extension that builds one client per app from ``app.config``.

::

    from flask import Blueprint, Flask, request
    from garrison.contrib.flask import Garrison

    garrison = Garrison()
    views = Blueprint("newsletter", __name__)

    @views.post("/subscribe")
    def subscribe():
        email = request.form["email"]
        event = garrison.ingest("app/newsletter.subscribed", email, {"email": email})
        return {"event": event.id}, 202

    def create_app():
        app = Flask(__name__)
        app.config["GARRISON_AUTOMATIONS"] = ["newsletter.automations"]
        garrison.init_app(app)
        app.register_blueprint(views)
        return app

``GARRISON_*`` keys of ``app.config`` are garrison's settings (``GARRISON_DATABASE_URL``,
``GARRISON_BROKER_URL``, ``GARRISON_TENANT``, ``GARRISON_AUTOMATIONS``...); what the config leaves out
comes from the environment. The client lives as long as the app (``app.extensions["garrison"]``): its
connection pool serves every request, so nothing is set up or torn down per request. ``flask garrison
...`` is the ``garrison`` command with the app's settings (``db init``, ``worker``, ``beat``...).

The event is written in garrison's own transaction when ``ingest`` is called; an app that must not send
an event for work it later rolls back calls ``ingest`` after its own commit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from garrison.client import Garrison as Client
from garrison.clock import Clock
from garrison.config import Settings
from garrison.contrib import SETTING_NAMES, settings_from_config
from garrison.core.contract import Automation
from garrison.core.ingest import IngestedEvent
from garrison.core.publisher import Publisher
from garrison.errors import ConfigurationError

__all__ = ["EXTENSION", "Garrison", "settings_from_app"]

EXTENSION = "garrison"
PREFIX = "GARRISON_"


class Garrison:
    """The Flask extension. ``Garrison(app)``, or ``Garrison()`` then ``init_app(app)`` in a factory.

    ``automations``, ``publisher`` and ``clock`` are handed to each app's client, as to
    :class:`garrison.Garrison`.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        automations: Iterable[Automation] = (),
        publisher: Publisher | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._automations = tuple(automations)
        self._publisher = publisher
        self._clock = clock
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the app's settings now (a bad one raises here, naming the key) and attach a client.
        No connection is opened until the first call needs one."""
        client = Client(
            settings_from_app(app), automations=self._automations, publisher=self._publisher, clock=self._clock
        )
        app.extensions[EXTENSION] = client
        app.cli.add_command(garrison_command)

    @property
    def client(self) -> Client:
        """The current app's client (needs an app context, as every Flask extension's state does)."""
        client = current_app.extensions.get(EXTENSION)
        if not isinstance(client, Client):
            raise ConfigurationError(
                f"garrison is not set up on the Flask app {current_app.name!r}: call Garrison(app) or "
                "garrison.init_app(app) in the app factory",
                field="app.extensions",
            )
        return client

    def ingest(
        self,
        name: str,
        key: str,
        data: Mapping[str, Any] | None = None,
        *,
        tenant: str | None = None,
        idempotency_key: str | None = None,
        target: str | None = None,
        system: bool = False,
    ) -> IngestedEvent:
        """:meth:`garrison.Garrison.ingest` on the current app's client."""
        return self.client.ingest(
            name, key, data, tenant=tenant, idempotency_key=idempotency_key, target=target, system=system
        )

    def ingest_many(self, events: Iterable[Mapping[str, Any]]) -> list[IngestedEvent]:
        """:meth:`garrison.Garrison.ingest_many` on the current app's client."""
        return self.client.ingest_many(events)


def settings_from_app(app: Flask) -> Settings:
    """garrison's settings from ``app.config``'s ``GARRISON_*`` keys, then the environment. A key that
    is not a setting is kept in ``settings.extra``, as an unknown ``GARRISON_*`` variable is."""
    given: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in app.config.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :].lower()
        if name == "extra" and isinstance(value, Mapping):
            extra.update(value)
        elif name in SETTING_NAMES:
            given[name] = value
        else:
            extra[name] = value
    if extra:
        given["extra"] = extra
    return settings_from_config(given, lambda name: f'app.config["{PREFIX}{name.upper()}"]')


@click.command(
    "garrison",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def garrison_command(args: tuple[str, ...]) -> None:
    """Run a garrison command (db init, worker, beat, inspect...) with the app's settings."""
    from garrison.cli import cli

    client = current_app.extensions[EXTENSION]
    # The way `garrison worker` hands settings to Celery and its pool processes.
    os.environ.update(client.settings.as_env())
    cli.main(args=list(args), prog_name="flask garrison")
