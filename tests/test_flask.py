"""The Flask extension, through Flask's test client and the example app in examples/flask_app, on both
backends, with a real worker applying what the requests ingest."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from flask import Flask
from sqlalchemy import select

from garrison.client import Garrison as Client
from garrison.config import Settings
from garrison.contrib.flask import Garrison, settings_from_app
from garrison.errors import ConfigurationError
from garrison.models import EVENTS
from tests.harness import ROOT, WorkerProcess, wait_until

EXAMPLE = ROOT / "examples" / "flask_app"
AUTOMATIONS = ("newsletter.automations",)
Worker = Callable[..., WorkerProcess]

if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    """The example's app factory on given settings; each app's client is closed at the end."""
    from newsletter import create_app

    apps: list[Flask] = []

    def make(settings: Settings, **config: Any) -> Flask:
        # The settings as the strings an environment holds: the extension parses them like from_env.
        app = create_app({**settings.as_env(), **config, "TESTING": True})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["garrison"].db.dispose()


def client_of(app: Flask) -> Client:
    client = app.extensions["garrison"]
    assert isinstance(client, Client)
    return client


def stored(client: Client) -> list[tuple[str, int]]:
    with client.db.session() as s:
        rows = s.execute(
            select(EVENTS.c.key, EVENTS.c.seq).where(EVENTS.c.tenant == client.settings.tenant).order_by(EVENTS.c.id)
        )
        return [(key, seq) for key, seq in rows]


def test_a_request_ingests_and_a_real_worker_applies_the_event(
    backend: str, settings_for: Callable[..., Settings], make_app: Callable[..., Flask], worker: Worker
) -> None:
    settings = settings_for(backend, automations=AUTOMATIONS)
    app = make_app(settings)
    assert client_of(app).settings.as_env() == settings.as_env()
    worker(settings, env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE)])})
    web = app.test_client()
    first = web.post("/subscribe", data={"email": "ana@example.com", "list": "weekly"})
    assert first.status_code == 202 and first.json is not None and first.json["seq"] == 1
    assert web.post("/subscribe", data={"email": "ana@example.com", "list": "offers"}).status_code == 202

    def applied() -> Any:
        body = web.get("/subscribers/ana@example.com").json
        return body if body and body["count"] == 2 else None

    state = wait_until(applied, timeout=30, what="the worker to apply both")
    assert state == {"count": 2, "lists": ["weekly", "offers"]}


def test_invalid_input_is_refused_with_the_field_and_stores_nothing(
    settings: Settings, make_app: Callable[..., Flask]
) -> None:
    app = make_app(settings)
    refused = app.test_client().post("/subscribe", data={"email": "", "list": "weekly"})
    assert refused.status_code == 400
    assert refused.json == {"error": "key must not be empty", "field": "key"}
    assert stored(client_of(app)) == []


def test_the_client_lives_with_the_app_not_the_request(
    settings_for: Callable[..., Settings], make_app: Callable[..., Flask]
) -> None:
    app = make_app(settings_for("postgres", automations=AUTOMATIONS))
    client = client_of(app)
    web = app.test_client()
    for n in range(3):
        assert web.post("/subscribe", data={"email": f"u{n}@example.com"}).status_code == 202
    assert client_of(app) is client
    # The pooled connection the requests used is still there for the next one: nothing was disposed.
    assert client.db.engine.pool.checkedin() >= 1  # type: ignore[attr-defined]
    assert stored(client) == [("u0@example.com", 1), ("u1@example.com", 1), ("u2@example.com", 1)]


def test_the_app_config_is_mapped_onto_settings_with_the_environment_filling_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("GARRISON_TENANT", "acme")
    monkeypatch.setenv("GARRISON_PUBLISH_BATCH", "7")
    app = Flask("configured")
    app.config.update(
        GARRISON_DATA_DIR=tmp_path,
        GARRISON_AUTOMATIONS=["newsletter.automations", "tests.apps.tally"],
        GARRISON_PUBLISH_BATCH=50,
        GARRISON_RELAY_AFTER="2.5",
        GARRISON_REGION="eu",
    )
    settings = settings_from_app(app)
    assert settings.automations == ("newsletter.automations", "tests.apps.tally")
    assert (settings.tenant, settings.publish_batch, settings.relay_after) == ("acme", 50, 2.5)
    assert settings.extra["region"] == "eu"
    assert settings.database_url == f"sqlite:///{tmp_path / 'garrison.db'}"

    app.config["GARRISON_PUBLISH_BATCH"] = "many"
    with pytest.raises(ConfigurationError) as refused:
        Garrison(app)
    assert 'app.config["GARRISON_PUBLISH_BATCH"]' in str(refused.value)
    assert "garrison" not in app.extensions


def test_ingest_needs_an_app_with_the_extension(settings: Settings) -> None:
    ext = Garrison()
    bare = Flask("bare")
    with bare.app_context(), pytest.raises(ConfigurationError, match="init_app"):
        ext.ingest("app/newsletter.subscribed", "ana@example.com")
    with pytest.raises(RuntimeError, match="application context"):
        ext.ingest("app/newsletter.subscribed", "ana@example.com")

    # One extension, two apps (a factory called twice): each app has its own client and settings.
    one = Flask("one")
    one.config.update(settings.as_env(), GARRISON_TENANT="one")
    two = Flask("two")
    two.config.update(settings.as_env(), GARRISON_TENANT="two")
    ext.init_app(one)
    ext.init_app(two)
    try:
        with one.app_context():
            assert ext.ingest("app/newsletter.subscribed", "ana@example.com").tenant == "one"
        with two.app_context():
            assert ext.ingest_many([{"name": "app/newsletter.subscribed", "key": "ana@example.com"}])[0].tenant == "two"
        assert stored(client_of(one)) == [("ana@example.com", 1)]
        assert stored(client_of(two)) == [("ana@example.com", 1)]
    finally:
        client_of(one).db.dispose()
        client_of(two).db.dispose()


def test_flask_garrison_is_the_garrison_command_with_the_app_settings(
    settings: Settings, make_app: Callable[..., Flask]
) -> None:
    app = make_app(settings, GARRISON_TENANT="acme")
    runner = app.test_cli_runner()
    with mock.patch.dict(os.environ):  # the command exports the settings, as `garrison worker` does
        done = runner.invoke(args=["garrison", "ingest", "app/newsletter.subscribed", "bo@example.com",
                                   '{"email": "bo@example.com", "list": "weekly"}', "--json"])
    assert done.exit_code == 0, done.output
    assert '"tenant": "acme"' in done.output
    assert stored(client_of(app)) == [("bo@example.com", 1)]


@pytest.mark.parametrize(("event", "field"), [
    ({"name": "subscribe\x00", "key": "u"}, "name"),
    ({"name": "subscribe", "key": "u\ud800"}, "key"),
    ({"name": "subscribe", "key": "u", "data": {"list": "a\x00"}}, "data"),
    ({"name": "subscribe", "key": "u", "data": {"n": float("inf")}}, "data"),
    ({"name": "subscribe", "key": "u", "data": {"n": -(2**60)}}, "data"),
    ({"name": "subscribe", "key": "u", "idempotency_key": "garrison/retry:1"}, "idempotency_key"),
    ({"name": "subscribe", "key": "u", "target": "no-such-automation"}, "target"),
])
def test_hostile_input_is_refused_by_the_extension_naming_the_field_and_nothing_is_written(
    backend: str, settings_for: Callable[..., Settings], make_app: Callable[..., Flask], event: dict[str, Any],
    field: str,
) -> None:
    from newsletter import garrison as extension

    from garrison.errors import ValidationError

    app = make_app(settings_for(backend, automations=AUTOMATIONS))
    with app.app_context():
        with pytest.raises(ValidationError) as refused:
            extension.ingest(**event)
        assert refused.value.field == field
        with pytest.raises(ValidationError) as refused:
            extension.ingest_many([{"name": "subscribe", "key": "ok"}, event])
        assert refused.value.field == f"events[1].{field}"
    assert stored(client_of(app)) == []
