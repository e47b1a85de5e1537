"""The embedded default's broker: a message (and an exchange table) becomes visible only when whole.

kombu's stock filesystem transport creates the message file, then fills it; a consumer listing the folder
in between reads it empty and the worker dies ("Unrecoverable error: JSONDecodeError", celery/kombu#1551).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from garrison.tasks import fstransport


def queue_named(name: str) -> Queue:
    # A name per test: kombu keeps declared exchanges in memory per transport class, across folders.
    return Queue(name, Exchange(name), name)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[dict[str, Any]]:
    fstransport.install()
    yield {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path),
           "control_folder": str(tmp_path / "control"), "polling_interval": 0.0}


def test_filesystem_urls_use_garrisons_transport() -> None:
    from garrison.config import Settings
    from garrison.tasks.app import celery_config

    celery_config(Settings(data_dir=Path("/tmp/garrison-fstransport-test")))
    with Connection("filesystem://") as conn:
        assert isinstance(conn.transport, fstransport.Transport)


def test_a_message_is_invisible_to_consumers_until_it_is_written_whole(
    folder: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the moment the message is about to appear, a consumer polling the folder finds nothing: the
    file being written is not a message yet. (kombu's stock _put has no such moment: the file is a
    message from its creation, empty.)"""
    seen_while_writing: list[str] = []
    queue = queue_named("whole")
    real_replace = os.replace

    with Connection("filesystem://", transport_options=folder) as consumer_conn:
        consumer = consumer_conn.SimpleQueue(queue)

        def replace_and_peek(src: str, dst: str) -> None:
            assert Path(src).read_bytes(), "the partial file is complete before it is renamed"
            try:
                consumer.get(block=False)
                seen_while_writing.append("a message")
            except consumer.Empty:
                seen_while_writing.append("nothing")
            real_replace(src, dst)

        monkeypatch.setattr(fstransport.os, "replace", replace_and_peek)
        with Connection("filesystem://", transport_options=folder) as producer_conn:
            producer_conn.Producer(serializer="json").publish(
                {"n": 1}, exchange=queue.exchange, routing_key="whole", declare=[queue]
            )
        assert seen_while_writing == ["nothing"]
        message = consumer.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        consumer.close()
    assert not [p for p in os.listdir(folder["data_folder_in"]) if p.endswith(".partial")]


PRODUCER = """
import json, sys
from kombu import Connection, Exchange, Queue
from garrison.tasks import fstransport
fstransport.install()
folder, count = json.loads(sys.argv[1]), int(sys.argv[2])
target = Queue("many", Exchange("many"), "many")
with Connection("filesystem://", transport_options=folder) as conn:
    producer = conn.Producer(serializer="json")
    for n in range(count):
        producer.publish({"n": n, "pad": "x" * 20_000}, exchange=target.exchange, routing_key="many",
                         declare=[target])
"""


def test_many_messages_published_by_another_process_while_a_worker_polls_all_arrive_whole(
    folder: dict[str, Any],
) -> None:
    """A publisher process and a consumer polling the folder as fast as it can: every message arrives,
    once, whole (nothing lost or left behind by the write-then-rename)."""
    count = 1000
    target = queue_named("many")
    received: list[int] = []
    with Connection("filesystem://", transport_options=folder) as conn:
        queue = conn.SimpleQueue(target)  # declared first, as a worker does at start
        producer = subprocess.Popen([sys.executable, "-c", PRODUCER, json.dumps(folder), str(count)])
        try:
            while len(received) < count:
                message = queue.get(timeout=30)
                received.append(message.payload["n"])
                message.ack()
        finally:
            queue.close()
            assert producer.wait(timeout=60) == 0
    assert sorted(received) == list(range(count))
    assert not [p for p in os.listdir(folder["data_folder_in"]) if p != "control"]
