"""A worker's broker connection survives Redis being SIGKILLed (garrison.tasks.redistransport).

Does on a kombu connection what Celery 5.7.0's consumer does after a broker loss
(``Consumer.on_connection_error_after_connected``: ``collect(socket_timeout=5)``, then
``ignore_errors(connection, connection.close)``), with a BRPOP pending and a message unacked on the default
channel. With kombu's own Redis transport ``close()`` raises ``AttributeError: 'NoneType' object has no
attribute 'hostname'`` and the worker exits; with garrison's it must not. Uses a private redis-server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue
from kombu.common import ignore_errors
from kombu.transport import TRANSPORT_ALIASES

from garrison.tasks import redistransport

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = _free_port()
    pidfile = tmp_path / "redis.pid"
    subprocess.run(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--dir",
            str(tmp_path),
            "--pidfile",
            str(pidfile),
        ],
        check=True,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if pidfile.exists() and pidfile.read_text().strip():
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield port, pidfile
    if pidfile.exists():  # not killed by the test
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.fixture
def garrison_redis_transport() -> Iterator[None]:
    saved = {k: TRANSPORT_ALIASES[k] for k in ("redis", "rediss")}
    redistransport.install()
    yield
    TRANSPORT_ALIASES.update(saved)


def test_connection_closes_cleanly_after_redis_is_killed(
    redis_server: tuple[int, Path], garrison_redis_transport: None
) -> None:
    port, pidfile = redis_server
    conn = Connection(f"redis://127.0.0.1:{port}/0", transport_options={"visibility_timeout": 3600})
    conn.ensure_connection(max_retries=3)
    assert isinstance(conn.transport, redistransport.Transport)
    queue = Queue("t", Exchange("t", type="direct"), "t")
    with conn.Producer() as producer:
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key="t", declare=[queue])
    received: list[object] = []
    consumer = conn.Consumer(queue, callbacks=[lambda body, message: received.append(message)])
    consumer.consume()
    # A second channel consuming an auto-delete fanout queue, as Celery's remote control (pidbox) does: on
    # close it deletes its binding, which fails while Redis is down and stops collect() from closing
    # the default channel a second time.
    control = Queue("bcast", Exchange("bcast", type="fanout"), auto_delete=True)
    conn.Consumer(control, channel=conn.channel(), no_ack=True, callbacks=[lambda body, message: None]).consume()
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:  # the message: delivered, not acked
        with contextlib.suppress(socket.timeout):
            conn.drain_events(timeout=0.5)
    for _ in range(10):
        try:
            conn.drain_events(timeout=0.3)  # the queue is empty: the next BRPOP stays pending
        except TimeoutError:
            break
    channel = conn.default_channel
    assert received and channel.qos._delivered and channel._in_poll

    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    pidfile.unlink()
    time.sleep(0.2)

    with contextlib.suppress(Exception):  # Celery ignores anything raised here
        conn.collect(socket_timeout=5.0)
    ignore_errors(conn, conn.close)  # kombu's own transport: AttributeError ('hostname') escapes here
    assert channel.closed
