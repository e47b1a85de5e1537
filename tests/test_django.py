"""The Django integration, through Django's test client and the example project in examples/django_app.

PostgreSQL only: the example shares its database with garrison (``GARRISON["DATABASE"]``), which the
in-transaction mode needs. Django's own tables are created by ``migrate`` in the test database; garrison's
are fresh for each test (``settings_for``). Real workers apply what the requests ingest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import make_url, select, text
from sqlalchemy.exc import SQLAlchemyError

from garrison.client import Garrison, configure, default_client
from garrison.config import Settings
from garrison.errors import ConfigurationError, ValidationError
from garrison.models import EVENTS, STREAMS
from tests.conftest import PG_URL
from tests.harness import ROOT, WorkerProcess, child_env, wait_until

EXAMPLE = ROOT / "examples" / "django_app"
AUTOMATIONS = ("signups.automations",)
Worker = Callable[..., WorkerProcess]

if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))


@pytest.fixture(scope="module")
def project() -> Iterator[None]:
    """Django configured with the example's settings on the test database, and its tables migrated.

    The app makes its client garrison's process-wide default; the default from before is put back after
    this module, so other tests never see it.
    """
    import django
    from django.conf import settings
    from django.core.management import call_command

    before = configure(None)
    configure(before)
    if not settings.configured:
        import mysite.settings as example

        values = {name: getattr(example, name) for name in dir(example) if name.isupper()}
        values["DATABASES"] = {"default": example.database(PG_URL)}
        settings.configure(**values)
        django.setup()
    call_command("migrate", verbosity=0)
    yield
    from garrison.contrib import django as garrison

    garrison.get_client().db.dispose()
    configure(before)


@pytest.fixture
def garrison_settings(project: None, settings_for: Callable[..., Settings]) -> Iterator[Settings]:
    """Fresh garrison tables and broker; Django's GARRISON setting pointing at them; no app rows."""
    from django.contrib.auth.models import User
    from django.test import override_settings
    from signups.models import Submission

    settings = settings_for("postgres", automations=AUTOMATIONS)
    Submission.objects.all().delete()
    User.objects.all().delete()
    with override_settings(GARRISON=django_config(settings)):
        yield settings


def django_config(settings: Settings, **more: Any) -> dict[str, Any]:
    return {
        "DATABASE": "default",
        "BROKER_URL": settings.broker_url,
        "DATA_DIR": str(settings.data_dir),
        "AUTOMATIONS": list(settings.automations),
        "RELAY_INTERVAL": settings.relay_interval,
        "RELAY_AFTER": settings.relay_after,
        **more,
    }


def start(worker: Worker, settings: Settings) -> WorkerProcess:
    """A real worker that can import the example's automations."""
    return worker(settings, env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE)])})


def client() -> Garrison:
    from garrison.contrib import django as garrison

    return garrison.get_client()


def user(name: str = "ana") -> Any:
    from django.contrib.auth.models import User

    return User.objects.create(username=name)


def events(key: str | None = None) -> list[tuple[str, int, dict[str, Any]]]:
    """(key, seq, data) of every stored event, read on garrison's own connection."""
    c = client()
    query = select(EVENTS.c.key, EVENTS.c.seq, EVENTS.c.data).where(EVENTS.c.tenant == c.settings.tenant)
    if key is not None:
        query = query.where(EVENTS.c.key == key)
    with c.db.session() as s:
        return [tuple(row) for row in s.execute(query.order_by(EVENTS.c.id))]  # type: ignore[misc]


def submissions() -> list[str]:
    from signups.models import Submission

    return list(Submission.objects.order_by("id").values_list("email", flat=True))


def emails_state(key: str) -> Any:
    return client().state("emails", key)


def web() -> Any:
    from django.test import Client

    return Client(raise_request_exception=False)


# -- after commit (the default) ---------------------------------------------------------------------


def test_a_committed_request_ingests_after_commit_and_a_real_worker_applies_it(
    garrison_settings: Settings, worker: Worker
) -> None:
    start(worker, garrison_settings)
    ana = user()
    response = web().post(f"/users/{ana.pk}/email", {"email": "ana@example.com"})
    assert response.status_code == 200
    assert response.json()["event"] is None  # ATOMIC_REQUESTS: written at commit, not in the view
    key = f"user-{ana.pk}"
    wait_until(lambda: (emails_state(key) or {}).get("count") == 1, timeout=30, what="the worker to apply it")
    assert emails_state(key) == {"count": 1, "emails": ["ana@example.com"]}
    assert [(k, seq, data["email"]) for k, seq, data in events()] == [(key, 1, "ana@example.com")]
    assert submissions() == ["ana@example.com"]
    assert web().get(f"/users/{ana.pk}/emails").json() == {"count": 1, "emails": ["ana@example.com"]}


def test_a_rolled_back_request_ingests_nothing_and_the_worker_never_sees_it(
    garrison_settings: Settings, worker: Worker
) -> None:
    start(worker, garrison_settings)
    ana = user()
    failed = web().post(f"/users/{ana.pk}/email-then-fail", {"email": "refused@example.com"})
    assert failed.status_code == 500
    assert submissions() == []
    assert events() == []
    # A later request for the same user is applied: had the refused one been stored, it would have had
    # sequence 1 on this key and been applied first.
    assert web().post(f"/users/{ana.pk}/email", {"email": "ana@example.com"}).status_code == 200
    key = f"user-{ana.pk}"
    wait_until(lambda: emails_state(key) is not None, timeout=30, what="the worker to apply the later event")
    assert emails_state(key) == {"count": 1, "emails": ["ana@example.com"]}
    assert [(k, seq) for k, seq, _ in events()] == [(key, 1)]


def test_after_commit_mode_validates_at_the_call_and_follows_savepoints(garrison_settings: Settings) -> None:
    from django.db import transaction

    from garrison.contrib import django as garrison

    with transaction.atomic():
        with pytest.raises(ValidationError) as refused:
            garrison.ingest("app/email.submitted", "", {"email": "x@example.com"})
        assert refused.value.field == "key"
        assert garrison.ingest("app/email.submitted", "user-1", {"email": "kept@example.com"}) is None
        try:
            with transaction.atomic():  # a savepoint, rolled back with the event it deferred
                garrison.ingest("app/email.submitted", "user-1", {"email": "dropped@example.com"})
                raise RuntimeError("inner block fails")
        except RuntimeError:
            pass
        assert events() == []  # nothing before commit
    assert [data["email"] for _, _, data in events()] == ["kept@example.com"]

    outside = garrison.ingest("app/email.submitted", "user-1", {"email": "now@example.com"})
    assert outside is not None and outside.seq == 2  # autocommit: written at once
    assert client().run_pending() == 2
    assert emails_state("user-1") == {"count": 2, "emails": ["kept@example.com", "now@example.com"]}


def test_ingest_many_after_commit_writes_the_batch_when_the_transaction_commits(garrison_settings: Settings) -> None:
    from django.db import transaction

    from garrison.contrib import django as garrison

    batch = [
        {"name": "app/email.submitted", "key": "user-1", "data": {"email": "a@example.com"}},
        {"name": "app/email.submitted", "key": "user-2", "data": {"email": "b@example.com"}},
    ]
    with transaction.atomic():
        assert garrison.ingest_many(batch) is None
        with pytest.raises(ValidationError) as refused:
            garrison.ingest_many([{"name": "x", "key": "k", "colour": "red"}])
        assert refused.value.field == "events[0].colour"
        assert events() == []
    assert [(k, seq) for k, seq, _ in events()] == [("user-1", 1), ("user-2", 1)]


# -- in the app's transaction ----------------------------------------------------------------------


def test_in_transaction_mode_commits_and_rolls_back_the_event_with_the_app_row(
    garrison_settings: Settings, worker: Worker
) -> None:
    start(worker, garrison_settings)
    ana = user()
    key = f"user-{ana.pk}"
    ok = web().post(f"/users/{ana.pk}/email?mode=in_transaction", {"email": "first@example.com"})
    assert ok.status_code == 200
    assert ok.json()["event"] is not None  # stored in the request's transaction: its id is known there
    wait_until(lambda: (emails_state(key) or {}).get("count") == 1, timeout=30, what="the worker to apply it")

    failed = web().post(f"/users/{ana.pk}/email-then-fail?mode=in_transaction", {"email": "refused@example.com"})
    assert failed.status_code == 500
    assert submissions() == ["first@example.com"]
    assert [(k, seq) for k, seq, _ in events()] == [(key, 1)]
    with client().db.session() as s:  # the sequence it took was rolled back too: no gap for the key
        assert s.execute(
            select(STREAMS.c.last_seq).where(STREAMS.c.tenant == client().settings.tenant, STREAMS.c.key == key)
        ).scalar_one() == 1

    assert web().post(f"/users/{ana.pk}/email?mode=in_transaction", {"email": "second@example.com"}).status_code == 200
    wait_until(lambda: (emails_state(key) or {}).get("count") == 2, timeout=30, what="the second event")
    assert emails_state(key) == {"count": 2, "emails": ["first@example.com", "second@example.com"]}
    assert submissions() == ["first@example.com", "second@example.com"]
    assert [(k, seq) for k, seq, _ in events()] == [(key, 1), (key, 2)]


def test_in_transaction_mode_is_invisible_to_others_until_the_app_commits(garrison_settings: Settings) -> None:
    from django.db import connection, transaction
    from signups.models import Submission

    from garrison.contrib import django as garrison

    ana = user()
    with transaction.atomic():
        Submission.objects.create(user=ana, email="ana@example.com")
        stored = garrison.ingest("app/email.submitted", "user-1", {"email": "ana@example.com"}, in_transaction=True)
        assert stored is not None and (stored.seq, stored.duplicate) == (1, False)
        again = garrison.ingest(
            "app/email.submitted", "user-1", {"email": "ana@example.com"}, idempotency_key="form-7", in_transaction=True
        )
        same = garrison.ingest(
            "app/email.submitted", "user-1", {"email": "other"}, idempotency_key="form-7", in_transaction=True
        )
        assert same is not None and again is not None
        assert (same.id, same.duplicate, same.data) == (again.id, True, {"email": "ana@example.com"})
        with connection.cursor() as cursor:  # the app's connection sees its own uncommitted rows
            cursor.execute("SELECT count(*) FROM garrison_events WHERE tenant = %s", [client().settings.tenant])
            assert cursor.fetchone() == (2,)
        assert events() == []  # garrison's own connection (and the workers) do not, yet
        try:
            with transaction.atomic():
                garrison.ingest_many(
                    [{"name": "app/email.submitted", "key": "user-2", "data": {"email": "gone@example.com"}}],
                    in_transaction=True,
                )
                raise RuntimeError("inner block fails")
        except RuntimeError:
            pass
    assert [(k, seq) for k, seq, _ in events()] == [("user-1", 1), ("user-1", 2)]
    assert client().run_pending() == 2
    assert emails_state("user-1") == {"count": 2, "emails": ["ana@example.com", "ana@example.com"]}
    assert emails_state("user-2") is None

    outside = garrison.ingest("app/email.submitted", "user-1", {"email": "x@example.com"}, in_transaction=True)
    assert outside is not None and [seq for _, seq, _ in events("user-1")] == [1, 2, 3]  # its own transaction


def test_a_concurrent_duplicate_in_transaction_is_found_once_the_first_commits_and_the_app_goes_on(
    garrison_settings: Settings,
) -> None:
    """Two requests send the same idempotency key in their own transactions. The second one's insert
    waits for the first's, then conflicts; garrison retries inside a savepoint and finds the duplicate, and
    the second request's transaction is still usable for its own rows."""
    from django.db import DatabaseError, connection, transaction
    from signups.models import Submission

    from garrison.contrib import django as garrison

    ana = user()
    written, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def request(name: str) -> None:
        try:
            with transaction.atomic():
                Submission.objects.create(user=ana, email=f"{name}-before@example.com")
                results[name] = garrison.ingest(
                    "app/email.submitted", "user-1", {"email": name}, idempotency_key="form-1", in_transaction=True
                )
                Submission.objects.create(user=ana, email=f"{name}-after@example.com")
                if name == "first":
                    written.set()
                    release.wait(20)
        except (DatabaseError, SQLAlchemyError) as exc:
            results[name] = exc
        finally:
            connection.close()

    first = threading.Thread(target=request, args=("first",))
    first.start()
    assert written.wait(20)
    second = threading.Thread(target=request, args=("second",))
    second.start()

    def second_waits_on_a_lock() -> bool:
        with client().db.engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )).scalar_one())

    wait_until(second_waits_on_a_lock, timeout=20, what="the second transaction to wait for the first")
    release.set()
    first.join(20)
    second.join(20)
    assert not isinstance(results["second"], Exception), results["second"]
    assert (results["second"].id, results["second"].duplicate) == (results["first"].id, True)
    assert results["second"].data == {"email": "first"}
    assert sorted(submissions()) == sorted(
        f"{n}-{when}@example.com" for n in ("first", "second") for when in ("before", "after")
    )
    assert [(k, seq, data) for k, seq, data in events()] == [("user-1", 1, {"email": "first"})]


def test_in_transaction_can_be_the_default_and_needs_a_shared_database(garrison_settings: Settings) -> None:
    from django.db import transaction
    from django.test import override_settings

    from garrison.contrib import django as garrison

    with override_settings(GARRISON=django_config(garrison_settings, IN_TRANSACTION=True)), transaction.atomic():
        assert garrison.ingest("app/email.submitted", "user-1", {"email": "a@example.com"}) is not None

    separate = {**django_config(garrison_settings), "DATABASE_URL": garrison_settings.database_url}
    del separate["DATABASE"]
    with override_settings(GARRISON=separate):
        with pytest.raises(ConfigurationError) as refused:
            garrison.ingest("app/email.submitted", "user-1", {"email": "b@example.com"}, in_transaction=True)
        assert refused.value.context["field"] == "DATABASE"
    assert [data["email"] for _, _, data in events()] == ["a@example.com"]


# -- settings and commands -------------------------------------------------------------------------


def test_the_garrison_setting_maps_onto_settings_with_the_environment_filling_the_rest(
    garrison_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.test import override_settings

    from garrison.contrib import django as garrison

    # "DATABASE": "default" gives garrison the very database Django uses.
    assert client().settings.as_env() == garrison_settings.as_env()
    assert default_client() is client()  # the app made it the process-wide client (machine.send uses it)

    monkeypatch.setenv("GARRISON_TENANT", "acme")
    monkeypatch.setenv("GARRISON_PUBLISH_BATCH", "7")
    with override_settings(GARRISON=django_config(garrison_settings, PUBLISH_BATCH="50", EXTRA={"region": "eu"})):
        settings = garrison.get_client().settings
        assert (settings.tenant, settings.publish_batch, settings.extra["region"]) == ("acme", 50, "eu")
        assert default_client() is garrison.get_client()

    refused = {
        "BROKR_URL": "redis://",
        "broker_url": "redis://",
        "PUBLISH_BATCH": "many",
        "AUTOMATIONS": [1, 2],
        "IN_TRANSACTION": "yes",
    }
    for key, value in refused.items():
        with override_settings(GARRISON={**django_config(garrison_settings), key: value}):
            with pytest.raises(ConfigurationError) as error:
                garrison.get_client()
            assert key.upper() in str(error.value) or key in str(error.value)
    wrong = [
        ({"DATABASE": "default", "DATABASE_URL": "sqlite://"}, "both"),
        ({"DATABASE": "reports"}, "not in settings.DATABASES"),
        ({"IN_TRANSACTION": True}, "needs GARRISON"),
    ]
    for config, message in wrong:
        with override_settings(GARRISON=config), pytest.raises(ConfigurationError) as error:
            garrison.get_client()
        assert message in str(error.value)


def test_manage_py_garrison_is_the_garrison_command_with_djangos_settings(
    garrison_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from django.core.management import call_command

    with mock.patch.dict(os.environ):  # the command exports the settings, as `garrison worker` does
        call_command("garrison", "db", "init")
        assert os.environ["GARRISON_DATABASE_URL"] == PG_URL
    out = capsys.readouterr().out
    assert "garrison tables ready in postgresql://" in out and f"/{make_url(PG_URL).database}" in out

    env = child_env(garrison_settings, DATABASE_URL=PG_URL, PYTHONPATH=str(ROOT))
    env.pop("GARRISON_DATABASE_URL")  # it comes from Django's DATABASES["default"] ("DATABASE": "default")
    done = subprocess.run(
        [sys.executable, "manage.py", "garrison", "ingest", "app/email.submitted", "user-9", '{"email": "c@d.e"}'],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [(k, data) for k, _, data in events()] == [("user-9", {"email": "c@d.e"})]


# -- Celery's Django settings: honoured or refused, never silently ignored -----------------------------


def test_celery_broker_url_is_garrisons_broker_when_garrison_names_none_and_a_real_worker_applies(
    garrison_settings: Settings, worker: Worker
) -> None:
    from django.test import override_settings

    config = {k: v for k, v in django_config(garrison_settings).items() if k != "BROKER_URL"}
    with override_settings(GARRISON=config, CELERY_BROKER_URL=garrison_settings.broker_url):
        assert client().settings.broker_url == garrison_settings.broker_url  # Redis, not the folder default
        start(worker, garrison_settings)  # consumes Redis only: the event reaches it through Redis
        ana = user("celery-ana")
        assert web().post(f"/users/{ana.pk}/email", {"email": "ana@example.com"}).status_code == 200
        wait_until(lambda: (emails_state(f"user-{ana.pk}") or {}).get("count") == 1, timeout=30,
                   what="the worker on CELERY_BROKER_URL to apply it")


def test_a_celery_broker_url_other_than_garrisons_is_refused_naming_both_settings(garrison_settings: Settings) -> None:
    from django.test import override_settings

    config = django_config(garrison_settings, BROKER_URL="redis://127.0.0.1:6379/3")
    with override_settings(GARRISON=config, CELERY_BROKER_URL="redis://:pw@127.0.0.1:6379/4"), \
            pytest.raises(ConfigurationError) as info:
        client()
    assert info.value.field == "CELERY_BROKER_URL"
    assert "settings.CELERY_BROKER_URL = 'redis://:***@127.0.0.1:6379/4'" in info.value.message
    assert "redis://127.0.0.1:6379/3" in info.value.message and "pw" not in info.value.message


def test_celery_settings_garrison_cannot_run_with_are_refused_and_the_rest_are_named_in_the_log(
    garrison_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from django.test import override_settings

    with override_settings(CELERY_ACCEPT_CONTENT=["json", "pickle"], GARRISON=django_config(garrison_settings)), \
            pytest.raises(ConfigurationError) as info:
        client()
    assert "settings.CELERY_ACCEPT_CONTENT = ['json', 'pickle']; garrison needs ['json']" in info.value.message
    with override_settings(CELERY_TIMEZONE="Europe/Paris", CELERY_RESULT_BACKEND="redis://127.0.0.1:6379/5",
                           GARRISON=django_config(garrison_settings)):
        with caplog.at_level("WARNING", logger="garrison.django"):
            client()
        lines = [r.getMessage() for r in caplog.records if r.name == "garrison.django"]
        assert lines and all("CELERY_RESULT_BACKEND, CELERY_TIMEZONE" in line and "not garrison's worker" in line
                             for line in lines)
HOSTILE = [
    ({"name": "app/email.submitted\x00", "key": "u"}, "name"),
    ({"name": "app/email.submitted", "key": "u\ud800"}, "key"),
    ({"name": "app/email.submitted", "key": "u", "data": {"email": "a\x00"}}, "data"),
    ({"name": "app/email.submitted", "key": "u", "data": {"n": float("nan")}}, "data"),
    ({"name": "app/email.submitted", "key": "u", "data": {"n": 2**60}}, "data"),
    ({"name": "app/email.submitted", "key": "u", "idempotency_key": "garrison/timer:1"}, "idempotency_key"),
    ({"name": "app/email.submitted", "key": "u", "target": "no-such-automation"}, "target"),
]


@pytest.mark.parametrize(("event", "field"), HOSTILE)
def test_hostile_input_is_refused_by_django_ingest_and_ingest_many_naming_the_field(
    garrison_settings: Settings, event: dict[str, Any], field: str
) -> None:
    from django.db import transaction

    from garrison.contrib import django as garrison

    for in_transaction in (False, True):
        with transaction.atomic():
            with pytest.raises(ValidationError) as refused:
                garrison.ingest(**event, in_transaction=in_transaction)
            assert refused.value.field == field
            with pytest.raises(ValidationError) as refused:
                garrison.ingest_many([{"name": "app/ok", "key": "u"}, event], in_transaction=in_transaction)
            assert refused.value.field == f"events[1].{field}"
    assert events() == []
