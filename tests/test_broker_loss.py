"""A worker survives Redis loss and resumes by itself (guarantee 9), and a lost database is a garrison error.

Redis SIGKILLed mid-run and restarted empty, three times: before, in 6 of 14 worker instances Celery logged
``CRITICAL Unrecoverable error: AttributeError("'NoneType' object has no attribute 'hostname'")`` (kombu's
Redis transport, restoring unacked messages after Celery 5.7's second close) and the worker exited for good.
garrison.tasks.redistransport closes the channel cleanly. What Redis held is gone with it: the relay (in
beat) re-publishes from SQL, and every event is applied exactly once, in order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from garrison import Garrison, NullPublisher, Settings
from garrison.errors import DatabaseUnavailable, GarrisonError
from tests.harness import WorkerProcess, start_beat, wait_until

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")

KEYS = [f"acct-{i}" for i in range(6)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of this test's own, on a free port, that the test kills and restarts empty."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.pidfile = folder / "redis.pid"
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--daemonize", "yes", "--dir", str(self.folder),
                        "--pidfile", str(self.pidfile)], check=True, stdout=subprocess.DEVNULL)

        def answers() -> bool:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self.pidfile.exists() and bool(self.pidfile.read_text().strip())
            return False

        wait_until(answers, timeout=10, interval=0.05, what="redis-server to answer")

    def kill(self) -> None:
        pid = int(self.pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink()

        def gone() -> bool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 0)
                return False
            return True

        wait_until(gone, timeout=10, interval=0.05, what="redis-server to die")

    def stop(self) -> None:
        if self.pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(self.pidfile.read_text()), signal.SIGKILL)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def alive(workers: list[WorkerProcess]) -> list[WorkerProcess]:
    for w in workers:  # a worker that exited fails the test at once, with its log
        assert w.proc.poll() is None, f"a worker exited:\n{w.output[-3000:]}"
    return workers


def losses(workers: list[WorkerProcess]) -> list[int]:
    return [w.output.count("Connection to broker lost") for w in alive(workers)]


def connections(workers: list[WorkerProcess]) -> list[int]:
    return [w.output.count("Connected to redis://") for w in alive(workers)]


def applied(client: Garrison, key: str) -> list[int]:
    state = client.state("counter", key)
    return [] if state is None else [n for _, n in state["applied"]]


@pytest.mark.worker
@pytest.mark.slow
def test_workers_survive_redis_killed_and_restarted_empty_three_times_and_apply_everything_once(
    redis_server: RedisServer, settings_for: Callable[..., Settings], worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    settings = settings_for("postgres", broker_url=redis_server.url)
    client = Garrison(settings)
    # A slow reducer: when Redis dies, tasks are running and prefetched (unacked), which is what kombu's
    # transport failed to restore.
    slow = {"GARRISON_TEST_SLOW_REDUCER": "0.05"}
    workers = [worker(settings, concurrency=2, env=slow), worker(settings, concurrency=2, env=slow)]
    beat = start_beat(settings, tmp_path / "beat.log")
    sent = 0
    try:
        for kill in range(3):
            for _ in range(10):
                sent += 1
                client.ingest_many([{"name": "add", "key": k, "data": {"source": k, "n": sent}, "target": "counter"}
                                    for k in KEYS])
            before = losses(workers)
            redis_server.kill()
            wait_until(lambda before=before: all(n > b for n, b in zip(losses(workers), before, strict=True)),
                       timeout=30, what=f"every worker to notice the loss of Redis (kill {kill + 1})")
            for _ in range(3):  # ingest goes on while Redis is down: stored, the publish fails
                sent += 1
                client.ingest_many([{"name": "add", "key": k, "data": {"source": k, "n": sent}, "target": "counter"}
                                    for k in KEYS])
            connected = connections(workers)
            redis_server.start()  # empty: every queued, prefetched and unacked message is gone
            wait_until(lambda connected=connected: all(n > c for n, c in zip(connections(workers), connected,
                                                                             strict=True)),
                       timeout=60, what=f"every worker to reconnect by itself (restart {kill + 1})")
        wait_until(lambda: all(applied(client, k) == list(range(1, sent + 1)) for k in KEYS), timeout=60,
                   what="every event applied once, in order, after the last restart")
        for w in (*workers, beat):
            assert w.proc.poll() is None, w.output
            assert "Unrecoverable error" not in w.output, w.output
    finally:
        beat.kill()
        client.db.dispose()


def test_a_database_that_does_not_answer_is_a_database_unavailable_error(settings_for: Callable[..., Settings]
                                                                         ) -> None:
    from tests.conftest import require_services

    require_services()
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    client = Garrison(Settings(database_url=url, broker_url="memory://", data_dir=Path("/nonexistent")),
                      publisher=NullPublisher())
    with pytest.raises(DatabaseUnavailable) as caught:
        client.ingest("app/x", "k", {})
    assert isinstance(caught.value, GarrisonError) and "127.0.0.1" in str(caught.value)
    with pytest.raises(DatabaseUnavailable):
        client.state("counter", "k")


def test_a_session_the_server_terminates_is_a_database_unavailable_error_and_the_next_call_reconnects(
    settings_for: Callable[..., Settings],
) -> None:
    """What a PostgreSQL restart does to a transaction in flight, done to this test's own session only."""
    from sqlalchemy import text

    client = Garrison(settings_for("postgres"), publisher=NullPublisher())
    client.ingest("add", "k", {"n": 1}, target="counter")
    with pytest.raises(DatabaseUnavailable) as caught, client.db.session() as s:
        pid = s.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with client.db.engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        s.execute(text("SELECT 1"))
    assert "password" not in str(caught.value) and caught.value.database.startswith("postgresql")
    client.ingest("add", "k", {"n": 2}, target="counter")  # the pool reconnects by itself
    client.run_pending()
    assert client.state("counter", "k")["count"] == 2
    client.db.dispose()
