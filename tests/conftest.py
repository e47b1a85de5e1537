"""Test harness: every backend test runs twice, on PostgreSQL + Redis and on the embedded default
(SQLite + kombu's filesystem transport). PostgreSQL and Redis are required when CI=true; locally a test
that needs a missing one is skipped with the reason.

The suite runs in parallel (pytest-xdist): each xdist worker process gets a database and a Redis db of its
own, derived from ``GARRISON_TEST_PG_URL`` (``.../test`` -> ``.../test_gw0``, ``.../test_gw1``...) and
``GARRISON_TEST_REDIS_URL`` (db 15 -> 15, 14, 13...), so workers never see each other's rows or messages.
Set both to run two suites side by side."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from garrison.client import Garrison, configure
from garrison.config import Settings
from garrison.core.publisher import NullPublisher
from tests.harness import WorkerProcess, ensure_database, start_worker, wait_until, worker_urls

BASE_PG_URL = os.environ.get("GARRISON_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BASE_REDIS_URL = os.environ.get("GARRISON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_URL, REDIS_URL = worker_urls(BASE_PG_URL, BASE_REDIS_URL, os.environ.get("PYTEST_XDIST_WORKER"))
BACKENDS = ["postgres", "sqlite"]

__all__ = ["wait_until"]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _services() -> list[tuple[str, str, int]]:
    pg, redis_url = urlsplit(PG_URL), urlsplit(REDIS_URL)
    return [("PostgreSQL", pg.hostname or "127.0.0.1", pg.port or 5432),
            ("Redis", redis_url.hostname or "127.0.0.1", redis_url.port or 6379)]


def pytest_configure(config: pytest.Config) -> None:
    """Create this process's database when PostgreSQL answers (tests skip or fail later when not)."""
    if _reachable(*_services()[0][1:]):
        ensure_database(PG_URL)


def require_services() -> None:
    missing = [n for n, host, port in _services() if not _reachable(host, port)]
    if missing:
        message = f"{', '.join(missing)} not reachable ({PG_URL}, {REDIS_URL})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}; run `make services`", pytrace=False)
        pytest.skip(message)


def make_settings(backend: str, tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": tmp_path / "garrison",
        "relay_interval": 0.5,
        "relay_after": 1.0,
        "automations": ("tests.apps.counter",),
    }
    if backend == "postgres":
        require_services()
        base.update(database_url=PG_URL, broker_url=REDIS_URL)
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


def _fresh(settings: Settings) -> None:
    client = Garrison(settings, publisher=NullPublisher())
    client.db.drop_all()
    client.init_db()
    client.db.dispose()
    if settings.broker_url.startswith("redis"):
        import redis

        redis.Redis.from_url(settings.broker_url).flushdb()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    """Build fresh settings (empty tables, empty broker) for a backend, with overrides."""

    def build(backend: str, **overrides: object) -> Settings:
        s = make_settings(backend, tmp_path, **overrides)
        _fresh(s)
        return s

    return build


@pytest.fixture
def settings(backend: str, settings_for: Callable[..., Settings]) -> Settings:
    return settings_for(backend)


@pytest.fixture
def client(settings: Settings) -> Iterator[Garrison]:
    """A client that publishes to the real broker of the backend."""
    c = Garrison(settings)
    previous = configure(c)
    yield c
    configure(previous)
    c.db.dispose()


@pytest.fixture
def offline(settings: Settings) -> Iterator[Garrison]:
    """A client that publishes nothing: work is applied with ``Runner(client).run_pending()``."""
    c = Garrison(settings, publisher=NullPublisher())
    previous = configure(c)
    yield c
    configure(previous)
    c.db.dispose()


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``celery -A garrison.tasks worker`` processes, SIGKILLed at teardown: each test's data
    is thrown away, so a warm shutdown (seconds on the filesystem transport) would save nothing."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, **kwargs: object) -> WorkerProcess:
        name = f"w{len(started)}-{uuid.uuid4().hex[:6]}"
        proc = start_worker(settings, tmp_path / f"{name}.log", name=name, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
